"""Structured logs: JSON lines that name campaign, run and delivery, and never an address or a
token, from the real worker and API processes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import structlog
from sqlalchemy import select
from structlog.contextvars import bound_contextvars

from channels import redact
from channels.emulators.telegram import TelegramEmulator, server_error
from dispatcher.consent import service as consent
from dispatcher.core import secrets
from dispatcher.core.config import Settings, get_settings
from dispatcher.core.db import Database
from dispatcher.engine.loop import LoopThread
from dispatcher.observability.logging import QUIET_LIBRARIES, configure_logging
from dispatcher.tables.recipients import Recipient
from tests.conftest import make_key
from tests.deliveries.conftest import TEMPLATE, configure
from tests.support import SmtpServer, approve, dispatcher_process, free_port, wait_for
from tests.test_end_to_end import all_deliveries, campaign_status

TOKEN = "6123456789:AAF-leakCheckSecretNeverInLogs_0123456789"
# (external id, name, email, Telegram chat)
PEOPLE = [
    ("1500000001", "Vũ Thị Lan", "lan.vu.nhatky@example.vn", "8100427731"),
    ("1500000002", "Hà Minh Tuấn", "tuan.ha.nhatky@example.vn", "8100427732"),
    ("1500000003", "Lý Thu Trang", "trang.ly.nhatky@example.vn", "8100427733"),
    ("1500000004", "Đinh Công Sơn", "son.dinh.nhatky@example.vn", "8100427734"),
]


def logged(args: list[str], output: Path) -> contextlib.AbstractContextManager[Any]:
    """Run ``dispatcher <args>`` with every line it writes going to ``output``."""
    return dispatcher_process(*args, output=output)


def json_lines(output: Path) -> list[dict[str, Any]]:
    """Every line the process wrote, each of which must be one JSON object."""
    lines = [line for line in output.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines, "the process wrote nothing"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON log line: {line[:300]!r}")
    return parsed


def assert_absent(output: Path, private: list[str]) -> None:
    text = output.read_text(encoding="utf-8")
    leaked = [p for p in private if p in text]
    assert not leaked, f"in the logs: {leaked}"


@pytest.fixture()
def json_logs(monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path) -> None:
    """The processes started by a test log everything, as JSON."""
    monkeypatch.setenv("DISPATCHER_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("DISPATCHER_LOG_FORMAT", "json")
    monkeypatch.setenv("DISPATCHER_METRICS_DIR", str(tmp_path / "metrics"))


@pytest.mark.timeout(600)
def test_a_worker_logs_ids_and_never_an_address_or_a_token(
    client,
    db: Database,
    smtp: SmtpServer,
    settings: Settings,
    redis_client: redis.Redis,
    json_logs: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    with TelegramEmulator(TOKEN, global_rate=30) as telegram:
        configure(
            monkeypatch,
            {"TELEGRAM_TOKEN": TOKEN, "TELEGRAM_BASE_URL": telegram.bot_base_url},
        )
        body = [
            {
                "external_id": external_id,
                "full_name": name,
                "addresses": {"email": mail, "telegram": chat},
            }
            for external_id, name, mail, chat in PEOPLE
        ]
        assert client.post("/v1/recipients", json=body).status_code == 200
        assert client.post("/v1/templates", json=TEMPLATE).status_code == 201
        # Failures whose replies quote the address, a blocked chat and a provider blip: the
        # paths where an address is most likely to slip into a log line.
        rejected, greylisted = PEOPLE[1][2], PEOPLE[2][2]
        smtp.mailbox.script[rejected] = [f"550 5.1.1 <{rejected}>: Recipient address rejected"]
        smtp.mailbox.script[greylisted] = [f"451 4.7.1 <{greylisted}>: greylisted, try later"]
        telegram.block(PEOPLE[3][3])
        telegram.script(PEOPLE[0][3], server_error())
        created = client.post(
            "/v1/campaigns",
            json={
                "name": "Nhật ký",
                "kind": "fraud_warning",
                "template": TEMPLATE["key"],
                "audience": {"all": True},
                "channels": ["email", "telegram"],
            },
        )
        assert created.status_code == 201, created.text
        campaign_id = int(created.json()["id"])
        client.post(f"/v1/campaigns/{campaign_id}/submit")
        assert approve(client, campaign_id).status_code == 200

        output = tmp_path / "worker.log"
        with logged(["worker", "--queues", "urgent", "--threads", "2"], output) as worker:
            done = wait_for(
                lambda: (c := campaign_status(client, campaign_id))["status"] == "completed" and c,
                timeout=90,
                interval=0.2,
                what="the worker to finish the campaign",
            )
            assert worker.poll() is None
        assert done["counts"]["by_status"] == {"sent": 6, "failed": 2}
        assert len(telegram.outbox) == 3

    lines = json_lines(output)
    (run,) = done["runs"]
    deliveries = {d["id"] for d in all_deliveries(client, campaign_id=campaign_id)}
    batches = [line for line in lines if line["event"] == "batch_done"]
    assert batches
    for line in batches:
        assert (line["campaign_id"], line["run_id"]) == (campaign_id, run["id"])
        assert line["batch_id"]
    # Written by the adapters on the event loop during a send: the batch's ids and the
    # delivery being sent reach them through the context.
    opened = {line["channel"]: line for line in lines if line["event"] == "adapter_opened"}
    assert set(opened) == {"email", "telegram"}
    for line in opened.values():
        assert (line["campaign_id"], line["run_id"]) == (campaign_id, run["id"])
        assert line["delivery_id"] in deliveries
    # The standard library's lines (dramatiq's own) come out as JSON too.
    assert any(line.get("logger", "").startswith("dramatiq") for line in lines)
    assert {line["level"] for line in lines} >= {"debug", "info"}

    private = [mail for _, _, mail, _ in PEOPLE] + [chat for *_, chat in PEOPLE]
    assert_absent(output, [*private, TOKEN, TOKEN.split(":", 1)[1]])


@pytest.mark.timeout(600)
def test_the_api_logs_no_unsubscribe_token_key_or_address(
    client,
    db: Database,
    settings: Settings,
    redis_client: redis.Redis,
    json_logs: None,
    tmp_path: Path,
) -> None:
    external_id, _, mail, _ = PEOPLE[0]
    person = {"external_id": external_id, "full_name": "Vũ Thị Lan", "addresses": {"email": mail}}
    assert client.post("/v1/recipients", json=person).is_success
    with db.transaction() as session:
        recipient_id = session.scalar(
            select(Recipient.id).where(Recipient.external_id == external_id)
        )
        assert recipient_id is not None
        token = consent.token_for(
            secrets.signing_key(session, settings),
            recipient_id=recipient_id,
            channel="email",
            kind="fraud_warning",
        )
    operator = make_key(db, "operator", "Prometheus")
    admin = make_key(db, "admin", "Quản trị")
    forged = "bhxh_0123456789ab_" + "x" * 43
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    output = tmp_path / "api.log"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    with logged(["serve", "--port", str(port)], output):
        wait_for(up, timeout=300, what="dispatcher serve to answer")
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get(f"/u/{token}").status_code == 200
            assert http.post(f"/u/{token}").status_code == 200
            bearer = {"Authorization": f"Bearer {operator}"}
            assert http.get("/metrics", headers=bearer).status_code == 200
            admin_bearer = {"Authorization": f"Bearer {admin}"}
            assert http.get(f"/v1/recipients/{external_id}", headers=admin_bearer).is_success
            refused = http.get("/metrics", headers={"Authorization": f"Bearer {forged}"})
            assert refused.status_code == 401

    lines = json_lines(output)
    events = [line["event"] for line in lines]
    # The access log names the path, with the citizen's token hidden.
    assert any("/u/*** HTTP/1.1" in event and "GET" in event for event in events), events
    assert any("/metrics HTTP/1.1" in event for event in events)
    assert_absent(output, [token, token.split(".")[0], operator, admin, forged, mail])


# -- in-process: the processors themselves -------------------------------------------------------


@pytest.fixture()
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """configure_logging into a buffer, putting the process's logging back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, structlog.get_config())
    quiet = {name: logging.getLogger(name).level for name in QUIET_LIBRARIES}
    monkeypatch.setenv("DISPATCHER_SMTP_PASSWORD", "pa55-w0rd-from-settings")
    get_settings.cache_clear()
    stream = io.StringIO()
    configure_logging("DEBUG", json=True, stream=stream)
    yield stream
    logging.captureWarnings(False)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    structlog.configure(**saved[2])
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    get_settings.cache_clear()


def read(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_context_reaches_the_event_loop_and_stays_there(captured: io.StringIO) -> None:
    log = structlog.get_logger("tests.logging")

    async def send() -> None:
        log.info("sending")
        await asyncio.gather(asyncio.sleep(0))
        logging.getLogger("some.library").warning("library line")

    async def later() -> None:
        log.info("unrelated")

    loop = LoopThread()
    try:
        with bound_contextvars(campaign_id=7, run_id=11):
            loop.run(send(), timeout=10)
        loop.run(later(), timeout=10)
    finally:
        loop.stop()
    by_event = {line["event"]: line for line in read(captured)}
    for event in ("sending", "library line"):
        assert (by_event[event]["campaign_id"], by_event[event]["run_id"]) == (7, 11)
    assert by_event["library line"]["logger"] == "some.library"
    assert by_event["library line"]["level"] == "warning"
    # The loop thread's own context never took the batch's ids.
    assert "campaign_id" not in by_event["unrelated"]


def test_every_line_is_scrubbed(captured: io.StringIO) -> None:
    log = structlog.get_logger("tests.logging")
    redact.remember(["adapter-held-credential-42"])
    log.info(
        "delivered",
        address="an.nguyen@example.vn",
        chat_id=8100427731,
        note="to an.nguyen@example.vn via https://api.example/bot6000000001:"
        "AAHsecretsecretsecretsecretsecret000/sendMessage",
        header="Bearer bhxh_0123456789ab_ThisIsTheSecretPartOfTheKey0123456789abcdef",
        link="https://thongbao.bhxh.test/u/MTIzLmVtYWlsLmdyZWV0aW5n.c2lnbmF0dXJl",
        nested={"to": "ngoc@example.vn", "tries": [{"reply": "550 <duc@example.vn> unknown"}]},
        held="using adapter-held-credential-42 and pa55-w0rd-from-settings",
    )
    # An access log line, as a server writes it (the real one: the API test above).
    logging.getLogger("some.server").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/u/MTIzLmVtYWls.c2ln", "1.1", 200
    )
    try:
        raise ValueError("the relay refused huong.pham@example.vn")
    except ValueError:
        log.exception("send_crashed")
    text = captured.getvalue()
    for private in (
        "example.vn",
        "8100427731",
        "AAHsecret",
        "ThisIsTheSecretPart",
        "MTIzLmVtYWls",
        "adapter-held-credential-42",
        "pa55-w0rd-from-settings",
    ):
        assert private not in text, private
    lines = {line["event"]: line for line in read(captured)}
    delivered = lines["delivered"]
    assert delivered["address"] == delivered["chat_id"] == "***"
    assert delivered["header"] == "Bearer ***"
    assert delivered["link"] == "https://thongbao.bhxh.test/u/***"
    assert delivered["nested"]["to"] == "***"
    assert '127.0.0.1:5000 - "GET /u/*** HTTP/1.1" 200' in lines
    assert "ValueError: the relay refused ***" in lines["send_crashed"]["exception"]
