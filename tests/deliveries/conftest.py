"""Provider emulators wired into the service's settings, for pipeline tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from channels.emulators.fcm import FcmEmulator
from channels.emulators.telegram import TelegramEmulator
from channels.emulators.zalo import ZaloEmulator
from dispatcher.core.config import Settings, get_settings
from dispatcher.kit.clock import clock
from tests.channels.test_fcm import generate_key_pem, service_account_info
from tests.support import approve

# 10:00 in Vietnam on an ordinary Tuesday: promotions may go out.
DAYTIME = datetime(2026, 3, 10, 3, 0, tzinfo=UTC)

TEMPLATE = {
    "key": "kenh_test",
    "variants": [
        {
            "channel": "vssid",
            "subject": "Thông báo BHXH",
            "body": "Chào {{ recipient.given_name }}",
        },
        {"channel": "telegram", "body": "<b>BHXH</b> chào {{ recipient.given_name }}"},
        {"channel": "zalo", "body": "BHXH chào {{ recipient.given_name }}"},
        {"channel": "email", "subject": "BHXH", "body": "Chào {{ recipient.given_name }}"},
    ],
}


def configure(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for key, value in values.items():
        monkeypatch.setenv(f"DISPATCHER_{key}", value)
    get_settings.cache_clear()


@pytest.fixture()
def daytime() -> Iterator[None]:
    """Our clock (and the emulators on it) reads Vietnamese daytime, still moving."""
    clock.shift(DAYTIME - clock.now())
    yield
    clock.reset()


@pytest.fixture()
def telegram(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TelegramEmulator]:
    with TelegramEmulator(global_rate=30) as emulator:
        configure(
            monkeypatch,
            {"TELEGRAM_TOKEN": emulator.token, "TELEGRAM_BASE_URL": emulator.bot_base_url},
        )
        yield emulator


@pytest.fixture()
def zalo(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, daytime: None
) -> Iterator[ZaloEmulator]:
    with ZaloEmulator(clock=clock.now) as emulator:
        configure(
            monkeypatch,
            {
                "ZALO_APP_ID": emulator.app_id,
                "ZALO_SECRET_KEY": emulator.secret_key,
                "ZALO_ACCESS_TOKEN": emulator.access_token,
                "ZALO_REFRESH_TOKEN": emulator.refresh_token,
                "ZALO_API_URL": emulator.base_url,
                "ZALO_OAUTH_URL": emulator.base_url,
            },
        )
        yield emulator


@pytest.fixture(scope="session")
def service_key() -> str:
    return generate_key_pem()


@pytest.fixture()
def fcm(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, service_key: str
) -> Iterator[FcmEmulator]:
    with FcmEmulator() as emulator:
        configure(
            monkeypatch,
            {
                "FCM_PROJECT_ID": emulator.project_id,
                "FCM_SERVICE_ACCOUNT": json.dumps(service_account_info(service_key)),
                "FCM_ENDPOINT": emulator.base_url,
                "FCM_TOKEN_URI": emulator.token_uri,
            },
        )
        yield emulator


@pytest.fixture()
def campaign(client: Any) -> Callable[..., int]:
    """Publish the test template, then launch a campaign through the API; returns its id."""
    assert client.post("/v1/templates", json=TEMPLATE).status_code == 201

    def launch(channels: list[str], kind: str = "fraud_warning", **extra: Any) -> int:
        created = client.post(
            "/v1/campaigns",
            json={
                "name": "Kênh",
                "kind": kind,
                "template": "kenh_test",
                "audience": {"all": True},
                "channels": channels,
                **extra,
            },
        )
        assert created.status_code == 201, created.text
        campaign_id = int(created.json()["id"])
        client.post(f"/v1/campaigns/{campaign_id}/submit")
        assert approve(client, campaign_id).status_code == 200
        return campaign_id

    return launch
