"""At send time, a render over its budget fails that delivery for good, with the reason, and
the worker goes on: the rest of the batch and the next batch are sent."""

from __future__ import annotations

import pytest

from tests.support import SmtpServer, wait_for
from tests.test_end_to_end import all_deliveries, campaign_status, launch

# Fine for the sample people (no attributes), over budget for some recipients' data.
TEMPLATE = {
    "key": "theo_du_lieu",
    "kind": "fraud_warning",
    "variants": [
        {
            "channel": "email",
            "subject": "Thông báo",
            "body": "Chào {{ recipient.given_name }}"
            "{{ 'a' * (recipient.attributes.times|default(0)) }}"
            "{% for i in range(recipient.attributes.loops|default(0)) %}"
            "{% for j in range(recipient.attributes.loops|default(0)) %}{% endfor %}"
            "{% endfor %}",
        }
    ],
}


@pytest.mark.timeout(180)
def test_a_render_over_budget_fails_its_delivery_and_the_worker_goes_on(
    client, worker, smtp: SmtpServer
) -> None:
    people = [
        {
            "external_id": f"07{i:08d}",
            "full_name": f"Vũ Văn {i}",
            "addresses": {"email": f"vu{i}@example.vn"},
            "attributes": {"times": 10**9} if i == 0 else {"loops": 100_000} if i == 1 else {},
        }
        for i in range(12)  # two batches of at most 10
    ]
    assert client.post("/v1/recipients", json=people).status_code == 200
    response = client.post("/v1/templates", json=TEMPLATE)
    assert response.status_code == 201, response.text
    campaign_id = launch(client, template=TEMPLATE["key"])
    done = wait_for(
        lambda: (c := campaign_status(client, campaign_id))["status"] == "completed" and c,
        timeout=120,
    )
    assert done["counts"]["by_status"] == {"sent": 10, "failed": 2}
    failed = {d["recipient"]: d for d in all_deliveries(client, campaign_id=campaign_id)}
    too_long = failed["0700000000"]
    assert too_long["status"] == "failed"
    assert too_long["error_class"] == "template"
    assert (
        "template budget exceeded: a repeated string over 1000000 characters"
        in (too_long["error_reason"])
    )
    too_slow = failed["0700000001"]
    assert too_slow["status"] == "failed"
    assert too_slow["error_class"] == "template"
    assert "template budget exceeded: over 100000 loop iterations" in too_slow["error_reason"]
    # Nothing was sent to them; everyone else got their message.
    assert too_long["attempts"] == [] and too_slow["attempts"] == []
    assert smtp.mailbox.to("vu0@example.vn") == [] and smtp.mailbox.to("vu1@example.vn") == []
    assert smtp.mailbox.count() == 10
