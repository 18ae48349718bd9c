"""One-click unsubscribe from a real email, honoured by later campaigns, unforgeable."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

from tests.support import SmtpServer, wait_for
from tests.test_end_to_end import (
    PEOPLE,
    TEMPLATE,
    add_people,
    all_deliveries,
    campaign_status,
    launch,
    publish_template,
)


def run_campaign(client: Any, kind: str) -> dict[str, Any]:
    campaign_id = launch(client, kind=kind, priority="urgent")
    return dict(
        wait_for(lambda: (c := campaign_status(client, campaign_id))["status"] == "completed" and c)
    )


def unsubscribe_link(smtp: SmtpServer, address: str) -> str:
    header = smtp.mailbox.to(address)[-1]["List-Unsubscribe"]
    return "".join(str(header).split()).strip("<>").replace("https://thongbao.bhxh.test", "")


def test_one_click_unsubscribe_is_honoured_by_later_greetings(
    client, worker, smtp: SmtpServer
) -> None:
    add_people(client)
    publish_template(client)
    run_campaign(client, "greeting")
    link = unsubscribe_link(smtp, "an.nguyen@example.vn")

    page = client.get(link)
    assert page.status_code == 200
    assert "Hủy đăng ký nhận thông báo" in page.text
    assert "thư chúc mừng qua thư điện tử" in page.text
    assert 'method="post"' in page.text
    # RFC 8058: the mail client POSTs this exact body, with no cookies.
    done = client.post(link, data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200
    assert "Đã hủy đăng ký" in done.text
    assert client.post(link).status_code == 200, "unsubscribing twice is harmless"

    second = run_campaign(client, "greeting")
    assert second["counts"]["by_status"] == {"sent": 4, "skipped": 1}
    (skipped,) = all_deliveries(client, campaign_id=second["id"], status="skipped")
    assert skipped["recipient"] == "0100000001"
    assert skipped["error_class"] == "opted_out"
    assert len(smtp.mailbox.to("an.nguyen@example.vn")) == 1

    # A greeting opt-out does not stop a fraud warning.
    warning = run_campaign(client, "fraud_warning")
    assert warning["counts"]["by_status"] == {"sent": len(PEOPLE)}
    assert len(smtp.mailbox.to("an.nguyen@example.vn")) == 2


def test_a_warning_link_unsubscribes_from_the_whole_channel(
    client, worker, smtp: SmtpServer
) -> None:
    add_people(client, PEOPLE[:2])
    publish_template(client)
    run_campaign(client, "fraud_warning")
    link = unsubscribe_link(smtp, "ngoc.tran@example.vn")
    assert "mọi thông báo qua thư điện tử" in client.get(link).text
    client.post(link)
    for kind in ("greeting", "policy_news", "fraud_warning"):
        counts = run_campaign(client, kind)["counts"]["by_status"]
        assert counts == {"sent": 1, "skipped": 1}, kind


def test_tokens_cannot_be_forged(client, smtp: SmtpServer, worker) -> None:
    add_people(client, PEOPLE[:2])
    publish_template(client)
    run_campaign(client, "greeting")
    link = unsubscribe_link(smtp, "an.nguyen@example.vn")
    token = link.rsplit("/", 1)[1]
    body, stamp, signature = token.split(".")
    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    other = payload.replace(payload.split(".")[0], "999999", 1)
    forged_body = base64.urlsafe_b64encode(other.encode()).decode().rstrip("=")
    for forged in (
        f"{forged_body}.{stamp}.{signature}",
        f"{body}.AAAAAA.{signature}",
        f"{body}.{stamp}.{signature[:-2]}AA",
        "garbage",
        f"{body}.{stamp}.",
        f"{body}.{signature}",
    ):
        assert client.get(f"/u/{forged}").status_code == 400
        response = client.post(f"/u/{forged}")
        assert response.status_code == 400
        assert "Liên kết không hợp lệ" in response.text
    assert run_campaign(client, "greeting")["counts"]["by_status"] == {"sent": 2}


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def variants(token: str) -> list[str]:
    """The same token re-encoded: padded, with stray characters, with the unused low bits of
    its last character set. Each decodes to the same bytes as the original."""
    head, _, signature = token.rpartition(".")
    last = B64.index(signature[-1])
    low_bits = B64[last ^ 1]  # 16 or 32 bytes in base64 leave 2 or 4 bits unused at the end
    made = [
        f"{token}=",
        f"{token}==",
        f"{head}.{signature[:5]}!{signature[5:]}",
        f"{head}.{signature[:-1]}{low_bits}",
    ]
    for variant in made:
        assert variant != token
    again = made[-1].rpartition(".")[2]
    assert base64.urlsafe_b64decode(again + "=" * (-len(again) % 4)) == base64.urlsafe_b64decode(
        signature + "=" * (-len(signature) % 4)
    )
    return made


def a_link(db: Any, settings: Any, *, kind: str = "greeting") -> str:
    from dispatcher.consent import service as consent
    from dispatcher.core import secrets

    with db.transaction() as session:
        key = secrets.signing_key(session, settings)
    return consent.token_for(key, recipient_id=1, channel="email", kind=kind)


def test_only_the_exact_token_is_accepted(client, db, settings) -> None:
    token = a_link(db, settings)
    assert token.count(".") == 2
    assert client.get(f"/u/{token}").status_code == 200
    for variant in variants(token):
        refused = client.get(f"/u/{variant}")
        assert refused.status_code == 400, variant
        assert "Liên kết không hợp lệ" in refused.text
        assert client.post(f"/u/{variant}").status_code == 400, variant


def test_links_expire_after_the_configured_days(client, db, settings, monkeypatch) -> None:
    from dispatcher.core.config import get_settings
    from dispatcher.kit.clock import clock, utcnow

    sent_at = utcnow()
    clock.freeze(sent_at)
    token = a_link(db, settings)
    clock.freeze(sent_at + timedelta(days=399))
    assert "Hủy đăng ký nhận thông báo" in client.get(f"/u/{token}").text
    clock.freeze(sent_at + timedelta(days=401))
    for answer in (client.get(f"/u/{token}"), client.post(f"/u/{token}")):
        assert answer.status_code == 410
        assert "Liên kết đã hết hạn" in answer.text
        assert "400 ngày" in answer.text and "1900 9068" in answer.text
        assert "thư chúc mừng qua thư điện tử" in answer.text, "says what it was for"
    # The validity is a setting.
    monkeypatch.setenv("DISPATCHER_UNSUBSCRIBE_LINK_DAYS", "500")
    get_settings.cache_clear()
    assert client.get(f"/u/{token}").status_code == 200


def test_links_sent_before_links_were_dated_work_until_they_expire(client, db, settings) -> None:
    """Links in emails sent before the upgrade (``payload.signature``, no date) are honoured
    for the validity counted from the upgrade, which the migration records."""
    from dispatcher.consent.service import TIMED_LINKS_SINCE
    from dispatcher.core import secrets
    from dispatcher.core.secrets import ServiceSecret
    from dispatcher.kit.clock import clock, utcnow

    upgraded_at = utcnow()
    with db.transaction() as session:
        key = secrets.signing_key(session, settings)
        session.add(ServiceSecret(name=TIMED_LINKS_SINCE, value="", created_at=upgraded_at))
    old = secrets.sign(key, "1.email.greetings")
    assert old.count(".") == 1
    clock.freeze(upgraded_at + timedelta(days=399))
    assert client.get(f"/u/{old}").status_code == 200
    for variant in variants(old):
        assert client.get(f"/u/{variant}").status_code == 400, variant
    clock.freeze(upgraded_at + timedelta(days=401))
    expired = client.get(f"/u/{old}")
    assert expired.status_code == 410 and "Liên kết đã hết hạn" in expired.text


def test_transactional_messages_ignore_opt_outs(client, worker, smtp: SmtpServer) -> None:
    add_people(client, PEOPLE[:1])
    publish_template(client)
    run_campaign(client, "fraud_warning")
    client.post(unsubscribe_link(smtp, "an.nguyen@example.vn"))
    sent = client.post(
        "/v1/messages",
        json={"recipient": "0100000001", "template": TEMPLATE["key"], "channels": ["email"]},
    )
    assert sent.status_code == 202
    wait_for(lambda: len(smtp.mailbox.to("an.nguyen@example.vn")) == 2)


def test_a_batchs_links_are_the_links_token_for_makes(client, db, settings) -> None:
    """A batch signs its links with one signer (dated once); each is the very text
    ``token_for`` makes at the same second, and is accepted."""
    from dispatcher.consent import service as consent
    from dispatcher.core import secrets
    from dispatcher.kit.clock import clock, utcnow

    with db.transaction() as session:
        key = secrets.signing_key(session, settings)
    clock.freeze(utcnow())
    for kind in ("greeting", "fraud_warning"):
        link = consent.link_tokens(key, kind=kind)
        for recipient_id, channel in ((1, "email"), (987_654_321, "zalo_oa"), (7, "sms")):
            expected = consent.token_for(key, recipient_id=recipient_id, channel=channel, kind=kind)
            assert link(recipient_id, channel) == expected
    assert client.get(f"/u/{consent.link_tokens(key, kind='greeting')(1, 'email')}").is_success
