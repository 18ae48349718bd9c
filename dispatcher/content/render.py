"""The one renderer: sandboxed Jinja with StrictUndefined, compiled templates cached.

Subjects and text bodies render without escaping; HTML parts (and the body of channels whose
body is an HTML dialect, such as Telegram) are autoescaped: what a channel's messages may be
is what its adapter declares (``Adapter.limits``, :func:`channels.registry.limits_for`). The
sandbox refuses attribute access that could reach Python internals (``__class__``, ``mro``
...), and every render has a budget of time, size and steps
(:mod:`dispatcher.content.sandbox`).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from types import TracebackType
from typing import Any

import jinja2
from jinja2.sandbox import SecurityError

from channels import registry
from channels.base import ChannelLimits, utf16_length
from dispatcher.content.sandbox import BoundedSandbox, BudgetExceeded, TemplateLimits, current
from dispatcher.core.config import get_settings

DEFAULT_LOCALE = "vi"
GENERIC_CHANNEL = "default"
PARTS = ("subject", "body", "html")

HONORIFICS = {
    "vi": {"person": "Ông/Bà", "organization": "Quý đơn vị"},
    "en": {"person": "Mr/Ms", "organization": "Dear partner"},
}


@dataclass(frozen=True, slots=True)
class RecipientView:
    """What a template sees of a recipient."""

    external_id: str
    full_name: str
    kind: str = "person"
    province: str = ""
    birth_date: date | None = None
    language: str = DEFAULT_LOCALE
    attributes: Mapping[str, Any] = field(default_factory=dict)
    honorific: str = ""

    @property
    def given_name(self) -> str:
        # Vietnamese names put the given name last: "Nguyễn Văn An" -> "An".
        parts = self.full_name.split()
        return parts[-1] if parts else ""


# What a template may read of a RecipientView: its fields and properties, nothing else.
VIEW_ATTRIBUTES = frozenset(RecipientView.__slots__) | {"given_name"}


class Sandbox(BoundedSandbox):
    """Jinja's immutable sandbox with a budget, answering at once for the recipient view: a
    template may read its data fields and nothing else (every other object gets the sandbox's
    full checks, which cost a quarter of a render)."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        # A recipient's fields are plain data (no methods to wrap): read them at once.
        if type(obj) is RecipientView and attribute in VIEW_ATTRIBUTES:
            return getattr(obj, attribute)
        return super().getattr(obj, attribute)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if type(obj) is RecipientView:
            return attr in VIEW_ATTRIBUTES
        return bool(super().is_safe_attribute(obj, attr, value))


@dataclass(frozen=True, slots=True)
class VariantData:
    """A template variant, detached from the database session."""

    id: int | None
    channel: str
    locale: str
    body: str
    subject: str | None = None
    html: str | None = None


@dataclass(frozen=True, slots=True)
class Rendered:
    channel: str
    locale: str
    body: str
    subject: str | None = None
    html: str | None = None


class TemplateProblem(Exception):
    """A template that cannot render, with where: channel, locale, part and line."""

    def __init__(
        self,
        message: str,
        *,
        channel: str | None = None,
        locale: str | None = None,
        part: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.channel = channel
        self.locale = locale
        self.part = part
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = "/".join(p for p in (self.channel, self.locale) if p)
        if self.part:
            where = f"{where} {self.part}".strip()
        if self.line is not None:
            where = f"{where} line {self.line}"
        return f"{where}: {self.message}" if where else self.message

    def as_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "locale": self.locale,
            "part": self.part,
            "line": self.line,
            "message": self.message,
        }


def _template_line(tb: TracebackType | None) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def locale_chain(language: str | None) -> list[str]:
    """``vi-VN`` -> [vi-vn, vi]; ``km`` -> [km, vi]; always ending at Vietnamese."""
    chain: list[str] = []
    tag = (language or DEFAULT_LOCALE).strip().lower().replace("_", "-")
    while tag:
        if tag not in chain:
            chain.append(tag)
        tag = tag.rpartition("-")[0]
    if DEFAULT_LOCALE not in chain:
        chain.append(DEFAULT_LOCALE)
    return chain


@functools.lru_cache(maxsize=256)
def honorific(kind: str, locale: str) -> str:
    table = HONORIFICS.get(locale.split("-")[0], HONORIFICS[DEFAULT_LOCALE])
    return table.get(kind, table["person"])


def choose_variant(
    variants: Mapping[tuple[str, str], VariantData], channel: str, language: str | None
) -> VariantData | None:
    """The variant for a channel in the recipient's language, falling back along the chain.

    The language matters more than the channel: an English reader gets the generic English
    variant before the Vietnamese one written for the channel.
    """
    for locale in locale_chain(language):
        for candidate in (channel, GENERIC_CHANNEL):
            found = variants.get((candidate, locale))
            if found is not None:
                return found
    return None


def declared_limits(channels: Iterable[str]) -> dict[str, ChannelLimits]:
    """Each channel's limits as its adapter declares them."""
    return {channel: registry.limits_for(channel) for channel in channels}


class Renderer:
    """Compiles and renders variants. Its budget is ``limits`` when given, otherwise the
    process's settings (read again when they change). A channel's limits are those in
    ``channels`` when given (a check's child process is handed them), otherwise its adapter's.
    """

    def __init__(
        self,
        cache_size: int = 4096,
        *,
        limits: TemplateLimits | None = None,
        channels: Mapping[str, ChannelLimits] | None = None,
    ) -> None:
        self._limits = limits
        self._channels = channels or {}
        self._settings: object = None
        self._settings_limits = TemplateLimits()
        self._text = Sandbox(
            undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False
        )
        self._html = Sandbox(
            undefined=jinja2.StrictUndefined, autoescape=True, keep_trailing_newline=False
        )
        if self._text.globals != self._html.globals:
            raise AssertionError("the text and HTML sandboxes must have the same globals")
        self._globals: dict[str, Any] = dict(self._text.globals)
        self._cache: OrderedDict[tuple[Any, ...], jinja2.Template] = OrderedDict()
        self._cache_size = cache_size
        # Each stored variant's compiled parts, by variant id (see _render).
        self._variants: dict[int, tuple[jinja2.Template | None, ...]] = {}
        self._lock = threading.Lock()

    def compile(
        self, source: str, *, html: bool, key: tuple[Any, ...] | None = None
    ) -> jinja2.Template:
        """A compiled template, cached under ``key`` (a variant id and part) when given.

        A hit takes no lock: every render of every message asks, from each of a worker's
        threads, and a lock held by a thread the interpreter switched out holds up the others.
        ``get`` and ``move_to_end`` are each atomic; a key evicted between them is a miss.
        """
        if key is not None:
            found = self._cache.get(key)
            if found is not None:
                with contextlib.suppress(KeyError):
                    self._cache.move_to_end(key)
                return found
        env = self._html if html else self._text
        template = env.from_string(source)
        # Jinja keeps a template's globals as a ChainMap over the environment's. Every
        # template of both environments has the same ones (neither is given any of its own),
        # so a render merges them into its context once for all its parts (render_parts).
        template.globals = self._globals
        if key is not None:
            with self._lock:
                self._cache[key] = template
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return template

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._variants.clear()

    def channel_limits(self, channel: str) -> ChannelLimits:
        found = self._channels.get(channel)
        return found if found is not None else registry.limits_for(channel)

    @property
    def limits(self) -> TemplateLimits:
        if self._limits is not None:
            return self._limits
        settings = get_settings()
        if settings is not self._settings:
            self._settings_limits = TemplateLimits.from_settings(settings)
            self._settings = settings
        return self._settings_limits

    def render(self, variant: VariantData, context: Mapping[str, Any]) -> Rendered:
        """Render every part of ``variant``; a :class:`TemplateProblem` says what went wrong,
        including a render over its budget (``template budget exceeded: ...``)."""
        subject, body, html = self.render_parts(variant, context)
        return Rendered(
            channel=variant.channel, locale=variant.locale, subject=subject, body=body, html=html
        )

    def render_parts(
        self, variant: VariantData, context: Mapping[str, Any]
    ) -> tuple[str | None, str, str | None]:
        """:meth:`render`'s subject, body and HTML, without the :class:`Rendered` (the
        engine makes its message of them at once)."""
        meter = current().start(self.limits)
        try:
            return self._render(variant, context)
        finally:
            meter.stop()

    def _render(
        self, variant: VariantData, context: Mapping[str, Any]
    ) -> tuple[str | None, str, str | None]:
        # What Template.render does for each part, with the globals merged into the context
        # once for all of them: Jinja does not change a context's variables (its templates
        # set theirs in the Context), so the parts share one.
        shared = {**self._globals, **context}
        # A stored variant's parts, compiled, in the order of PARTS (None: no such part).
        known = None if variant.id is None else self._variants.get(variant.id)
        compiled: list[jinja2.Template | None] = []
        texts: list[str | None] = []
        for index, part in enumerate(PARTS):
            try:
                template = known[index] if known is not None else self._part(variant, part)
                compiled.append(template)
                if template is None:
                    texts.append(None)
                    continue
                env = template.environment
                # Template.new_context(shared, shared=True), without its two calls.
                context_of = env.context_class(
                    env, shared, template.name, template.blocks, globals=template.globals
                )
                try:
                    text = env.concat(template.root_render_func(context_of))
                except Exception:
                    # Jinja's own: the traceback rewritten to the template's lines.
                    env.handle_exception()
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateProblem(
                    exc.message or "syntax error",
                    channel=variant.channel,
                    locale=variant.locale,
                    part=part,
                    line=exc.lineno,
                ) from None
            except BudgetExceeded as exc:
                raise TemplateProblem(
                    str(exc),
                    channel=variant.channel,
                    locale=variant.locale,
                    part=part,
                    line=_template_line(exc.__traceback__),
                ) from None
            except (MemoryError, RecursionError) as exc:
                what = "out of memory" if isinstance(exc, MemoryError) else "nested too deeply"
                raise TemplateProblem(
                    f"template budget exceeded: {what}",
                    channel=variant.channel,
                    locale=variant.locale,
                    part=part,
                    line=_template_line(exc.__traceback__),
                ) from None
            except SecurityError as exc:
                raise TemplateProblem(
                    f"not allowed in a template: {exc}",
                    channel=variant.channel,
                    locale=variant.locale,
                    part=part,
                    line=_template_line(exc.__traceback__),
                ) from None
            except Exception as exc:
                raise TemplateProblem(
                    str(exc) or type(exc).__name__,
                    channel=variant.channel,
                    locale=variant.locale,
                    part=part,
                    line=_template_line(exc.__traceback__),
                ) from None
            texts.append(text)
        if known is None and variant.id is not None:
            self._keep(variant.id, tuple(compiled))
        subject, body, html = texts
        assert body is not None
        return (None if subject is None else subject.strip()), body, html

    def _part(self, variant: VariantData, part: str) -> jinja2.Template | None:
        """A variant's part, compiled (None when it has no such part)."""
        source = getattr(variant, part)
        if source is None:
            return None
        html = part == "html" or (part == "body" and self.channel_limits(variant.channel).html_body)
        key = None if variant.id is None else (variant.id, part)
        return self.compile(source, html=html, key=key)

    def _keep(self, variant_id: int, compiled: tuple[jinja2.Template | None, ...]) -> None:
        """Keep a stored variant's compiled parts, so that its next render looks them up once.
        A variant's id names one frozen text: its parts never change."""
        with self._lock:
            self._variants[variant_id] = compiled
            if len(self._variants) > self._cache_size:
                # The oldest kept: a variant still in use is compiled again from the cache.
                del self._variants[next(iter(self._variants))]

    def check_syntax(self, variant: VariantData) -> None:
        """Compile every part; raise the first syntax error with its line."""
        limits = self.channel_limits(variant.channel)
        for part in PARTS:
            source = getattr(variant, part)
            if source is None:
                continue
            html = part == "html" or (part == "body" and limits.html_body)
            try:
                self.compile(source, html=html)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateProblem(
                    exc.message or "syntax error",
                    channel=variant.channel,
                    locale=variant.locale,
                    part=part,
                    line=exc.lineno,
                ) from None


def limit_problems(rendered: Rendered, limits: ChannelLimits | None = None) -> list[str]:
    """Every way a rendered message breaks its channel's limits (empty when it fits): those
    given, or those its channel's adapter declares."""
    if limits is None:
        limits = registry.limits_for(rendered.channel)
    problems = []
    if limits.needs_subject and not rendered.subject:
        problems.append(f"{rendered.channel} needs a subject")
    if limits.max_subject and rendered.subject and len(rendered.subject) > limits.max_subject:
        problems.append(
            f"subject is {len(rendered.subject)} characters; "
            f"{rendered.channel} allows {limits.max_subject}"
        )
    if limits.max_body is not None:
        size = utf16_length(rendered.body)
        if size > limits.max_body:
            problems.append(
                f"body is {size} characters; {rendered.channel} allows {limits.max_body}"
            )
    if limits.max_payload_bytes is not None:
        size = len((rendered.subject or "").encode()) + len(rendered.body.encode()) + 200
        if size > limits.max_payload_bytes:
            problems.append(
                f"payload is about {size} bytes; {rendered.channel} allows "
                f"{limits.max_payload_bytes}"
            )
    problems += body_problems(rendered.channel, rendered.body)
    return problems


def body_problems(channel: str, body: str) -> list[str]:
    """What the channel's adapter finds wrong with a rendered body beyond its size: its
    ``body_problems`` when it declares one (Zalo and ZNS check a template description against
    the rules of Zalo's templates), none otherwise."""
    try:
        adapter = registry.get(channel)
    except registry.UnknownChannel:
        return []
    check = getattr(adapter, "body_problems", None)
    if check is None:
        return []
    return [str(problem) for problem in check(body)]


def variant_map(variants: Iterable[VariantData]) -> dict[tuple[str, str], VariantData]:
    return {(v.channel, v.locale): v for v in variants}


renderer = Renderer()
