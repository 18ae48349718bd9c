"""Transactional messages (POST /v1/messages): one message, one run, sent at once.

Each template's messages hang under one standing campaign; an Idempotency-Key makes a retry
return the first message instead of sending a second.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dispatcher import audit
from dispatcher.auth.service import Caller, Role
from dispatcher.campaigns.lifecycle import check_template_covers
from dispatcher.campaigns.schemas import MessageDelivery, MessageIn, MessageOut
from dispatcher.content import service as content
from dispatcher.core.config import Settings
from dispatcher.engine import jobs
from dispatcher.engine.jobs import enqueue_after_commit, new_batch_id
from dispatcher.kit.clock import utcnow
from dispatcher.kit.errors import Conflict, Invalid, NotFound
from dispatcher.tables import partitions
from dispatcher.tables.campaigns import STREAM_PREFIX, Campaign, CampaignStatus, Run, RunStatus
from dispatcher.tables.content import Template
from dispatcher.tables.deliveries import Delivery, DeliveryStatus
from dispatcher.tables.partitions import period_of
from dispatcher.tables.recipients import Recipient
from dispatcher.tables.units import root_unit_id
from dispatcher.units import scope as scopes

# Roles that read every transactional message; any other key reads only its own.
READ_EVERY_MESSAGE = frozenset({Role.operator, Role.admin})


def _standing_campaign(session: Session, template: Template, unit_id: int | None) -> Campaign:
    """Each template's transactional messages hang under one always-running campaign per
    unit: the unit of the system (or person) that sends them, so that its staff see them and
    no other unit's do (``unit_id`` None: the root unit)."""
    name = f"{STREAM_PREFIX}{template.key}"
    unit = unit_id if unit_id is not None else root_unit_id(session.connection())
    campaign = session.scalar(
        select(Campaign)
        .where(Campaign.name == name, Campaign.kind == "transactional", Campaign.unit_id == unit)
        .order_by(Campaign.id)
        .limit(1)
    )
    if campaign is None:
        now = utcnow()
        campaign = Campaign(
            name=name,
            kind="transactional",
            template_id=template.id,
            audience={},
            channels=[],
            priority="urgent",
            variables={},
            status=CampaignStatus.running,
            created_at=now,
            updated_at=now,
            approved_at=now,
            unit_id=unit,
        )
        session.add(campaign)
        session.flush()
    return campaign


def message_out(*, session: Session, run: Run) -> MessageOut:
    deliveries = session.execute(
        select(Delivery.id, Delivery.channel, Delivery.status)
        .where(Delivery.run_id == run.id)
        .order_by(Delivery.id)
    ).all()
    return MessageOut(
        id=run.id,
        campaign_id=run.campaign_id,
        status=run.status,
        created_at=run.created_at,
        created_by=run.created_by,
        deliveries=[MessageDelivery(id=i, channel=c, status=s) for i, c, s in deliveries],
    )


def may_read_message(caller: Caller, run: Run) -> bool:
    """The key that sent a message reads it back; operators and admins read every message."""
    return bool(caller.roles & READ_EVERY_MESSAGE) or (
        caller.key_id is not None and run.created_by == caller.key_id
    )


def find_message(*, session: Session, message_id: int, caller: Caller) -> Run:
    """A transactional message the caller may read; anything else does not exist for it."""
    run = session.get(Run, message_id)
    if run is None or run.slot is not None or not may_read_message(caller, run):
        raise NotFound(f"message {message_id} does not exist")
    return run


def idempotency_scope(caller: Caller) -> str:
    """Whose Idempotency-Keys these are: each API key has its own (the same key sent by two
    keys is two messages). The one place to widen the scope to the key's owner."""
    return f"key:{caller.key_id}"


def idempotency_token(scope: str, key: str) -> str:
    """What ``runs.idempotency_key`` stores: unique per scope and key, of a fixed size."""
    return hashlib.sha256(f"{scope}\n{key}".encode()).hexdigest()


def request_hash(data: MessageIn) -> str:
    """SHA-256 of the request's canonical form: every field, defaults filled in, keys sorted
    (so the same request written another way is still the same request)."""
    canonical = json.dumps(
        data.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(run: Run, *, fingerprint: str, key: str, settings: Settings) -> Run:
    """The first message of a live key, if this request is the same as the one that made it.

    A message whose request was not recorded (a schema downgraded and upgraded again) is
    replayed: refusing a real retry would invite a new key and a second message."""
    if run.request_hash is not None and run.request_hash != fingerprint:
        raise Invalid(
            f"Idempotency-Key {key!r} was already used for a different request (message "
            f"{run.id}); a key stands for one request for "
            f"{settings.idempotency_key_hours:g} hours: send a new request with a new key",
            loc=["header", "Idempotency-Key"],
        )
    return run


def _live_key(session: Session, *, token: str, now: datetime, settings: Settings) -> Run | None:
    """The message a key stands for, or None; an expired key is released for a new message."""
    # The token is already the key's own (idempotency_scope): looked up past the unit scope,
    # so that a message filed under another unit's stream is still found, never sent twice.
    run = session.scalar(
        select(Run).where(Run.idempotency_key == token), execution_options=scopes.UNSCOPED
    )
    if run is None:
        return None
    if now < run.created_at + timedelta(hours=settings.idempotency_key_hours):
        return run
    session.execute(
        update(Run)
        .where(Run.id == run.id, Run.idempotency_key == token)
        .values(idempotency_key=None),
        execution_options={"synchronize_session": False},
    )
    session.expire(run)
    return None


def send_message(
    *,
    session: Session,
    data: MessageIn,
    settings: Settings,
    caller: Caller,
    idempotency_key: str | None,
) -> tuple[Run, bool]:
    """Queue one transactional message; returns the run and whether it was new.

    An ``idempotency_key`` is the caller's own (see ``idempotency_scope``) for
    ``settings.idempotency_key_hours`` after its first use: the same request again returns the
    first message and sends nothing; another request with it is refused (422). A concurrent
    duplicate waits for the first on the unique index and gets the same answer.
    """
    now = utcnow()
    token = fingerprint = None
    if idempotency_key is not None:
        token = idempotency_token(idempotency_scope(caller), idempotency_key)
        fingerprint = request_hash(data)
        existing = _live_key(session, token=token, now=now, settings=settings)
        if existing is not None:
            return _replay(
                existing, fingerprint=fingerprint, key=idempotency_key, settings=settings
            ), False
    recipient = session.scalar(select(Recipient).where(Recipient.external_id == data.recipient))
    if recipient is None:
        raise Invalid(f"recipient {data.recipient!r} does not exist", loc=["body", "recipient"])
    try:
        template = content.get_template(session=session, key=data.template)
    except NotFound:
        raise Invalid(
            f"template {data.template!r} does not exist", loc=["body", "template"]
        ) from None
    version = content.get_version(session=session, template=template)
    check_template_covers(session, template, version, data.channels)
    addresses = {a.channel: a for a in recipient.addresses}
    usable = [c for c in data.channels if c in addresses and addresses[c].dead_at is None]
    if not usable:
        raise Invalid(
            f"recipient {data.recipient!r} has no live address on {', '.join(data.channels)}",
            loc=["body", "channels"],
        )
    try:
        with session.begin_nested():
            # All in the savepoint: a duplicate that loses the race leaves nothing behind.
            campaign = _standing_campaign(session, template, caller.unit_id)
            run = Run(
                campaign_id=campaign.id,
                scheduled_for=now,
                slot=None,
                status=RunStatus.running,
                template_version_id=version.id,
                variables=data.variables,
                created_by=caller.key_id,
                idempotency_key=token,
                request_hash=fingerprint,
                created_at=now,
                started_at=now,
                planned_at=now,
                planned_count=len(usable),
            )
            session.add(run)
            session.flush()
    except IntegrityError:
        # The same key in a request that committed first (on PostgreSQL this insert waited
        # for it): answer as a retry would be answered.
        if token is None or fingerprint is None or idempotency_key is None:
            raise
        existing = session.scalar(
            select(Run).where(Run.idempotency_key == token), execution_options=scopes.UNSCOPED
        )
        if existing is None:
            raise Conflict(
                f"a concurrent request with Idempotency-Key {idempotency_key!r} did not "
                "finish; try again"
            ) from None
        return _replay(
            existing, fingerprint=fingerprint, key=idempotency_key, settings=settings
        ), False
    batch_id = new_batch_id()
    period = period_of(now)
    partitions.ensure_month(session.connection(), period)
    deliveries = [
        Delivery(
            run_id=run.id,
            campaign_id=campaign.id,
            recipient_id=recipient.id,
            channel=channel,
            status=DeliveryStatus.pending,
            batch_id=batch_id,
            available_at=now,
            created_at=now,
            updated_at=now,
            period=period,
        )
        for channel in usable
    ]
    session.add_all(deliveries)
    session.flush()
    audit.name_deliveries(
        session,
        [d.id for d in deliveries],
        actor="api",
        action=audit.PLANNED,
        subject=f"run:{run.id}",
    )
    # Transactional messages are urgent work.
    enqueue_after_commit(
        session,
        jobs.send_batch(
            run_id=run.id,
            ids=[d.id for d in deliveries],
            batch_id=batch_id,
            priority="urgent",
            settings=settings,
        ),
    )
    return run, True
