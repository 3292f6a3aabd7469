#!/usr/bin/env bash
# Create or update moodloop's two environments from the committed lock files. Idempotent: an env
# whose lock file has not changed since its last install is left alone (a few seconds).
#
#   .venv/pipeline       Python 3.10, TFX 1.16 (TensorFlow 2.16, Beam 2.59): requirements/pipeline.lock.txt
#   .venv/orchestration  Python 3.11, Airflow 3.3, Evidently 0.7, GX 1.x:    requirements/orchestration.lock.txt
#
# Airflow 3 and TFX 1.16 cannot share one environment (attrs and protobuf pins clash), hence two.
# Interpreters: MOODLOOP_PYTHON310 / MOODLOOP_PYTHON311, else pyenv's, else python3.10/python3.11 on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
UV_VERSION=0.13.9
export UV_CACHE_DIR=${UV_CACHE_DIR:-$HOME/.cache/uv}
# PYTHONDONTWRITEBYTECODE may be set (it is on our CI machines): without pre-compiled bytecode,
# every TFX process would spend ~20 s compiling TensorFlow's sources, so compile at install.
export UV_COMPILE_BYTECODE=1
# uv gives each file 60 s to compile; on a busy machine (a CI runner shared with other jobs, a
# setup beside a running suite) a large file (js2py's babel.py) ran past it and the setup failed.
export UV_COMPILE_BYTECODE_TIMEOUT=${UV_COMPILE_BYTECODE_TIMEOUT:-900}
export UV_LINK_MODE=${UV_LINK_MODE:-copy}

step() { printf '\n==> %s\n' "$*"; }
find_python() {  # $1 = 3.10 | 3.11
    local var="MOODLOOP_PYTHON${1/./}" candidate
    if [[ -n "${!var:-}" ]]; then echo "${!var}"; return; fi
    for candidate in "$HOME"/.pyenv/versions/"$1".*/bin/python"$1" "$(command -v python"$1" || true)"; do
        if [[ -x "$candidate" ]]; then echo "$candidate"; return; fi
    done
    echo "error: no Python $1 found; install it (pyenv install $1) or set $var" >&2
    exit 1
}

START=$SECONDS
step "uv $UV_VERSION (fast, cached installs)"
if [[ ! -x .venv/tools/bin/uv ]] || [[ "$(.venv/tools/bin/uv --version)" != "uv $UV_VERSION"* ]]; then
    "$(find_python 3.11)" -m venv .venv/tools
    .venv/tools/bin/pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
UV="$ROOT/.venv/tools/bin/uv"
echo "ok: $($UV --version)"

install_env() {  # $1 = env name, $2 = python version
    local name=$1 version=$2 venv=".venv/$1" lock="requirements/$1.lock.txt" stamp t0=$SECONDS
    stamp=$(cat "$lock" pyproject.toml | sha256sum | cut -c1-16)
    if [[ -f "$venv/.moodloop-stamp" && "$(cat "$venv/.moodloop-stamp")" == "$stamp" ]]; then
        step "$name env: up to date ($venv)"
        return
    fi
    step "$name env: Python $version, $(grep -c '==' "$lock") pinned packages from $lock"
    [[ -x "$venv/bin/python" ]] || "$UV" venv --quiet --python "$(find_python "$version")" "$venv"
    VIRTUAL_ENV="$ROOT/$venv" "$UV" pip sync "$lock"
    VIRTUAL_ENV="$ROOT/$venv" "$UV" pip install --quiet --no-deps -e .
    echo "$stamp" > "$venv/.moodloop-stamp"
    echo "ok: $name env in $((SECONDS - t0)) s, $(du -sh "$venv" | cut -f1)"
}

install_env pipeline 3.10
install_env orchestration 3.11

APT_UPDATED=0
debian_tools() {  # $1 = what they are for, $2 = commands, $3... = Debian packages
    local why=$1 commands=$2 missing=0 command
    shift 2
    for command in $commands; do command -v "$command" > /dev/null || missing=1; done
    [[ $missing == 0 ]] && return
    if [[ $(id -u) == 0 ]] && command -v apt-get > /dev/null; then
        step "$why: installing Debian's $*"
        if [[ $APT_UPDATED == 0 ]]; then  # one package-list refresh per setup, not one per group
            apt-get update -qq > /dev/null && APT_UPDATED=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" > /dev/null \
            && echo "ok: $commands" || echo "could not install $*"
    else
        step "$why: missing; sudo apt-get install $*"
    fi
}
# The UI tests drive a real headless Chromium with Playwright (no browser download: Debian's);
# MOODLOOP_SKIP_BROWSER=1 skips it.
if [[ "${MOODLOOP_SKIP_BROWSER:-0}" != 1 ]]; then
    debian_tools "browser for UI tests" chromium chromium
fi
# The serving benchmark's load generators are C programs, so the client is not what it measures
# (bench/serving_load.py: wrk for REST, h2load for gRPC); it says so and skips them when missing.
# The suite finds and stops processes by name (the stack test's kill, scripts/test.sh on Ctrl-C).
debian_tools "process tools for the test suite" "pgrep pkill" procps
debian_tools "load generators for the serving benchmark" "wrk h2load" wrk nghttp2-client
# Airflow on Celery workers (MOODLOOP_EXECUTOR=celery, its test) needs a Redis broker; the code
# tests validate docker-compose.yml offline with docker-compose 1.29's `config` (no engine needed).
debian_tools "Redis for Celery, docker-compose to validate the compose file" "redis-server docker-compose" \
    redis-server docker-compose
# The production profile (MOODLOOP_PROFILE=production, the stack test) runs a PostgreSQL cluster of
# its own; Debian keeps the server's binaries off PATH, under /usr/lib/postgresql/<version>/bin.
if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" > /dev/null; then
    debian_tools "PostgreSQL for the production profile" postgres postgresql
fi
step "done in $((SECONDS - START)) s: .venv/pipeline/bin/moodloop --help"
