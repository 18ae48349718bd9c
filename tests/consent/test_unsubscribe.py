"""One-click unsubscribe from a real email, honoured by later campaigns, unforgeable."""

from __future__ import annotations

import base64
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
    body, signature = token.split(".")
    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    other = payload.replace(payload.split(".")[0], "999999", 1)
    forged_body = base64.urlsafe_b64encode(other.encode()).decode().rstrip("=")
    for forged in (
        f"{forged_body}.{signature}",
        f"{body}.{signature[:-2]}AA",
        "garbage",
        f"{body}.",
    ):
        assert client.get(f"/u/{forged}").status_code == 400
        response = client.post(f"/u/{forged}")
        assert response.status_code == 400
        assert "Liên kết không hợp lệ" in response.text
    assert run_campaign(client, "greeting")["counts"]["by_status"] == {"sent": 2}


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
