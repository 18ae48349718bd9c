#!/usr/bin/env bash
# Create .venv (if needed) and install the project with its test tools. Run by dev.sh and test.sh.
#
# The install is editable, so code changes need no reinstall; only pyproject.toml (its
# dependencies, entry points, packages) does. A stamp in .venv holds the hash of what was
# installed: when it still matches, pip is skipped. FORCE_INSTALL=1 (or deleting .venv)
# installs again.
#
# The tests' own channel plugin (tests/plugins/sms_gateway, an SMS gateway shipped as a third
# party would ship it) is installed too, through its entry point, with a stamp of its own: it
# needs no network, and a change to it reinstalls only it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
SPEC='.[test]'
STAMP=.venv/.dispatcher-installed
PLUGIN=tests/plugins/sms_gateway
PLUGIN_STAMP=.venv/.sms-gateway-installed

digest() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -d' ' -f1; else shasum -a 256 | cut -d' ' -f1; fi
}

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
if [ -f "$PLUGIN/pyproject.toml" ]; then
  plugin=$(digest < "$PLUGIN/pyproject.toml")
  if [ "${FORCE_INSTALL:-0}" = 1 ] || [ ! -f "$PLUGIN_STAMP" ] || [ "$(cat "$PLUGIN_STAMP")" != "$plugin" ]; then
    echo "==> installing the tests' channel plugin into .venv"
    .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e "$PLUGIN"
    printf '%s\n' "$plugin" > "$PLUGIN_STAMP"
  fi
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
