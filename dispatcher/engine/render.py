"""Render for send: each claimed delivery's message, from the run's frozen template version.

The variables a message sees are the run's calendar (its scheduled day, solar and lunar), the
campaign's and the run's own, and the recipient's view in the variant's locale. Every message
but a transactional one carries its signed unsubscribe link. Rendering runs in the sandbox
under its budget (:mod:`dispatcher.content.render`); a template that fails there fails its
delivery, not the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from channels.base import Category, ErrorClass, Message
from dispatcher.consent import service as consent
from dispatcher.content import service as content
from dispatcher.content.render import TemplateProblem, VariantData, choose_variant, renderer
from dispatcher.core.config import Settings
from dispatcher.engine.claim import Claim
from dispatcher.scheduling.rules import calendar_variables
from dispatcher.tables.deliveries import DeliveryStatus


class NoVariant(Exception):
    """The template version has no variant for the delivery's channel in any language of the
    recipient's chain (nor a generic one)."""


class BatchMessages:
    """Makes a batch's messages. What its deliveries share is worked out once: the variables,
    the links' date and key, each (channel, language)'s variant and each (recipient, locale)'s
    view. The floors of ``bench.floors`` render through it too."""

    def __init__(
        self,
        *,
        kind: Category,
        variants: Mapping[tuple[str, str], VariantData],
        defaults: Mapping[str, Any],
        scheduled_for: datetime,
        variables: list[Mapping[str, Any] | None],
        public_url: str,
        signing_key: bytes | None,
        campaign_id: int | None,
    ) -> None:
        """A run's messages: the calendar of its scheduled day, then each of ``variables``
        (the campaign's, the run's) over it, over the version's ``defaults``."""
        self.kind = kind
        self.variants = variants
        self.campaign_id = campaign_id
        self.defaults = defaults
        self.variables = calendar_variables(scheduled_for)
        for more in variables:
            self.variables.update(more or {})
        self.unsubscribe_base = f"{public_url}/u/"
        self.link = None
        if kind is not Category.transactional:
            assert signing_key is not None
            # The batch's links, dated once (its renders take well under a second).
            self.link = consent.link_tokens(signing_key, kind=kind.value)
        self._chosen: dict[tuple[str, str | None], VariantData | None] = {}
        self._views: dict[tuple[int, str], Any] = {}

    @classmethod
    def of_claim(
        cls, claim: Claim, *, settings: Settings, signing_key: bytes | None
    ) -> BatchMessages:
        campaign, run = claim.campaign, claim.run
        assert campaign is not None and run is not None
        return cls(
            kind=Category(campaign.kind),
            variants=claim.variants,
            defaults=claim.defaults,
            scheduled_for=run.scheduled_for,
            variables=[campaign.variables, run.variables],
            public_url=settings.public_url,
            signing_key=signing_key,
            campaign_id=campaign.id,
        )

    def make(
        self,
        delivery_id: int,
        recipient_id: int,
        channel: str,
        person: Mapping[str, Any],
        address: str,
    ) -> Message:
        """The delivery's message. Raises :class:`NoVariant`, or the template's
        :class:`TemplateProblem` (whose ``locale`` is the variant's)."""
        language = person["language"]
        key = (channel, language)
        if key in self._chosen:
            variant = self._chosen[key]
        else:
            variant = self._chosen[key] = choose_variant(self.variants, channel, language)
        if variant is None:
            raise NoVariant(f"no variant for {channel}")
        locale = variant.locale
        view = self._views.get((recipient_id, locale))
        if view is None:
            view = self._views[(recipient_id, locale)] = content.recipient_view(person, locale)
        unsubscribe = None
        if self.link is not None:
            unsubscribe = self.unsubscribe_base + self.link(recipient_id, channel)
        context = content.build_context(
            view,
            defaults=self.defaults,
            variables=self.variables,
            channel=channel,
            locale=locale,
            unsubscribe_url=unsubscribe,
        )
        subject, body, html = renderer.render_parts(variant, context)
        return Message(
            delivery_id=delivery_id,
            address=address,
            body=body,
            kind=self.kind,
            subject=subject,
            html=html,
            locale=locale,
            unsubscribe_url=unsubscribe,
            campaign_id=self.campaign_id,
            recipient=person["external_id"],
        )


def render(claim: Claim, *, settings: Settings, signing_key: bytes | None) -> None:
    """Give each claimed row its message, or its outcome when it has none to send: no live
    address (skipped), no variant for its channel or a template error (failed)."""
    people, addresses = claim.people, claim.addresses
    messages = BatchMessages.of_claim(claim, settings=settings, signing_key=signing_key)
    make = messages.make
    for item in claim.work:
        person = people.get(item.recipient_id)
        address = addresses.get(item.delivery_id)
        if person is None or address is None:
            item.status = DeliveryStatus.skipped
            item.error_class = ErrorClass.no_address
            item.error_reason = f"no live {item.channel} address"
            continue
        try:
            item.message = message = make(
                item.delivery_id, item.recipient_id, item.channel, person, address
            )
        except NoVariant as problem:
            item.status = DeliveryStatus.failed
            item.error_class = ErrorClass.template
            item.error_reason = str(problem)
            continue
        except TemplateProblem as problem:
            item.locale = problem.locale
            item.status = DeliveryStatus.failed
            item.error_class = ErrorClass.template
            item.error_reason = str(problem)
            continue
        item.locale = message.locale
