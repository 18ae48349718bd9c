"""Two provinces' Zalo campaigns through the real pipeline, each through its own emulated OA:
their own tokens (rotated and kept per account), their own rate limits, their own pauses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import select, update

from channels.base import RateRule
from channels.emulators.zalo import ZaloEmulator
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine import pauses, ratelimit
from dispatcher.engine.jobs import redis_key
from dispatcher.kit.clock import clock
from dispatcher.tables.campaigns import Campaign
from dispatcher.tables.channel_accounts import AccountDeadAddress
from dispatcher.tables.channel_state import ChannelState
from dispatcher.tables.recipients import Address
from dispatcher.tables.units import Unit
from tests.deliveries.conftest import TEMPLATE, configure
from tests.deliveries.test_channels_pipeline import completed
from tests.support import approve, wait_for
from tests.test_channel_accounts import OUTSIDE_KEY, make_units
from tests.test_end_to_end import all_deliveries, campaign_status

PROVINCES = {"HN": "Hà Nội", "BN": "Bắc Ninh"}


@pytest.fixture()
def oas(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, daytime: None, client: Any, db: Database
) -> Iterator[dict[str, ZaloEmulator]]:
    """Units HN and BN, each with its own Zalo OA: HN's settings in the database (secrets
    encrypted), BN's in the environment. The root has no Zalo settings at all."""
    configure(monkeypatch, {"SECRET_KEY": OUTSIDE_KEY})
    make_units(db)
    with (
        ZaloEmulator(app_id="1111111111111111111", secret_key="hn-secret", clock=clock.now) as hn,
        ZaloEmulator(app_id="2222222222222222222", secret_key="bn-secret", clock=clock.now) as bn,
    ):
        put = client.put(
            "/v1/units/HN/accounts/zalo",
            json={
                "name": "OA BHXH Hà Nội",
                "values": {
                    "app_id": hn.app_id,
                    "secret_key": hn.secret_key,
                    "access_token": hn.access_token,
                    "refresh_token": hn.refresh_token,
                    "api_url": hn.base_url,
                    "oauth_url": hn.base_url,
                },
            },
        )
        assert put.status_code == 200, put.text
        for field, value in {
            "APP_ID": bn.app_id,
            "SECRET_KEY": bn.secret_key,
            "ACCESS_TOKEN": bn.access_token,
            "REFRESH_TOKEN": bn.refresh_token,
            "API_URL": bn.base_url,
            "OAUTH_URL": bn.base_url,
        }.items():
            monkeypatch.setenv(f"BN_ZALO_{field}", value)
        put = client.put("/v1/units/BN/accounts/zalo", json={"env_prefix": "BN_ZALO_"})
        assert put.status_code == 200, put.text
        people = [
            {
                "external_id": f"{unit}{i:08d}",
                "full_name": f"Người {unit} {i}",
                "province": PROVINCES[unit],
                "addresses": {"zalo": f"{unit.lower()}-{i}"},
            }
            for unit in PROVINCES
            for i in range(4)
        ]
        assert client.post("/v1/recipients", json=people).status_code == 200
        assert client.post("/v1/templates", json=TEMPLATE).status_code == 201
        yield {"HN": hn, "BN": bn}


def launch(client: Any, db: Database, unit: str) -> int:
    """A Zalo campaign of ``unit`` to the people of its province."""
    created = client.post(
        "/v1/campaigns",
        json={
            "name": f"Zalo {unit}",
            "kind": "fraud_warning",
            "template": TEMPLATE["key"],
            "audience": {"province": [PROVINCES[unit]]},
            "channels": ["zalo"],
        },
    )
    assert created.status_code == 201, created.text
    campaign_id = int(created.json()["id"])
    with db.transaction() as session:
        unit_id = session.scalar(select(Unit.id).where(Unit.code == unit))
        session.execute(update(Campaign).where(Campaign.id == campaign_id).values(unit_id=unit_id))
    assert client.post(f"/v1/campaigns/{campaign_id}/submit").status_code == 200
    assert approve(client, campaign_id).status_code == 200
    return campaign_id


@pytest.fixture()
def limited(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[str, ...]]]:
    """Every (pause key, rate keys) the worker's limiter was asked for."""
    asked: list[tuple[str, tuple[str, ...]]] = []
    reserve = ratelimit.RedisLimiter.reserve

    async def watched(self: Any, channel: str, limits: Any, max_wait: float) -> Any:
        asked.append((channel, tuple(limit.key for limit in limits)))
        return await reserve(self, channel, limits, max_wait)

    monkeypatch.setattr(ratelimit.RedisLimiter, "reserve", watched)
    return asked


def state(db: Database) -> dict[str, str]:
    with db.transaction() as session:
        return {k: v for k, v in session.execute(select(ChannelState.key, ChannelState.value))}


def test_two_units_send_through_their_own_oas_with_their_own_limits_and_tokens(
    client: Any,
    worker: Any,
    db: Database,
    oas: dict[str, ZaloEmulator],
    limited: list[tuple[str, tuple[str, ...]]],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO)
    hn, bn = oas["HN"], oas["BN"]
    seed_access, seed_refresh = hn.access_token, hn.refresh_token
    # HN's token has expired: its adapter rotates the pair, and keeps it as HN's.
    hn.expire_access_token()
    campaigns = {unit: launch(client, db, unit) for unit in ("HN", "BN")}
    for unit, campaign_id in campaigns.items():
        assert completed(client, campaign_id)["counts"]["by_status"] == {"sent": 4}, unit

    assert sorted(m.address for m in hn.outbox) == [f"hn-{i}" for i in range(4)]
    assert sorted(m.address for m in bn.outbox) == [f"bn-{i}" for i in range(4)]
    # Tokens: HN's new pair is kept under HN's account; nothing under the root's or BN's.
    assert hn.refresh_token != seed_refresh and hn.access_token != seed_access
    kept = {k: v for k, v in state(db).items() if "zalo" in k and ":version" not in k}
    (scope,) = {key.partition("/")[0] for key in kept}
    assert scope.startswith("@HN.")
    assert kept == {
        f"{scope}/zalo:refresh_token": hn.refresh_token,
        f"{scope}/zalo:access_token": hn.access_token,
    }
    # Limits: each account took its slots from its own bucket, the root's none.
    asked = {pause: keys for pause, keys in limited}
    assert asked["zalo@HN"] == ("zalo@HN",) and asked["zalo@BN"] == ("zalo@BN",)
    assert "zalo" not in asked
    # The adapters say which account they opened, and never a secret.
    logged = caplog.text + "".join(capsys.readouterr())
    assert "zalo@HN" in logged and "zalo@BN" in logged
    secrets = {hn.secret_key, bn.secret_key, seed_access, seed_refresh, hn.access_token}
    assert not [s for s in secrets if s in logged]


def test_a_refused_oa_pauses_its_own_account_and_not_the_other(
    client: Any,
    worker: Any,
    db: Database,
    settings: Settings,
    oas: dict[str, ZaloEmulator],
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(monkeypatch, {"AUTH_PAUSE_SECONDS": "300"})
    hn, bn = oas["HN"], oas["BN"]
    # HN's OA lost a permission: an account-wide fault (-223) on every message.
    hn.break_account()
    hn_campaign = launch(client, db, "HN")
    bn_campaign = launch(client, db, "BN")
    assert completed(client, bn_campaign)["counts"]["by_status"] == {"sent": 4}
    wait_for(lambda: campaign_status(client, hn_campaign)["counts"]["by_status"] == {"retrying": 4})
    assert {d["error_class"] for d in all_deliveries(client, campaign_id=hn_campaign)} <= {
        "auth",
        "deferred",
    }
    assert len(hn.outbox) == 0 and len(bn.outbox) == 4

    def pause_left(key: str) -> int:
        return int(redis_client.pttl(redis_key(settings.redis_namespace, "rate", f"{key}:pause")))

    assert pause_left("zalo@HN") > 0
    assert pause_left("zalo@BN") < 0 and pause_left("zalo") < 0
    # BN goes on sending while HN waits.
    again = launch(client, db, "BN")
    assert completed(client, again)["counts"]["by_status"] == {"sent": 4}

    # The OA is repaired; the operator ends HN's pause, and only HN's deliveries are woken.
    hn.repair_account()
    limiter = ratelimit.RedisLimiter(settings.redis_url, settings.redis_namespace)

    async def resume() -> int:
        try:
            return await pauses.resume_channel(
                db=db, settings=settings, limiter=limiter, channel="zalo@HN", actor="test"
            )
        finally:
            await limiter.close()

    assert asyncio.run(resume()) == 4
    assert pause_left("zalo@HN") < 0
    assert completed(client, hn_campaign)["counts"]["by_status"] == {"sent": 4}
    assert sorted(m.address for m in hn.outbox) == [f"hn-{i}" for i in range(4)]


def test_one_accounts_bucket_does_not_slow_another() -> None:
    """The same rule, two accounts: each has a bucket of its own (and the root its own)."""
    limiter = ratelimit.MemoryLimiter()
    rules = (RateRule(per_second=1, burst=1),)

    def take(account: str | None) -> bool:
        key = account or "zalo"
        limits = ratelimit.limits_for("zalo", "u1", rules, {}, account=key)
        return asyncio.run(limiter.reserve(key, limits, 0))[0]

    assert take("zalo@HN") and not take("zalo@HN")
    assert take("zalo@BN") and take(None)
    assert ratelimit.limits_for("zalo", "u1", rules, {})[0].key == "zalo"


def test_an_address_dead_at_one_account_is_skipped_by_that_account_only(
    client: Any, worker: Any, db: Database, oas: dict[str, ZaloEmulator]
) -> None:
    hn = oas["HN"]
    hn.ban("hn-0")  # -227: the user is gone, for this OA
    first = launch(client, db, "HN")
    assert completed(client, first)["counts"]["by_status"] == {"sent": 3, "failed": 1}
    with db.transaction() as session:
        marks = session.execute(
            select(AccountDeadAddress.account_key, AccountDeadAddress.value)
        ).all()
        assert [tuple(m) for m in marks] == [("zalo@HN", "hn-0")]
        # The address itself is not dead: another account (another OA) may still reach it.
        assert session.scalar(select(Address.dead_at).where(Address.value == "hn-0")) is None
    calls = len(hn.requests.filter(path="/v3.0/oa/message/cs"))
    second = launch(client, db, "HN")
    done = completed(client, second)
    assert done["counts"]["by_status"] == {"sent": 3, "skipped": 1}
    (skipped,) = [d for d in all_deliveries(client, campaign_id=second) if d["status"] == "skipped"]
    assert skipped["error_class"] == "address_dead" and skipped["attempts"] == []
    assert len(hn.requests.filter(path="/v3.0/oa/message/cs")) == calls + 3
