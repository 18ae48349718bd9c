"""Adapters are found by name: built-ins, and third parties through an entry point."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from channels import registry
from channels.base import Adapter
from channels.null import NullAdapter


def test_builtins_are_registered() -> None:
    assert registry.get("null") is NullAdapter
    assert {"email", "null"} <= set(registry.available())


def test_unknown_channel_lists_the_known_ones() -> None:
    with pytest.raises(registry.UnknownChannel) as caught:
        registry.get("pigeon")
    assert "email" in str(caught.value)


def test_a_third_party_adapter_is_found_through_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "bhxh_sms"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            from channels.base import Adapter, SendResult

            class SmsAdapter(Adapter):
                name = "sms"

                async def send(self, message):
                    return SendResult(provider_message_id="sms-1")

                @classmethod
                def from_settings(cls, settings):
                    return cls()
            """
        )
    )
    dist = tmp_path / "bhxh_sms-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bhxh-sms\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dispatcher.channels]\nsms = bhxh_sms:SmsAdapter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_found", None)
    try:
        adapter = registry.get("sms")
        assert issubclass(adapter, Adapter)
        assert adapter.__module__ == "bhxh_sms"
    finally:
        registry._found = None
        sys.modules.pop("bhxh_sms", None)
