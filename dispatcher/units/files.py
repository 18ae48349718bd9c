"""Unit files for ``dispatcher units import``: YAML or CSV, read whole and checked row by row.

YAML::

    units:
      - code: VN
        name: Bảo hiểm xã hội Việt Nam        # the root: no parent, the whole country
      - code: HN
        name: Bảo hiểm xã hội thành phố Hà Nội
        parent: VN
        territory: ["01"]                    # province codes or names of the 2025 map

CSV: a header ``code,name,parent,territory``; several provinces in one cell are separated by
``;``. A file is at most ``MAX_BYTES``; every problem found is reported, with the
entry it is in.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import yaml

from dispatcher.kit.errors import Invalid
from dispatcher.units.service import UnitSpec, parse_territory

MAX_BYTES = 1024 * 1024
MAX_UNITS = 5000
FIELDS = ("code", "name", "parent", "territory")


def read(path: Path) -> list[UnitSpec]:
    """The units a file describes. Raises Invalid naming every problem found."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise Invalid(f"{path.name} is {size} bytes; a unit file is at most {MAX_BYTES}")
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return parse_yaml(text)
    if suffix == ".csv":
        return parse_csv(text)
    raise Invalid(f"{path.name}: a unit file is .yaml, .yml or .csv")


def parse_yaml(text: str) -> list[UnitSpec]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise Invalid(f"not valid YAML: {exc}") from None
    entries = document.get("units") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise Invalid("a YAML unit file is a list of units, or a mapping with a 'units' list")
    return _specs([(f"entry {i}", e) for i, e in enumerate(entries, start=1)])


def parse_csv(text: str) -> list[UnitSpec]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [f for f in ("code", "name") if f not in header]
    unknown = [h for h in header if h not in FIELDS]
    if missing or unknown:
        raise Invalid(
            "a CSV unit file has the header code,name,parent,territory"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    rows: list[tuple[str, Any]] = []
    for line, row in enumerate(reader, start=2):
        entry = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if not any(entry.values()):
            continue
        cell = entry.get("territory", "")
        entry["territory"] = [v.strip() for v in cell.split(";") if v.strip()]
        entry["parent"] = entry.get("parent") or None
        rows.append((f"line {line}", entry))
    return _specs(rows)


def _specs(entries: list[tuple[str, Any]]) -> list[UnitSpec]:
    if len(entries) > MAX_UNITS:
        raise Invalid(f"{len(entries)} units; a file holds at most {MAX_UNITS}")
    specs: list[UnitSpec] = []
    problems: list[str] = []
    for where, entry in entries:
        if not isinstance(entry, dict):
            problems.append(f"{where}: a unit is a mapping with code, name, parent, territory")
            continue
        unknown = sorted(str(k) for k in entry if k not in FIELDS)
        if unknown:
            problems.append(f"{where}: unknown fields {', '.join(unknown)}")
        code, name, parent = entry.get("code"), entry.get("name"), entry.get("parent")
        if not isinstance(code, str | int) or not str(code).strip():
            problems.append(f"{where}: a code is required")
            continue
        code = str(code).strip()
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where} ({code}): a name is required")
            continue
        raw = entry.get("territory") or []
        if isinstance(raw, str | int):
            raw = [raw]
        if not isinstance(raw, list):
            problems.append(f"{where} ({code}): territory is a list of provinces")
            continue
        territory, found = parse_territory([str(v) for v in raw], unit=code)
        problems += [f"{where}: {p}" for p in found]
        specs.append(
            UnitSpec(
                code=code,
                name=name.strip(),
                parent=str(parent).strip() if parent not in (None, "") else None,
                territory=territory,
            )
        )
    if problems:
        raise Invalid("; ".join(problems))
    return specs
