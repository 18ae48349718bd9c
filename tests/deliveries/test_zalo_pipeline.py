"""Zalo through the real pipeline: rotated tokens kept in the database, dead followers, night,
templates by user id, and the fallback from the OA to ZNS for people who follow nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from channels.emulators.zalo import Template, TemplateParam
from channels.emulators.zns import ZnsEmulator
from dispatcher.core.config import get_settings
from dispatcher.core.db import Database
from dispatcher.kit.clock import clock
from dispatcher.observability.metrics import AUTH_FAILURES
from dispatcher.tables.channel_state import ChannelState
from tests.support import approve, wait_for
from tests.test_end_to_end import all_deliveries, campaign_status

DAY = datetime(2026, 3, 10, 3, 0, tzinfo=UTC)  # 10:00 in Vietnam
NIGHT = datetime(2026, 3, 10, 16, 0, tzinfo=UTC)  # 23:00 in Vietnam

# The Zalo template the OA registered (and Zalo approved), described by the zalo and zns variants.
DESCRIPTION = (
    "template_id: 300101\n"
    "customer_name (customer_name): {{ recipient.full_name }}\n"
    "insurance_code (code): {{ recipient.external_id }}\n"
)
REGISTERED = Template(
    "300101", (TemplateParam("customer_name", 30), TemplateParam("insurance_code", 30))
)
TEMPLATE = {
    "key": "zalo_test",
    "variants": [
        {"channel": "zalo", "body": DESCRIPTION},
        {"channel": "zns", "body": DESCRIPTION},
    ],
}


@pytest.fixture()
def zalo(settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[ZnsEmulator]:
    clock.freeze(DAY)
    # One emulator answers both hosts: the OA API and ZNS share the OA's token.
    with ZnsEmulator(templates=[REGISTERED], clock=clock.now) as emulator:
        for key, value in {
            "ZALO_APP_ID": emulator.app_id,
            "ZALO_SECRET_KEY": emulator.secret_key,
            "ZALO_ACCESS_TOKEN": emulator.access_token,
            "ZALO_REFRESH_TOKEN": emulator.refresh_token,
            "ZALO_API_URL": emulator.base_url,
            "ZALO_OAUTH_URL": emulator.base_url,
            "ZNS_API_URL": emulator.base_url,
        }.items():
            monkeypatch.setenv(f"DISPATCHER_{key}", value)
        get_settings.cache_clear()
        yield emulator
    clock.reset()


def setup(client: Any, users: int = 4) -> None:
    people = [
        {"external_id": f"06{i:08d}", "full_name": f"Lý Thị {i}", "addresses": {"zalo": f"u{i}"}}
        for i in range(users)
    ]
    assert client.post("/v1/recipients", json=people).status_code == 200
    assert client.post("/v1/templates", json=TEMPLATE).status_code == 201


def launch(client: Any, kind: str, channels: tuple[str, ...] = ("zalo",), mode: str = "all") -> int:
    created = client.post(
        "/v1/campaigns",
        json={
            "name": "Zalo",
            "kind": kind,
            "template": "zalo_test",
            "audience": {"all": True},
            "channels": list(channels),
            "channel_mode": mode,
            "priority": "urgent",
        },
    ).json()
    client.post(f"/v1/campaigns/{created['id']}/submit")
    approve(client, created["id"])
    return int(created["id"])


def finished(client: Any, campaign_id: int) -> dict[str, Any]:
    return dict(
        wait_for(lambda: (c := campaign_status(client, campaign_id))["status"] == "completed" and c)
    )


def test_a_refreshed_token_pair_is_kept_in_the_database(
    client, worker, zalo: ZnsEmulator, db: Database
) -> None:
    setup(client)
    zalo.expire_access_token()
    done = finished(client, launch(client, "fraud_warning"))
    assert done["counts"]["by_status"] == {"sent": 4}
    assert zalo.refresh_count == 1
    with db.transaction() as session:
        stored = {k: v for k, v in session.execute(select(ChannelState.key, ChannelState.value))}
    assert stored["zalo:access_token"] == zalo.access_token
    assert stored["zalo:refresh_token"] == zalo.refresh_token
    # Every message went out under the refreshed token, and the provider's ids are stored.
    deliveries = all_deliveries(client, campaign_id=done["id"])
    assert all(d["provider_message_id"] for d in deliveries)
    assert {d["provider_message_id"] for d in deliveries} == {m.message_id for m in zalo.outbox}


def test_a_user_who_unfollowed_is_marked_dead_and_skipped_next_time(
    client, worker, zalo: ZnsEmulator
) -> None:
    setup(client)
    zalo.unfollow("u2")
    first = finished(client, launch(client, "greeting"))
    assert first["counts"]["by_status"] == {"sent": 3, "failed": 1}
    (failed,) = all_deliveries(client, campaign_id=first["id"], status="failed")
    assert failed["attempts"][0]["provider_code"] == "-213"
    assert failed["attempts"][0]["error_class"] == "address_dead"
    second = finished(client, launch(client, "greeting"))
    assert second["counts"]["by_status"] == {"sent": 3, "skipped": 1}


def test_promotions_wait_for_the_morning_and_other_kinds_do_not(
    client, worker, zalo: ZnsEmulator
) -> None:
    setup(client, users=2)
    clock.freeze(NIGHT)
    promotion = launch(client, "greeting")
    warning = finished(client, launch(client, "fraud_warning"))
    assert warning["counts"]["by_status"] == {"sent": 2}, "consultation messages go at night"

    def deferred() -> list[dict[str, Any]]:
        found = all_deliveries(client, campaign_id=promotion, status="retrying")
        return found if len(found) == 2 else []

    for delivery in wait_for(deferred):
        assert delivery["error_class"] == "rate_limited"
        # Audited as a deferral; no call reached Zalo.
        assert [a["outcome"] for a in delivery["attempts"]] == ["rate_limited"]
        assert delivery["next_attempt_at"] == "2026-03-10T23:00:00Z", "06:00 in Vietnam"
    assert len(zalo.outbox) == 2


def test_people_who_follow_nothing_get_the_template_by_zns(
    client, worker, zalo: ZnsEmulator
) -> None:
    people = [
        {
            "external_id": f"07{i:08d}",
            "full_name": f"Trần Văn {i}",
            "addresses": {"zalo": f"u{i}", "zns": f"09{i:08d}"},
        }
        for i in range(3)
    ]
    assert client.post("/v1/recipients", json=people).status_code == 200
    assert client.post("/v1/templates", json=TEMPLATE).status_code == 201
    zalo.unfollow("u1")  # follows nothing: the OA cannot reach them
    zalo.unfollow("u2")
    zalo.without_zalo("84900000002")  # ... and this one has no Zalo account on that phone
    done = finished(client, launch(client, "fraud_warning", ("zalo", "zns"), "fallback"))
    hops: dict[str, list[tuple[str, str]]] = {}
    for d in all_deliveries(client, campaign_id=done["id"]):
        hops.setdefault(d["recipient"], []).append((d["channel"], d["status"]))
    assert {k: sorted(v) for k, v in hops.items()} == {
        "0700000000": [("zalo", "sent")],
        "0700000001": [("zalo", "failed"), ("zns", "sent")],
        "0700000002": [("zalo", "failed"), ("zns", "failed")],
    }
    by_phone = {d.address: d for d in zalo.outbox if d.kind == "zns"}
    assert set(by_phone) == {"84900000001"}
    sent = by_phone["84900000001"]
    assert sent.payload["template_data"] == {
        "customer_name": "Trần Văn 1",
        "insurance_code": "0700000001",
    }
    zns_delivery = next(
        d
        for d in all_deliveries(client, campaign_id=done["id"], status="sent")
        if d["channel"] == "zns"
    )
    assert zns_delivery["provider_message_id"] == sent.message_id  # Zalo's msg_id, kept


def test_an_account_wide_fault_pauses_the_channel_instead_of_failing_everyone(
    client, worker, zalo: ZnsEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.deliveries.conftest import configure

    configure(monkeypatch, {"AUTH_PAUSE_SECONDS": "3", "RATE_WAIT_SECONDS": "1"})
    setup(client, users=6)
    zalo.break_account(-223)  # "Official Account has not authorized this API"
    before = AUTH_FAILURES.labels("zalo")._value.get()
    campaign_id = launch(client, "fraud_warning")

    def all_waiting() -> bool:
        return campaign_status(client, campaign_id)["counts"]["by_status"] == {"retrying": 6}

    wait_for(all_waiting)
    assert AUTH_FAILURES.labels("zalo")._value.get() - before == 1, "one loud event"
    deliveries = all_deliveries(client, campaign_id=campaign_id)
    attempts = [a for d in deliveries for a in d["attempts"]]
    # Those already on the wire met the same refusal; none failed, no address was marked.
    assert attempts and {a["outcome"] for a in attempts} == {"auth"}
    assert {a["provider_code"] for a in attempts} == {"-223"}
    assert {d["error_class"] for d in deliveries} <= {"auth", "deferred"}
    assert zalo.refresh_count == 0, "no token refresh for a set-up fault"
    zalo.repair_account()
    clock.shift(timedelta(hours=1))  # the service's clock is frozen here: let the retries come
    done = finished(client, campaign_id)
    assert done["counts"]["by_status"] == {"sent": 6}
