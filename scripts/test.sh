#!/usr/bin/env bash
# Run every check: lint, format, types, and the test suite on SQLite and PostgreSQL.
#
# The PostgreSQL leg creates a throwaway database on DISPATCHER_TEST_POSTGRES_URL
# (default postgresql://postgres@127.0.0.1:5432/postgres). Without a server it is skipped,
# loudly; under CI=true a missing server is a failure. The same holds for Chromium, which the
# dashboard's browser tests drive (scripts/chromium.sh installs Debian's package).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup-venv.sh
./scripts/redis.sh
./scripts/chromium.sh
echo "==> ruff check";        .venv/bin/ruff check .
echo "==> ruff format";       .venv/bin/ruff format --check .
echo "==> mypy";              .venv/bin/mypy .
echo "==> import layers";     .venv/bin/lint-imports --no-cache
echo "==> pytest"
exec .venv/bin/python -m pytest -q "$@"
