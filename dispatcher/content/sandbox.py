"""The template sandbox with a budget: no render may run long, build huge values or print huge
text, however the template is written.

Jinja's sandbox stops a template from reaching Python's internals, but not from asking for
``9**(9**9)`` or ``'a' * 10**9``, and it folds constant expressions and pure filters while it
*compiles*, where no runtime check can see them. Here:

* Nothing is evaluated at compile time: the optimizer is off, output nodes fold only literal
  text, and ``{% autoescape %}`` takes only a literal.
* Every operation that can build a big value checks the size of its result *before* computing
  it (``*``, ``**``, ``+``, ``%`` and ``~``; ``center``, ``indent``, ``wordwrap``, ``join``,
  ``replace``, ``format``, ``batch``, ``slice``, ``sum``, ``round``; the string methods
  ``center``, ``ljust``, ``rjust``, ``zfill``, ``expandtabs``, ``replace``, ``join``,
  ``translate``, ``format`` and ``int.to_bytes``), and every value a call or a filter returns, or a
  list, tuple or dict literal builds, is weighed (its size as text, nested values counted in
  full). No value may weigh more than ``max_chars``, and a render may build at most
  ``10 * max_chars`` characters in all, which bounds its memory.
* Every loop iteration and every call (macros, methods, globals) is a step; a render has
  ``max_steps`` of them and ``seconds`` of wall time, checked at each step. Since each step does
  a bounded amount of work, no render can run long: Python threads cannot be interrupted, so
  the budget is counted rather than enforced by a timer.
* Each part's output (subject, body, html) is at most ``max_chars`` characters.

Where a template first arrives from an editor (saving and previewing through the API), it is
also rendered in a separate process with an address-space and CPU limit and killed on overrun
(:mod:`dispatcher.content.isolation`), so that anything this module misses still cannot stall
or exhaust the API.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import update_wrapper
from types import BuiltinMethodType, MethodType
from typing import TYPE_CHECKING, Any, Literal

from jinja2 import filters as jinja_filters
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import Namespace, pass_environment, pass_eval_context
from markupsafe import Markup

if TYPE_CHECKING:
    from jinja2.nodes import EvalContext

    from dispatcher.core.config import Settings

# Integers stay below this many bits (about 3,000 digits): ``9**(9**9)`` is refused before it
# is computed. Python itself refuses to print an integer of more than 4,300 digits.
MAX_INT_BITS = 10_000
# A render may build this many times ``max_chars`` characters in all (intermediate values
# included): the bound on its memory.
WORK_FACTOR = 10
# ``round`` to more digits than this is refused (rounding an integer to -10**9 digits computes
# 10**(10**9)).
MAX_ROUND_DIGITS = 1000
# ``wordwrap`` breaking long words costs (word length)² / width: more than this is refused.
MAX_WRAP_COST = 50_000_000


@dataclass(frozen=True, slots=True)
class TemplateLimits:
    """What one render may use. Defaults are the settings' defaults."""

    max_chars: int = 1_000_000
    max_steps: int = 100_000
    seconds: float = 5.0
    memory_mib: int = 256

    @classmethod
    def from_settings(cls, settings: Settings) -> TemplateLimits:
        return cls(
            max_chars=settings.template_max_output_chars,
            max_steps=settings.template_max_steps,
            seconds=settings.template_render_seconds,
            memory_mib=settings.template_memory_mib,
        )

    @property
    def max_work(self) -> int:
        return WORK_FACTOR * self.max_chars


class BudgetExceeded(Exception):
    """A render went over its budget; the message says which part of it."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"template budget exceeded: {what}")


class Meter:
    """One render's spending: steps (loop iterations and calls), characters built, time. Each
    thread has one, restarted by every render (:func:`current`)."""

    __slots__ = ("deadline", "limits", "steps", "work")

    def __init__(self, limits: TemplateLimits) -> None:
        self.limits = limits
        self.steps = 0
        self.work = 0
        self.deadline = math.inf

    def start(self, limits: TemplateLimits) -> Meter:
        self.limits = limits
        self.steps = 0
        self.work = 0
        self.deadline = time.monotonic() + limits.seconds
        return self

    def stop(self) -> None:
        self.steps = 0
        self.work = 0
        self.deadline = math.inf

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise BudgetExceeded(f"over {self.limits.max_steps} loop iterations and calls")
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(f"took over {self.limits.seconds:g} s")

    def allow(self, size: int, what: str = "a value", unit: str = "characters") -> None:
        """Refuse a value of ``size`` characters (or items) before it is built."""
        if size > self.limits.max_chars:
            raise BudgetExceeded(f"{what} over {self.limits.max_chars} {unit}")

    def spend(self, size: int, what: str = "a value", unit: str = "characters") -> None:
        """Allow a value of ``size`` characters and count it against the render's total."""
        self.allow(size, what, unit)
        self.work += size
        if self.work > self.limits.max_work:
            raise BudgetExceeded(f"built over {self.limits.max_work} characters in all")
        if size > 1000 and time.monotonic() > self.deadline:
            raise BudgetExceeded(f"took over {self.limits.seconds:g} s")

    def built(self, value: Any) -> Any:
        """Weigh (and count) a value a call or a filter returned; pass it on."""
        kind = type(value)
        if kind is str or kind is Markup:
            self.spend(len(value))
        elif isinstance(value, _CONTAINERS):
            self.spend(weight(value, self.limits.max_chars))
        return value


# One meter per thread, not a context variable: a render never awaits, and setting and
# resetting a context variable costs a render more than the whole budget.
_local = threading.local()


def current() -> Meter:
    """This thread's meter: the running render's."""
    try:
        meter: Meter = _local.meter
        return meter
    except AttributeError:
        meter = _local.meter = Meter(TemplateLimits())
        return meter


_CONTAINERS = (list, tuple, dict, set, frozenset, Namespace)
_TEXT = (str, bytes, bytearray)


def weight(value: Any, limit: int) -> int:
    """About how many characters ``value`` takes as text, nested values counted in full (a list
    holding one string a thousand times weighs a thousand strings). Stops counting past
    ``limit``."""
    if isinstance(value, _TEXT):
        return len(value) + 2
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    if isinstance(value, Namespace):
        value = value._Namespace__attrs
    if isinstance(value, dict):
        total = 2
        for key, item in value.items():
            total += weight(key, limit) + weight(item, limit) + 4
            if total > limit:
                return total
        return total
    if isinstance(value, (list, tuple, set, frozenset)):
        total = 2
        for item in value:
            total += weight(item, limit) + 2
            if total > limit:
                return total
        return total
    return 24


def _repeat(left: Any, right: Any, meter: Meter) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise BudgetExceeded(f"a number over {MAX_INT_BITS} bits")
        return
    if isinstance(right, int) and not isinstance(left, (int, float)):
        sequence, times = left, right
    elif isinstance(left, int) and not isinstance(right, (int, float)):
        sequence, times = right, left
    else:
        return
    if times <= 0:
        return
    if isinstance(sequence, _TEXT):
        meter.allow(len(sequence) * times, "a repeated string")
    elif isinstance(sequence, (list, tuple)) and sequence:
        meter.allow(weight(sequence, meter.limits.max_chars) * times, "a repeated list")


def _power(left: Any, right: Any) -> None:
    big = isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1
    if big and (right > MAX_INT_BITS or left.bit_length() * right > MAX_INT_BITS):
        raise BudgetExceeded(f"a number over {MAX_INT_BITS} bits")


# printf-style conversions: %(key)flags width .precision length type
_PERCENT = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.?)", re.S)


def _number(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # more digits than Python converts
        return 1 << 62


def percent_size(template: str | bytes | bytearray, args: Any, limit: int) -> int:
    """An upper bound of the length of ``template % args``, computed without formatting."""
    fmt = template if isinstance(template, str) else bytes(template).decode("latin-1")
    positional: tuple[Any, ...] = ()
    mapping: Mapping[Any, Any] | None = None
    if isinstance(args, tuple):
        positional = args
    elif isinstance(args, Mapping):
        mapping = args
    else:
        positional = (args,)
    widest = 0
    if mapping is not None:
        widest = max((weight(v, limit) for v in mapping.values()), default=0)
    total = len(fmt)
    index = 0
    for match in _PERCENT.finditer(fmt):
        key, width, precision, conversion = match.groups()
        if conversion == "%":
            continue
        size = 400  # the longest float or integer a bounded number prints
        for number in (width, precision):
            if number == "*":
                given = positional[index] if index < len(positional) else 0
                index += 1
                size += abs(given) if isinstance(given, int) else 0
            elif number:
                size += _number(number)
        if key is not None and mapping is not None:
            value_weight = weight(mapping.get(key), limit) if key in mapping else widest
        else:
            value = positional[index] if index < len(positional) else None
            index += 1
            value_weight = weight(value, limit)
        size += value_weight * (10 if conversion in "ra" else 1)
        total += size
        if total > limit:
            return total
    return total


# str.format's spec: [[fill]align][sign][z][#][0][width][grouping][.precision][type]
_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)[,_]?(?:\.(\d+))?", re.S)


class _BoundedFormatting:
    """str.format in the sandbox, refusing a field wider than the budget before formatting
    it and a result longer than the budget."""

    _total = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._total = len(format_string)
        return super().vformat(format_string, args, kwargs)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> Any:
        meter = current()
        match = _FORMAT_SPEC.match(format_spec)
        if match is not None:
            width, precision = match.groups()
            meter.allow(_number(width or "0") + _number(precision or "0"), "a formatted field")
        text = super().format_field(value, format_spec)  # type: ignore[misc]
        self._total += len(text)
        meter.allow(self._total, "a formatted string")
        return text


class BoundedFormatter(_BoundedFormatting, SandboxedFormatter):
    pass


class BoundedEscapeFormatter(_BoundedFormatting, SandboxedEscapeFormatter):
    pass


class BoundedNamespace(Namespace):
    """``namespace()`` whose attributes together stay within the budget."""

    def __setitem__(self, name: str, value: Any) -> None:
        meter = current()
        attrs = self._Namespace__attrs
        others = weight({k: v for k, v in attrs.items() if k != name}, meter.limits.max_chars)
        meter.allow(others + weight(value, meter.limits.max_chars), "a namespace")
        super().__setitem__(name, value)


# -- methods of str, bytes and int that build a result bigger than their inputs --------------


def _width(owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any], meter: Meter) -> None:
    width = args[0] if args else kwargs.get("width", 0)
    if isinstance(width, int):
        meter.allow(width, "a padded string")


def _expandtabs(owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any], meter: Meter) -> None:
    size = args[0] if args else kwargs.get("tabsize", 8)
    if isinstance(size, int):
        tabs = owner.count("\t" if isinstance(owner, str) else b"\t")
        meter.allow(len(owner) + tabs * max(size, 0), "a string")


def replaced_size(text: Any, old: Any, new: Any, count: Any) -> int:
    try:
        found = len(text) + 1 if not old else text.count(old)
    except TypeError:
        return 0
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return int(len(text) + found * max(0, len(new) - len(old)))


def _replace(owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any], meter: Meter) -> None:
    if len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        meter.allow(replaced_size(owner, args[0], args[1], count), "a replaced string")


def _translate(owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any], meter: Meter) -> None:
    table = args[0] if args else None
    if isinstance(table, Mapping):
        longest = max((len(v) for v in table.values() if isinstance(v, str)), default=1)
        meter.allow(len(owner) * longest, "a translated string")


def _to_bytes(owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any], meter: Meter) -> None:
    length = args[0] if args else kwargs.get("length", 1)
    if isinstance(length, int):
        meter.allow(length, "a byte string")


_Check = Callable[[Any, tuple[Any, ...], dict[str, Any], Meter], None]
_TEXT_METHODS: dict[str, _Check] = {
    "center": _width,
    "ljust": _width,
    "rjust": _width,
    "zfill": _width,
    "expandtabs": _expandtabs,
    "replace": _replace,
    "translate": _translate,
}


# -- filters ----------------------------------------------------------------------------------


def _bounded(func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose result is weighed like any built value."""

    def bounded(*args: Any, **kwargs: Any) -> Any:
        return current().built(func(*args, **kwargs))

    return update_wrapper(bounded, func)


def _joined_items(value: Iterable[Any], separator: Any, meter: Meter) -> list[Any]:
    items = []
    limit = meter.limits.max_chars
    total = 0
    gap = len(separator) if isinstance(separator, str) else weight(separator, limit)
    for item in value:
        items.append(item)
        total += weight(item, limit) + gap
        meter.allow(total, "a joined string")
    return items


def do_center(value: str, width: int = 80) -> str:
    if isinstance(width, int):
        current().allow(width, "a centred string")
    return jinja_filters.do_center(value, width)


def do_indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    meter = current()
    if isinstance(width, int):
        meter.allow(width, "an indentation")
    prefix = len(width) if isinstance(width, str) else int(width)
    lines = str(s).count("\n") + 1
    meter.allow(len(str(s)) + lines * prefix, "an indented string")
    return jinja_filters.do_indent(s, width, first, blank)


@pass_environment
def do_wordwrap(environment: Any, s: str, width: int = 79, *args: Any, **kwargs: Any) -> str:
    meter = current()
    text = str(s)
    wrapstring = kwargs.get("wrapstring", args[1] if len(args) > 1 else None)
    newline = wrapstring if wrapstring is not None else environment.newline_sequence
    if isinstance(width, int) and width > 0:
        lines = len(text) // width + text.count("\n") + 1
        meter.allow(len(text) + lines * len(newline), "a wrapped string")
        longest = max((len(word) for word in text.split()), default=0)
        if longest > width and len(text) * (longest // width) > MAX_WRAP_COST:
            raise BudgetExceeded("wordwrap would break words of that length too often")
    return jinja_filters.do_wordwrap(environment, s, width, *args, **kwargs)


@pass_eval_context
def do_join(eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
    items = _joined_items(value, d, current())
    return jinja_filters.sync_do_join(eval_ctx, items, d, attribute)


@pass_eval_context
def do_replace(eval_ctx: EvalContext, s: str, old: str, new: str, count: int | None = None) -> str:
    size = replaced_size(str(s), str(old), str(new), -1 if count is None else count)
    current().allow(size, "a replaced string")
    return jinja_filters.do_replace(eval_ctx, s, old, new, count)


def do_format(value: str, *args: Any, **kwargs: Any) -> str:
    meter = current()
    meter.allow(percent_size(str(value), kwargs or args, meter.limits.max_chars), "a format")
    return jinja_filters.do_format(value, *args, **kwargs)


def do_batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Iterator[list[Any]]:
    if isinstance(linecount, int):
        current().allow(linecount, "a batch", "items")
    return jinja_filters.do_batch(value, linecount, fill_with)


def do_slice(value: Any, slices: int, fill_with: Any = None) -> Iterator[list[Any]]:
    if isinstance(slices, int):
        current().allow(slices, "slicing into", "parts")
    return jinja_filters.sync_do_slice(value, slices, fill_with)


@pass_environment
def do_sum(environment: Any, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
    if attribute is not None:
        iterable = map(jinja_filters.make_attrgetter(environment, attribute), iterable)
    items = list(iterable)
    current().spend(len(items), "a sum of", "items")
    if all(isinstance(item, (int, float)) for item in items) and isinstance(start, (int, float)):
        return sum(items, start)  # numbers (bounded ones) add up quickly
    # Anything else (lists, strings) is added one by one, each sum weighed: a quadratic sum
    # runs out of budget instead of time.
    total = start
    for item in items:
        total = environment.call_binop(None, "+", total, item)
    return total


def do_round(
    value: float, precision: int = 0, method: Literal["common", "ceil", "floor"] = "common"
) -> float:
    if isinstance(precision, int) and abs(precision) > MAX_ROUND_DIGITS:
        raise BudgetExceeded(f"round to more than {MAX_ROUND_DIGITS} digits")
    return jinja_filters.do_round(value, precision, method)


_FILTERS: dict[str, Callable[..., Any]] = {
    "center": do_center,
    "indent": do_indent,
    "wordwrap": do_wordwrap,
    "join": do_join,
    "replace": do_replace,
    "format": do_format,
    "batch": do_batch,
    "slice": do_slice,
    "sum": do_sum,
    "round": do_round,
}


# -- compiling --------------------------------------------------------------------------------


class BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator with nothing evaluated at compile time, and ``~`` sized."""

    def _output_child_to_const(self, node: nodes.Expr, frame: Frame, finalize: Any) -> str:
        # Jinja folds any constant output expression here, optimizer or not.
        if not isinstance(node, (nodes.TemplateData, nodes.Const)):
            raise nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        # Output into a buffer (a macro, a {% set %} or {% filter %} block) piles up before it
        # is joined: each piece is counted as it is made. Top-level output is counted by
        # BoundedSandbox.concat as it streams.
        if frame.buffer is not None:
            self.write("environment.piece(")
        super()._output_child_pre(node, frame, finalize)

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        super()._output_child_post(node, frame, finalize)
        if frame.buffer is not None:
            self.write(")")

    def visit_EvalContextModifier(self, node: nodes.EvalContextModifier, frame: Frame) -> None:
        for keyword in node.options:
            if not isinstance(keyword.value, nodes.Const):
                self.fail("autoescape takes true or false, not an expression", node.lineno)
        super().visit_EvalContextModifier(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        markup = "True" if frame.eval_ctx.volatile or frame.eval_ctx.autoescape else "False"
        self.write(f"environment.concat_values({markup}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.literal(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # an assignment target: for a, b in ...
            super().visit_Tuple(node, frame)
            return
        self.write("environment.literal(")
        super().visit_Tuple(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.literal(")
        super().visit_Dict(node, frame)
        self.write(")")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with a budget (see the module's docstring)."""

    code_generator_class = BoundedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("optimized", False)
        super().__init__(*args, **kwargs)
        self.filters = {name: _bounded(f) for name, f in self.filters.items()}
        self.filters.update({name: _bounded(f) for name, f in _FILTERS.items()})
        self.globals.pop("lipsum", None)  # lipsum(n=10**9) writes that many paragraphs
        self.globals["namespace"] = BoundedNamespace

    def _generate(self, source: nodes.Template, *args: Any, **kwargs: Any) -> str:
        # Every loop counts its iterations against the render's steps.
        for loop in list(source.find_all(nodes.For)):
            loop.iter = nodes.Call(
                nodes.EnvironmentAttribute("counted"),
                [loop.iter],
                [],
                None,
                None,
                lineno=loop.iter.lineno,
            )
        return str(super()._generate(source, *args, **kwargs))

    def counted(self, iterable: Iterable[Any]) -> Iterator[Any]:
        meter = current()
        for item in iterable:
            meter.step()
            yield item

    def literal(self, value: Any) -> Any:
        current().allow(weight(value, current().limits.max_chars), "a literal")
        return value

    def concat(self, pieces: Iterable[str]) -> str:
        """Join a template's (or a macro's, or a block's) output, at most ``max_chars``."""
        limit = current().limits.max_chars
        size = 0
        out: list[str] = []
        append = out.append
        for piece in pieces:
            size += len(piece)
            if size > limit:
                raise BudgetExceeded(f"output over {limit} characters")
            append(piece)
        return "".join(out)

    def piece(self, text: str) -> str:
        current().spend(len(text), "a piece of output")
        return text

    def concat_values(self, markup: bool, values: tuple[Any, ...]) -> str:
        meter = current()
        limit = meter.limits.max_chars
        size = 0
        for value in values:
            size += len(value) if type(value) is str else weight(value, limit)
        meter.spend(size, "a joined string")
        return markup_join(values) if markup else str_join(values)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        meter = current()
        if operator == "*":
            _repeat(left, right, meter)
        elif operator == "**":
            _power(left, right)
        elif operator == "%":
            if isinstance(left, _TEXT):
                meter.allow(percent_size(left, right, meter.limits.max_chars), "a format")
        elif isinstance(left, (*_TEXT, list, tuple)) and isinstance(right, (*_TEXT, list, tuple)):
            # Counted by length first (cheap, and what the copy costs), so that adding up in a
            # loop runs out of budget before weighing gets slow.
            meter.spend(len(left) + len(right), "a value")
            if not isinstance(left, _TEXT):
                limit = meter.limits.max_chars
                meter.allow(weight(left, limit) + weight(right, limit), "a value")
            return self.binop_table[operator](left, right)
        return meter.built(self.binop_table[operator](left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        meter = current()
        meter.step()
        owner = getattr(__obj, "__self__", None)
        if owner is not None:
            name = getattr(__obj, "__name__", "")
            if isinstance(owner, _TEXT):
                if name == "join" and args:
                    args = (_joined_items(args[0], owner, meter), *args[1:])
                else:
                    check = _TEXT_METHODS.get(name)
                    if check is not None:
                        check(owner, args, kwargs, meter)
            elif name == "to_bytes" and isinstance(owner, int):
                _to_bytes(owner, args, kwargs, meter)
        return meter.built(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # Jinja's own, with a formatter that keeps to the budget.
        if not isinstance(value, (MethodType, BuiltinMethodType)) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None
        formatter: SandboxedFormatter
        if isinstance(owner, Markup):
            formatter = BoundedEscapeFormatter(self, escape=owner.escape)
        else:
            formatter = BoundedFormatter(self)
        is_format_map = value.__name__ == "format_map"
        kind = type(owner)

        def bounded(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs = args[0]
                args = ()
            return kind(formatter.vformat(owner, args, kwargs))

        return update_wrapper(bounded, value)
