"""Settings: defaults, bad values naming the variable, secrets masked, secrets from files."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from channels.registry import load_settings
from dispatcher.cli import app
from dispatcher.core.config import ConfigError, get_settings


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("DISPATCHER_") and not key.startswith("DISPATCHER_TEST_"):
            monkeypatch.delenv(key)
    get_settings.cache_clear()


@pytest.mark.usefixtures("clean_env")
def test_defaults_run_on_a_bare_machine() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite:///dispatcher.db"
    assert (settings.batch_size, settings.worker_threads) == (1000, None)
    # One thread for each queue a worker process serves.
    assert [settings.threads_for(n) for n in (1, 2)] == [1, 2]
    assert (settings.queue_urgent, settings.queue_bulk) == ("urgent", "bulk")


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("DISPATCHER_BATCH_SIZE", "-5", "greater than or equal to 1"),
        ("DISPATCHER_BATCH_SIZE", "many", "valid integer"),
        ("DISPATCHER_SQLITE_CACHE_MIB", "0", "greater than or equal to 1"),
        ("DISPATCHER_DATABASE_URL", "not a url", "not a database URL"),
        ("DISPATCHER_DATABASE_URL", "mysql://u@h/db", "only sqlite"),
        ("DISPATCHER_REDIS_URL", "localhost:6379", "redis://"),
        ("DISPATCHER_SMTP_PORT", "70000", "less than or equal to 65535"),
        ("DISPATCHER_SMTP_TLS", "maybe", "none"),
        ("DISPATCHER_QUEUE_URGENT", "urgent queue", "letters, digits"),
        ("DISPATCHER_REDIS_NAMESPACE", "bhxh:prod", "starts with a letter"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert variable in str(caught.value)
    assert needle in str(caught.value)
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 2
    assert variable in result.output


@pytest.mark.usefixtures("clean_env")
def test_a_sqlite_cache_size_reaches_every_connection(tmp_path: Path) -> None:
    from dispatcher.core.db import Database

    sized = Database(f"sqlite:///{tmp_path / 'sized.db'}", sqlite_cache_mib=32)
    plain = Database(f"sqlite:///{tmp_path / 'plain.db'}")
    try:
        with sized.reading() as session:
            assert session.connection().exec_driver_sql("PRAGMA cache_size").scalar() == -32768
        with plain.reading() as session:
            # SQLite's own default: 2,000 KiB.
            assert session.connection().exec_driver_sql("PRAGMA cache_size").scalar() == -2000
    finally:
        sized.dispose()
        plain.dispose()


def test_config_masks_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "DISPATCHER_SMTP_PASSWORD").write_text("mat-khau-bi-mat")
    monkeypatch.setenv("DISPATCHER_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", "postgresql://svc:db-secret@db.internal/bhxh")
    monkeypatch.setenv("DISPATCHER_REDIS_URL", "redis://:redis-secret@redis.internal:6379/0")
    monkeypatch.setenv("DISPATCHER_SECRET_KEY", "signing-secret")
    settings = load_settings()
    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == "mat-khau-bi-mat"
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    for secret in ("mat-khau-bi-mat", "db-secret", "redis-secret", "signing-secret"):
        assert secret not in result.output
    assert "DISPATCHER_SMTP_PASSWORD=********" in result.output
    assert "DISPATCHER_DATABASE_URL=postgresql://svc:********@db.internal/bhxh" in result.output
    assert "DISPATCHER_REDIS_URL=redis://:********@redis.internal:6379/0" in result.output
    get_settings.cache_clear()


def test_config_prints_an_unset_setting_as_a_comment_saying_what_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An empty value would read back as a setting; unset ones say what applies instead."""
    monkeypatch.delenv("DISPATCHER_WORKER_THREADS", raising=False)
    monkeypatch.setenv("DISPATCHER_SQLITE_CACHE_MIB", "64")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert (
        "# DISPATCHER_WORKER_THREADS is unset: one for each queue it serves, so a process "
        "serving both runs an urgent batch beside a bulk one" in lines
    )
    assert "DISPATCHER_SQLITE_CACHE_MIB=64" in lines
    assert not [line for line in lines if line.endswith("=")]
    get_settings.cache_clear()
