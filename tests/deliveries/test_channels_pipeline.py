"""Many channels through the real pipeline, against the providers' emulators."""

from __future__ import annotations

from typing import Any

import pytest

from channels.emulators.fcm import FcmEmulator
from channels.emulators.telegram import TelegramEmulator, flood
from channels.emulators.zalo import ZaloEmulator
from dispatcher.observability.metrics import AUTH_FAILURES
from tests.support import wait_for
from tests.test_end_to_end import all_deliveries, campaign_status


def completed(
    client: Any, campaign_id: int, timeout: float = 30, interval: float = 0.05
) -> dict[str, Any]:
    return dict(
        wait_for(
            lambda: (c := campaign_status(client, campaign_id))["status"] == "completed" and c,
            timeout=timeout,
            interval=interval,
        )
    )


def hops(client: Any, campaign_id: int) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for d in all_deliveries(client, campaign_id=campaign_id):
        out.setdefault(d["recipient"], []).append((d["channel"], d["status"]))
    return out


def test_vssid_with_an_unregistered_token_falls_back_to_zalo(
    client, worker, fcm: FcmEmulator, zalo: ZaloEmulator, campaign
) -> None:
    people = [
        {
            "external_id": "0700000001",
            "full_name": "Mai Văn Một",
            "addresses": {"vssid": "acc-1", "zalo": "z1"},
        },
        {
            "external_id": "0700000002",
            "full_name": "Mai Văn Hai",
            "addresses": {"vssid": "acc-2", "zalo": "z2"},
        },
    ]
    assert client.post("/v1/recipients", json=people).status_code == 200
    for external_id, token in (
        ("0700000001", "tok-dead-phone-0001"),
        ("0700000002", "tok-live-phone-0002"),
    ):
        registered = client.post(f"/v1/recipients/{external_id}/devices", json={"token": token})
        assert registered.status_code == 201
    fcm.unregister("tok-dead-phone-0001")

    done = completed(client, campaign(["vssid", "zalo"], channel_mode="fallback"))
    assert hops(client, done["id"]) == {
        "0700000001": [("vssid", "failed"), ("zalo", "sent")],
        "0700000002": [("vssid", "sent")],
    }
    (failed,) = all_deliveries(client, campaign_id=done["id"], status="failed")
    assert failed["attempts"][0]["provider_code"] == "no_device"
    assert [m.address for m in zalo.outbox] == ["z1"]
    # Both have the notice in their VssID inbox; only the live phone was pushed.
    for external_id in ("0700000001", "0700000002"):
        inbox = client.get(f"/v1/inbox/{external_id}").json()
        assert [i["title"] for i in inbox["items"]] == ["Thông báo BHXH"]
        assert inbox["unread"] == 1
    assert [m.address for m in fcm.outbox] == ["tok-live-phone-0002"]
    # The phone is gone: the next campaign skips VssID at once and records why.
    again = completed(client, campaign(["vssid", "zalo"], channel_mode="fallback"))
    assert hops(client, again["id"])["0700000001"] == [("vssid", "skipped"), ("zalo", "sent")]
    # Registering a phone again brings the address back.
    client.post("/v1/recipients/0700000001/devices", json={"token": "tok-new-phone-0003"})
    third = completed(client, campaign(["vssid", "zalo"], channel_mode="fallback"))
    assert hops(client, third["id"])["0700000001"] == [("vssid", "sent")]


def test_all_mode_reaches_each_channel_once_per_recipient(
    client, worker, telegram: TelegramEmulator, zalo: ZaloEmulator, smtp, campaign
) -> None:
    people = [
        {
            "external_id": f"08{i:08d}",
            "full_name": f"Đỗ Văn {i}",
            "addresses": {
                "telegram": str(5000 + i),
                "zalo": f"zu{i}",
                "email": f"do{i}@example.vn",
            },
        }
        for i in range(6)
    ]
    assert client.post("/v1/recipients", json=people).status_code == 200
    done = completed(client, campaign(["telegram", "zalo", "email"]))
    assert done["counts"]["by_channel"] == {c: {"sent": 6} for c in ("telegram", "zalo", "email")}
    assert sorted(m.address for m in telegram.outbox) == sorted(str(5000 + i) for i in range(6))
    assert sorted(m.address for m in zalo.outbox) == sorted(f"zu{i}" for i in range(6))
    assert smtp.mailbox.count() == 6
    ids = {d["provider_message_id"] for d in all_deliveries(client, campaign_id=done["id"])}
    assert None not in ids and len(ids) == 18
    # Sent as HTML: the emulator parsed the <b> away, as Telegram does.
    assert all((m.text or "").startswith("BHXH chào") for m in telegram.outbox)
    assert all(m.payload["parse_mode"] == "HTML" for m in telegram.outbox)


def test_a_refused_token_pauses_the_channel_once_instead_of_failing_everyone(
    client, worker, telegram: TelegramEmulator, campaign, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.deliveries.conftest import configure

    # Two sends a second: the refused first reply has half a second to pause the channel before
    # the next send may start, even on a busy machine (at Telegram's 29/s it had 34 ms).
    configure(
        monkeypatch,
        {"AUTH_PAUSE_SECONDS": "3", "RATE_WAIT_SECONDS": "1", "RATE_LIMITS": '{"telegram": 2}'},
    )
    people = [
        {
            "external_id": f"09{i:08d}",
            "full_name": f"Hồ Văn {i}",
            "addresses": {"telegram": str(7000 + i)},
        }
        for i in range(8)
    ]
    assert client.post("/v1/recipients", json=people).status_code == 200
    telegram.revoke_token()
    before = AUTH_FAILURES.labels("telegram")._value.get()
    campaign_id = campaign(["telegram"])

    def all_waiting() -> bool:
        counts = campaign_status(client, campaign_id)["counts"]["by_status"]
        return counts == {"retrying": 8}

    wait_for(all_waiting)
    assert AUTH_FAILURES.labels("telegram")._value.get() - before == 1, "one loud event"
    attempts = [a for d in all_deliveries(client, campaign_id=campaign_id) for a in d["attempts"]]
    assert len(attempts) <= 2, "the others were held back, not sent to fail"
    assert attempts and attempts[0]["outcome"] == "auth", "the refused try is in the audit"
    assert {d["error_class"] for d in all_deliveries(client, campaign_id=campaign_id)} <= {
        "auth",
        "deferred",
    }
    telegram.add_token(telegram.token)
    done = completed(client, campaign_id)
    assert done["counts"]["by_status"] == {"sent": 8}


def test_flood_control_slows_the_channel_without_spending_retries(
    client, worker, telegram: TelegramEmulator, campaign
) -> None:
    people = [
        {
            "external_id": f"10{i:08d}",
            "full_name": f"Tô Văn {i}",
            "addresses": {"telegram": str(9000 + i)},
        }
        for i in range(5)
    ]
    assert client.post("/v1/recipients", json=people).status_code == 200
    telegram.script("9002", flood(1))
    done = completed(client, campaign(["telegram"]))
    assert done["counts"]["by_status"] == {"sent": 5}
    (slowed,) = [
        d for d in all_deliveries(client, campaign_id=done["id"]) if d["recipient"] == "1000000002"
    ]
    assert [a["outcome"] for a in slowed["attempts"]] == ["rate_limited", "sent"]
    assert slowed["attempts"][0]["provider_code"] == "429"


@pytest.mark.timeout(180)
def test_300_chats_through_two_worker_processes_stay_inside_telegrams_limit(
    client, telegram: TelegramEmulator, campaign
) -> None:

    from tests.test_processes import role

    people = [
        {
            "external_id": f"11{i:08d}",
            "full_name": f"Vũ Văn {i}",
            "addresses": {"telegram": str(20000 + i)},
        }
        for i in range(300)
    ]
    assert client.post("/v1/recipients", json=people).status_code == 200
    with (
        role("worker", "--queues", "urgent", "--threads", "4"),
        role("worker", "--queues", "urgent", "--threads", "4"),
    ):
        done = completed(client, campaign(["telegram"]), timeout=120, interval=0.5)
    assert done["counts"]["by_status"] == {"sent": 300}
    statuses = [r.status for r in telegram.requests.filter(path="sendMessage")]
    assert len(statuses) == 300 and 429 not in statuses, "no flood-control answer at all"
    # The emulator enforces Telegram's window itself (a bucket of 30, refilled at 30/s): no
    # 429 above means it was never exceeded. Over the whole run the pace is within 30/s too.
    times = sorted(d.at for d in telegram.outbox)
    span = (times[-1] - times[0]).total_seconds()
    assert 299 / span <= 30.5, f"{299 / span:.1f} messages/s"
