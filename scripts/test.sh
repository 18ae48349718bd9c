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
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
# Without arguments, the SQLite and PostgreSQL legs run at once, in two pytest processes: the
# suite mostly waits on the processes and servers it starts, so the two legs share the cores
# far better than one after the other. Each leg has its own Redis, temporary directory and
# metrics directory; the PostgreSQL leg's output follows the SQLite leg's.
pg_log=$(mktemp "${TMPDIR:-/tmp}/dispatcher-pytest-postgresql.XXXXXX")
pg_tmp=$(mktemp -d "${TMPDIR:-/tmp}/dispatcher-pytest-postgresql.XXXXXX")
trap 'rm -rf "$pg_log" "$pg_tmp"' EXIT
.venv/bin/python -m pytest -q -k postgresql -p no:cacheprovider --basetemp "$pg_tmp" \
  >"$pg_log" 2>&1 &
pg_pid=$!
echo "==> pytest: the SQLite leg and the tests without a database (the PostgreSQL leg runs beside)"
sqlite_status=0
.venv/bin/python -m pytest -q -k "not postgresql" || sqlite_status=$?
pg_status=0
wait "$pg_pid" || pg_status=$?
echo "==> pytest: the PostgreSQL leg"
cat "$pg_log"
echo "==> pytest: SQLite leg exit ${sqlite_status}, PostgreSQL leg exit ${pg_status}"
[ "$sqlite_status" -eq 0 ] && [ "$pg_status" -eq 0 ]
