"""The renderer: sandbox, strict variables, escaping, locale fallback."""

from __future__ import annotations

import pytest

from dispatcher.content.render import (
    RecipientView,
    Renderer,
    TemplateProblem,
    VariantData,
    choose_variant,
    locale_chain,
    variant_map,
)


def test_locale_chain_always_ends_in_vietnamese() -> None:
    assert locale_chain("vi-VN") == ["vi-vn", "vi"]
    assert locale_chain("km") == ["km", "vi"]
    assert locale_chain("hmn") == ["hmn", "vi"]
    assert locale_chain("en_GB") == ["en-gb", "en", "vi"]
    assert locale_chain(None) == ["vi"]


def test_language_beats_channel_and_unknown_languages_fall_back() -> None:
    variants = variant_map(
        [
            VariantData(1, "email", "vi", "thân", "Chào"),
            VariantData(2, "default", "en", "body", "Hello"),
            VariantData(3, "default", "vi", "chung", "Chung"),
        ]
    )
    assert choose_variant(variants, "email", "en")
    assert choose_variant(variants, "email", "en").id == 2  # type: ignore[union-attr]
    assert choose_variant(variants, "email", "km").id == 1  # type: ignore[union-attr]
    assert choose_variant(variants, "zalo", "vi").id == 3  # type: ignore[union-attr]
    assert choose_variant({}, "zalo", "vi") is None


def render(body: str, html: str | None = None, **context: object):
    return Renderer().render(VariantData(None, "email", "vi", body, "Tiêu đề", html), context)


def test_sandbox_refuses_python_internals() -> None:
    with pytest.raises(TemplateProblem) as caught:
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    assert "unsafe" in str(caught.value)
    with pytest.raises(TemplateProblem):
        render("{{ x.__init__.__globals__ }}", x=object())


def test_a_recipient_shows_its_fields_and_nothing_else() -> None:
    view = RecipientView(external_id="0100000001", full_name="Nguyễn Văn An", province="Hà Nội")
    out = render("{{ r.given_name }} {{ r.external_id }} {{ r.province }}", r=view)
    assert out.body == "An 0100000001 Hà Nội"
    for reach in ("r.__class__", "r.__slots__", "r.__reduce__()", "r.__init__.__globals__"):
        with pytest.raises(TemplateProblem) as caught:
            render("{{ " + reach + " }}", r=view)
        assert "unsafe" in str(caught.value), reach


def test_missing_variable_names_itself_and_its_line() -> None:
    with pytest.raises(TemplateProblem) as caught:
        render("một\nhai\n{{ ba }}")
    assert caught.value.line == 3
    assert "'ba' is undefined" in caught.value.message


def test_html_is_escaped_and_text_is_not() -> None:
    out = render("{{ name }}", "<p>{{ name }}</p>", name="<Công ty A & B>")
    assert out.body == "<Công ty A & B>"
    assert out.html == "<p>&lt;Công ty A &amp; B&gt;</p>"


def test_compiled_templates_are_cached_per_variant() -> None:
    renderer = Renderer()
    variant = VariantData(7, "email", "vi", "{{ a }}", "s")
    renderer.render(variant, {"a": 1})
    first = renderer.compile("{{ a }}", html=False, key=(7, "body"))
    renderer.render(variant, {"a": 2})
    assert renderer.compile("ignored", html=False, key=(7, "body")) is first


def test_a_stored_variant_is_compiled_once_and_a_full_cache_forgets_the_oldest() -> None:
    """A stored variant's parts are looked up together after its first render: no compile
    per part per message. The kept variants are bounded by the cache's size."""
    compiled: list[str] = []

    class Counting(Renderer):
        def compile(self, source, *, html, key=None):
            compiled.append(source)
            return super().compile(source, html=html, key=key)

    renderer = Counting(cache_size=2)
    first = VariantData(1, "email", "vi", "{{ a }}", "s{{ a }}", "<b>{{ a }}</b>")
    assert renderer.render(first, {"a": 1}).html == "<b>1</b>"
    assert len(compiled) == 3
    out = renderer.render(first, {"a": "<2>"})
    assert (out.subject, out.body, out.html) == ("s<2>", "<2>", "<b>&lt;2&gt;</b>")
    assert len(compiled) == 3
    for variant_id in (2, 3):
        renderer.render(VariantData(variant_id, "email", "vi", "{{ a }}"), {"a": 0})
    compiled.clear()
    renderer.render(first, {"a": 4})
    assert len(compiled) == 3, "the oldest variant was forgotten and compiled again"
    renderer.clear()
    compiled.clear()
    renderer.render(first, {"a": 5})
    assert len(compiled) == 3


def test_a_variant_that_fails_to_compile_is_not_kept() -> None:
    renderer = Renderer()
    broken = VariantData(9, "email", "vi", "{{ a }", "s")
    for _ in range(2):
        with pytest.raises(TemplateProblem) as caught:
            renderer.render(broken, {"a": 1})
        assert caught.value.part == "body"


def test_a_parts_own_variables_stay_in_that_part() -> None:
    """The parts of a message share one context: what one part sets is its own."""
    renderer = Renderer()
    variant = VariantData(
        8,
        "email",
        "vi",
        body="{{ greeting }}, {{ name }}{% set greeting = 'Kính gửi' %} / {{ greeting }}",
        subject="{% set name = 'khác' %}{% set greeting = 'Xin chào' %}{{ greeting }} {{ name }}",
        html="<p>{{ greeting }} {{ name }}{% set name = 'HTML' %}</p>",
    )
    context = {"greeting": "Chào", "name": "An"}
    out = renderer.render(variant, context)
    assert out.subject == "Xin chào khác"
    assert out.body == "Chào, An / Kính gửi"
    assert out.html == "<p>Chào An</p>"
    assert context == {"greeting": "Chào", "name": "An"}
    # Jinja's globals are there, under the caller's variables of the same name.
    loop = VariantData(9, "email", "vi", "{{ range(3) | list }} {{ dict }}", "s")
    assert renderer.render(loop, {"dict": "d"}).body == "[0, 1, 2] d"
