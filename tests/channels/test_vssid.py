"""The vssid channel: an inbox item (the record) and FCM pushes (the nudge), against the emulator.

The service's tables are stood in for by small in-memory implementations of the two protocols
(:class:`MemoryInbox`, :class:`MemoryDevices`); the tables themselves are tested elsewhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from structlog.testing import capture_logs

from channels import registry
from channels.base import (
    AdapterContext,
    AuthError,
    Category,
    Message,
    PermanentError,
    RateLimitedError,
    RateRule,
    SendResult,
    TransientError,
)
from channels.emulators.base import ManualClock, Reply
from channels.emulators.fcm import (
    FcmEmulator,
    invalid_argument,
    project_quota_exceeded,
    quota_exceeded,
    sender_id_mismatch,
    target_quota_exceeded,
    unauthenticated,
    unavailable,
    unregistered,
)
from channels.fcm import MAX_PAYLOAD, payload_size
from channels.registry import declared_limits as LIMITS
from channels.vssid import Devices, Inbox, VssidAdapter, token_fingerprint
from dispatcher.core.config import Settings
from tests.channels import support as channel_support
from tests.channels import test_fcm as support

T = TypeVar("T")

ACCOUNT = "079085001234"  # a VssID account (the citizen's login)
RECIPIENT = "7912345678"  # the social-insurance number: the recipient's external id
# A 404 NOT_FOUND without an FCM code (the canonical status alone, as in the Admin SDK's tests).
NOT_FOUND = Reply(404, {"error": {"code": 404, "message": "test error", "status": "NOT_FOUND"}})
PHONE = "fGx1:APA91bHphoneTokenOfTheCitizen_aaaaaaaaaaaaaaaaaaaa"
TABLET = "cQ9z:APA91bHtabletTokenOfTheCitizen_bbbbbbbbbbbbbbbbbbbb"


# -- in-memory stand-ins for the service's tables ------------------------------------------------


class MemoryInbox:
    """:class:`channels.vssid.Inbox` over a dict: one item per delivery, however often asked."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.by_delivery: dict[int, str] = {}
        self.calls = 0
        self.fail: Exception | None = None

    async def add(
        self,
        *,
        delivery_id: int,
        recipient: str,
        account: str,
        title: str,
        body: str,
        html: str | None,
        kind: str,
    ) -> str:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        existing = self.by_delivery.get(delivery_id)
        if existing is not None:
            return existing
        item = f"inbox-{len(self.items) + 1}"
        self.items[item] = {
            "delivery_id": delivery_id,
            "recipient": recipient,
            "account": account,
            "title": title,
            "body": body,
            "html": html,
            "kind": kind,
        }
        self.by_delivery[delivery_id] = item
        return item


class MemoryDevices:
    """:class:`channels.vssid.Devices` over a dict of account → tokens."""

    def __init__(self, tokens: dict[str, list[str]] | None = None) -> None:
        self.by_account = {k: list(v) for k, v in (tokens or {}).items()}
        self.dropped: list[tuple[str, str]] = []
        self.fail_drop = False

    async def tokens(self, account: str) -> list[str]:
        return list(self.by_account.get(account, []))

    async def drop(self, token: str, reason: str) -> None:
        if self.fail_drop:
            raise RuntimeError(f"database is locked [parameters: ({token!r},)]")
        self.dropped.append((token, reason))
        for tokens in self.by_account.values():
            if token in tokens:
                tokens.remove(token)


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_pem() -> str:
    return support.generate_key_pem()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(support.START)


@pytest.fixture
def fcm(clock: ManualClock) -> Iterator[FcmEmulator]:
    with FcmEmulator(clock=clock, monotonic=clock.monotonic) as emulator:
        yield emulator


@pytest.fixture
def settings(fcm: FcmEmulator, key_pem: str) -> Settings:
    return support.make_settings(fcm, key_pem)


@pytest.fixture
def inbox() -> MemoryInbox:
    return MemoryInbox()


@pytest.fixture
def devices() -> MemoryDevices:
    return MemoryDevices({ACCOUNT: [PHONE, TABLET]})


@pytest.fixture
def adapter(
    settings: Settings, clock: ManualClock, inbox: MemoryInbox, devices: MemoryDevices
) -> VssidAdapter:
    context = AdapterContext(now=clock, services={"vssid.inbox": inbox, "vssid.devices": devices})
    built = registry.get("vssid").from_settings(settings, context)
    assert isinstance(built, VssidAdapter)
    return built


def message(
    delivery_id: int = 501,
    body: str = "Ông/Bà đã được điều chỉnh lương hưu từ tháng 7. Xem chi tiết trong ứng dụng.",
    **changes: Any,
) -> Message:
    values: dict[str, Any] = {
        "delivery_id": delivery_id,
        "address": ACCOUNT,
        "recipient": RECIPIENT,
        "subject": "Điều chỉnh lương hưu",
        "body": body,
        "html": f"<p>{body}</p>",
        "kind": Category.policy_news,
        "campaign_id": 7,
    }
    values.update(changes)
    return Message(**values)


def run(adapter: VssidAdapter, step: Callable[[VssidAdapter], Awaitable[T]]) -> T:
    """Open the adapter, run ``step``, close it: one event loop, as in a worker."""
    return channel_support.run(adapter, step, open_first=True)


def send(adapter: VssidAdapter, msg: Message | None = None) -> SendResult:
    return run(adapter, lambda a: a.send(msg or message()))


# -- the adapter's shape ---------------------------------------------------------------------------


def test_declared_limits_and_protocols() -> None:
    assert registry.get("vssid") is VssidAdapter
    assert VssidAdapter.name == "vssid"
    assert VssidAdapter.limits is LIMITS["vssid"]
    assert VssidAdapter.rate_limits == (RateRule(per_second=5000, burst=1000),)
    assert isinstance(MemoryInbox(), Inbox)
    assert isinstance(MemoryDevices(), Devices)


@pytest.mark.parametrize("missing", ["vssid.inbox", "vssid.devices"])
def test_missing_services_are_a_clear_error(
    settings: Settings, missing: str, inbox: MemoryInbox, devices: MemoryDevices
) -> None:
    services: dict[str, Any] = {"vssid.inbox": inbox, "vssid.devices": devices}
    del services[missing]
    with pytest.raises(LookupError, match=missing):
        VssidAdapter.from_settings(settings, AdapterContext(services=services))


def test_a_service_of_the_wrong_shape_is_refused(settings: Settings, inbox: MemoryInbox) -> None:
    services = {"vssid.inbox": inbox, "vssid.devices": object()}
    with pytest.raises(TypeError, match="Devices"):
        VssidAdapter.from_settings(settings, AdapterContext(services=services))


def test_fcm_settings_are_checked_when_the_adapter_is_built(
    fcm: FcmEmulator, key_pem: str, inbox: MemoryInbox, devices: MemoryDevices
) -> None:
    settings = support.make_settings(fcm, key_pem, fcm_service_account=None)
    context = AdapterContext(services={"vssid.inbox": inbox, "vssid.devices": devices})
    with pytest.raises(ValueError, match="DISPATCHER_FCM_SERVICE_ACCOUNT"):
        VssidAdapter.from_settings(settings, context)


# -- sending ---------------------------------------------------------------------------------------


def test_inbox_item_then_a_push_to_every_device(
    adapter: VssidAdapter, fcm: FcmEmulator, inbox: MemoryInbox
) -> None:
    result = send(adapter)

    assert result.provider_message_id == "inbox-1"
    assert result.provider_code == "inbox+2push"
    assert result.provider_reply is not None and "2/2 pushes sent" in result.provider_reply
    assert inbox.items["inbox-1"] == {
        "delivery_id": 501,
        "recipient": RECIPIENT,
        "account": ACCOUNT,
        "title": "Điều chỉnh lương hưu",
        "body": message().body,
        "html": f"<p>{message().body}</p>",
        "kind": "policy_news",
    }
    assert sorted(d.address for d in fcm.outbox) == sorted([PHONE, TABLET])
    for delivery in fcm.outbox:
        assert delivery.payload["notification"] == {
            "title": "Điều chỉnh lương hưu",
            "body": message().body,
        }
        assert delivery.payload["data"] == {
            "inbox_item": "inbox-1",
            "kind": "policy_news",
            "delivery": "501",
        }


def test_fcm_client_opened_once_and_token_reused_across_deliveries(
    adapter: VssidAdapter, fcm: FcmEmulator, inbox: MemoryInbox
) -> None:
    async def many(a: VssidAdapter) -> list[SendResult]:
        client = a.fcm
        results = await asyncio.gather(*(a.send(message(i)) for i in range(1, 21)))
        assert a.fcm is client  # built in open(), not per send
        return list(results)

    results = run(adapter, many)
    assert [r.provider_code for r in results] == ["inbox+2push"] * 20
    assert len(inbox.items) == 20 and len(fcm.outbox) == 40
    assert fcm.tokens_issued == 1
    with pytest.raises(RuntimeError, match="not open"):
        _ = adapter.fcm  # closed by run()


def test_unregistered_token_is_dropped_and_the_delivery_succeeds(
    adapter: VssidAdapter, fcm: FcmEmulator, devices: MemoryDevices, inbox: MemoryInbox
) -> None:
    fcm.unregister(TABLET)
    with capture_logs() as logs:
        result = send(adapter)

    assert result.provider_code == "inbox+1push"
    assert result.provider_message_id == "inbox-1" and len(inbox.items) == 1
    assert [d.address for d in fcm.outbox] == [PHONE]
    assert [token for token, _ in devices.dropped] == [TABLET]
    assert "UNREGISTERED" in devices.dropped[0][1]
    assert devices.by_account[ACCOUNT] == [PHONE]
    reply = result.provider_reply or ""
    assert "1/2 pushes sent" in reply
    assert f"dropped 1 dead: {token_fingerprint(TABLET)}" in reply
    # Device tokens are named by fingerprint only, in the reply and in the logs.
    for token in (PHONE, TABLET):
        assert token not in reply and token not in str(logs)
    assert any(e["event"] == "vssid_token_dropped" for e in logs)


def test_every_token_dead_fails_the_delivery_but_keeps_the_inbox_item(
    adapter: VssidAdapter, fcm: FcmEmulator, devices: MemoryDevices, inbox: MemoryInbox
) -> None:
    fcm.unregister(PHONE)
    fcm.unregister(TABLET)
    with pytest.raises(PermanentError) as caught:
        send(adapter)
    # Nobody was told: the delivery fails (a fallback campaign moves on), the address is dead
    # until a device registers again, and the item waits in the inbox.
    assert caught.value.address_dead
    assert caught.value.code == "no_device"
    assert "inbox-1" in caught.value.reason
    assert len(inbox.items) == 1
    assert {token for token, _ in devices.dropped} == {PHONE, TABLET}
    assert devices.by_account[ACCOUNT] == []


def test_a_failed_drop_does_not_fail_the_delivery(
    adapter: VssidAdapter, fcm: FcmEmulator, devices: MemoryDevices
) -> None:
    fcm.unregister(TABLET)
    devices.fail_drop = True
    with capture_logs() as logs:
        result = send(adapter)
    assert result.provider_code == "inbox+1push"
    assert "(drop failed)" in (result.provider_reply or "")
    failed = [e for e in logs if e["event"] == "vssid_drop_failed"]
    assert len(failed) == 1 and "database is locked" in failed[0]["error"]
    assert TABLET not in str(logs)


def test_no_devices_files_the_item_and_fails_the_delivery(
    settings: Settings, clock: ManualClock, fcm: FcmEmulator, inbox: MemoryInbox
) -> None:
    context = AdapterContext(
        now=clock, services={"vssid.inbox": inbox, "vssid.devices": MemoryDevices()}
    )
    with pytest.raises(PermanentError) as caught:
        send(VssidAdapter.from_settings(settings, context))
    assert caught.value.address_dead and caught.value.code == "no_device"
    assert caught.value.reply == "inbox item inbox-1; no registered devices"
    assert len(inbox.items) == 1
    assert len(fcm.requests) == 0  # not even an OAuth token was fetched


def test_all_pushes_transient_raises_and_the_retry_adds_no_second_item(
    adapter: VssidAdapter, fcm: FcmEmulator, inbox: MemoryInbox
) -> None:
    fcm.script(PHONE, unavailable(retry_after=7))
    fcm.script(TABLET, unavailable())

    async def twice(a: VssidAdapter) -> tuple[TransientError, SendResult]:
        with pytest.raises(TransientError) as caught:
            await a.send(message())
        return caught.value, await a.send(message())  # the pipeline's retry

    error, result = run(adapter, twice)
    assert error.retry_after == 7
    assert error.code == "UNAVAILABLE"
    assert "0/2 pushes sent" in (error.reply or "")
    assert result.provider_code == "inbox+2push"
    assert result.provider_message_id == "inbox-1"
    assert inbox.calls == 2 and list(inbox.items) == ["inbox-1"]
    assert [d.payload["data"]["inbox_item"] for d in fcm.outbox] == ["inbox-1", "inbox-1"]


def test_one_push_through_is_enough(
    adapter: VssidAdapter, fcm: FcmEmulator, inbox: MemoryInbox
) -> None:
    fcm.script(TABLET, unavailable())
    result = send(adapter)
    assert result.provider_code == "inbox+1push"
    reply = result.provider_reply or ""
    assert f"failed 1: {token_fingerprint(TABLET)} UNAVAILABLE" in reply


def test_permanent_refusals_alone_fail_without_killing_the_address(
    adapter: VssidAdapter, fcm: FcmEmulator, devices: MemoryDevices
) -> None:
    fcm.mismatch(PHONE)
    fcm.script(TABLET, sender_id_mismatch())
    with pytest.raises(PermanentError) as caught:
        send(adapter)
    assert not caught.value.address_dead, "the devices still exist; only this push was refused"
    assert "SENDER_ID_MISMATCH" in (caught.value.reply or "")
    assert devices.dropped == []  # only UNREGISTERED drops a token


def test_rate_limit_propagates(adapter: VssidAdapter, fcm: FcmEmulator) -> None:
    fcm.script(PHONE, quota_exceeded(retry_after=90))
    fcm.script(TABLET, quota_exceeded(retry_after=30))
    with pytest.raises(RateLimitedError) as caught:
        send(adapter)
    assert caught.value.retry_after == 90  # the longest wait asked for
    assert caught.value.scope == "channel"


def test_only_device_quotas_defer_just_this_delivery(
    adapter: VssidAdapter, fcm: FcmEmulator
) -> None:
    # FCM's QuotaFailure detail names the target whose quota was spent: not the project's.
    for token in (PHONE, TABLET):
        fcm.script(token, target_quota_exceeded("device"))
    with pytest.raises(RateLimitedError) as caught:
        send(adapter)
    assert (caught.value.scope, caught.value.retry_after) == ("message", 60)


def test_the_quota_scope_never_comes_from_the_wording(
    adapter: VssidAdapter, fcm: FcmEmulator
) -> None:
    # The words say "device", the details say nothing: whose quota is unknown, so the project's.
    for token in (PHONE, TABLET):
        fcm.script(token, quota_exceeded(message="Device message rate exceeded."))
    with pytest.raises(RateLimitedError) as caught:
        send(adapter)
    assert caught.value.scope == "channel"


def test_the_projects_quota_pauses_the_channel(adapter: VssidAdapter, fcm: FcmEmulator) -> None:
    for token in (PHONE, TABLET):
        fcm.script(token, project_quota_exceeded(retry_after=75))
    with pytest.raises(RateLimitedError) as caught:
        send(adapter)
    assert (caught.value.scope, caught.value.retry_after) == ("channel", 75)


@pytest.mark.parametrize(
    "dead",
    [
        pytest.param(invalid_argument(), id="INVALID_ARGUMENT with the FcmError detail"),
        pytest.param(NOT_FOUND, id="NOT_FOUND without an FCM code"),
        pytest.param(unregistered(), id="UNREGISTERED"),
    ],
)
def test_tokens_fcm_calls_dead_are_dropped(
    adapter: VssidAdapter, fcm: FcmEmulator, devices: MemoryDevices, dead: Reply
) -> None:
    fcm.script(TABLET, dead)
    result = send(adapter)
    assert result.provider_code == "inbox+1push"
    assert [token for token, _ in devices.dropped] == [TABLET]
    assert devices.by_account[ACCOUNT] == [PHONE]


def test_a_request_fcm_refused_keeps_the_token(
    adapter: VssidAdapter, fcm: FcmEmulator, devices: MemoryDevices
) -> None:
    # INVALID_ARGUMENT about the message (a BadRequest detail naming a field, no FcmError
    # detail): the request was wrong, the device is fine.
    bad_data = Reply(
        400,
        {
            "error": {
                "code": 400,
                "message": "Invalid value at 'message.data[0].value' (TYPE_STRING), 12",
                "status": "INVALID_ARGUMENT",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"field": "message.data[0].value"}],
                    }
                ],
            }
        },
    )
    fcm.script(TABLET, bad_data)
    result = send(adapter)
    assert result.provider_code == "inbox+1push"
    assert devices.dropped == []


def test_a_broken_apns_key_is_account_wide(
    adapter: VssidAdapter, fcm: FcmEmulator, devices: MemoryDevices
) -> None:
    # Every iOS device of the project fails alike: the channel pauses, the token is kept.
    devices.by_account[ACCOUNT] = [TABLET]
    fcm.break_apns(TABLET)
    with pytest.raises(AuthError) as caught:
        send(adapter)
    assert caught.value.code == "THIRD_PARTY_AUTH_ERROR"
    assert devices.dropped == []
    assert fcm.tokens_issued == 1  # not our OAuth token: no refresh


def test_auth_failure_propagates(
    adapter: VssidAdapter, fcm: FcmEmulator, devices: MemoryDevices
) -> None:
    devices.by_account[ACCOUNT] = [PHONE]
    fcm.script(PHONE, unauthenticated(), unauthenticated())
    with pytest.raises(AuthError):
        send(adapter)
    assert fcm.tokens_issued == 2  # one refresh, then the refusal stands


def test_long_body_is_trimmed_in_the_push_but_whole_in_the_inbox(
    adapter: VssidAdapter, fcm: FcmEmulator, inbox: MemoryInbox
) -> None:
    long = "Thông báo về việc điều chỉnh mức lương hưu, trợ cấp bảo hiểm xã hội. " * 120
    result = send(adapter, message(body=long))
    assert result.provider_code == "inbox+2push"
    assert inbox.items["inbox-1"]["body"] == long
    for delivery in fcm.outbox:
        pushed = delivery.payload["notification"]["body"]
        assert pushed.endswith("…") and long.startswith(pushed[:-1])
        assert payload_size(delivery.payload) <= MAX_PAYLOAD


def test_without_a_recipient_nothing_is_filed(
    adapter: VssidAdapter, fcm: FcmEmulator, inbox: MemoryInbox
) -> None:
    with pytest.raises(PermanentError) as caught:
        send(adapter, message(recipient=None))
    assert caught.value.code == "no_recipient"
    assert inbox.calls == 0 and len(fcm.requests) == 0


def test_inbox_failure_is_transient(adapter: VssidAdapter, inbox: MemoryInbox) -> None:
    inbox.fail = ConnectionError("could not connect to server")
    with pytest.raises(TransientError) as caught:
        send(adapter)
    assert caught.value.code == "inbox"
    assert "ConnectionError" in caught.value.reason


def test_push_payload_is_valid_json_strings_only(adapter: VssidAdapter, fcm: FcmEmulator) -> None:
    send(adapter, message(kind=Category.transactional, delivery_id=9))
    data = fcm.outbox[0].payload["data"]
    assert all(isinstance(v, str) for v in data.values())
    assert json.loads(json.dumps(data)) == {
        "inbox_item": "inbox-1",
        "kind": "transactional",
        "delivery": "9",
    }
