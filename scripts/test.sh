#!/usr/bin/env bash
# The whole test suite (`make test`, what CI runs): the pipeline env's tests and the orchestration
# env's tests side by side. The orchestration tests spend most of their time waiting on Airflow
# (scheduler heartbeats, settling landing zones, task processes starting), so running them next to
# the pipeline env's tests shortens the suite even on 2 cores. The pipeline env's output is shown
# as it runs; the orchestration env's is kept in a log file and shown when both are done.
# Exit status: 0 only when both parts pass.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTEST_ARGS=(-p no:cacheprovider -ra --durations=10)
LOG_DIR="${MOODLOOP_TEST_LOGS:-$(mktemp -d -t moodloop-test-XXXXXX)}"
mkdir -p "$LOG_DIR"
ORCH_LOG="$LOG_DIR/orchestration.log"
started=$SECONDS

echo "==> tests/orchestration (orchestration env) in the background; its log: $ORCH_LOG"
.venv/orchestration/bin/python -m pytest tests/orchestration "${PYTEST_ARGS[@]}" >"$ORCH_LOG" 2>&1 &
orchestration=$!
# Ctrl-C or a CI cancel stops both parts, not only the foreground one.
trap 'kill "$orchestration" 2>/dev/null' INT TERM

echo "==> tests/ except orchestration (pipeline env)"
.venv/pipeline/bin/python -m pytest tests --ignore=tests/orchestration "${PYTEST_ARGS[@]}"
pipeline_status=$?
echo "==> pipeline env: exit $pipeline_status after $((SECONDS - started)) s; waiting for tests/orchestration"

wait "$orchestration"
orchestration_status=$?
echo "==> tests/orchestration (orchestration env), its whole output:"
cat "$ORCH_LOG"
echo "==> orchestration env: exit $orchestration_status; suite done in $((SECONDS - started)) s"

[ "$pipeline_status" -eq 0 ] && [ "$orchestration_status" -eq 0 ]
