#!/usr/bin/env bash
# Re-resolve an environment's lock file from its .in file (maintainers only; setup.sh installs locks).
#   scripts/lock.sh pipeline|orchestration
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1
version=$([[ $name == pipeline ]] && echo 3.10 || echo 3.11)
.venv/tools/bin/uv pip compile --quiet --python-version "$version" --no-header --no-annotate \
    "requirements/$name.in" -o "requirements/$name.lock.txt"
echo "updated requirements/$name.lock.txt; run make setup to install it"
