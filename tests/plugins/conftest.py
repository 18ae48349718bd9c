"""The SMS gateway plugin, installed into the environment through its entry point.

``scripts/setup-venv.sh`` installs it; an environment made another way gets it here, once:
``pip install --no-deps --no-build-isolation -e`` of its folder, which needs no network (its
build backend ships with it) and takes a second or two.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from channels import registry
from dispatcher.core.config import get_settings
from tests.plugins.gateway import API_KEY, Gateway

PLUGIN = Path(__file__).resolve().parent / "sms_gateway"
DISTRIBUTION = "bhxh-sms-gateway"


def _installed() -> bool:
    try:
        distribution(DISTRIBUTION)
    except PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="session", autouse=True)
def sms_gateway_installed() -> None:
    if not _installed():
        offline = ["--no-deps", "--no-build-isolation"]
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", *offline, "-e", str(PLUGIN)],
            check=True,
            timeout=300,
        )
        importlib.invalidate_caches()
        # The .pth file is read at start-up only; this process finds the source folder now.
        source = str(PLUGIN / "src")
        if source not in sys.path:
            sys.path.append(source)
        registry._found = None
    assert _installed(), f"{DISTRIBUTION} is not installed"


@pytest.fixture()
def gateway(settings: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    """The stand-in gateway, and the service's settings pointing at it."""
    with Gateway(dead={"+84900000009"}) as running:
        monkeypatch.setenv("DISPATCHER_SMS_GATEWAY_URL", running.url)
        monkeypatch.setenv("DISPATCHER_SMS_GATEWAY_API_KEY", API_KEY)
        monkeypatch.setenv("DISPATCHER_SMS_GATEWAY_SENDER", "BHXHVN")
        get_settings.cache_clear()
        yield running
