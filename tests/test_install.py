"""`pip install .` (a wheel, not an editable install) gives a working command with templates."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


@pytest.mark.timeout(300)
def test_wheel_ships_the_command_and_the_builtin_templates(repo_root: Path, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(wheels),
            str(repo_root),
        ],
        check=True,
        timeout=240,
    )
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        declared = archive.read(entry_points).decode()
    shipped = {Path(n).name for n in names if n.startswith("dispatcher/builtin_templates/")}
    expected = {p.name for p in (repo_root / "templates" / "messages").glob("*.toml")}
    assert expected and expected <= shipped
    assert "dispatcher = dispatcher.cli:main" in declared
    assert "[dispatcher.channels]" in declared

    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=120,
    )
    # Run from elsewhere with the installed copy first on the path: no source tree in sight.
    env = {
        **os.environ,
        "PYTHONPATH": str(target),
        "DISPATCHER_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
    }
    probe = (
        "import dispatcher, sys\n"
        "from dispatcher.content.service import builtin_templates_dir\n"
        "from dispatcher.cli import main\n"
        "d = builtin_templates_dir()\n"
        "print(dispatcher.__file__); print(d); print(len(list(d.glob('*.toml'))))\n"
        "sys.argv = ['dispatcher', 'migrate']\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    module_file, templates_dir, count = result.stdout.split("\n")[:3]
    assert module_file.startswith(str(target))
    assert templates_dir.startswith(str(target))
    assert int(count) == len(expected)
    assert "built-in templates loaded" in result.stderr
