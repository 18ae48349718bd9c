"""Vietnam's provincial-level administrative units, current and former, with their codes.

Vietnam has 34 provincial-level units: 6 centrally-run cities (thành phố trực thuộc trung ương)
and 28 provinces (tỉnh). They result from Resolution 202/2025/QH15 of the National Assembly on
the reorganisation of provincial-level administrative units, adopted and in force on
12 June 2025; the authorities of the merged units began operating on 1 July 2025. Before that
there were 63 units. 11 of them were kept as they were, the other 52 were merged into 23 units.
Each merged unit takes the name of one of its members.

Thừa Thiên Huế had already become the centrally-run city of Huế on 1 January 2025. It is listed
here among the 63 former names because data written before then still carries that name.

Codes are those of the national list of administrative-unit codes (danh mục và mã số các đơn vị
hành chính Việt Nam, https://danhmuchanhchinh.nso.gov.vn). The former codes come from Decision
124/2004/QĐ-TTg and its later amendments. The current codes come from Decision 19/2025/QĐ-TTg,
in force from 1 July 2025. Each merged unit took the code of one of its members, so a two-digit
code means the same current unit whether it was written before or after the reorganisation.
For example, 15 was Yên Bái and is now Lào Cai, which absorbed Yên Bái. The tests check this
property.

Recipients store the current short name ("Hà Nội", "Hồ Chí Minh", "Lào Cai"), not the form with
its type ("Thành phố Hà Nội", "Tỉnh Lào Cai"). Audience filters compare names exactly, so every
writer has to store the same form.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

__all__ = [
    "CURRENT",
    "FORMER",
    "FormerProvince",
    "Province",
    "current_named",
    "lookup",
    "normalise_province",
]


@dataclass(frozen=True, slots=True)
class Province:
    """A provincial-level unit in force since the 2025 reorganisation."""

    code: str
    name: str
    kind: Literal["city", "province"]

    @property
    def official_name(self) -> str:
        """The name with its type, as in legal texts: "Thành phố Huế", "Tỉnh Gia Lai"."""
        return f"{'Thành phố' if self.kind == 'city' else 'Tỉnh'} {self.name}"


@dataclass(frozen=True, slots=True)
class FormerProvince:
    """One of the 63 units before the reorganisation, and the code of the unit it is part of."""

    code: str
    name: str
    now: str

    @property
    def successor(self) -> Province:
        return _BY_CODE[self.now]


CURRENT: tuple[Province, ...] = (
    Province("01", "Hà Nội", "city"),
    Province("04", "Cao Bằng", "province"),
    Province("08", "Tuyên Quang", "province"),
    Province("11", "Điện Biên", "province"),
    Province("12", "Lai Châu", "province"),
    Province("14", "Sơn La", "province"),
    Province("15", "Lào Cai", "province"),
    Province("19", "Thái Nguyên", "province"),
    Province("20", "Lạng Sơn", "province"),
    Province("22", "Quảng Ninh", "province"),
    Province("24", "Bắc Ninh", "province"),
    Province("25", "Phú Thọ", "province"),
    Province("31", "Hải Phòng", "city"),
    Province("33", "Hưng Yên", "province"),
    Province("37", "Ninh Bình", "province"),
    Province("38", "Thanh Hóa", "province"),
    Province("40", "Nghệ An", "province"),
    Province("42", "Hà Tĩnh", "province"),
    Province("44", "Quảng Trị", "province"),
    Province("46", "Huế", "city"),
    Province("48", "Đà Nẵng", "city"),
    Province("51", "Quảng Ngãi", "province"),
    Province("52", "Gia Lai", "province"),
    Province("56", "Khánh Hòa", "province"),
    Province("66", "Đắk Lắk", "province"),
    Province("68", "Lâm Đồng", "province"),
    Province("75", "Đồng Nai", "province"),
    Province("79", "Hồ Chí Minh", "city"),
    Province("80", "Tây Ninh", "province"),
    Province("82", "Đồng Tháp", "province"),
    Province("86", "Vĩnh Long", "province"),
    Province("91", "An Giang", "province"),
    Province("92", "Cần Thơ", "city"),
    Province("96", "Cà Mau", "province"),
)

# The 63 units of 2008–2025 with their codes; the third field is the current unit's code.
FORMER: tuple[FormerProvince, ...] = (
    FormerProvince("01", "Hà Nội", "01"),
    FormerProvince("02", "Hà Giang", "08"),  # -> Tuyên Quang
    FormerProvince("04", "Cao Bằng", "04"),
    FormerProvince("06", "Bắc Kạn", "19"),  # -> Thái Nguyên
    FormerProvince("08", "Tuyên Quang", "08"),
    FormerProvince("10", "Lào Cai", "15"),
    FormerProvince("11", "Điện Biên", "11"),
    FormerProvince("12", "Lai Châu", "12"),
    FormerProvince("14", "Sơn La", "14"),
    FormerProvince("15", "Yên Bái", "15"),  # -> Lào Cai
    FormerProvince("17", "Hòa Bình", "25"),  # -> Phú Thọ
    FormerProvince("19", "Thái Nguyên", "19"),
    FormerProvince("20", "Lạng Sơn", "20"),
    FormerProvince("22", "Quảng Ninh", "22"),
    FormerProvince("24", "Bắc Giang", "24"),  # -> Bắc Ninh
    FormerProvince("25", "Phú Thọ", "25"),
    FormerProvince("26", "Vĩnh Phúc", "25"),  # -> Phú Thọ
    FormerProvince("27", "Bắc Ninh", "24"),
    FormerProvince("30", "Hải Dương", "31"),  # -> Hải Phòng
    FormerProvince("31", "Hải Phòng", "31"),
    FormerProvince("33", "Hưng Yên", "33"),
    FormerProvince("34", "Thái Bình", "33"),  # -> Hưng Yên
    FormerProvince("35", "Hà Nam", "37"),  # -> Ninh Bình
    FormerProvince("36", "Nam Định", "37"),  # -> Ninh Bình
    FormerProvince("37", "Ninh Bình", "37"),
    FormerProvince("38", "Thanh Hóa", "38"),
    FormerProvince("40", "Nghệ An", "40"),
    FormerProvince("42", "Hà Tĩnh", "42"),
    FormerProvince("44", "Quảng Bình", "44"),  # -> Quảng Trị
    FormerProvince("45", "Quảng Trị", "44"),
    FormerProvince("46", "Thừa Thiên Huế", "46"),  # -> Huế (city since 1 January 2025)
    FormerProvince("48", "Đà Nẵng", "48"),
    FormerProvince("49", "Quảng Nam", "48"),  # -> Đà Nẵng
    FormerProvince("51", "Quảng Ngãi", "51"),
    FormerProvince("52", "Bình Định", "52"),  # -> Gia Lai
    FormerProvince("54", "Phú Yên", "66"),  # -> Đắk Lắk
    FormerProvince("56", "Khánh Hòa", "56"),
    FormerProvince("58", "Ninh Thuận", "56"),  # -> Khánh Hòa
    FormerProvince("60", "Bình Thuận", "68"),  # -> Lâm Đồng
    FormerProvince("62", "Kon Tum", "51"),  # -> Quảng Ngãi
    FormerProvince("64", "Gia Lai", "52"),
    FormerProvince("66", "Đắk Lắk", "66"),
    FormerProvince("67", "Đắk Nông", "68"),  # -> Lâm Đồng
    FormerProvince("68", "Lâm Đồng", "68"),
    FormerProvince("70", "Bình Phước", "75"),  # -> Đồng Nai
    FormerProvince("72", "Tây Ninh", "80"),
    FormerProvince("74", "Bình Dương", "79"),  # -> Hồ Chí Minh
    FormerProvince("75", "Đồng Nai", "75"),
    FormerProvince("77", "Bà Rịa - Vũng Tàu", "79"),  # -> Hồ Chí Minh
    FormerProvince("79", "Hồ Chí Minh", "79"),
    FormerProvince("80", "Long An", "80"),  # -> Tây Ninh
    FormerProvince("82", "Tiền Giang", "82"),  # -> Đồng Tháp
    FormerProvince("83", "Bến Tre", "86"),  # -> Vĩnh Long
    FormerProvince("84", "Trà Vinh", "86"),  # -> Vĩnh Long
    FormerProvince("86", "Vĩnh Long", "86"),
    FormerProvince("87", "Đồng Tháp", "82"),
    FormerProvince("89", "An Giang", "91"),
    FormerProvince("91", "Kiên Giang", "91"),  # -> An Giang
    FormerProvince("92", "Cần Thơ", "92"),
    FormerProvince("93", "Hậu Giang", "92"),  # -> Cần Thơ
    FormerProvince("94", "Sóc Trăng", "92"),  # -> Cần Thơ
    FormerProvince("95", "Bạc Liêu", "96"),  # -> Cà Mau
    FormerProvince("96", "Cà Mau", "96"),
)

# Spellings seen in real data that the diacritics-free key does not already cover. Every
# entry is an abbreviation or an older spelling of one unit's name, never a guess.
_ALIASES: dict[str, str] = {
    "HCM": "79",
    "TPHCM": "79",
    "HCMC": "79",
    "TT-Huế": "46",  # Thừa Thiên - Huế
    "BR-VT": "79",  # Bà Rịa - Vũng Tàu
    "Bắc Cạn": "19",  # an older spelling of Bắc Kạn
    "Đắc Lắc": "66",  # an older spelling of Đắk Lắk
}

_BY_CODE: dict[str, Province] = {p.code: p for p in CURRENT}

# Prefixes and suffixes that name the unit's type, in the key's diacritics-free lowercase.
_PREFIXES = ("thanh pho ", "tinh ", "tp ", "t p ")
_SUFFIXES = (" city", " province")
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def _key(text: str) -> str:
    """A spelling-tolerant key: no diacritics, no case, no type prefix, no spaces.

    "Thành phố Hồ Chí Minh", "TP. Ho Chi Minh" and "ho chi minh city" all give "hochiminh".
    Spaces go last so that "Da Nang" and "Danang" agree.
    """
    # đ has no decomposition in Unicode: NFD would leave it as it is.
    text = text.replace("đ", "d").replace("Đ", "D")
    text = unicodedata.normalize("NFD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = _NOT_ALNUM.sub(" ", text).strip()
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    for suffix in _SUFFIXES:
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    return text.replace(" ", "")


def _build_index() -> dict[str, Province]:
    index: dict[str, Province] = {}

    def add(spelling: str, province: Province) -> None:
        key = _key(spelling)
        known = index.setdefault(key, province)
        if known is not province:  # a spelling that could mean two units is a bug in the table
            raise AssertionError(f"{spelling!r} names both {known.name} and {province.name}")

    for current in CURRENT:
        add(current.name, current)
    for former in FORMER:
        add(former.name, former.successor)
    for spelling, code in _ALIASES.items():
        add(spelling, _BY_CODE[code])
    return index


_BY_KEY = _build_index()
# Former and current codes agree (see the module's docstring), so one table serves both.
_BY_NUMBER: dict[int, Province] = {int(f.code): f.successor for f in FORMER} | {
    int(p.code): p for p in CURRENT
}


@lru_cache(maxsize=4096)
def lookup(value: str) -> Province | None:
    """The current unit that a name, a former name, or a code (former or current) refers to.

    Names are matched without regard to diacritics, case, spacing, punctuation or a type prefix
    ("Tỉnh", "Thành phố", "TP."). Codes may be written with or without leading zeros ("1",
    "01", "001"). Returns None for anything else. Imports see the same few dozen spellings
    over and over, hence the cache.
    """
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit() and len(value) <= 3:
        return _BY_NUMBER.get(int(value))
    return _BY_KEY.get(_key(value))


def normalise_province(value: str) -> str | None:
    """The current short name for ``value`` ("Quảng Nam" → "Đà Nẵng"), or None if unknown."""
    province = lookup(value)
    return None if province is None else province.name


def current_named(value: str) -> Province | None:
    """The current unit whose own name ``value`` is (spelt loosely, as :func:`lookup` reads
    names), or None: a former name ("Quảng Nam") or an alias does not count."""
    key = _key(value)
    found = _BY_KEY.get(key)
    return found if found is not None and _key(found.name) == key else None
