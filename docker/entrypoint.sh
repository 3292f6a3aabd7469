#!/bin/sh
# Every moodloop container starts here: it refuses to run on a secret that is still one of
# .env.example's `change-me` placeholders (a copied .env nobody edited would otherwise start a
# stack whose admin token, database password and JWT secret anyone can read in the repository),
# then runs the service's command.
set -eu
placeholders=$(env | grep -E '^[A-Za-z_][A-Za-z0-9_]*=.*change-me' | cut -d= -f1 | sort | tr '\n' ' ' || true)
if [ -n "$placeholders" ]; then
    echo "moodloop: refusing to start: ${placeholders}still hold .env.example's change-me placeholder." >&2
    echo "Put real values in .env (e.g. openssl rand -hex 32) and run docker compose up again." >&2
    exit 78 # EX_CONFIG
fi
exec "$@"
