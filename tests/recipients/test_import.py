"""Bulk import of recipients: CSV and JSON Lines, over HTTP, from the CLI, and the engine itself.

Every test that writes runs on SQLite and on PostgreSQL (the ``db`` and ``client`` fixtures).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from dispatcher.core.db import Database
from dispatcher.kit.clock import utcnow
from dispatcher.recipients import importer
from dispatcher.recipients.importer import (
    ImportFileError,
    Rejection,
    import_recipients,
    normalise_phone,
)
from dispatcher.recipients.provinces import CURRENT, FORMER, lookup, normalise_province
from dispatcher.tables.recipients import Address, Recipient

IMPORT_URL = "/v1/recipients/import"
CSV = {"content-type": "text/csv"}
NDJSON = {"content-type": "application/x-ndjson"}

# A file as people really send them: a BOM, Vietnamese text, a quoted field over two lines, and
# a bad row of each kind. Line numbers are the file's, the header being line 1.
MIXED_CSV = "\ufeff" + "\n".join(
    [
        "external_id,full_name,birth_date,province,language,kind,email,zalo,phone,ma_don_vi",
        "0100000001,Nguyễn Văn An,15/04/1985,Hà Nội,vi,person,an.nguyen@example.vn,,"
        "0912 345 678,HN001",
        "0100000002,Trần Thị Bích Ngọc,1990-11-02,Tỉnh Quảng Nam,,,ngoc@example.vn,0987654321,,",
        "0100000003,Lê Văn Bình,01/01/1970,TP. HCM,,,binh@,,,",  # 4: email
        "0100000004,Phạm Thị Dung,31/02/1990,Huế,,,,,,",  # 5: birth_date
        "0100000005,Hoàng Văn Em,,Atlantis,,,,,,",  # 6: province
        "0100000006,Vũ Thị Phương,,Cần Thơ,,,,,12345,",  # 7: phone
        "0100000007,,,Hà Nội,,,,,,",  # 8: full_name
        '0100000001,"Nguyễn Văn An, con",15/04/1985,ha noi,,,an.moi@example.vn,,+84912345678,HN001',
        '0100000008,"Đặng Thị ""Gấm""',  # 10-11: one record over two lines
        'Nhà văn hóa",,Bình Dương,,,,,,',
        "0100000009,Ngô Văn Hải,1985-05-05,79,en,organization,,,,",
        "0100000010,Đinh Văn Kha,,,,robot,,,,",  # 13: kind
    ]
)

MIXED_REJECTED: dict[int, tuple[str | None, str]] = {
    4: ("0100000003", "email:"),
    5: ("0100000004", "birth_date:"),
    6: ("0100000005", "province:"),
    7: ("0100000006", "phone:"),
    8: ("0100000007", "full_name:"),
    13: ("0100000010", "kind:"),
}


@pytest.fixture()
def api(client: Any) -> Any:
    """The test client (the app includes the import router)."""
    return client


def post(api: Any, body: str | bytes, headers: dict[str, str] = CSV, **params: str) -> Any:
    content = body.encode() if isinstance(body, str) else body
    return api.post(IMPORT_URL, content=content, headers=headers, params=params)


def recipient(api: Any, external_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/recipients/{external_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def assert_rejected(
    rows: list[dict[str, Any]], expected: dict[int, tuple[str | None, str]]
) -> None:
    got = {row["line"]: row for row in rows}
    assert sorted(got) == sorted(expected), rows
    for line, (external_id, field) in expected.items():
        assert got[line]["external_id"] == external_id, got[line]
        assert got[line]["reason"].startswith(field), got[line]


# -- CSV over HTTP ------------------------------------------------------------------------------


def test_csv_with_good_and_bad_rows(api: Any) -> None:
    response = post(api, MIXED_CSV)
    assert response.status_code == 200, response.text
    report = response.json()
    assert {k: report[k] for k in ("rows", "created", "updated", "rejected", "superseded")} == {
        "rows": 11,
        "created": 4,
        "updated": 0,
        "rejected": 6,
        "superseded": 1,
    }
    assert report["format"] == "csv"
    assert report["bytes_read"] == len(MIXED_CSV.encode())
    assert report["rejected_rows_omitted"] == 0
    assert_rejected(report["rejected_rows"], MIXED_REJECTED)
    reasons = {row["line"]: row["reason"] for row in report["rejected_rows"]}
    assert "Atlantis" in reasons[6]
    assert "31/02/1990" in reasons[5]

    # The later row of a duplicate wins: its name, its email, its normalised phone.
    an = recipient(api, "0100000001")
    assert an["full_name"] == "Nguyễn Văn An, con"
    assert an["addresses"] == {"email": "an.moi@example.vn"}
    assert an["attributes"] == {"phone": "+84912345678", "ma_don_vi": "HN001"}
    assert an["province"] == "Hà Nội"
    assert an["birth_date"] == "1985-04-15"

    ngoc = recipient(api, "0100000002")
    assert ngoc["province"] == "Đà Nẵng"  # Quảng Nam merged into Đà Nẵng in 2025
    assert ngoc["addresses"] == {"email": "ngoc@example.vn", "zalo": "0987654321"}
    assert ngoc["language"] == "vi" and ngoc["kind"] == "person"

    gam = recipient(api, "0100000008")
    assert gam["full_name"] == 'Đặng Thị "Gấm"\nNhà văn hóa'
    assert gam["province"] == "Hồ Chí Minh"  # Bình Dương merged into Hồ Chí Minh

    hai = recipient(api, "0100000009")
    assert (hai["province"], hai["language"], hai["kind"]) == ("Hồ Chí Minh", "en", "organization")

    for line in MIXED_REJECTED:
        assert api.get(f"/v1/recipients/{MIXED_REJECTED[line][0]}").status_code == 404


def test_body_streamed_in_small_pieces(api: Any) -> None:
    data = MIXED_CSV.encode()

    def pieces() -> Iterator[bytes]:
        # 7-byte pieces cut the BOM and the multi-byte Vietnamese letters in half.
        for start in range(0, len(data), 7):
            yield data[start : start + 7]

    response = api.post(IMPORT_URL, content=pieces(), headers=CSV)
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 4
    assert_rejected(response.json()["rejected_rows"], MIXED_REJECTED)


def test_reimport_replaces_the_whole_recipient(api: Any, db: Database) -> None:
    first = "\n".join(
        [
            "external_id,full_name,email,telegram,zalo",
            "0200000001,Bùi Thị Lan,lan@example.vn,111,z-lan",
            "0200000002,Đỗ Văn Minh,minh@example.vn,,",
        ]
    )
    assert post(api, first).json()["created"] == 2
    with db.transaction() as session:
        session.execute(update(Address).values(dead_at=utcnow(), dead_reason="bounced"))

    second = "\n".join(
        [
            "external_id,full_name,email,telegram,zalo",
            # name and email change, telegram is gone, zalo stays the same
            "0200000001,Bùi Thị Lan (mới),lan.moi@example.vn,,z-lan",
            "0200000002,Đỗ Văn Minh,minh@example.vn,,",
            "0200000003,Mai Anh,,,",
        ]
    )
    report = post(api, second).json()
    assert (report["created"], report["updated"], report["rejected"]) == (1, 2, 0)

    lan = recipient(api, "0200000001")
    assert lan["full_name"] == "Bùi Thị Lan (mới)"
    assert lan["addresses"] == {"email": "lan.moi@example.vn", "zalo": "z-lan"}
    # The changed email gets a fresh chance; the unchanged zalo address stays dead.
    assert lan["dead_addresses"] == {"zalo": "bounced"}
    minh = recipient(api, "0200000002")
    assert minh["dead_addresses"] == {"email": "bounced"}
    assert recipient(api, "0200000003")["addresses"] == {}

    # The same file again changes nothing but updated_at.
    report = post(api, second).json()
    assert (report["created"], report["updated"]) == (0, 3)
    assert recipient(api, "0200000001")["dead_addresses"] == {"zalo": "bounced"}


def test_csv_file_level_errors(api: Any) -> None:
    response = post(api, "external_id,name\n01,An\n")
    assert response.status_code == 422
    assert "full_name" in response.json()["detail"][0]["msg"]
    response = post(api, b"")
    assert response.status_code == 422
    assert "empty" in response.json()["detail"][0]["msg"]
    response = post(api, "external_id,full_name,Email,email\n")
    assert response.status_code == 422
    assert "twice" in response.json()["detail"][0]["msg"]


# -- JSON Lines ---------------------------------------------------------------------------------


def test_jsonl_with_good_and_bad_lines(api: Any) -> None:
    lines = [
        {
            "external_id": "0300000001",
            "full_name": "Nguyễn Thị Hồng",
            "birth_date": "20/10/1995",
            "province": "Thừa Thiên Huế",
            "addresses": {"email": "hong@example.vn", "vssid": "0300000001"},
            "attributes": {"phone": "035 512 3456", "nhom": "hưu trí"},
        },
        "",
        {"external_id": "0300000002", "full_name": "Lý Văn Tú", "addresses": {"fax": "1"}},
        "không phải JSON",
        [1, 2],
        {"external_id": "0300000003", "full_name": "Tô Thị Yến", "phone": "0912345678"},
        {"external_id": "0300000004", "full_name": "Hà Văn Sơn", "attributes": {"phone": 912}},
        {"external_id": "bad id!", "full_name": "Kiều Thị Oanh"},
        {"external_id": "0300000005", "full_name": "Lò Văn Páo", "province": "Sơn La"},
    ]
    body = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    response = post(api, body, NDJSON)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["format"] == "jsonl"
    assert (report["rows"], report["created"], report["rejected"]) == (8, 2, 6)
    assert_rejected(
        report["rejected_rows"],
        {
            3: ("0300000002", "addresses: unknown channel 'fax'"),
            4: (None, "row: not valid JSON"),
            5: (None, "row: a JSON object"),
            6: ("0300000003", "phone: Extra inputs"),
            7: ("0300000004", "phone:"),
            8: ("bad id!", "external_id:"),
        },
    )
    hong = recipient(api, "0300000001")
    assert hong["birth_date"] == "1995-10-20"
    assert hong["province"] == "Huế"
    assert hong["attributes"] == {"phone": "+84355123456", "nhom": "hưu trí"}
    assert hong["addresses"] == {"email": "hong@example.vn", "vssid": "0300000001"}

    again = post(api, json.dumps(lines[-1]), {"content-type": "application/jsonl"})
    assert again.status_code == 200
    assert (again.json()["created"], again.json()["updated"]) == (0, 1)


def deep_line(external_id: str, depth: int) -> str:
    return json.dumps(
        {"external_id": external_id, "full_name": "Lồng Nhau", "attributes": {"x": []}}
    ).replace("[]", "[" * depth + "]" * depth)


def test_jsonl_rows_nested_too_deep_are_rejected_alone(api: Any) -> None:
    good = json.dumps({"external_id": "0300000101", "full_name": "Mai Thị Lan"})
    body = "\n".join([good, deep_line("0300000102", 5_000), deep_line("0300000103", 100)])
    response = post(api, body, NDJSON)
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["rows"], report["created"], report["rejected"]) == (3, 1, 2)
    assert_rejected(report["rejected_rows"], {2: (None, "row: JSON nests"), 3: (None, "row:")})
    assert "more than 32 levels deep" in report["rejected_rows"][1]["reason"]
    assert recipient(api, "0300000101")["full_name"] == "Mai Thị Lan"
    assert api.get("/v1/recipients/0300000103").status_code == 404


# -- Content types ------------------------------------------------------------------------------


def test_wrong_content_type_is_415(api: Any, db: Database) -> None:
    body = "external_id,full_name\n0400000001,An\n"
    for content_type in ("application/json", "text/plain", "text/csv; charset=windows-1258"):
        response = post(api, body, {"content-type": content_type})
        assert response.status_code == 415, content_type
        detail = response.json()["detail"]
        assert "text/csv" in detail and "application/x-ndjson" in detail and "format" in detail
    response = api.post(IMPORT_URL, content=body.encode())
    assert response.status_code == 415

    response = post(api, body, {"content-type": "text/plain"}, format="csv")
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 1
    response = post(api, body, {"content-type": "text/csv; charset=UTF-8"})
    assert response.json()["updated"] == 1
    assert post(api, body, format="xml").status_code == 422


def test_openapi_documents_the_import(api: Any) -> None:
    operation = api.get("/openapi.json").json()["paths"][IMPORT_URL]["post"]
    content = operation["requestBody"]["content"]
    assert {"text/csv", "application/x-ndjson", "application/jsonl"} <= set(content)
    assert "415" in operation["responses"]
    assert any(p["name"] == "format" for p in operation["parameters"])


# -- The engine ---------------------------------------------------------------------------------


def test_engine_chunks_progress_and_rejection_cap(db: Database) -> None:
    data = MIXED_CSV.encode()
    seen: list[Rejection] = []
    progress: list[int] = []
    summary = import_recipients(
        (data[i : i + 1] for i in range(len(data))),  # one byte at a time
        format="csv",
        db=db,
        chunk_size=2,
        max_rejections=2,
        progress=progress.append,
        on_reject=seen.append,
    )
    # With chunks of 2 the duplicate of 0100000001 lands in a later chunk: it updates.
    assert (summary.rows, summary.created, summary.updated, summary.superseded) == (11, 4, 1, 0)
    assert summary.rejected == 6 and len(seen) == 6
    assert summary.rejections == seen[:2] and summary.rejections_omitted == 4
    assert [r.line for r in seen] == sorted(MIXED_REJECTED)
    assert progress == sorted(progress) and progress[-1] == len(data) == summary.bytes_read
    assert len(progress) >= 3
    with db.transaction() as session:
        an = session.get(Recipient, 1)
        assert an is not None and an.full_name == "Nguyễn Văn An, con"


def test_engine_bad_bytes_semicolons_and_long_lines(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "MAX_LINE_CHARS", 200)
    data = b"\n".join(
        [
            b"external_id;full_name;province",
            "0500000001;Trương Văn Nam;Bắc Kạn".encode(),
            b"0500000002;Tr\xfcong;H\xe0 N\xf4i",  # Latin-1, not UTF-8
            b"0500000003;" + b"x" * 500 + b";Ha Noi",
            "0500000004;Lâm Thị Quý;Kon Tum".encode(),
            b"",
            b";;",
        ]
    )
    summary = import_recipients(iter([data]), format="csv", db=db)
    assert (summary.rows, summary.created, summary.rejected) == (4, 2, 2)
    assert [(r.line, r.external_id) for r in summary.rejections] == [
        (3, "0500000002"),
        (4, None),
    ]
    assert "UTF-8" in summary.rejections[0].reason
    assert "longer than 200" in summary.rejections[1].reason
    with db.transaction() as session:
        provinces = {r.external_id: r.province for r in session.query(Recipient)}
    assert provinces == {"0500000001": "Thái Nguyên", "0500000004": "Quảng Ngãi"}


def test_engine_birth_dates(db: Database) -> None:
    data = "\n".join(
        [
            "external_id,full_name,birth_date",
            "0900000001,Hà Thị Thu,5/9/1945",  # one-digit day and month
            "0900000002,Kim Văn Đồng,2999-01-01",
            "0900000003,Mạc Thị Bưởi,01/01/2999",
            "0900000004,Cù Văn Lao,15-04-1985",
            "0900000005,Giáp Văn Cương,1990-02-30",
        ]
    ).encode()
    summary = import_recipients([data], format="csv", db=db)
    assert summary.created == 1
    reasons = {r.external_id: r.reason for r in summary.rejections}
    assert reasons["0900000002"] == "birth_date: 2999-01-01 is in the future"
    assert reasons["0900000003"] == "birth_date: 2999-01-01 is in the future"
    assert all(reason.startswith("birth_date: ") for reason in reasons.values())
    with db.transaction() as session:
        thu = session.query(Recipient).filter_by(external_id="0900000001").one()
        assert thu.birth_date is not None and thu.birth_date.isoformat() == "1945-09-05"


def test_engine_rejects_a_missing_header(db: Database) -> None:
    with pytest.raises(ImportFileError, match="external_id"):
        import_recipients([b"full_name\nAn\n"], format="csv", db=db)


def test_engine_reads_a_binary_file(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "people.jsonl"
    path.write_text(
        json.dumps({"external_id": "0600000001", "full_name": "Chu Văn An"}) + "\r\n",
        encoding="utf-8-sig",
    )
    with path.open("rb") as handle:
        summary = import_recipients(handle, format="jsonl", db=db)
    assert (summary.rows, summary.created, summary.rejected) == (1, 1, 0)


# -- The CLI ------------------------------------------------------------------------------------


def test_cli_import_with_report(settings: Any, db: Database, tmp_path: Path) -> None:
    from dispatcher.cli import app

    runner = CliRunner()
    source = tmp_path / "nguoi_nhan.csv"
    source.write_text(MIXED_CSV, encoding="utf-8")
    report = tmp_path / "rejected.csv"
    result = runner.invoke(app, ["import", str(source), "--report", str(report)])
    assert result.exit_code == 1, result.output
    assert "created: 4" in result.output and "rejected: 6" in result.output
    with report.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["line", "external_id", "reason"]
    assert {int(r[0]): (r[1], r[2].split(":")[0] + ":") for r in rows[1:]} == MIXED_REJECTED

    good = tmp_path / "good.data"
    good.write_text(
        json.dumps({"external_id": "0700000001", "full_name": "Lê Lợi", "province": "Thanh Hoá"}),
        encoding="utf-8",
    )
    result = runner.invoke(app, ["import", str(good), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    assert "created: 1" in result.output
    with db.transaction() as session:
        loi = session.query(Recipient).filter_by(external_id="0700000001").one()
        assert loi.province == "Thanh Hóa"

    deep = tmp_path / "deep.jsonl"
    deep.write_text(
        "\n".join(
            [
                deep_line("0700000002", 5_000),
                json.dumps({"external_id": "0700000003", "full_name": "Lê Lai"}),
            ]
        ),
        encoding="utf-8",
    )
    result = runner.invoke(app, ["import", str(deep), "--report", str(report)])
    assert result.exit_code == 1, result.output
    assert "created: 1" in result.output and "rejected: 1" in result.output
    with report.open(encoding="utf-8-sig", newline="") as handle:
        (_, row) = list(csv.reader(handle))
    assert row[0] == "1" and "more than 32 levels deep" in row[2]

    assert runner.invoke(app, ["import", str(tmp_path / "missing.csv")]).exit_code == 2
    assert runner.invoke(app, ["import", str(tmp_path), "--format", "csv"]).exit_code == 2
    assert runner.invoke(app, ["import", str(good)]).exit_code == 2  # no format to go by
    no_header = tmp_path / "no_header.csv"
    no_header.write_text("0800000001,An\n", encoding="utf-8")
    result = runner.invoke(app, ["import", str(no_header)])
    assert result.exit_code == 2
    assert "external_id" in result.output


# -- Provinces and phones -----------------------------------------------------------------------

PROVINCE_CASES = [
    # current names, with and without diacritics, prefixes and case
    ("Hà Nội", "Hà Nội"),
    ("ha noi", "Hà Nội"),
    ("HANOI", "Hà Nội"),
    ("Thành phố Hồ Chí Minh", "Hồ Chí Minh"),
    ("TP. Hồ Chí Minh", "Hồ Chí Minh"),
    ("tp hcm", "Hồ Chí Minh"),
    ("Ho Chi Minh City", "Hồ Chí Minh"),
    ("Tỉnh Khánh Hoà", "Khánh Hòa"),
    ("thanh hoa", "Thanh Hóa"),
    ("Đắk Lắk", "Đắk Lắk"),
    ("dak lak", "Đắk Lắk"),
    ("Da Nang", "Đà Nẵng"),
    ("Huế", "Huế"),
    # former names, mapped to the unit they merged into
    ("Thừa Thiên Huế", "Huế"),
    ("Quảng Nam", "Đà Nẵng"),
    ("Hà Giang", "Tuyên Quang"),
    ("Yên Bái", "Lào Cai"),
    ("Bắc Kạn", "Thái Nguyên"),
    ("Vĩnh Phúc", "Phú Thọ"),
    ("Hòa Bình", "Phú Thọ"),
    ("Bắc Giang", "Bắc Ninh"),
    ("Thái Bình", "Hưng Yên"),
    ("Hải Dương", "Hải Phòng"),
    ("Hà Nam", "Ninh Bình"),
    ("Nam Định", "Ninh Bình"),
    ("Quảng Bình", "Quảng Trị"),
    ("Kon Tum", "Quảng Ngãi"),
    ("Bình Định", "Gia Lai"),
    ("Ninh Thuận", "Khánh Hòa"),
    ("Bình Thuận", "Lâm Đồng"),
    ("Đắk Nông", "Lâm Đồng"),
    ("Phú Yên", "Đắk Lắk"),
    ("Bình Dương", "Hồ Chí Minh"),
    ("Bà Rịa - Vũng Tàu", "Hồ Chí Minh"),
    ("Tỉnh Bà Rịa – Vũng Tàu", "Hồ Chí Minh"),
    ("Bình Phước", "Đồng Nai"),
    ("Long An", "Tây Ninh"),
    ("Tiền Giang", "Đồng Tháp"),
    ("Bến Tre", "Vĩnh Long"),
    ("Trà Vinh", "Vĩnh Long"),
    ("Sóc Trăng", "Cần Thơ"),
    ("Hậu Giang", "Cần Thơ"),
    ("Bạc Liêu", "Cà Mau"),
    ("Kiên Giang", "An Giang"),
    # codes, former or current, with or without leading zeros
    ("01", "Hà Nội"),
    ("1", "Hà Nội"),
    ("079", "Hồ Chí Minh"),
    ("15", "Lào Cai"),  # was Yên Bái, now Lào Cai
    ("10", "Lào Cai"),  # Lào Cai's former code
    ("49", "Đà Nẵng"),
    # not provinces
    ("Atlantis", None),
    ("Hà Tây", None),  # merged into Hà Nội in 2008: not one of the 63
    ("Paris", None),
    ("03", None),
    ("", None),
    ("tp", None),
]


@pytest.mark.parametrize(("given", "expected"), PROVINCE_CASES)
def test_province_normalisation(given: str, expected: str | None) -> None:
    assert normalise_province(given) == expected


def test_province_table() -> None:
    assert len(CURRENT) == 34
    assert len({p.code for p in CURRENT}) == len({p.name for p in CURRENT}) == 34
    assert sorted(p.name for p in CURRENT if p.kind == "city") == sorted(
        ["Cần Thơ", "Hà Nội", "Hải Phòng", "Huế", "Hồ Chí Minh", "Đà Nẵng"]
    )
    assert len(FORMER) == 63
    assert len({f.code for f in FORMER}) == len({f.name for f in FORMER}) == 63
    # 11 units unchanged and 23 made of two or three former ones: 11 + 52 = 63.
    members: dict[str, int] = {}
    for former in FORMER:
        members[former.now] = members.get(former.now, 0) + 1
    assert set(members) == {p.code for p in CURRENT}
    assert sorted(members.values()).count(1) == 11
    assert sum(members.values()) - 11 == 52
    for current in CURRENT:
        # Each unit took the name of one of its members...
        assert any(f.name.endswith(current.name) and f.now == current.code for f in FORMER)
        # ...and the code of one of them, so an old code and a new one never disagree.
        former_code = next(f for f in FORMER if f.code == current.code)
        assert former_code.now == current.code
        assert lookup(current.official_name) is current
    assert lookup("Thành phố Huế") is lookup("46")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("0912345678", "+84912345678"),
        ("091 234 5678", "+84912345678"),
        ("0912.345.678", "+84912345678"),
        ("(035) 512-3456", "+84355123456"),
        ("+84 912 345 678", "+84912345678"),
        ("84912345678", "+84912345678"),
        ("0084912345678", "+84912345678"),
        ("0701234567", "+84701234567"),
        ("0812345678", "+84812345678"),
        ("0512345678", "+84512345678"),
        ("0212345678", None),  # 02x is a landline area code
        ("02438251234", None),
        ("091234567", None),  # 9 digits
        ("09123456789", None),  # 11 digits
        ("+840912345678", None),
        ("+85512345678", None),
        ("abc", None),
        ("", None),
    ],
)
def test_phone_normalisation(given: str, expected: str | None) -> None:
    assert normalise_phone(given) == expected
