"""Masked addresses: one form for each kind, and lookups from a full or a masked form."""

from __future__ import annotations

import pytest

from dispatcher.recipients.masking import (
    AddressLookup,
    BadAddressQuery,
    address_lookup,
    mask_address,
    mask_known,
    mask_text,
)


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("nguyen.van.an@gmail.com", "ng***@gmail.com"),
        ("ngoc@bhxh.gov.vn", "ng***@bhxh.gov.vn"),
        ("abc@x.vn", "ab***@x.vn"),
        # Too short to show two characters and still hide something.
        ("an@x.vn", "a***@x.vn"),
        ("a@x.vn", "a***@x.vn"),
        ("+84912345123", "+84 9** *** 123"),
        ("0912345123", "+84 9** *** 123"),
        ("091 234 5123", "+84 9** *** 123"),
        ("84381234567", "+84 3** *** 567"),
        ("123456789", "12***789"),
        ("-1001234567890", "-1***890"),
        ("98765", "9***5"),
        ("42", "***"),
        (None, None),
    ],
)
def test_each_kind_of_address_has_one_masked_form(address: str | None, masked: str) -> None:
    assert mask_address(address) == masked


def test_a_masked_address_never_contains_the_hidden_part() -> None:
    assert "nguyen" not in (mask_address("nguyen@gmail.com") or "")
    assert "2345" not in (mask_address("+84912345123") or "")


def test_text_quoting_an_address_is_masked() -> None:
    reply = "550 5.1.1 <ngoc.tran@gmail.com>: User unknown; also call 0912 345 678 or +84987654321"
    assert mask_text(reply) == (
        "550 5.1.1 <ng***@gmail.com>: User unknown; also call +84 9** *** 678 or +84 9** *** 321"
    )
    # Known addresses that look like nothing in particular: a chat id.
    assert mask_text("chat 555123456 not found", ["555123456"]) == "chat 55***456 not found"
    # Masking twice changes nothing more.
    once = mask_text(reply)
    assert mask_text(once) == once
    # Digits that are not a phone number stay.
    assert mask_text("quota 1234567890123 exceeded") == "quota 1234567890123 exceeded"
    assert mask_text(None) is None and mask_text("") == ""


def test_identifiers_keep_their_shape() -> None:
    assert mask_known("-1001234567890:42", ["-1001234567890"]) == "-1***890:42"
    # An email Message-ID is not an address and stays whole.
    assert mask_known("delivery-7@bhxh.test", ["an@example.vn"]) == "delivery-7@bhxh.test"


def test_full_addresses_are_looked_up_in_their_stored_forms() -> None:
    assert address_lookup(" Nguyen.An@GMAIL.COM ") == AddressLookup(
        exact=("Nguyen.An@gmail.com", "Nguyen.An@GMAIL.COM")
    )
    phone = address_lookup("091 234 5678")
    assert phone.exact[:2] == ("+84912345678", "0912345678")
    assert address_lookup("+84912345678").exact[:2] == ("+84912345678", "0912345678")
    assert address_lookup("123456789") == AddressLookup(exact=("123456789",))


def test_masked_forms_are_prefix_and_suffix_patterns() -> None:
    assert address_lookup("ng***@Gmail.com") == AddressLookup(patterns=(("ng", "@gmail.com"),))
    assert address_lookup("+84 9** *** 123").patterns == (("+849", "123"), ("09", "123"))
    assert address_lookup("84 9** *** 123").patterns == (
        ("+849", "123"),
        ("09", "123"),
        ("849", "123"),
    )
    assert address_lookup("-1***890") == AddressLookup(patterns=(("-1", "890"),))
    assert address_lookup("ng***an@gmail.com").patterns == (("ng", "an@gmail.com"),)


@pytest.mark.parametrize(
    "query",
    ["", "ng***an***@gmail.com", "***@gmail.com", "ng***", "ng***@gmail", "a@***@b.vn", "x@y"],
)
def test_malformed_queries_are_refused(query: str) -> None:
    with pytest.raises(BadAddressQuery):
        address_lookup(query)


def test_operators_read_recipients_with_masked_addresses(client, db) -> None:
    """Editors (who write the addresses) and admins read them in full; operators masked."""
    from sqlalchemy import update

    from dispatcher.kit.clock import utcnow
    from dispatcher.tables.recipients import Address
    from tests.conftest import make_key

    person = {
        "external_id": "0100000055",
        "full_name": "Nguyễn Văn An",
        "addresses": {
            "email": "nguyen.van.an@gmail.com",
            "zalo": "0912345678",
            "telegram": "123456789",
        },
        "attributes": {
            "phone": "+84912345678",
            "notes": ["con gái: an.con@example.vn", {"fax": "0987654321"}],
            "ma_don_vi": "HN001",
        },
    }
    assert client.post("/v1/recipients", json=person).status_code == 201
    with db.transaction() as session:
        session.execute(
            update(Address)
            .where(Address.channel == "telegram")
            .values(dead_at=utcnow(), dead_reason="chat 123456789 blocked the bot")
        )

    def read(role: str) -> dict:
        key = make_key(db, role, f"{role} key")
        answer = client.get("/v1/recipients/0100000055", headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200, answer.text
        return answer.json()

    for role in ("editor", "admin"):
        full = read(role)
        assert full["addresses"] == person["addresses"], role
        assert full["attributes"] == person["attributes"], role
        assert full["dead_addresses"] == {"telegram": "chat 123456789 blocked the bot"}

    masked = read("operator")
    assert masked["addresses"] == {
        "email": "ng***@gmail.com",
        "zalo": "+84 9** *** 678",
        "telegram": "12***789",
    }
    assert masked["attributes"] == {
        "phone": "+84 9** *** 678",
        "notes": ["con gái: an***@example.vn", {"fax": "+84 9** *** 321"}],
        "ma_don_vi": "HN001",
    }
    assert masked["dead_addresses"] == {"telegram": "chat 12***789 blocked the bot"}
    text = str(masked)
    for secret in ("nguyen.van.an", "0912345678", "123456789", "an.con", "0987654321"):
        assert secret not in text, secret
