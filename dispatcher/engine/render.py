"""Render for send: each claimed delivery's message, from the run's frozen template version.

The variables a message sees are the run's calendar (its scheduled day, solar and lunar), the
campaign's and the run's own, and the recipient's view in the variant's locale. Every message
but a transactional one carries its signed unsubscribe link. Rendering runs in the sandbox
under its budget (:mod:`dispatcher.content.render`); a template that fails there fails its
delivery, not the batch.
"""

from __future__ import annotations

from typing import Any

from channels.base import Category, ErrorClass, Message
from dispatcher.consent import service as consent
from dispatcher.content import service as content
from dispatcher.content.render import TemplateProblem, VariantData, choose_variant, renderer
from dispatcher.core.config import Settings
from dispatcher.engine.claim import Claim
from dispatcher.scheduling.rules import calendar_variables
from dispatcher.tables.deliveries import DeliveryStatus


def render(claim: Claim, *, settings: Settings, signing_key: bytes | None) -> None:
    """Give each claimed row its message, or its outcome when it has none to send: no live
    address (skipped), no variant for its channel or a template error (failed). A recipient's
    view and each (channel, language)'s variant are worked out once per batch."""
    campaign, run, people = claim.campaign, claim.run, claim.people
    defaults, variants, addresses = claim.defaults, claim.variants, claim.addresses
    assert campaign is not None and run is not None
    kind = Category(campaign.kind)
    variables = {
        **calendar_variables(run.scheduled_for),
        **(campaign.variables or {}),
        **(run.variables or {}),
    }
    unsubscribe_base = f"{settings.public_url}/u/"
    transactional = kind is Category.transactional
    campaign_id = campaign.id
    if not transactional:
        assert signing_key is not None
        # The batch's links, dated once (its renders take well under a second).
        link = consent.link_tokens(signing_key, kind=kind.value)
    chosen: dict[tuple[str, str | None], VariantData | None] = {}
    views: dict[tuple[int, str], Any] = {}
    for item in claim.work:
        person = people.get(item.recipient_id)
        address = addresses.get(item.delivery_id)
        if person is None or address is None:
            item.status = DeliveryStatus.skipped
            item.error_class = ErrorClass.no_address
            item.error_reason = f"no live {item.channel} address"
            continue
        language = person["language"]
        key = (item.channel, language)
        if key in chosen:
            variant = chosen[key]
        else:
            variant = chosen[key] = choose_variant(variants, item.channel, language)
        if variant is None:
            item.status = DeliveryStatus.failed
            item.error_class = ErrorClass.template
            item.error_reason = f"no variant for {item.channel}"
            continue
        item.locale = locale = variant.locale
        view = views.get((item.recipient_id, locale))
        if view is None:
            view = views[(item.recipient_id, locale)] = content.recipient_view(person, locale)
        unsubscribe = None
        if not transactional:
            unsubscribe = unsubscribe_base + link(item.recipient_id, item.channel)
        context = content.build_context(
            view,
            defaults=defaults,
            variables=variables,
            channel=item.channel,
            locale=locale,
            unsubscribe_url=unsubscribe,
        )
        try:
            rendered = renderer.render(variant, context)
        except TemplateProblem as problem:
            item.status = DeliveryStatus.failed
            item.error_class = ErrorClass.template
            item.error_reason = str(problem)
            continue
        item.message = Message(
            delivery_id=item.delivery_id,
            address=address,
            body=rendered.body,
            kind=kind,
            subject=rendered.subject,
            html=rendered.html,
            locale=locale,
            unsubscribe_url=unsubscribe,
            campaign_id=campaign_id,
            recipient=person["external_id"],
        )
