"""Account-wide faults through the real pipeline: the channel pauses, alerts once, keeps its
deliveries waiting, and goes on when an operator says the account is fixed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from channels.emulators.fcm import FcmEmulator
from dispatcher.cli import app
from dispatcher.core.config import Settings, get_settings
from dispatcher.core.db import Database
from dispatcher.engine import backends, ratelimit
from dispatcher.observability.metrics import AUTH_FAILURES, CHANNEL_RESUMES
from dispatcher.tables.audit import AuditEntry
from dispatcher.tables.inbox import Device
from tests.deliveries.test_channels_pipeline import completed
from tests.support import wait_for
from tests.test_end_to_end import all_deliveries, campaign_status


def _people(client: Any, tokens: list[str]) -> None:
    people = [
        {
            "external_id": f"08{i:08d}",
            "full_name": f"Lê Thị {i}",
            "addresses": {"vssid": f"acc-{i}"},
        }
        for i in range(len(tokens))
    ]
    assert client.post("/v1/recipients", json=people).status_code == 200
    for person, token in zip(people, tokens, strict=True):
        registered = client.post(
            f"/v1/recipients/{person['external_id']}/devices", json={"token": token}
        )
        assert registered.status_code == 201


class _Process:
    """What ``backends.configure`` gives the command: here only a limiter of its own, on the
    test's Redis namespace (the real one would replace the test's broker)."""

    def __init__(self, settings: Settings) -> None:
        self.limiter = ratelimit.RedisLimiter(settings.redis_url, settings.redis_namespace)


def test_a_broken_apns_key_pauses_vssid_until_an_operator_resumes_it(
    client, worker, fcm: FcmEmulator, campaign, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.deliveries.conftest import configure

    # A pause far longer than the test: only the operator's word can end it.
    configure(monkeypatch, {"AUTH_PAUSE_SECONDS": "3600", "RATE_WAIT_SECONDS": "1"})
    tokens = [f"ios-token-{i:04d}" for i in range(6)]
    _people(client, tokens)
    for token in tokens:
        fcm.break_apns(token)  # THIRD_PARTY_AUTH_ERROR: the project's APNs key
    alerts = AUTH_FAILURES.labels("vssid")._value.get()
    resumes = CHANNEL_RESUMES.labels("vssid")._value.get()
    campaign_id = campaign(["vssid"])

    wait_for(lambda: campaign_status(client, campaign_id)["counts"]["by_status"] == {"retrying": 6})
    assert AUTH_FAILURES.labels("vssid")._value.get() - alerts == 1, "one alert, not six"
    deliveries = all_deliveries(client, campaign_id=campaign_id)
    assert {d["error_class"] for d in deliveries} <= {"auth", "deferred"}
    # Sends already in flight each meet the fault; none of them fails the delivery.
    attempts = [a for d in deliveries for a in d["attempts"]]
    assert attempts and {a["outcome"] for a in attempts} == {"auth"}
    assert {a["provider_code"] for a in attempts} == {"THIRD_PARTY_AUTH_ERROR"}
    with db.reading() as session:
        assert len(session.scalars(select(Device.token)).all()) == 6, "no device token dropped"

    # The APNs key is fixed; the operator says so.
    for token in tokens:
        fcm.restore(token)
    settings = get_settings()
    monkeypatch.setattr(backends, "configure", lambda _settings: _Process(settings))
    result = CliRunner().invoke(app, ["channels", "resume", "vssid", "--by", "ops: Trần Văn Ba"])
    assert result.exit_code == 0, result.output

    done = completed(client, campaign_id, timeout=60)
    assert done["counts"]["by_status"] == {"sent": 6}
    assert sorted(d.address for d in fcm.outbox) == tokens
    assert CHANNEL_RESUMES.labels("vssid")._value.get() - resumes == 1
    with db.reading() as session:
        (entry,) = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "channel.resumed")
        ).all()
    assert (entry.actor, entry.subject) == ("ops: Trần Văn Ba", "channel:vssid")
    assert json.loads(entry.data) == {"channel": "vssid", "deliveries": 6, "was_paused": True}


def test_a_dead_token_leaves_the_devices_table(
    client, worker, fcm: FcmEmulator, campaign, db: Database
) -> None:
    # INVALID_ARGUMENT with the FcmError detail: Firebase's guide says to delete the token.
    _people(client, ["bad-token-0001", "good-token-0002"])
    fcm.invalidate("bad-token-0001")
    done = completed(client, campaign(["vssid"]))
    assert done["counts"]["by_status"] == {"failed": 1, "sent": 1}
    with db.reading() as session:
        assert session.scalars(select(Device.token)).all() == ["good-token-0002"]


def test_resuming_an_unknown_channel_is_refused(settings: Settings) -> None:
    result = CliRunner().invoke(app, ["channels", "resume", "carrier-pigeon"])
    assert result.exit_code == 2
    assert "unknown channel" in result.output
