"""Transactional messages: one recipient, at once, on the urgent queue, idempotent."""

from __future__ import annotations

from tests.support import SmtpServer, wait_for
from tests.test_end_to_end import add_people, publish_template


def test_idempotency_key_sends_once(client, worker, smtp: SmtpServer) -> None:
    add_people(client)
    publish_template(client)
    body = {"recipient": "0100000001", "template": "canh_bao_test", "channels": ["email"]}
    headers = {"Idempotency-Key": "nop-tien-2026-11-0100000001"}
    first = client.post("/v1/messages", json=body, headers=headers)
    assert first.status_code == 202, first.text
    again = client.post("/v1/messages", json=body, headers=headers)
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    message_id = first.json()["id"]

    done = wait_for(
        lambda: (
            (m := client.get(f"/v1/messages/{message_id}").json())["status"] == "completed" and m
        )
    )
    assert [d["status"] for d in done["deliveries"]] == ["sent"]
    assert len(smtp.mailbox.to("an.nguyen@example.vn")) == 1
    # Transactional mail carries no unsubscribe header.
    assert smtp.mailbox.to("an.nguyen@example.vn")[0]["List-Unsubscribe"] is None

    # A different key is a different message.
    other = client.post("/v1/messages", json=body, headers={"Idempotency-Key": "other"})
    assert other.json()["id"] != message_id
    wait_for(lambda: len(smtp.mailbox.to("an.nguyen@example.vn")) == 2)


def test_message_to_unknown_recipient_or_channel_is_refused(client) -> None:
    add_people(client)
    publish_template(client)
    response = client.post(
        "/v1/messages", json={"recipient": "nobody", "template": "canh_bao_test"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "recipient"]
    response = client.post(
        "/v1/messages",
        json={"recipient": "0100000001", "template": "canh_bao_test", "channels": ["null"]},
    )
    assert response.status_code == 422
    assert "no live address" in response.text or "no variant" in response.text
