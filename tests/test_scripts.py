"""scripts/dev.sh and scripts/setup-venv.sh: install on a fresh tree, skip pip when nothing
changed, install again when pyproject.toml changes.

The scripts run for real, in a copy of the tree's scripts with a stand-in Python: it records
every call (``-m venv``, ``-m pip ...``) instead of creating environments and downloading.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Stands in for python3 and for .venv/bin/python: "-m venv DIR" makes DIR/bin/python (this
# script again); "-m pip install -e ..." makes the console script; every call is logged.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "python $*" >> "$CALLS"
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && chmod +x "$3/bin/python"
fi
if [ "$1 $2" = "-m pip" ] && [ "${*: -2:1}" = "-e" ]; then
  printf '#!/usr/bin/env bash\\necho "dispatcher $*" >> "$CALLS"\\n' > .venv/bin/dispatcher
  chmod +x .venv/bin/dispatcher
fi
"""


@pytest.fixture()
def tree(repo_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    for name in ("dev.sh", "setup-venv.sh"):
        shutil.copy2(repo_root / "scripts" / name, root / "scripts" / name)
    shutil.copy2(repo_root / "pyproject.toml", root / "pyproject.toml")
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return root


def run(tree: Path, script: str, *args: str, **env: str) -> list[str]:
    """Run a script of the tree; the calls the stand-in Python and dispatcher saw."""
    calls = tree.parent / "calls.log"
    calls.unlink(missing_ok=True)
    environment = {
        **{k: v for k, v in os.environ.items() if k != "FORCE_INSTALL"},
        "PYTHON": str(tree.parent / "python3"),
        "CALLS": str(calls),
        **env,
    }
    subprocess.run(
        [str(tree / "scripts" / script), *args],
        cwd=tree.parent,
        env=environment,
        check=True,
        timeout=60,
        capture_output=True,
    )
    return calls.read_text().splitlines() if calls.exists() else []


def pip_calls(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("python -m pip")]


def test_dev_installs_once_then_starts_without_pip(tree: Path) -> None:
    first = run(tree, "dev.sh", "--port", "8081")
    assert first[0] == "python -m venv .venv"
    assert pip_calls(first)[-1] == "python -m pip install --quiet -e .[test]"
    assert first[-1] == "dispatcher dev --port 8081"

    second = run(tree, "dev.sh", "--port", "8081")
    assert second == ["dispatcher dev --port 8081"], "nothing changed: no venv, no pip"

    with (tree / "pyproject.toml").open("a") as changed:
        changed.write("\n# a new dependency would change this file\n")
    third = run(tree, "dev.sh")
    assert pip_calls(third), "pyproject.toml changed: install again"
    assert third[-1] == "dispatcher dev"
    assert pip_calls(run(tree, "dev.sh")) == []

    forced = run(tree, "setup-venv.sh", FORCE_INSTALL="1")
    assert pip_calls(forced)


def test_an_interrupted_install_is_done_again(tree: Path) -> None:
    run(tree, "setup-venv.sh")
    # The console script gone (an install that failed half-way, a hand-made .venv): reinstall.
    (tree / ".venv" / "bin" / "dispatcher").unlink()
    assert pip_calls(run(tree, "setup-venv.sh"))
    (tree / ".venv" / ".dispatcher-installed").unlink()
    assert pip_calls(run(tree, "setup-venv.sh"))
