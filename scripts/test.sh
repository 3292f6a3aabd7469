#!/usr/bin/env bash
# The whole test suite (`make test`, what CI runs): the pipeline env's tests and the orchestration
# env's tests side by side. The orchestration tests spend most of their time waiting on Airflow
# (scheduler heartbeats, settling landing zones, task processes starting), so running them next to
# the pipeline env's tests shortens the suite even on 2 cores. The pipeline env's output is shown
# as it runs; the orchestration env's is kept in a log file and shown when both are done.
# Exit status: 0 only when both parts pass.
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
ORCH_LOG="$LOG_DIR/orchestration.log"
started=$SECONDS

echo "==> tests/orchestration (orchestration env) in the background; its log: $ORCH_LOG"
.venv/orchestration/bin/python -m pytest tests/orchestration "${PYTEST_ARGS[@]}" >"$ORCH_LOG" 2>&1 &
orchestration=$!
# Ctrl-C or a CI cancel stops both parts, not only the foreground one.
trap 'kill "$orchestration" 2>/dev/null; stop_hog' INT TERM

echo "==> tests/ except orchestration (pipeline env)"
.venv/pipeline/bin/python -m pytest tests --ignore=tests/orchestration "${PYTEST_ARGS[@]}"
pipeline_status=$?
echo "==> pipeline env: exit $pipeline_status after $((SECONDS - started)) s; waiting for tests/orchestration"

wait "$orchestration"
orchestration_status=$?
echo "==> tests/orchestration (orchestration env), its whole output:"
cat "$ORCH_LOG"
stop_hog
echo "==> orchestration env: exit $orchestration_status; suite done in $((SECONDS - started)) s"

[ "$pipeline_status" -eq 0 ] && [ "$orchestration_status" -eq 0 ]
