"""What every command group shares: the Typer app, the console, settings or a clean exit."""

from __future__ import annotations

import os

import typer
from rich.console import Console

from dispatcher.core.config import ConfigError, Settings, get_settings

app = typer.Typer(
    help="Multi-channel message dispatch for Vietnam Social Security (BHXH Việt Nam).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)


def load_settings() -> Settings:
    """The settings, once they and every installed channel's own are known to be good."""
    from channels import registry

    try:
        settings = get_settings()
        registry.check_settings(settings)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    return settings


def warn_about_email(settings: Settings) -> None:
    """Say once, when a sending process starts, what bulk email will lack (an http public URL
    leaves out the RFC 8058 one-click header)."""
    from channels.email import one_click_problem

    problem = one_click_problem(settings.public_url)
    if problem is not None:
        console.print(f"warning: {problem}", style="yellow", markup=False, highlight=False)


def share_metrics(settings: Settings) -> None:
    """Count this process's metrics in the shared directory the API adds up at each scrape.

    Must run before anything imports prometheus_client (``dispatcher.observability.metrics``
    reads it on import), and is inherited by the processes this one starts.
    """
    path = os.path.abspath(settings.metrics_dir)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        console.print(f"[red]DISPATCHER_METRICS_DIR: cannot create {path}: {exc.strerror}[/red]")
        raise typer.Exit(2) from None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


def error(message: str) -> None:
    # File names and rows may hold "[...]": print them as they are, not as rich markup.
    console.print(message, style="red", markup=False, highlight=False)
