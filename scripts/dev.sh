#!/usr/bin/env bash
# Run the whole service on this machine: API, workers and scheduler in one process.
# SQLite file in the working directory; Redis when reachable, else an in-process broker.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup-venv.sh
exec .venv/bin/dispatcher dev "$@"
