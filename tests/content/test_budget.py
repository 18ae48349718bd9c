"""The template budget: no template can make a render run long, build huge values or print
huge text, and nothing is evaluated while a template compiles."""

from __future__ import annotations

import time

import pytest

from dispatcher.content import isolation
from dispatcher.content.render import Renderer, TemplateProblem, VariantData
from dispatcher.content.sandbox import TemplateLimits
from dispatcher.core.config import get_settings

# Bodies that froze the service, ate gigabytes or kept a thread busy, and their relatives.
# Each maps to the words its refusal must contain.
BAD_BODIES = {
    "power": ("{{ 9**(9**9) }}", "a number over"),
    "repeat_1e9": ("{{ 'a' * 10**9 }}", "repeated string over 1000000 characters"),
    "repeat_1e8": ("{{ 'a'*10**8 }}", "repeated string over"),
    "center_filter": ("{{ 'a'|center(100000000) }}", "centred string over"),
    "center_method": ("{{ 'a'.center(100000000) }}", "padded string over"),
    "ljust_method": ("{{ 'a'.ljust(10**9) }}", "padded string over"),
    "zfill_method": ("{{ '1'.zfill(10**9) }}", "padded string over"),
    "format_filter": ("{{ '%0100000000d'|format(1) }}", "a format over"),
    "percent_operator": ("{{ '%0100000000d' % 1 }}", "a format over"),
    "percent_star_width": ("{{ '%*d' % (100000000, 1) }}", "a format over"),
    "percent_repeated_key": (
        "{% set s = 'a' * 200000 %}{{ '%(s)s%(s)s%(s)s%(s)s%(s)s%(s)s' % {'s': s} }}",
        "a format over",
    ),
    "str_format_width": ("{{ '{:0100000000d}'.format(1) }}", "formatted field over"),
    "str_format_repeated": (
        "{% set s = 'a' * 400000 %}{{ '{0}{0}{0}{0}{0}{0}'.format(s) }}",
        "formatted string over",
    ),
    "nested_loops": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "over 100000 loop iterations and calls",
    ),
    "wordwrap_wrapstring": (
        "{{ ('a ' * 400000)|wordwrap(1, wrapstring='x' * 100000) }}",
        "wrapped string over",
    ),
    "wordwrap_long_word": ("{{ ('a' * 600000)|wordwrap(1) }}", "wrapped string over"),
    "wordwrap_slow": ("{{ ('a' * 200000)|wordwrap(2) }}", "wordwrap would break"),
    "indent": ("{{ ('\\n' * 100000)|indent(100000) }}", "indented string over"),
    "truncate_of_huge": ("{{ ('a' * 10**8)|truncate(5) }}", "repeated string over"),
    "join_filter": ("{{ range(100000)|join('x' * 100000) }}", "joined string over"),
    "join_method": ("{{ ('x' * 100000).join(range(100000)|map('string')) }}", "joined string"),
    "replace_filter": ("{{ ('a' * 100000)|replace('a', 'b' * 100000) }}", "replaced string over"),
    "replace_method": ("{{ ('a' * 100000).replace('a', 'b' * 100000) }}", "replaced string"),
    "expandtabs": ("{{ ('\\t' * 100000).expandtabs(100000) }}", "a string over"),
    "translate": ("{{ ('a' * 100000).translate({97: 'b' * 100000}) }}", "translated string"),
    "list_repeat": ("{{ [1] * 10**9 }}", "repeated list over"),
    "list_of_big_strings": ("{% set s = 'a' * 100000 %}{{ [s] * 100000 }}", "repeated list"),
    "list_sum_in_loop": (
        "{% set l = range(100000)|list %}{% for i in range(100000) %}{{ l|sum }}{% endfor %}",
        "template budget exceeded",
    ),
    "sum_of_lists": ("{{ ([[1] * 100] * 1000)|sum(start=[]) }}", "template budget exceeded"),
    "tilde_doubling": (
        "{% set ns = namespace(s='a') %}{% for i in range(60) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "joined string over",
    ),
    "plus_doubling": (
        "{% set ns = namespace(s='a') %}{% for i in range(60) %}"
        "{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "a value over",
    ),
    "set_literal_nesting": (
        "{% set a = 'x' * 1000 %}{% set b = [a,a,a,a,a,a,a,a,a,a] %}"
        "{% set c = [b,b,b,b,b,b,b,b,b,b] %}{% set d = [c,c,c,c,c,c,c,c,c,c] %}"
        "{% set e = [d,d,d,d,d,d,d,d,d,d] %}{{ e }}",
        "a literal over",
    ),
    "set_block_in_loop": (
        "{% set x = 'x' * 1000 %}{% set s %}{% for i in range(90000) %}{{ x }}{% endfor %}"
        "{% endset %}{{ s }}",
        "built over 10000000 characters in all",
    ),
    "container_printed_in_a_macro": (
        "{% set l = range(100000)|list %}{% macro m() %}{% for i in range(90000) %}{{ l }}"
        "{% endfor %}{% endmacro %}{{ m() }}",
        "built over 10000000 characters in all",
    ),
    "namespace_attributes": (
        "{% set ns = namespace() %}{% set s = 'x' * 600000 %}"
        "{% set ns.a = s %}{% set ns.b = s %}{{ ns }}",
        "a namespace over",
    ),
    "macro_fan_out": (
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(40) }}",
        "template budget exceeded",  # over its steps, or its time on a busy machine
    ),
    "macro_endless": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "nested too deeply"),
    "output_in_loop": (
        "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
        "output over 1000000 characters",
    ),
    "to_bytes": ("{{ (1).to_bytes(10**9, 'big') }}", "byte string over"),
    "round_digits": ("{{ 10|round(-1000000000) }}", "round to more than"),
    "batch_fill": ("{{ range(3)|batch(1000000000, 'x')|list }}", "a batch over"),
    "slice_count": ("{{ range(3)|slice(1000000000)|list }}", "slicing into over"),
    "fromkeys": ("{{ {}.fromkeys(range(100000), 'a' * 100000) }}", "a value over"),
    "lipsum": ("{{ lipsum(1000000000) }}", "'lipsum' is undefined"),
    "folded_autoescape": (
        "{% autoescape 'a'|center(1000000000) %}x{% endautoescape %}",
        "autoescape takes true or false",
    ),
}


def render(body: str, limits: TemplateLimits | None = None, **context: object) -> str:
    renderer = Renderer(limits=limits or TemplateLimits())
    return renderer.render(VariantData(None, "email", "vi", body, "Tiêu đề"), context).body


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_a_template_over_its_budget_is_refused_quickly_and_says_why(name: str) -> None:
    body, reason = BAD_BODIES[name]
    started = time.monotonic()
    with pytest.raises(TemplateProblem) as caught:
        render(body, TemplateLimits(seconds=3))
    # The time budget plus one bounded step, on a busy machine.
    assert time.monotonic() - started < 10
    assert reason in str(caught.value), str(caught.value)


@pytest.mark.timeout(60, method="thread")
def test_nothing_is_computed_while_a_template_compiles() -> None:
    renderer = Renderer()
    started = time.monotonic()
    for source in (
        "{{ 9**(9**9) }}",
        "{{ 'a' * 1000000000 }}",
        "{{ 'a'|center(1000000000) }}",
        "{{ '%01000000000d'|format(1) }}",
        "{{ ('a' ~ 'b')|wordwrap(1, wrapstring='x'|center(1000000000)) }}",
        "{% if 9**(9**9) %}x{% endif %}",
    ):
        renderer.compile(source, html=False)
    assert time.monotonic() - started < 10


def test_the_time_budget_stops_a_slow_render() -> None:
    limits = TemplateLimits(seconds=0.2)
    started = time.monotonic()
    with pytest.raises(TemplateProblem) as caught:
        render(
            "{% set l = range(100000)|list %}{% for i in range(1000) %}{{ l|sum }}{% endfor %}",
            limits,
        )
    assert "took over 0.2 s" in str(caught.value)
    assert time.monotonic() - started < 5


def test_the_limits_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_TEMPLATE_MAX_OUTPUT_CHARS", "2000")
    monkeypatch.setenv("DISPATCHER_TEMPLATE_MAX_STEPS", "100")
    get_settings.cache_clear()
    try:
        renderer = Renderer()
        assert renderer.limits == TemplateLimits(max_chars=2000, max_steps=100)
        variant = VariantData(None, "email", "vi", "{{ 'a' * n }}", "s")
        assert renderer.render(variant, {"n": 2000}).body == "a" * 2000
        with pytest.raises(TemplateProblem, match="over 2000 characters"):
            renderer.render(variant, {"n": 2001})
        loop = VariantData(None, "email", "vi", "{% for i in range(n) %}{% endfor %}", "s")
        renderer.render(loop, {"n": 90})  # and a call to range, and one to count its loop
        with pytest.raises(TemplateProblem, match="over 100 loop iterations"):
            renderer.render(loop, {"n": 101})
    finally:
        get_settings.cache_clear()


def test_ordinary_templates_render_as_before() -> None:
    ordinary = {
        "{{ 'a' * 3 }}-{{ 2 ** 10 }}-{{ 7 * 6 }}-{{ 1 + 2 }}-{{ 'x' + 'y' }}": "aaa-1024-42-3-xy",
        "{{ '%.2f'|format(1.5) }} {{ '%s và %s' % ('An', 'Bình') }}": "1.50 An và Bình",
        "{{ '{:,}'.format(1250000).replace(',', '.') }} đồng": "1.250.000 đồng",
        "{{ [1, 2, 3]|join(', ') }} {{ [1, 2]|sum }} {{ ', '.join(['a', 'b']) }}": "1, 2, 3 3 a, b",
        "{% set ns = namespace(n=0) %}{% for i in range(5) %}{% set ns.n = ns.n + i %}"
        "{% endfor %}{{ ns.n }}": "10",
        "{% macro hi(name) %}Chào {{ name }}{% endmacro %}{{ hi('An') }}": "Chào An",
        "{{ 'ab'|center(6) }}|{{ 'x\ny'|indent(2) }}|{{ 'a-b'|replace('-', '--') }}": (
            "  ab  |x\n  y|a--b"
        ),
        "{{ 'abc'|truncate(3, end='') }} {{ 3.14159|round(2) }} {{ {'a': 1}|tojson }}": (
            'abc 3.14 {"a": 1}'
        ),
        "{% for a, b in [(1, 2), (3, 4)] %}{{ a ~ b }}{{ loop.length }}{% endfor %}": "122342",
        "{{ range(5)|batch(2)|list|length }} {{ range(5)|slice(2)|list|length }}": "3 2",
    }
    for source, expected in ordinary.items():
        assert render(source) == expected, source


def _spin() -> None:
    while True:
        pass


def _hoard() -> None:
    hoard = []
    while True:
        hoard.append(bytearray(64 * 1024 * 1024))


@pytest.mark.timeout(60)
def test_a_check_process_is_killed_after_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(isolation.FUNCTIONS, "spin", _spin)
    started = time.monotonic()
    assert isolation._fork_and_run("spin", (), TemplateLimits(seconds=0.5)) == ("time", None)
    assert time.monotonic() - started < 10


@pytest.mark.timeout(60)
def test_a_check_process_has_a_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(isolation.FUNCTIONS, "hoard", _hoard)
    limits = TemplateLimits(memory_mib=64)
    assert isolation._fork_and_run("hoard", (), limits) == ("memory", None)


@pytest.mark.timeout(120)
def test_checks_run_in_a_check_server_and_say_what_stopped_them() -> None:
    variant = VariantData(None, "email", "vi", "{{ 'a' * n }}", "s")
    rendered, problems = isolation.run(
        "render_one", variant, {"n": 3}, TemplateLimits(), limits=TemplateLimits()
    )
    assert rendered.body == "aaa" and problems == []
    with pytest.raises(TemplateProblem, match="a repeated string over 1000000 characters"):
        isolation.run(
            "render_one", variant, {"n": 10**9}, TemplateLimits(), limits=TemplateLimits()
        )
    # Over the memory the check may use (the render's own budget set higher than it):
    roomy = TemplateLimits(max_chars=10**10, memory_mib=64)
    with pytest.raises(TemplateProblem, match=r"template budget exceeded: .*memory"):
        isolation.run("render_one", variant, {"n": 10**9}, roomy, limits=roomy)
