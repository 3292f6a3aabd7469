# moodloop: the two commands a newcomer needs are `make run` and `make test`.
PIPELINE_PY := .venv/pipeline/bin/python
ORCH_PY     := .venv/orchestration/bin/python
MOODLOOP    := .venv/pipeline/bin/moodloop
HOME_DIR    := $(or $(MOODLOOP_HOME),$(CURDIR)/.moodloop)
BATCH       := $(HOME_DIR)/landing/synthetic-10k
N           ?= 10000

STACK       := .venv/orchestration/bin/python -m moodloop.local.stack

.PHONY: help setup run stop status train serve test test-stress test-fast lint format bench bench-scale drill soak faults clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup:  ## create/update both environments from the lock files (idempotent)
	@bash scripts/setup.sh

run: setup  ## main job: the whole loop on Airflow 3 (local folders, SQLite), first batch included
	@$(STACK) start

stop:  ## stop everything `make run` started
	@$(STACK) stop

status:  ## what runs, latest DAG runs, pushed model versions
	@$(STACK) status

train: setup  ## without Airflow: synthetic 10k-face batch -> TFX pipeline (LocalDagRunner) -> push
	@test -e $(BATCH) || $(MOODLOOP) generate $(BATCH) --n $(N) --seed 0
	$(MOODLOOP) train --data $(BATCH)

serve: setup  ## the serving gateway alone (REST :8501, gRPC :8500) on the pushed models
	$(MOODLOOP) serve

test: setup  ## the whole test suite (what CI runs): both environments' tests side by side, then the verdict
	@bash scripts/test.sh

test-stress: setup  ## the whole suite with a CPU hog on one core beside it: run before calling a flaky test fixed
	@bash scripts/test.sh --stress

test-fast: setup  ## everything except the end-to-end pipeline runs
	$(PIPELINE_PY) -m pytest tests -p no:cacheprovider -m "not pipeline" --ignore=tests/orchestration
	$(ORCH_PY) -m pytest tests/orchestration -p no:cacheprovider -m "not pipeline"

lint: setup  ## ruff check + format check + import-linter (stages meet only through moodloop/)
	.venv/orchestration/bin/ruff check .
	.venv/orchestration/bin/ruff format --check .
	.venv/orchestration/bin/lint-imports

format: setup  ## ruff format + autofix
	.venv/orchestration/bin/ruff check --fix .
	.venv/orchestration/bin/ruff format .

bench: setup  ## benchmarks, each as a ratio to its baseline: pipeline vs bare fit; tasks warm vs own process; gateway vs raw model (Python and C clients); MTCNN vs Haar; webcam frames/s
	$(PIPELINE_PY) bench/pipeline_overhead.py --sizes 2000 10000 --warm
	$(PIPELINE_PY) bench/task_start.py
	$(PIPELINE_PY) bench/serving_throughput.py
	$(PIPELINE_PY) bench/serving_load.py
	$(PIPELINE_PY) bench/face_detection.py
	$(PIPELINE_PY) bench/webcam_rate.py

bench-scale: setup  ## scale-out benchmarks: Beam in memory vs multi-process (20k faces); 1 vs 2 training workers; LocalExecutor vs Celery
	$(PIPELINE_PY) bench/beam_runners.py --faces 20000
	$(PIPELINE_PY) bench/train_workers.py
	$(ORCH_PY) bench/executors.py

drill: setup  ## the drift drill on a stack of its own: clean traffic, shift, drift, retrain, canary, promotion
	$(ORCH_PY) bench/drift_drill.py --stack $(DRILL_ARGS)

soak: setup  ## the gateway at half of its peak for 10 minutes: no error, memory growth <= 5 %, every request logged
	$(PIPELINE_PY) bench/soak.py

faults: setup  ## the fault scenarios: SIGKILL under load, S3 down (log flush, ingest), broken model versions
	$(PIPELINE_PY) -m pytest -p no:cacheprovider tests/serving/test_model_lifecycle.py -k "killed or s3 or broken"
	$(ORCH_PY) -m pytest -p no:cacheprovider tests/orchestration/test_s3_landing.py -k down

clean:  ## remove runs, models and logs under MOODLOOP_HOME (keeps the environments)
	rm -rf $(HOME_DIR)
