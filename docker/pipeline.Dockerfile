# The pipeline env (Python 3.10, TFX 1.16) as an image: runs `moodloop` commands.
FROM python:3.10-slim
ENV TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2 MOODLOOP_HOME=/moodloop
WORKDIR /opt/moodloop
COPY requirements/pipeline.lock.txt requirements/
RUN pip install --no-cache-dir uv==0.13.9 \
 && uv pip install --system --no-cache --compile-bytecode -r requirements/pipeline.lock.txt
COPY pyproject.toml README.md ./
COPY moodloop moodloop
COPY data data
COPY components components
COPY serving serving
COPY monitoring monitoring
RUN uv pip install --system --no-cache --no-deps -e .
ENTRYPOINT ["moodloop"]
CMD ["--help"]
