"""docker-compose.yml: the production stack runs the real CLI, with Redis and PostgreSQL
configured to keep what they are given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.core import TyperGroup

from dispatcher.cli import app

SERVICES = {"api", "worker-urgent", "worker-bulk", "scheduler", "redis", "postgres", "migrate"}


@pytest.fixture(scope="module")
def compose(repo_root: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((repo_root / "docker-compose.yml").read_text()))


def _pending(ctx: Any) -> list[str]:
    # Typer's click keeps the subcommand's words apart from the rest until it dispatches.
    protected = getattr(ctx, "protected_args", None) or getattr(ctx, "_protected_args", [])
    return [*protected, *ctx.args]


def parse_dispatcher(argv: list[str]) -> str:
    """Parse a ``dispatcher ...`` command line as the CLI would, without running it: an
    unknown command, option or a bad value raises. Returns the command's name."""
    assert argv[0] == "dispatcher", argv
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    with group.make_context("dispatcher", list(argv[1:]), resilient_parsing=False) as ctx:
        name, command, rest = group.resolve_command(ctx, _pending(ctx))
        assert command is not None and name is not None, argv
        while isinstance(command, TyperGroup):
            sub = command.make_context(name, rest, parent=ctx)
            name, command, rest = command.resolve_command(sub, _pending(sub))
            assert command is not None and name is not None, argv
        command.make_context(name, rest, parent=ctx)
    return name


def test_the_stack_has_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= SERVICES


def test_every_dispatcher_command_exists(compose: dict[str, Any]) -> None:
    seen = {}
    for name, service in compose["services"].items():
        command = service.get("command")
        if command and command[0] == "dispatcher":
            seen[name] = parse_dispatcher(command)
        test = (service.get("healthcheck") or {}).get("test") or []
        if test[:2] == ["CMD", "dispatcher"]:
            parse_dispatcher(test[1:])
    assert seen == {
        "migrate": "migrate",
        "api": "serve",
        "worker-urgent": "worker",
        "worker-bulk": "worker",
        "scheduler": "scheduler",
    }
    urgent = compose["services"]["worker-urgent"]["command"]
    bulk = compose["services"]["worker-bulk"]["command"]
    assert urgent[urgent.index("--queues") + 1] == "urgent"
    assert bulk[bulk.index("--queues") + 1] == "bulk"


def test_the_parser_refuses_what_the_cli_would() -> None:
    with pytest.raises(Exception, match="No such command 'wroker'"):
        parse_dispatcher(["dispatcher", "wroker"])
    with pytest.raises(Exception, match="No such option: --queue"):
        parse_dispatcher(["dispatcher", "worker", "--queue", "bulk"])
    with pytest.raises(typer.BadParameter, match="valid integer"):
        parse_dispatcher(["dispatcher", "serve", "--port", "eighty"])
    assert parse_dispatcher(["dispatcher", "keys", "create", "--role", "admin", "--name", "a"])


def test_every_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name in SERVICES - {"migrate"}:
        assert compose["services"][name].get("healthcheck"), f"{name} has no health check"


def test_redis_persists_and_never_evicts(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=False))
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    assert compose["services"]["redis"]["volumes"], "the AOF lives on a volume"
    assert compose["services"]["postgres"]["volumes"]
