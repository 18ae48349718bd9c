#!/usr/bin/env bash
# Create .venv (if needed) and install the project with its test tools. Run by dev.sh and test.sh.
#
# The install is editable, so code changes need no reinstall; only pyproject.toml (its
# dependencies, entry points, packages) does. A stamp in .venv holds the hash of what was
# installed: when it still matches, pip is skipped. FORCE_INSTALL=1 (or deleting .venv)
# installs again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
SPEC='.[test]'
STAMP=.venv/.dispatcher-installed

digest() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -d' ' -f1; else shasum -a 256 | cut -d' ' -f1; fi
}

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
wanted=$( { printf '%s\n' "$SPEC"; cat pyproject.toml; } | digest)
if [ "${FORCE_INSTALL:-0}" != 1 ] && [ -x .venv/bin/dispatcher ] && [ -f "$STAMP" ] \
  && [ "$(cat "$STAMP")" = "$wanted" ]; then
  echo "==> .venv is up to date with pyproject.toml (FORCE_INSTALL=1 reinstalls)"
  exit 0
fi
echo "==> installing the project into .venv"
rm -f "$STAMP"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e "$SPEC"
printf '%s\n' "$wanted" > "$STAMP"
