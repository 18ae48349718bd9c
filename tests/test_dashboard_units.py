"""Units on the dashboard, in a real browser: a regional person sees their unit's name, a
switcher over their region and its two provinces, the campaigns of those units with their unit,
and the number of campaigns of each unit by status; a sibling region's campaigns are nowhere. A
provincial person has no switcher and cannot open the other province's list by its address.

The same ``dispatcher dev`` process and Debian's Chromium as tests/test_dashboard.py; units and
people are made over the API by the central admin.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dispatcher.auth.service import create_key
from dispatcher.core.db import Database
from dispatcher.tables.auth import Principal
from tests.support import cli_key, dev_env, dev_server
from tests.test_dashboard import Server, browser, context  # noqa: F401

PASSWORD = "Mật khẩu thử nghiệm 2026!"
UNITS = [
    {"code": "KV1", "name": "Bảo hiểm xã hội khu vực I", "parent": "VN", "territory": ["01", "24"]},
    {
        "code": "HN",
        "name": "Bảo hiểm xã hội thành phố Hà Nội",
        "parent": "KV1",
        "territory": ["01"],
    },
    {"code": "BN", "name": "Bảo hiểm xã hội tỉnh Bắc Ninh", "parent": "KV1", "territory": ["24"]},
    {"code": "KV2", "name": "Bảo hiểm xã hội khu vực II", "parent": "VN", "territory": ["79"]},
]
# unit -> (campaign name, submitted?)
CAMPAIGNS = {
    "KV1": [("Cảnh báo lừa đảo toàn khu vực", False)],
    "HN": [("Tin chính sách Hà Nội", False), ("Cảnh báo mạo danh tại Hà Nội", True)],
    "BN": [("Thông báo Bắc Ninh", True)],
    "KV2": [("Chiến dịch khu vực II", False)],
}


def _campaigns(base: str, key: str, wanted: list[tuple[str, bool]]) -> None:
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {key}"}) as api:
        for name, submit in wanted:
            made = api.post(
                "/v1/campaigns",
                json={
                    "name": name,
                    "kind": "fraud_warning",
                    "template": "fraud_warning",
                    "audience": {"all": True},
                    "channels": ["email"],
                },
            )
            assert made.status_code == 201, made.text
            if submit:
                done = api.post(f"/v1/campaigns/{made.json()['id']}/submit")
                assert done.status_code == 200, done.text


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cwd = tmp_path_factory.mktemp("units-dashboard")
    env = dev_env()
    log = cwd / "dispatcher-dev.log"
    try:
        with dev_server(cwd, env, output=log) as base:
            admin = cli_key("admin", env=env, cwd=cwd, name="Quản trị trung ương")
            headers = {"Authorization": f"Bearer {admin}"}
            with httpx.Client(base_url=base, timeout=30, headers=headers) as api:
                for unit in UNITS:
                    made = api.post("/v1/units", json=unit)
                    assert made.status_code == 201, made.text
                editors: dict[str, int] = {}
                for code in CAMPAIGNS:
                    person = api.post(
                        "/v1/people",
                        json={
                            "login": f"bt.{code.lower()}",
                            "name": f"Biên tập viên {code}",
                            "unit": code,
                            "roles": ["editor"],
                            "password": PASSWORD,
                        },
                    )
                    assert person.status_code == 201, person.text
                    editors[code] = person.json()["id"]
            database = Database(f"sqlite:///{cwd / 'dispatcher.db'}")
            try:
                for code, wanted in CAMPAIGNS.items():
                    with database.transaction() as session:
                        owner = session.get(Principal, editors[code])
                        _, key = create_key(session, role="editor", name="máy", owner=owner)
                    _campaigns(base, key, wanted)
            finally:
                database.dispose()
            yield Server(base=base, env=env, cwd=cwd, keys={"admin": admin})
    finally:
        print(log.read_text()[-20_000:])


def _sign_in(page: Any, login: str) -> None:
    page.goto("/ui/login")
    page.get_by_label("Tên đăng nhập").fill(login)
    page.get_by_label("Mật khẩu").fill(PASSWORD)
    page.get_by_role("button", name="Tiếp tục").click()


@pytest.mark.timeout(600)
def test_a_regional_person_sees_their_units_and_switches_between_them(
    context: Any,  # noqa: F811
    server: Server,
) -> None:
    from playwright.sync_api import expect

    page = context.new_page()
    _sign_in(page, "bt.kv1")
    expect(page).to_have_url(f"{server.base}/ui/campaigns")
    expect(page.locator("[data-caller-unit]")).to_have_text("Bảo hiểm xã hội khu vực I")

    switcher = page.get_by_label("Đơn vị", exact=True)
    expect(switcher.locator("option")).to_have_text(
        [
            "Tất cả đơn vị trong phạm vi",
            "Bảo hiểm xã hội khu vực I",
            "— Bảo hiểm xã hội tỉnh Bắc Ninh",
            "— Bảo hiểm xã hội thành phố Hà Nội",
        ]
    )

    counts = page.locator("[data-unit-counts]")
    expect(page.get_by_role("heading", name="Số chiến dịch theo đơn vị")).to_be_visible()
    expect(counts.locator("tbody tr")).to_have_count(3)
    expect(counts.locator("thead th")).to_have_text(["Đơn vị", "Bản nháp", "Chờ phê duyệt", "Tổng"])
    for code, draft, submitted, total in (("KV1", 1, 0, 1), ("BN", 0, 1, 1), ("HN", 1, 1, 2)):
        row = counts.locator(f'tr[data-unit="{code}"]')
        expect(row.locator('[data-status="draft"]')).to_have_text(str(draft))
        expect(row.locator('[data-status="submitted"]')).to_have_text(str(submitted))
        expect(row.locator("[data-total]")).to_have_text(str(total))
    expect(counts.locator('tr[data-unit="KV2"]')).to_have_count(0)

    rows = page.locator("table.campaigns tbody tr")
    expect(rows).to_have_count(4)
    expect(page.get_by_text("Chiến dịch khu vực II")).to_have_count(0)
    hanoi = rows.filter(has_text="Cảnh báo mạo danh tại Hà Nội")
    expect(hanoi.locator('[data-field="unit"]')).to_have_text("Bảo hiểm xã hội thành phố Hà Nội")
    page.screenshot(path=str(server.cwd / "units-all.png"), full_page=True)

    switcher.select_option(label="— Bảo hiểm xã hội thành phố Hà Nội")
    page.get_by_role("button", name="Lọc").click()
    expect(page).to_have_url(f"{server.base}/ui/campaigns?unit=HN&status=")
    expect(rows).to_have_count(2)
    expect(rows.locator('[data-field="unit"]')).to_have_text(
        ["Bảo hiểm xã hội thành phố Hà Nội"] * 2
    )
    expect(page.get_by_label("Đơn vị", exact=True)).to_have_value("HN")
    page.screenshot(path=str(server.cwd / "units-hanoi.png"), full_page=True)


def test_a_provincial_person_has_no_switcher_and_no_other_province(
    context: Any,  # noqa: F811
    server: Server,
) -> None:
    from playwright.sync_api import expect

    page = context.new_page()
    _sign_in(page, "bt.bn")
    expect(page).to_have_url(f"{server.base}/ui/campaigns")
    expect(page.locator("[data-caller-unit]")).to_have_text("Bảo hiểm xã hội tỉnh Bắc Ninh")
    expect(page.locator("[data-unit-switcher]")).to_have_count(0)
    expect(page.locator("table.campaigns tbody tr")).to_have_count(1)
    expect(page.locator('[data-unit-counts] tr[data-unit="BN"] [data-total]')).to_have_text("1")

    other = page.goto("/ui/campaigns?unit=HN")
    assert other is not None and other.status == 404
    expect(page.get_by_role("alert")).to_have_text(
        "Đơn vị HN không tồn tại hoặc không thuộc phạm vi của bạn."
    )
