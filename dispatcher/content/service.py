"""Templates: publish immutable versions, preview them, load the built-in ones."""

from __future__ import annotations

import threading
import tomllib
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dispatcher.content import isolation
from dispatcher.content.render import (
    RecipientView,
    Rendered,
    TemplateProblem,
    VariantData,
    choose_variant,
    declared_limits,
    honorific,
    locale_chain,
    renderer,
    variant_map,
)
from dispatcher.content.schemas import PreviewIn, TemplateIn, TemplateOut, VariantOut
from dispatcher.kit.clock import utcnow
from dispatcher.kit.errors import Conflict, Forbidden, Invalid, NotFound
from dispatcher.scheduling.rules import calendar_variables
from dispatcher.tables.content import Template, TemplateVersion, Variant
from dispatcher.tables.recipients import Recipient
from dispatcher.tables.units import root_unit_id
from dispatcher.units import scope as scopes

log = structlog.get_logger(__name__)

_SAMPLE_PEOPLE = (
    RecipientView(
        external_id="0100000001",
        full_name="Nguyễn Thị Mai",
        kind="person",
        province="Hà Nội",
        birth_date=date(1985, 3, 8),
        attributes={},
    ),
    RecipientView(
        external_id="TA0001",
        full_name="Công ty Cổ phần Sông Hồng",
        kind="organization",
        province="Hải Phòng",
        attributes={},
    ),
)


# Variables every run provides (dispatcher.scheduling.rules.calendar_variables), for checking
# templates that use them.
SAMPLE_CALENDAR = calendar_variables(datetime(2026, 1, 1, 1, tzinfo=UTC))


def recipient_view(recipient: Recipient | Mapping[str, Any], locale: str) -> RecipientView:
    """What templates see of a stored recipient, or of a mapping of the same fields (a missing
    or empty field reads as its default). Made for every recipient a batch renders."""
    get: Any = (
        recipient.get
        if type(recipient) is dict or isinstance(recipient, Mapping)
        else lambda name, default=None: getattr(recipient, name, default)
    )
    kind = get("kind") or "person"
    birth = get("birth_date")
    if type(birth) is str:
        birth = date.fromisoformat(birth)
    attributes = get("attributes") or {}
    return RecipientView(
        external_id=str(get("external_id") or ""),
        full_name=str(get("full_name") or ""),
        kind=kind,
        province=str(get("province") or ""),
        birth_date=birth,
        language=str(get("language") or "vi"),
        # A template cannot change it (the sandbox is immutable): a dict is not copied.
        attributes=attributes if type(attributes) is dict else dict(attributes),
        honorific=honorific(kind, locale),
    )


def build_context(
    view: RecipientView,
    *,
    defaults: Mapping[str, Any],
    variables: Mapping[str, Any],
    channel: str,
    locale: str,
    unsubscribe_url: str | None = None,
) -> dict[str, Any]:
    context: dict[str, Any] = {**defaults, **variables}
    context.update(recipient=view, channel=channel, locale=locale, unsubscribe_url=unsubscribe_url)
    return context


def _as_data(variant: Variant) -> VariantData:
    return VariantData(
        id=variant.id,
        channel=variant.channel,
        locale=variant.locale,
        subject=variant.subject,
        body=variant.body,
        html=variant.html,
    )


class _VersionCache:
    """Versions never change once written, so their variants are cached for good."""

    def __init__(self, size: int = 512) -> None:
        self._items: OrderedDict[int, tuple[dict[str, Any], dict[tuple[str, str], VariantData]]]
        self._items = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(
        self, session: Session, version_id: int
    ) -> tuple[dict[str, Any], dict[tuple[str, str], VariantData]]:
        with self._lock:
            found = self._items.get(version_id)
            if found is not None:
                return found
        version = session.get(TemplateVersion, version_id)
        if version is None:
            raise NotFound(f"template version {version_id} does not exist")
        loaded = (dict(version.defaults or {}), variant_map(_as_data(v) for v in version.variants))
        with self._lock:
            self._items[version_id] = loaded
            if len(self._items) > self._size:
                self._items.popitem(last=False)
        return loaded

    def clear(self) -> None:
        """Forget everything (tests reset the database, and with it the ids)."""
        with self._lock:
            self._items.clear()


versions = _VersionCache()


def validate(template: TemplateIn, *, isolated: bool = True) -> None:
    """Refuse a template that cannot render for a sample person and organisation.

    Catches syntax errors (with the line), variables the context will not have, unsafe
    constructs the sandbox blocks, messages over their channel's limits, and renders over the
    template budget. ``isolated`` renders in a child process (:mod:`isolation`): the API's
    way for text from an editor.
    """
    jobs: list[tuple[VariantData, dict[str, Any]]] = []
    index_of: dict[tuple[str, str], int] = {}
    for index, variant in enumerate(template.variants):
        data = VariantData(
            id=None,
            channel=variant.channel,
            locale=variant.locale,
            subject=variant.subject,
            body=variant.body,
            html=variant.html,
        )
        index_of[(variant.channel, variant.locale)] = index
        for sample in _SAMPLE_PEOPLE:
            view = recipient_view(
                {**_sample_fields(sample), "language": variant.locale}, variant.locale
            )
            context = build_context(
                view,
                defaults=template.defaults,
                variables=SAMPLE_CALENDAR,
                channel=variant.channel,
                locale=variant.locale,
                unsubscribe_url="https://example.invalid/u/sample",
            )
            jobs.append((data, context))
    limits = renderer.limits
    # Read here, where the adapters are loaded once, and handed to the check's child process.
    channels = declared_limits({variant.channel for variant, _ in jobs})
    try:
        if isolated:
            found = isolation.run("check_all", jobs, limits, channels, limits=limits)
        else:
            found = isolation.check_all(jobs, limits, channels)
    except TemplateProblem as problem:
        where = index_of.get((problem.channel or "", problem.locale or ""))
        loc: list[str | int] = ["body", "variants"]
        if where is not None:
            loc += [where, problem.part or "body"]
        raise Invalid(str(problem), loc=loc) from None
    for (checked, _), problems in zip(jobs, found, strict=True):
        if problems:
            raise Invalid(
                f"{checked.channel}/{checked.locale}: " + "; ".join(problems),
                loc=["body", "variants", index_of[(checked.channel, checked.locale)]],
            )


def _sample_fields(view: RecipientView) -> dict[str, Any]:
    return {
        "external_id": view.external_id,
        "full_name": view.full_name,
        "kind": view.kind,
        "province": view.province,
        "birth_date": view.birth_date,
        "attributes": dict(view.attributes),
    }


def publish(
    *, session: Session, template: TemplateIn, source: str = "api", unit_id: int | None = None
) -> TemplateVersion:
    """Store a new version of ``template.key`` (creating the key on first use). Templates from
    anywhere but the shipped files are checked in a child process. A new template belongs to
    ``unit_id`` (its author's; the root unit when not given), a built-in one to no unit: it is
    shared by all."""
    validate(template, isolated=source != "builtin")
    row = session.scalar(select(Template).where(Template.key == template.key).with_for_update())
    scope = scopes.current(session)
    if row is None and scopes.unscoped_exists(
        session, select(Template.id).where(Template.key == template.key)
    ):
        raise Conflict(
            f"template key {template.key!r} is taken by another unit's template: choose another key"
        )
    if row is not None and row.unit_id is None and scope.unit_ids is not None:
        raise Forbidden(
            f"template {template.key!r} is built in, shared by every unit: only the central "
            "unit changes it (publish your own version under another key)"
        )
    if row is None:
        row = Template(key=template.key, kind=template.kind, description=template.description)
        if source != "builtin":
            row.unit_id = unit_id if unit_id is not None else root_unit_id(session.connection())
        session.add(row)
        session.flush()
    else:
        row.kind = template.kind or row.kind
        row.description = template.description or row.description
    latest = session.scalar(
        select(func.max(TemplateVersion.version)).where(TemplateVersion.template_id == row.id)
    )
    version = TemplateVersion(
        template_id=row.id,
        version=(latest or 0) + 1,
        defaults=template.defaults,
        source=source,
        created_at=utcnow(),
    )
    version.variants = [
        Variant(channel=v.channel, locale=v.locale, subject=v.subject, body=v.body, html=v.html)
        for v in template.variants
    ]
    session.add(version)
    session.flush()
    return version


def get_template(*, session: Session, key: str) -> Template:
    row = session.scalar(select(Template).where(Template.key == key))
    if row is None:
        raise NotFound(f"template {key!r} does not exist")
    return row


def get_version(
    *, session: Session, template: Template, version: int | None = None
) -> TemplateVersion:
    query = select(TemplateVersion).where(TemplateVersion.template_id == template.id)
    if version is None:
        query = query.order_by(TemplateVersion.version.desc()).limit(1)
    else:
        query = query.where(TemplateVersion.version == version)
    row = session.scalar(query)
    if row is None:
        raise NotFound(f"template {template.key!r} has no version {version}")
    return row


def to_out(template: Template, version: TemplateVersion, count: int) -> TemplateOut:
    return TemplateOut(
        key=template.key,
        kind=template.kind,
        description=template.description,
        version=version.version,
        versions=count,
        source=version.source,
        defaults=version.defaults or {},
        variants=[
            VariantOut(
                channel=v.channel, locale=v.locale, subject=v.subject, body=v.body, html=v.html
            )
            for v in version.variants
        ],
        created_at=version.created_at,
    )


def version_count(*, session: Session, template: Template) -> int:
    return (
        session.scalar(select(func.count()).where(TemplateVersion.template_id == template.id)) or 0
    )


def preview(
    *, session: Session, key: str, request: PreviewIn
) -> tuple[TemplateVersion, Rendered, list[str]]:
    template = get_template(session=session, key=key)
    version = get_version(session=session, template=template, version=request.version)
    defaults, variants = versions.get(session, version.id)
    if request.recipient is not None:
        stored = session.scalar(select(Recipient).where(Recipient.external_id == request.recipient))
        if stored is None:
            raise Invalid(
                f"recipient {request.recipient!r} does not exist", loc=["body", "recipient"]
            )
        fields: Recipient | dict[str, Any] = stored
        language = request.locale or stored.language
    else:
        fields = dict(request.context or _sample_fields(_SAMPLE_PEOPLE[0]))
        language = request.locale or str(fields.get("language") or "vi")
    variant = choose_variant(variants, request.channel, language)
    if variant is None:
        raise Invalid(
            f"template {key!r} v{version.version} has no variant for {request.channel} "
            f"in {' > '.join(locale_chain(language))}",
            loc=["body", "channel"],
        )
    try:
        view = recipient_view(fields, variant.locale)
    except (TypeError, ValueError) as exc:
        raise Invalid(f"context: {exc}", loc=["body", "context"]) from None
    context = build_context(
        view,
        defaults=defaults,
        variables={**calendar_variables(utcnow()), **request.variables},
        channel=request.channel,
        locale=variant.locale,
        unsubscribe_url="https://example.invalid/u/preview",
    )
    try:
        # The variables and context come from the request: rendered in a child process.
        limits = renderer.limits
        channels = declared_limits([variant.channel])
        rendered, problems = isolation.run(
            "render_one", variant, context, limits, channels, limits=limits
        )
    except TemplateProblem as problem:
        raise Invalid(str(problem), loc=["template", problem.part or "body"]) from None
    return version, rendered, problems


def builtin_templates_dir() -> Path:
    """The shipped templates: inside the installed package, or the source tree's folder."""
    packaged = Path(__file__).resolve().parent.parent / "builtin_templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "templates" / "messages"


def read_template_file(path: Path) -> TemplateIn:
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    if data.get("key") != path.stem:
        raise ValueError(f"{path.name}: key {data.get('key')!r} must equal the file name")
    return TemplateIn.model_validate(data)


def load_builtin_templates(*, session: Session, directory: Path | None = None) -> list[str]:
    """Publish every shipped template whose key is not in the database yet, as version 1.

    Staff's own versions always win: a key that exists is left alone.
    """
    directory = directory or builtin_templates_dir()
    if not directory.is_dir():
        log.warning("builtin_templates_missing", directory=str(directory))
        return []
    existing = set(session.scalars(select(Template.key)))
    loaded = []
    for path in sorted(directory.glob("*.toml")):
        if path.stem in existing:
            continue
        try:
            template = read_template_file(path)
            publish(session=session, template=template, source="builtin")
        except (ValueError, ValidationError, Invalid) as exc:
            raise ValueError(f"built-in template {path.name}: {exc}") from exc
        loaded.append(template.key)
    return loaded


def render_sample(
    *, session: Session, version_id: int, channel: str, variables: Mapping[str, Any]
) -> Rendered | None:
    """A version's Vietnamese variant for ``channel`` rendered for the sample person, with a
    fixed calendar: the same inputs always give the same text (what an approver sees)."""
    defaults, variants = versions.get(session, version_id)
    variant = choose_variant(variants, channel, "vi")
    if variant is None:
        return None
    view = recipient_view(_sample_fields(_SAMPLE_PEOPLE[0]), variant.locale)
    context = build_context(
        view,
        defaults=defaults,
        variables={**SAMPLE_CALENDAR, **variables},
        channel=channel,
        locale=variant.locale,
        unsubscribe_url="https://example.invalid/u/preview",
    )
    return renderer.render(variant, context)
