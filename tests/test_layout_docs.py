"""The layout the README and docs/architecture.md describe is the one in the tree.

Every path they write in backticks (`dispatcher/engine/`, `web/api/campaigns.py`, ...) must
exist, taken from the repository's root or, for the short forms, from ``dispatcher/``; a file
moved or renamed without its documentation fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATH = re.compile(r"`([a-z_][a-z0-9_.]*(?:/[a-z0-9_.<>]+)*/?)`")


def written_paths(text: str) -> list[str]:
    """The backticked words that are paths: with a slash, or a file name with an extension."""
    found = []
    for word in PATH.findall(text):
        if "<" in word or word.startswith(("http", "sqlite")):
            continue
        if "/" in word or re.fullmatch(r"[a-z_]+\.(py|md|toml|sh|yml)", word):
            found.append(word)
    return found


def exists(word: str) -> bool:
    return any((base / word).exists() for base in (ROOT, ROOT / "dispatcher"))


@pytest.mark.parametrize("document", ["README.md", "docs/architecture.md"])
def test_every_path_the_documents_name_exists(document: str) -> None:
    text = (ROOT / document).read_text(encoding="utf-8")
    paths = written_paths(text)
    assert paths, f"{document} names no path: the pattern no longer matches its style"
    missing = sorted({word for word in paths if not exists(word)})
    assert not missing, f"{document} names paths that are not in the tree: {missing}"


def test_the_architecture_names_every_package() -> None:
    """Each package of dispatcher/ has its line in the picture."""
    text = (ROOT / "docs/architecture.md").read_text(encoding="utf-8")
    packages = sorted(
        p.name
        for p in (ROOT / "dispatcher").iterdir()
        if (p / "__init__.py").exists() and p.name != "migrations"
    )
    absent = [name for name in packages if f"dispatcher/{name}/" not in text]
    assert not absent, f"docs/architecture.md does not place: {absent}"
