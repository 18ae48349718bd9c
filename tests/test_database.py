"""The service's database connections: what each one is set up with."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from dispatcher.core.db import Database, without_jit


def test_the_services_postgresql_connections_do_not_jit_compile(db: Database) -> None:
    """The first statement costed past jit_above_cost would load LLVM into its backend for
    the life of the connection (54 MiB for approval's count of 10 million recipients)."""
    if db.is_sqlite:
        pytest.skip("PostgreSQL only: SQLite has no JIT")
    with db.reading() as session:
        assert session.connection().exec_driver_sql("SHOW jit").scalar() == "off"


def _options(url: str) -> str:
    value = without_jit(make_url(url)).query.get("options")
    assert isinstance(value, str)
    return value


def test_jit_is_turned_off_beside_the_operators_own_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PGOPTIONS", raising=False)
    assert _options("postgresql+psycopg://u@h/d") == "-c jit=off"
    assert (
        _options("postgresql+psycopg://u@h/d?options=-c%20search_path%3Dapp")
        == "-c search_path=app -c jit=off"
    )
    # Tuning JIT's costs is not choosing it.
    assert _options("postgresql+psycopg://u@h/d?options=-cjit_above_cost%3D10").endswith(
        "-c jit=off"
    )
    # An explicit "options" replaces PGOPTIONS in libpq, so what PGOPTIONS held is kept.
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=5000")
    assert _options("postgresql+psycopg://u@h/d") == "-c statement_timeout=5000 -c jit=off"


@pytest.mark.parametrize("setting", ["-c jit=on", "-cjit=on", "--jit=on"])
def test_an_operator_who_sets_jit_keeps_it(setting: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGOPTIONS", raising=False)
    url = make_url("postgresql+psycopg://u@h/d").update_query_dict({"options": setting})
    assert without_jit(url) == url
    monkeypatch.setenv("PGOPTIONS", setting)
    assert without_jit(make_url("postgresql+psycopg://u@h/d")).query.get("options") is None
