"""A third-party channel, installed through its entry point, driven through the real service:
its settings checked at start-up, its limits in the template checks and previews, its
messages sent by the pipeline to a local stand-in for the gateway."""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib.metadata import distribution
from typing import Any

import pytest
from typer.testing import CliRunner

from channels import registry
from channels.base import Adapter
from dispatcher.cli import app
from dispatcher.content.render import Rendered, limit_problems
from dispatcher.core.config import ConfigError, get_settings
from tests.plugins.gateway import API_KEY, Gateway
from tests.support import approve, wait_for
from tests.test_end_to_end import all_deliveries, campaign_status

CHANNEL = "sms_gateway"
TEMPLATE = {
    "key": "sms_nhac_dong",
    "defaults": {"note": ""},
    "variants": [
        {
            "channel": CHANNEL,
            "body": "BHXH: {{ recipient.given_name }} ơi, hạn đóng 20/11.{{ note }}",
        },
        {"channel": "default", "subject": "BHXH", "body": "Hạn đóng BHXH là 20/11."},
    ],
}
PEOPLE = [
    {"external_id": f"090000000{n}", "full_name": name, "addresses": {CHANNEL: f"+8490000000{n}"}}
    # The gateway answers invalid_number for the last one.
    for n, name in ((1, "Lê Thị Lan"), (2, "Phạm Văn Hùng"), (9, "Vũ Văn Chín"))
]


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("DISPATCHER_") and not key.startswith("DISPATCHER_TEST_"):
            monkeypatch.delenv(key)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_the_adapter_comes_from_its_own_package_through_the_entry_point() -> None:
    (point,) = [
        ep
        for ep in distribution("bhxh-sms-gateway").entry_points
        if ep.group == registry.ENTRY_POINT_GROUP
    ]
    assert (point.name, point.value) == (CHANNEL, "sms_gateway:SmsGatewayAdapter")
    adapter = registry.get(CHANNEL)
    assert issubclass(adapter, Adapter) and adapter.__module__ == "sms_gateway"
    assert CHANNEL not in registry.BUILTIN


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("DISPATCHER_SMS_GATEWAY_URL", "ftp://sms.example.vn", "http:// or https://"),
        ("DISPATCHER_SMS_GATEWAY_SENDER", "BHXH Việt Nam", "should match pattern"),
        ("DISPATCHER_HTTP_TIMEOUT", "soon", "valid number"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        registry.check_settings(get_settings())
    assert f"{variable}: " in str(caught.value) and needle in str(caught.value)
    for command in (["config"], ["check", "--no-redis"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        assert variable in result.output


@pytest.mark.usefixtures("clean_env")
def test_its_settings_are_shown_with_the_service_s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_SMS_GATEWAY_URL", "https://sms.example.vn/v1/")
    monkeypatch.setenv("DISPATCHER_SMS_GATEWAY_API_KEY", API_KEY)
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "DISPATCHER_SMS_GATEWAY_URL=https://sms.example.vn/v1" in lines
    assert "DISPATCHER_SMS_GATEWAY_API_KEY=********" in lines
    assert "DISPATCHER_SMS_GATEWAY_SENDER=BHXH" in lines
    assert API_KEY not in result.output


def test_its_declared_limits_reach_the_renderer() -> None:
    assert registry.limits_for(CHANNEL).max_body == 201
    fits = Rendered(channel=CHANNEL, locale="vi", body="ơ" * 201)
    over = Rendered(channel=CHANNEL, locale="vi", body="ơ" * 202)
    assert limit_problems(fits) == []
    assert limit_problems(over) == ["body is 202 characters; sms_gateway allows 201"]


def test_its_limits_reach_template_checks_and_previews(client: Any) -> None:
    too_long = {
        **TEMPLATE,
        "key": "sms_qua_dai",
        "variants": [{"channel": CHANNEL, "body": "Thông báo " * 25}],
    }
    refused = client.post("/v1/templates", json=too_long)
    assert refused.status_code == 422
    assert "sms_gateway/vi: body is 250 characters; sms_gateway allows 201" in refused.text

    assert client.post("/v1/templates", json=TEMPLATE).status_code == 201
    preview = client.post(
        f"/v1/templates/{TEMPLATE['key']}/preview",
        json={"channel": CHANNEL, "variables": {"note": " Chi tiết:" + " x" * 100}},
    )
    assert preview.status_code == 200, preview.text
    (problem,) = preview.json()["problems"]
    assert problem.endswith("sms_gateway allows 201")
    short = client.post(f"/v1/templates/{TEMPLATE['key']}/preview", json={"channel": CHANNEL})
    assert short.json()["problems"] == []


def _completed(client: Any, campaign_id: int) -> dict[str, Any]:
    return dict(
        wait_for(
            lambda: (c := campaign_status(client, campaign_id))["status"] == "completed" and c,
            timeout=30,
            interval=0.05,
        )
    )


def test_a_campaign_goes_through_the_pipeline_to_the_gateway(
    client: Any, worker: object, gateway: Gateway
) -> None:
    assert client.post("/v1/recipients", json=PEOPLE).status_code == 200
    assert client.post("/v1/templates", json=TEMPLATE).status_code == 201
    created = client.post(
        "/v1/campaigns",
        json={
            "name": "Nhắc hạn đóng BHXH",
            "kind": "fraud_warning",
            "template": TEMPLATE["key"],
            "audience": {"all": True},
            "channels": [CHANNEL],
        },
    )
    assert created.status_code == 201, created.text
    campaign_id = created.json()["id"]
    client.post(f"/v1/campaigns/{campaign_id}/submit")
    assert approve(client, campaign_id).status_code == 200

    done = _completed(client, campaign_id)
    assert done["counts"]["by_channel"] == {CHANNEL: {"sent": 2, "failed": 1}}
    assert sorted((m.to, m.text, m.sender) for m in gateway.outbox) == [
        ("+84900000001", "BHXH: Lan ơi, hạn đóng 20/11.", "BHXHVN"),
        ("+84900000002", "BHXH: Hùng ơi, hạn đóng 20/11.", "BHXHVN"),
    ]
    deliveries = {d["recipient"]: d for d in all_deliveries(client, campaign_id=campaign_id)}
    assert {deliveries[p]["provider_message_id"] for p in ("0900000001", "0900000002")} == {
        "sms-1",
        "sms-2",
    }
    dead = deliveries["0900000009"]
    assert dead["status"] == "failed"
    assert dead["attempts"][0]["provider_code"] == "invalid_number"
    assert gateway.refused == ["+84900000009"]


def test_a_transactional_message_goes_to_the_gateway(
    client: Any, worker: object, gateway: Gateway
) -> None:
    assert client.post("/v1/recipients", json=PEOPLE[:1]).status_code == 200
    assert client.post("/v1/templates", json=TEMPLATE).status_code == 201
    body = {"recipient": "0900000001", "template": TEMPLATE["key"], "channels": [CHANNEL]}
    sent = client.post("/v1/messages", json=body, headers={"Idempotency-Key": "sms-1"})
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["id"]
    done = wait_for(
        lambda: (
            (m := client.get(f"/v1/messages/{message_id}").json())["status"] == "completed" and m
        )
    )
    assert [d["status"] for d in done["deliveries"]] == ["sent"]
    assert [m.to for m in gateway.outbox] == ["+84900000001"]
