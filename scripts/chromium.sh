#!/usr/bin/env bash
# Make sure Debian's Chromium is installed: the dashboard's browser tests drive it through
# Playwright (Playwright's own browser download is never used). If it cannot be installed,
# those tests are skipped loudly, or fail under CI=true.
set -euo pipefail
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }
if [ ! -x /usr/bin/chromium ] && ! command -v chromium >/dev/null 2>&1; then
  echo "==> installing chromium (apt-get) for the dashboard's browser tests"
  if ! { as_root apt-get update -qq &&
         as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
    echo "!!! could not install chromium: the dashboard's browser tests will not run" >&2
  fi
fi
