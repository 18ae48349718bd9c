"""Addresses as operations staff see them: masked, and found again from a full or masked form.

Every address that leaves the service in an operations answer (delivery search, export,
report) goes through :func:`mask_address`; nothing else decides what a masked address looks
like.

    email        nguyen.van.an@gmail.com   ->  ng***@gmail.com       first two characters of
                                                                     the local part (one if it
                                                                     has only one or two)
    phone        0912345678, +84912345678  ->  +84 9** *** 678       country code, first digit,
                                                                     last three digits
    other ids    a Telegram chat id,       ->  12***789              first two and last three
                 a Zalo user id ...                                  characters (fewer when short)

Free text that may quote an address (a provider's reply, an error reason) goes through
:func:`mask_text`.

A lookup (:func:`address_lookup`) takes either a full address, normalised as the recipients
service and the importer store it (emails through ``email_validator``, Vietnamese mobile
numbers in their ``+84`` and ``0`` forms), or a masked form such as ``ng***@gmail.com`` or
``+84 9** *** 678``, which is matched as a prefix and a suffix around the ``***``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

from dispatcher.recipients.importer import normalise_phone

MASK = "***"

# The local part excludes "*" so that an address already masked is left as it is.
_EMAILS = re.compile(r"[^\s<>()\[\],;:\"'@*]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# A Vietnamese mobile number inside text, written the ways normalise_phone accepts.
_PHONES = re.compile(r"(?<![\d+])(?:\+84|0084|84|0)[35789](?:[\s.-]?\d){8}(?!\d)")
_WHITESPACE = re.compile(r"\s+")
_STARS = re.compile(r"\*+")
_MASKED_PHONE_PREFIX = re.compile(r"(?:\+?84|0)([35789])")


def mask_email(value: str) -> str:
    """``ng***@gmail.com`` for ``nguyen@gmail.com``."""
    local, _, domain = value.rpartition("@")
    keep = local[:2] if len(local) > 2 else local[:1]
    return f"{keep}{MASK}@{domain}"


def mask_phone(value: str) -> str:
    """``+84 9** *** 678`` for a number in the ``+84`` form :func:`normalise_phone` gives."""
    national = value.removeprefix("+84")
    return f"+84 {national[0]}** *** {national[-3:]}"


def mask_identifier(value: str) -> str:
    """A chat or user id: enough of both ends to tell two apart, never the whole."""
    if len(value) > 6:
        return f"{value[:2]}{MASK}{value[-3:]}"
    if len(value) > 2:
        return f"{value[:1]}{MASK}{value[-1:]}"
    return MASK


def mask_address(value: str | None) -> str | None:
    """The only form in which an address is shown to operations staff."""
    if value is None:
        return None
    value = value.strip()
    if "@" in value:
        return mask_email(value)
    phone = normalise_phone(value)
    if phone is not None:
        return mask_phone(phone)
    return mask_identifier(value)


def mask_known(text: str | None, known: Iterable[str | None]) -> str | None:
    """``text`` with each of the ``known`` addresses replaced by its masked form.

    For identifiers that embed an address (a Telegram message id is ``<chat id>:<n>``) and
    must otherwise stay as they are."""
    if not text:
        return text
    for address in sorted({a for a in known if a and len(a) > 2}, key=len, reverse=True):
        text = text.replace(address, mask_address(address) or MASK)
    return text


def mask_text(text: str | None, known: Iterable[str | None] = ()) -> str | None:
    """``text`` with the ``known`` addresses, and anything shaped like an email address or a
    Vietnamese mobile number, replaced by their masked forms."""
    text = mask_known(text, known)
    if not text:
        return text
    text = _EMAILS.sub(lambda m: mask_email(m.group(0)), text)
    return _PHONES.sub(lambda m: mask_address(m.group(0)) or MASK, text)


class BadAddressQuery(ValueError):
    """A lookup that names no address: a malformed mask, an impossible email."""


@dataclass(frozen=True, slots=True)
class AddressLookup:
    """What an address query matches: any of ``exact``, or any (prefix, suffix) pair."""

    exact: tuple[str, ...] = ()
    patterns: tuple[tuple[str, str], ...] = ()

    @property
    def masked(self) -> bool:
        return bool(self.patterns)


def address_lookup(query: str) -> AddressLookup:
    """The stored address values ``query`` stands for; raises :class:`BadAddressQuery`."""
    text = query.strip()
    if not text:
        raise BadAddressQuery("an address, or a masked address such as ng***@gmail.com")
    if "*" in text:
        return _masked_lookup(text)
    if "@" in text:
        try:
            email = validate_email(text, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise BadAddressQuery(f"not an email address: {exc}") from None
        return AddressLookup(exact=tuple(dict.fromkeys((email, text))))
    compact = _WHITESPACE.sub("", text)
    phone = normalise_phone(compact)
    if phone is not None:
        # Channel addresses are stored as given; numbers are usually written +84… or 0….
        national = phone.removeprefix("+84")
        return AddressLookup(exact=tuple(dict.fromkeys((phone, f"0{national}", text, compact))))
    return AddressLookup(exact=(text,))


def _masked_lookup(text: str) -> AddressLookup:
    compact = _WHITESPACE.sub("", text)
    runs = _STARS.findall(compact)
    if len(runs) != 1:
        raise BadAddressQuery(
            f"{text!r}: a masked address hides one part with *, as in ng***@gmail.com "
            "or +84 9** *** 678"
        )
    prefix, _, suffix = compact.partition(runs[0])
    if not prefix or not suffix:
        raise BadAddressQuery(
            f"{text!r}: a masked address keeps characters before and after the ***, "
            "as in ng***@gmail.com or +84 9** *** 678"
        )
    if "@" in prefix or "@" in suffix:
        local_end, at, domain = suffix.partition("@")
        if "@" in prefix or "@" in domain or "." not in domain.strip("."):
            raise BadAddressQuery(f"{text!r}: a masked email looks like ng***@gmail.com")
        # Stored emails have their domain in lower case (email_validator's normal form).
        return AddressLookup(patterns=((prefix, f"{local_end}{at}{domain.lower()}"),))
    patterns = [(prefix, suffix)]
    phone = _MASKED_PHONE_PREFIX.fullmatch(prefix)
    if phone is not None and suffix.isdigit():
        digit = phone.group(1)
        patterns = [(f"+84{digit}", suffix), (f"0{digit}", suffix), *patterns]
    return AddressLookup(patterns=tuple(dict.fromkeys(patterns)))
