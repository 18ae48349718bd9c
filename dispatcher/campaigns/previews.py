"""What an approver reads: each channel's message as the run standing for an instant sends it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dispatcher.audiences import service as audiences
from dispatcher.campaigns.launching import first_firing
from dispatcher.campaigns.schemas import ChannelPreviewOut
from dispatcher.content import service as content
from dispatcher.content.render import Rendered
from dispatcher.kit.clock import utcnow
from dispatcher.kit.errors import Conflict
from dispatcher.scheduling import rules
from dispatcher.scheduling.rules import calendar_variables
from dispatcher.tables.campaigns import Campaign, is_stream
from dispatcher.tables.content import Template
from dispatcher.tables.recipients import Recipient
from dispatcher.units import scope as scopes


@dataclass(frozen=True, slots=True)
class ChannelPreview:
    channel: str
    rendered: Rendered | None


def send_moment(campaign: Campaign, now: datetime) -> datetime:
    """The instant the campaign's next run stands for, whose calendar its messages carry: the
    next firing of its rule, its ``send_at``, or now (it sends when approved)."""
    if campaign.schedule is not None:
        return campaign.next_fire_at or first_firing(campaign, now) or now
    return campaign.send_at or campaign.approved_preview_for or now


def run_variables(campaign: Campaign, at: datetime) -> dict[str, Any]:
    """The variables a run standing for ``at`` gives its templates, merged as the sending
    pipeline merges them: the calendar of ``at``, the campaign's, then a firing's own."""
    firing = rules.firing_variables(rules.parse(campaign.schedule), at) if campaign.schedule else {}
    return {**calendar_variables(at), **(campaign.variables or {}), **firing}


def previews(
    *, session: Session, campaign: Campaign, version_id: int, at: datetime
) -> list[ChannelPreview]:
    """Each channel's message as the sample person would get it from the run standing for
    ``at``: what an approver reads."""
    variables = run_variables(campaign, at)
    return [
        ChannelPreview(
            channel,
            content.render_sample(
                session=session, version_id=version_id, channel=channel, variables=variables
            ),
        )
        for channel in campaign.channels
    ]


def preview_out(
    *, session: Session, campaign: Campaign, now: datetime | None = None
) -> list[ChannelPreviewOut]:
    """The preview of the campaign's next run (its frozen template version once approved)."""
    version_id = campaign.template_version_id
    if version_id is None:
        template = session.get(Template, campaign.template_id)
        assert template is not None
        version_id = content.get_version(session=session, template=template).id
    at = send_moment(campaign, now or utcnow())
    out = []
    for item in previews(session=session, campaign=campaign, version_id=version_id, at=at):
        r = item.rendered
        out.append(
            ChannelPreviewOut(
                channel=item.channel,
                rendered_for=at,
                locale=r.locale if r else None,
                subject=r.subject if r else None,
                body=r.body if r else None,
                html=r.html if r else None,
                problem=None if r else "the template has no variant for this channel",
            )
        )
    return out


def preview_hash(*, session: Session, campaign: Campaign, version_id: int, at: datetime) -> str:
    digest = hashlib.sha256()
    for item in previews(session=session, campaign=campaign, version_id=version_id, at=at):
        r = item.rendered
        parts = [item.channel] + ([r.subject or "", r.body, r.html or ""] if r else ["-"])
        digest.update("\x1f".join(parts).encode() + b"\x1e")
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class AudienceCount:
    """Whom a campaign reaches now: ``count`` people; ``outside_territory`` more match its
    filter but live outside its unit's territory, which every audience is intersected with."""

    count: int
    outside_territory: int


def audience_counts(*, session: Session, campaign: Campaign) -> AudienceCount:
    """How many people the campaign's filter reaches inside its unit's territory, and how many
    the territory removed. Counted past the caller's own scope: these are the campaign's
    figures, the same for whoever reads them."""
    if is_stream(campaign.kind, campaign.name, campaign.channels):
        raise Conflict(
            f"campaign {campaign.id} is the stream of one-off messages of its template: it has "
            "no audience (each message names its recipient)"
        )
    where = audiences.compile_for(session, campaign.audience)
    territory = scopes.territory_clause(session, campaign.unit_id)
    matching = select(func.count()).select_from(Recipient).where(where)
    inside = session.scalar(matching.where(territory), execution_options=scopes.UNSCOPED) or 0
    every = session.scalar(matching, execution_options=scopes.UNSCOPED) or 0
    return AudienceCount(count=inside, outside_territory=max(0, every - inside))


def audience_count(*, session: Session, campaign: Campaign) -> int:
    """How many people the campaign reaches now (inside its unit's territory)."""
    return audience_counts(session=session, campaign=campaign).count
