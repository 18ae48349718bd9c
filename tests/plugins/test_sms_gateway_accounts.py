"""A third-party adapter, unchanged, sends through a unit's own account: the plugin contract
needs nothing for accounts."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from dispatcher.core.db import Database
from dispatcher.tables.campaigns import Campaign
from tests.deliveries.conftest import configure
from tests.plugins.gateway import API_KEY, Gateway
from tests.plugins.test_sms_gateway import CHANNEL, PEOPLE, TEMPLATE, _completed
from tests.support import approve
from tests.test_channel_accounts import OUTSIDE_KEY, make_units


def test_a_units_campaign_goes_through_its_own_gateway_account(
    client: Any, worker: object, db: Database, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, {"SECRET_KEY": OUTSIDE_KEY})
    ids = make_units(db)
    with Gateway() as hanoi:
        put = client.put(
            f"/v1/units/HN/accounts/{CHANNEL}",
            json={"values": {"url": hanoi.url, "api_key": API_KEY, "sender": "BHXHHN"}},
        )
        assert put.status_code == 200, put.text
        assert put.json()["set_fields"] == ["api_key", "sender", "url"]
        # In Hà Nội: a unit's campaign reaches only its territory.
        people = [{**person, "province": "Hà Nội"} for person in PEOPLE[:2]]
        assert client.post("/v1/recipients", json=people).status_code == 200
        assert client.post("/v1/templates", json=TEMPLATE).status_code == 201
        campaigns = {}
        for unit in ("HN", "VN"):
            created = client.post(
                "/v1/campaigns",
                json={
                    "name": f"SMS {unit}",
                    "kind": "fraud_warning",
                    "template": TEMPLATE["key"],
                    "audience": {"all": True},
                    "channels": [CHANNEL],
                },
            )
            assert created.status_code == 201, created.text
            campaign_id = int(created.json()["id"])
            with db.transaction() as session:
                session.execute(
                    update(Campaign).where(Campaign.id == campaign_id).values(unit_id=ids[unit])
                )
            client.post(f"/v1/campaigns/{campaign_id}/submit")
            assert approve(client, campaign_id).status_code == 200
            campaigns[unit] = campaign_id
            done = _completed(client, campaign_id)
            assert done["counts"]["by_channel"] == {CHANNEL: {"sent": 2}}
    # HN's through its own gateway and sender; the root's through the environment's.
    assert sorted((m.to, m.sender) for m in hanoi.outbox) == [
        ("+84900000001", "BHXHHN"),
        ("+84900000002", "BHXHHN"),
    ]
    assert sorted((m.to, m.sender) for m in gateway.outbox) == [
        ("+84900000001", "BHXHVN"),
        ("+84900000002", "BHXHVN"),
    ]
