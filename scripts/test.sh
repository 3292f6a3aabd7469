#!/usr/bin/env bash
# The whole test suite (`make test`, what CI runs) in four processes side by side: the pipeline
# env's serving, code, data and quicker model tests in the foreground; its TFX pipeline runs and
# the orchestration env's tests (two processes) in the background. The orchestration tests spend
# most of their time waiting on Airflow (scheduler heartbeats, settling landing zones, task
# processes starting) and the serving tests on sockets and flush intervals, so side by side they
# fill each other's waits even on 2 cores; one after the other the pipeline env alone was the
# suite's critical path, its last ten minutes on one busy core. The foreground's output is shown as
# it runs; the background parts' are kept in log files and shown when all are done.
# Exit status: 0 only when every part passes.
#
#   scripts/test.sh            the suite (`make test`, CI)
#   scripts/test.sh --stress   the same suite with a CPU hog spinning on one core beside it
#                              (`make test-stress`): a test whose verdict depends on timing or on a
#                              model landing near a threshold fails here first, not in CI.
set -uo pipefail
cd "$(dirname "$0")/.."

hog=""
if [[ "${1:-}" == "--stress" ]]; then
    # One busy core, as another job on a shared CI runner would take it. Debian's stress-ng if
    # installed, else a shell loop (the same load: one runnable process that never sleeps).
    if command -v stress-ng > /dev/null; then
        stress-ng --cpu 1 --quiet &
    else
        bash -c 'while :; do :; done' &
    fi
    hog=$!
    echo "==> stress: a CPU hog (pid $hog) spins on one core for the whole suite"
fi
stop_hog() { [[ -n "$hog" ]] && kill "$hog" 2>/dev/null && wait "$hog" 2>/dev/null; hog=""; }

PYTEST_ARGS=(-p no:cacheprovider -ra --durations=10)
LOG_DIR="${MOODLOOP_TEST_LOGS:-$(mktemp -d -t moodloop-test-XXXXXX)}"
mkdir -p "$LOG_DIR"
started=$SECONDS
# The machine's CPU use over the suite (all processes, the stacks' daemons included): near 100%
# means the suite is bound by CPU and only less work makes it faster; well below, by waiting.
cpu_ticks() { awk '/^cpu /{print $2+$3+$4+$6+$7+$8, $5}' /proc/stat; }
read -r busy_start idle_start < <(cpu_ticks)

# The orchestration env's tests in two processes: the local stack's test (about 15 minutes, mostly
# waiting on Airflow's scheduler, task processes starting and the stack's own training) and the
# rest (the drill, ingest, drift). One after the other they were the suite's critical path (33
# minutes on a quiet 2-core machine); side by side their waits overlap. Each process has its own
# Airflow home and free ports (tests/orchestration/conftest.py).
# Each part's wall time and CPU time (user + system, its waited-for children included; the stack's
# daemons, which detach, are in the machine's figure below only): where the suite's CPU goes.
timed() {
    local part=$1
    shift
    local TIMEFORMAT="==> $part: %R s wall, %U s user + %S s system CPU"
    time "$@"
}
STACK_TESTS=tests/orchestration/test_stack.py
declare -A parts=()
echo "==> $STACK_TESTS (orchestration env) in the background; its log: $LOG_DIR/orchestration-stack.log"
timed orchestration-stack .venv/orchestration/bin/python -m pytest "$STACK_TESTS" "${PYTEST_ARGS[@]}" \
    >"$LOG_DIR/orchestration-stack.log" 2>&1 &
parts[orchestration-stack]=$!
echo "==> tests/orchestration, the rest (orchestration env) in the background; its log: $LOG_DIR/orchestration.log"
timed orchestration .venv/orchestration/bin/python -m pytest tests/orchestration --ignore="$STACK_TESTS" \
    "${PYTEST_ARGS[@]}" >"$LOG_DIR/orchestration.log" 2>&1 &
parts[orchestration]=$!
# The pipeline env's longest tests, the TFX pipeline runs and the A/B gate's trainings, in the
# background; the rest of tests/model (adoption, the InfraValidator, edge parity, training) in the
# foreground with serving, code and data. With all of tests/model in the background it ended five
# minutes after every other part, alone on a half-idle machine.
MODEL_TESTS=(tests/model/test_pipeline.py tests/model/test_ab_gate.py)
echo "==> ${MODEL_TESTS[*]} (pipeline env) in the background; its log: $LOG_DIR/model.log"
timed model .venv/pipeline/bin/python -m pytest "${MODEL_TESTS[@]}" "${PYTEST_ARGS[@]}" >"$LOG_DIR/model.log" 2>&1 &
parts[model]=$!
# Ctrl-C or a CI cancel stops every part, not only the foreground one.
# (Each part is a shell timing its pytest: its pytest is stopped first, then the shell.)
trap 'for p in "${parts[@]}"; do pkill -TERM -P "$p"; kill "$p"; done 2>/dev/null; stop_hog' INT TERM

echo "==> tests/ except orchestration and ${MODEL_TESTS[*]} (pipeline env)"
timed pipeline .venv/pipeline/bin/python -m pytest tests --ignore=tests/orchestration \
    "${MODEL_TESTS[@]/#/--ignore=}" "${PYTEST_ARGS[@]}"
pipeline_status=$?
echo "==> pipeline env: exit $pipeline_status after $((SECONDS - started)) s; waiting for the background parts"

failed=$pipeline_status
for part in model orchestration orchestration-stack; do
    wait "${parts[$part]}"
    status=$?
    echo "==> $part, its whole output:"
    cat "$LOG_DIR/$part.log"
    echo "==> $part: exit $status after $((SECONDS - started)) s"
    [ "$status" -eq 0 ] || failed=1
done
stop_hog
read -r busy_end idle_end < <(cpu_ticks)
busy=$((busy_end - busy_start)) idle=$((idle_end - idle_start))
echo "==> CPU busy $((100 * busy / (busy + idle + 1)))% of $(nproc) cores over the suite"
echo "==> suite done in $((SECONDS - started)) s: $([ "$failed" -eq 0 ] && echo PASSED || echo FAILED)"
[ "$failed" -eq 0 ]
