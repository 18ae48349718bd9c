"""Every built-in template renders for a person and an organisation, on every channel, in both
locales, within the channel's limits."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from channels.registry import PLAN_CHANNELS
from dispatcher.content.render import Renderer, VariantData, limit_problems
from dispatcher.content.service import (
    build_context,
    builtin_templates_dir,
    read_template_file,
    recipient_view,
)
from dispatcher.scheduling.rules import calendar_variables

FILES = sorted(builtin_templates_dir().glob("*.toml"))
PEOPLE: list[dict[str, Any]] = [
    {
        "external_id": "0100000001",
        "full_name": "Nguyễn Thị Minh Khai",
        "kind": "person",
        "province": "Nghệ An",
        "birth_date": date(1958, 9, 1),
        "attributes": {"card_expiry": "31/12/2026"},
    },
    {
        "external_id": "TA0012345",
        "full_name": "Công ty Cổ phần Dệt may Hà Nội & Đối tác <HN>",
        "kind": "organization",
        "province": "Hà Nội",
        "attributes": {"organization_founded_year": "1995"},
    },
]


def test_there_is_a_template_for_every_occasion_of_the_plan() -> None:
    keys = {path.stem for path in FILES}
    assert {
        "new_year",
        "tet",
        "reunification_day",
        "national_day",
        "birthday",
        "organization_anniversary",
        "disaster_support",
        "fraud_warning",
        "policy_news",
        "card_expiry_reminder",
        "contribution_received",
    } <= keys


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_variant_renders_within_its_limits(path) -> None:
    template = read_template_file(path)
    pairs = {(v.channel, v.locale) for v in template.variants}
    assert pairs >= {(c, loc) for c in PLAN_CHANNELS for loc in ("vi", "en")}
    renderer = Renderer()
    for variant in template.variants:
        data = VariantData(
            None, variant.channel, variant.locale, variant.body, variant.subject, variant.html
        )
        for person in PEOPLE:
            for unsubscribe in ("https://thongbao.bhxh.test/u/abc", None):
                context = build_context(
                    recipient_view(person, variant.locale),
                    defaults=template.defaults,
                    variables=calendar_variables(datetime(2027, 2, 1, 1, tzinfo=UTC)),
                    channel=variant.channel,
                    locale=variant.locale,
                    unsubscribe_url=unsubscribe,
                )
                rendered = renderer.render(data, context)
                assert not limit_problems(rendered), (path.stem, variant.channel, variant.locale)
                assert rendered.body.strip()
                if variant.locale == "vi":
                    assert any(
                        c in rendered.body for c in "ăâđêôơưạảấầẩậắằẳặẹẻẽếềểễệịọỏốồổỗộớờởỡợụủứừửữự"
                    )
                if variant.html:
                    assert "<script" not in (rendered.html or "")
                    # Names are escaped in HTML: the organisation's "<HN>" never becomes a tag.
                    assert "<HN>" not in (rendered.html or "")


def test_the_readme_transactional_example_names_the_amount_once(repo_root: Path) -> None:
    """The README's POST /v1/messages example, rendered with its own variables: the amount is
    written once with its currency, in every variant."""
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    found = re.search(r"localhost:8000/v1/messages .*?-d '(\{.*?\})'", readme, re.DOTALL)
    assert found, "the README shows a POST /v1/messages example"
    example = json.loads(found.group(1))
    assert example["template"] == "contribution_received"
    template = read_template_file(builtin_templates_dir() / "contribution_received.toml")
    person = PEOPLE[0]
    renderer = Renderer()
    for variant in template.variants:
        data = VariantData(
            None, variant.channel, variant.locale, variant.body, variant.subject, variant.html
        )
        context = build_context(
            recipient_view(person, variant.locale),
            defaults=template.defaults,
            variables={
                **calendar_variables(datetime(2026, 12, 1, tzinfo=UTC)),
                **example["variables"],
            },
            channel=variant.channel,
            locale=variant.locale,
            unsubscribe_url=None,
        )
        body = renderer.render(data, context).body
        where = (variant.channel, variant.locale)
        if variant.channel in ("zalo", "zns"):
            # A Zalo template description: the amount is a parameter; "đồng" is the
            # registered template's fixed text.
            assert "amount (quantity_amount): 1.250.000\n" in body, (where, body)
            continue
        amount = "1.250.000 đồng" if variant.locale == "vi" else "1,250,000 VND"
        assert body.count(amount) == 1, (where, body)
        assert "đồng đồng" not in body and "VND VND" not in body and "đồng VND" not in body, where
