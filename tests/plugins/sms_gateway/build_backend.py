"""A PEP 517 build backend that needs nothing installed: wheels of ``src/sms_gateway``.

A real plugin would use setuptools or hatchling; this one must install offline into any
virtual environment (``pip install --no-build-isolation``), so it builds its wheels itself.
The project's name, version and entry points are read from ``pyproject.toml``.
"""

from __future__ import annotations

import base64
import hashlib
import tomllib
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "src"
PACKAGE = "sms_gateway"


def _project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        project: dict[str, Any] = tomllib.load(file)["project"]
    return project


def _dist_info(project: dict[str, Any]) -> tuple[str, dict[str, str]]:
    name = project["name"].replace("-", "_")
    version = project["version"]
    folder = f"{name}-{version}.dist-info"
    metadata = (
        "Metadata-Version: 2.1\n"
        f"Name: {project['name']}\n"
        f"Version: {version}\n"
        f"Summary: {project.get('description', '')}\n"
        f"Requires-Python: {project.get('requires-python', '')}\n"
    )
    entry_points = ""
    for group, points in project.get("entry-points", {}).items():
        entry_points += f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
    wheel = (
        "Wheel-Version: 1.0\nGenerator: build_backend\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files = {
        f"{folder}/METADATA": metadata,
        f"{folder}/WHEEL": wheel,
        f"{folder}/entry_points.txt": entry_points,
    }
    return f"{name}-{version}", files


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def _wheel(directory: str, contents: dict[str, bytes]) -> str:
    stem, meta = _dist_info(_project())
    contents = {**contents, **{k: v.encode() for k, v in meta.items()}}
    record_path = f"{stem}.dist-info/RECORD"
    record = [_record_line(path, data) for path, data in contents.items()]
    record.append(f"{record_path},,")
    filename = f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(Path(directory) / filename, "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, data in contents.items():
            wheel.writestr(path, data)
        wheel.writestr(record_path, "\n".join(record) + "\n")
    return filename


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    contents = {
        str(path.relative_to(SOURCE)): path.read_bytes()
        for path in sorted((SOURCE / PACKAGE).rglob("*.py"))
    }
    return _wheel(wheel_directory, contents)


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    # The source folder on sys.path: changes to the adapter need no reinstall.
    return _wheel(wheel_directory, {f"{PACKAGE}.pth": f"{SOURCE}\n".encode()})


def build_sdist(sdist_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    raise NotImplementedError("this test plugin is installed from its folder only")
