"""Signing in to the dashboard as a person, in a real browser: a password, then (an approver)
the TOTP enrolment's QR code and a code; a wrong code is refused; the header names the unit.

The same ``dispatcher dev`` process and Debian's Chromium as tests/test_dashboard.py, with
DISPATCHER_SECRET_KEY set (TOTP secrets are encrypted with it).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.support import dev_env, dev_server
from tests.test_dashboard import Server, browser, context  # noqa: F401

PASSWORD = "Mật khẩu thử nghiệm 2026!"
UNITS = """
units:
  - code: VN
    name: Bảo hiểm xã hội Việt Nam
  - code: VN-01
    name: Bảo hiểm xã hội thành phố Hà Nội
    parent: VN
    territory: ["01"]
  - code: VN-31
    name: Bảo hiểm xã hội thành phố Hải Phòng
    parent: VN
    territory: ["31"]
"""


def _cli(env: dict[str, str], cwd: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cwd = tmp_path_factory.mktemp("sign-in")
    env = dev_env(DISPATCHER_SECRET_KEY="khóa bí mật của bài thử")
    log = cwd / "dispatcher-dev.log"
    try:
        with dev_server(cwd, env, output=log) as base:
            (cwd / "units.yaml").write_text(UNITS, encoding="utf-8")
            _cli(env, cwd, "units", "import", "units.yaml")
            for login, role, unit in (
                ("pd.hanoi", "approver", "VN-01"),
                ("bt.hanoi", "editor", "VN-01"),
                ("bt.haiphong", "editor", "VN-31"),
            ):
                said = _cli(
                    env,
                    cwd,
                    "people",
                    "add",
                    "--login",
                    login,
                    "--name",
                    f"Người {role}",
                    "--role",
                    role,
                    "--unit",
                    unit,
                    "--password-stdin",
                    stdin=PASSWORD + "\n",
                )
                assert PASSWORD not in said
            yield Server(base=base, env=env, cwd=cwd, keys={})
    finally:
        print(log.read_text()[-20_000:])


def _password_step(page: Any, login: str, password: str = PASSWORD) -> None:
    page.goto("/ui/login")
    page.get_by_label("Tên đăng nhập").fill(login)
    page.get_by_label("Mật khẩu").fill(password)
    page.get_by_role("button", name="Tiếp tục").click()


def _not_the_code(secret: str) -> str:
    """A six-digit code that is none of the ones good around now."""
    totp = pyotp.TOTP(secret)
    import time

    now = time.time()
    good = {totp.at(now + offset) for offset in (-60, -30, 0, 30, 60)}
    return next(c for c in (f"{n:06d}" for n in range(0, 1_000_000, 7919)) if c not in good)


@pytest.mark.timeout(600)
def test_an_approver_enrols_and_signs_in_with_a_code(context: Any, server: Server) -> None:  # noqa: F811
    from playwright.sync_api import expect

    page = context.new_page()
    _password_step(page, "pd.hanoi", "không phải mật khẩu")
    expect(page.get_by_role("alert")).to_have_text("Tên đăng nhập hoặc mật khẩu không đúng.")

    _password_step(page, "pd.hanoi")
    expect(page).to_have_url(f"{server.base}/ui/login/code")
    expect(page.get_by_role("heading", name="Xác thực hai lớp")).to_be_visible()
    expect(page.locator("[data-totp-enrol] svg")).to_be_visible()
    secret = page.locator("[data-totp-secret]").get_attribute("data-totp-secret")
    assert secret and len(secret) >= 16
    page.screenshot(path=str(server.cwd / "enrol.png"))

    page.get_by_label("Mã xác thực").fill(_not_the_code(secret))
    page.get_by_role("button", name="Xác nhận").click()
    expect(page.get_by_role("alert")).to_contain_text("Mã xác thực không đúng")
    assert not any(c["name"] == "dispatcher_session" for c in context.cookies())

    page.get_by_label("Mã xác thực").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Xác nhận").click()
    expect(page).to_have_url(f"{server.base}/ui/approvals")
    expect(page.locator("[data-caller-unit]")).to_have_text("Bảo hiểm xã hội thành phố Hà Nội")
    session = next(c for c in context.cookies() if c["name"] == "dispatcher_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert PASSWORD not in session["value"] and secret not in session["value"]

    # Signed out, the next sign-in asks for a code and shows no QR code.
    page.get_by_role("button", name="Đăng xuất").click()
    _password_step(page, "pd.hanoi")
    expect(page.get_by_label("Mã xác thực")).to_be_visible()
    expect(page.locator("[data-totp-enrol]")).to_have_count(0)


def test_an_editor_needs_no_code(context: Any, server: Server) -> None:  # noqa: F811
    from playwright.sync_api import expect

    page = context.new_page()
    page.goto("/ui/login")
    page.screenshot(path=str(server.cwd / "login.png"))
    _password_step(page, "bt.hanoi")
    expect(page).to_have_url(f"{server.base}/ui/campaigns")
    expect(page.locator("[data-caller-unit]")).to_have_text("Bảo hiểm xã hội thành phố Hà Nội")
    page.screenshot(path=str(server.cwd / "signed-in.png"))


@pytest.mark.timeout(600)
def test_a_person_of_one_province_cannot_open_anothers_campaign(
    browser: Any,  # noqa: F811
    context: Any,  # noqa: F811
    server: Server,
) -> None:
    """Hà Nội's editor drafts a campaign; Hải Phòng's editor, signed in, opens its address:
    the page says it does not exist, and their campaign list does not show it."""
    from playwright.sync_api import expect

    hanoi = context.new_page()
    _password_step(hanoi, "bt.hanoi")
    expect(hanoi).to_have_url(f"{server.base}/ui/campaigns")
    # The person's session drafts over the API, as the dashboard's own pages would.
    origin = {"Origin": server.base}
    template = {"key": "tin_ha_noi", "variants": [{"channel": "default", "body": "Chào"}]}
    assert hanoi.request.post("/v1/templates", data=template, headers=origin).status == 201
    made = hanoi.request.post(
        "/v1/campaigns",
        headers=origin,
        data={
            "name": "Tin riêng Hà Nội",
            "kind": "policy_news",
            "template": "tin_ha_noi",
            "audience": {"all": True},
            "channels": ["email"],
            "send_at": "2100-01-01T00:00:00Z",
        },
    )
    assert made.status == 201, made.text()
    address = f"/ui/campaigns/{made.json()['id']}"
    hanoi.goto(address)
    expect(hanoi.get_by_text("Tin riêng Hà Nội").first).to_be_visible()

    other = browser.new_context(base_url=server.base, locale="vi-VN")
    try:
        page = other.new_page()
        _password_step(page, "bt.haiphong")
        expect(page).to_have_url(f"{server.base}/ui/campaigns")
        expect(page.locator("[data-caller-unit]")).to_have_text(
            "Bảo hiểm xã hội thành phố Hải Phòng"
        )
        expect(page.get_by_text("Tin riêng Hà Nội")).to_have_count(0)
        answer = page.goto(address)
        assert answer is not None and answer.status == 404
        expect(page.get_by_text("Tin riêng Hà Nội")).to_have_count(0)
        page.screenshot(path=str(server.cwd / "another-province.png"))
    finally:
        other.close()
