"""Campaigns, recipients and deliveries written straight to the database, in bulk.

For tests of what is read back (search, export, report): no send happens, the rows say what
a send would have left behind, at fixed instants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from dispatcher.core.db import Database
from dispatcher.tables import partitions
from dispatcher.tables.campaigns import Campaign, Run
from dispatcher.tables.content import Template
from dispatcher.tables.deliveries import Attempt, Delivery
from dispatcher.tables.recipients import Address, Recipient

# An ordinary Tuesday morning (UTC); nothing depends on the day the tests run.
BASE = datetime(2026, 3, 10, 3, 0, tzinfo=UTC)


def make_campaign(db: Database, *, name: str = "Thông báo", runs: int = 1) -> tuple[int, list[int]]:
    """A running campaign with ``runs`` runs; returns its id and the runs' ids."""
    with db.transaction() as session:
        template_id = (
            session.scalar(select(Template.id).where(Template.key == "tra_cuu_test"))
            or session.execute(
                insert(Template)
                .values(key="tra_cuu_test", kind="policy_news")
                .returning(Template.id)
            ).scalar_one()
        )
        campaign_id = session.execute(
            insert(Campaign)
            .values(
                name=name,
                kind="policy_news",
                template_id=template_id,
                audience={"all": True},
                channels=["email", "zalo", "telegram"],
                priority="bulk",
                status="running",
            )
            .returning(Campaign.id)
        ).scalar_one()
        run_ids = [
            session.execute(
                insert(Run)
                .values(
                    campaign_id=campaign_id,
                    scheduled_for=BASE + timedelta(days=index),
                    slot=f"slot-{index}",
                    status="running",
                )
                .returning(Run.id)
            ).scalar_one()
            for index in range(runs)
        ]
        # The runs' months' partitions (PostgreSQL), as a launch makes them.
        for index in range(runs):
            partitions.ensure_month(
                session.connection(), partitions.period_of(BASE + timedelta(days=index))
            )
    return campaign_id, run_ids


def add_recipients(db: Database, people: Iterable[tuple[str, Mapping[str, str]]]) -> dict[str, int]:
    """Recipients by external id with their addresses per channel; returns their ids."""
    people = list(people)
    with db.transaction() as session:
        session.execute(
            insert(Recipient),
            [{"external_id": external_id, "full_name": "Người nhận"} for external_id, _ in people],
        )
        wanted = {external_id for external_id, _ in people}
        ids = {
            external_id: recipient_id
            for external_id, recipient_id in session.execute(
                select(Recipient.external_id, Recipient.id)
            )
            if external_id in wanted
        }
        addresses = [
            {"recipient_id": ids[external_id], "channel": channel, "value": value}
            for external_id, by_channel in people
            for channel, value in by_channel.items()
        ]
        if addresses:
            session.execute(insert(Address), addresses)
    return ids


def add_deliveries(db: Database, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Delivery rows (``run_id``, ``campaign_id``, ``recipient_id``, ``channel`` and whatever
    else differs from a fresh sent one at ``BASE``); returns their ids in the given order."""
    defaults = {
        "status": "sent",
        "attempts": 1,
        "available_at": BASE,
        "created_at": BASE,
        "updated_at": BASE,
        "sent_at": None,
        "error_class": None,
        "error_reason": None,
    }
    values = [{**defaults, **row} for row in rows]
    for value in values:
        if value["status"] == "sent" and value["sent_at"] is None:
            value["sent_at"] = value["updated_at"]
    with db.transaction() as session:
        session.execute(insert(Delivery), values)
        found = {
            (run_id, recipient_id, channel): delivery_id
            for delivery_id, run_id, recipient_id, channel in session.execute(
                select(Delivery.id, Delivery.run_id, Delivery.recipient_id, Delivery.channel)
            )
        }
    return [found[(v["run_id"], v["recipient_id"], v["channel"])] for v in values]


def add_attempts(db: Database, rows: Sequence[Mapping[str, Any]]) -> None:
    defaults = {"number": 1, "started_at": BASE, "duration_ms": 40, "outcome": "sent"}
    with db.transaction() as session:
        session.execute(insert(Attempt), [{**defaults, **row} for row in rows])
