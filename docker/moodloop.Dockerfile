# Airflow 3 (orchestration env, Python 3.11) with the pipeline env (Python 3.10, TFX 1.16) beside
# it: Airflow's tasks (on the Celery workers) run each TFX component with MOODLOOP_PIPELINE_PYTHON.
FROM python:3.11-slim
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_INSTALL_DIR=/opt/python
WORKDIR /opt/moodloop
COPY requirements requirements
RUN uv venv --python 3.11 .venv/orchestration \
 && VIRTUAL_ENV=.venv/orchestration uv pip sync --no-cache requirements/orchestration.lock.txt
RUN uv python install 3.10 && uv venv --python 3.10 .venv/pipeline \
 && VIRTUAL_ENV=.venv/pipeline uv pip sync --no-cache requirements/pipeline.lock.txt
COPY . .
RUN VIRTUAL_ENV=.venv/orchestration uv pip install --no-cache --no-deps -e . \
 && VIRTUAL_ENV=.venv/pipeline uv pip install --no-cache --no-deps -e .
# An unprivileged user runs every service. The code stays root's (read-only to it); the folders
# that named volumes mount are its own, and a new volume takes their owner on first mount.
RUN useradd --system --uid 10001 --create-home moodloop \
 && mkdir -p /moodloop /data \
 && chown moodloop:moodloop /moodloop /data
USER 10001:10001
ENV PATH=/opt/moodloop/.venv/orchestration/bin:$PATH \
    MOODLOOP_PIPELINE_PYTHON=/opt/moodloop/.venv/pipeline/bin/python \
    MOODLOOP_HOME=/moodloop \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/moodloop/dags \
    TF_CPP_MIN_LOG_LEVEL=2
ENTRYPOINT ["/opt/moodloop/docker/entrypoint.sh"]
CMD ["airflow", "version"]
