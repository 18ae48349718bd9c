"""The dashboard, end to end: a real ``dispatcher dev`` process driven by a headless Chromium.

Chromium is Debian's package (``apt-get install chromium``; scripts/chromium.sh installs it),
driven by Playwright for Python; Playwright's own browser download is never used. Without a
Chromium the browser tests are skipped loudly, except under ``CI=true`` where that fails.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import cli_key, dev_env, dev_server, wait_for

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
CHROMIUM = os.environ.get("DISPATCHER_TEST_CHROMIUM") or shutil.which("chromium")
TIMEOUT_MS = 30_000
PEOPLE = 60


def _unavailable(reason: str) -> None:
    message = f"SKIPPED THE DASHBOARD BROWSER TESTS: {reason}"
    if IN_CI:
        pytest.fail(f"CI must run the browser tests. {message}")
    pytest.skip(message)


@dataclass
class Server:
    base: str
    env: dict[str, str]
    cwd: Path
    keys: dict[str, str]

    def api(self, role: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base,
            timeout=15,
            headers={"Authorization": f"Bearer {self.keys[role]}"},
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``dispatcher dev`` in its own directory: SQLite, no Redis (the in-process broker)."""
    cwd = tmp_path_factory.mktemp("dashboard")
    env = dev_env(DISPATCHER_SWEEP_INTERVAL_SECONDS="0.5")
    log = cwd / "dispatcher-dev.log"
    try:
        with dev_server(cwd, env, output=log) as base:
            keys = {
                "editor": cli_key("editor", env=env, cwd=cwd, name="Phòng Truyền thông"),
                "approver": cli_key("approver", env=env, cwd=cwd, name="Trưởng phòng Truyền thông"),
                "operator": cli_key("operator", env=env, cwd=cwd, name="Trực vận hành"),
                "admin": cli_key("admin", env=env, cwd=cwd, name="Quản trị hệ thống"),
            }
            made = Server(base=base, env=env, cwd=cwd, keys=keys)
            _seed(made)
            yield made
    finally:
        # Shown by pytest when a test of this module failed: the server's side of the story.
        print(log.read_text()[-20_000:])


def _seed(server: Server) -> None:
    """Recipients reachable on the ``null`` channel only, and a template with an e-mail variant
    (so the approver sees two channels side by side while nothing waits on an SMTP server)."""
    with server.api("editor") as api:
        people = [
            {
                "external_id": f"79{i:08d}",
                "full_name": f"Nguyễn Thị {i}",
                "province": "Hà Nội",
                "addresses": {"null": f"thiet-bi-{i:04d}"},
            }
            for i in range(PEOPLE)
        ]
        assert api.post("/v1/recipients", json=people).status_code == 200
        template = {
            "key": "canh_bao_lua_dao",
            "variants": [
                {
                    "channel": "default",
                    "body": "Kính gửi {{ recipient.full_name }}: BHXH không bao giờ gọi điện "
                    "yêu cầu chuyển tiền.",
                },
                {
                    "channel": "email",
                    "subject": "Cảnh báo lừa đảo giả danh cơ quan BHXH",
                    "body": "Kính gửi {{ recipient.full_name }}, hãy cảnh giác.",
                    "html": "<h1>Cảnh báo lừa đảo</h1><p>Kính gửi {{ recipient.full_name }},"
                    " <strong>hãy cảnh giác</strong>.</p><script>parent.document.title='x'"
                    "</script>",
                },
            ],
        }
        answer = api.post("/v1/templates", json=template)
        assert answer.status_code == 201, answer.text


def _campaign(server: Server, name: str, *, by: str = "editor") -> int:
    """A drafted and submitted campaign to everyone, on the null channel and e-mail."""
    with server.api(by) as api:
        made = api.post(
            "/v1/campaigns",
            json={
                "name": name,
                "kind": "fraud_warning",
                "template": "canh_bao_lua_dao",
                "audience": {"all": True},
                "channels": ["null", "email"],
            },
        )
        assert made.status_code == 201, made.text
        campaign_id = int(made.json()["id"])
        submitted = api.post(f"/v1/campaigns/{campaign_id}/submit")
        assert submitted.status_code == 200, submitted.text
    return campaign_id


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    if not CHROMIUM or not Path(CHROMIUM).exists():
        _unavailable(
            "no Chromium found (install Debian's: apt-get install chromium, "
            "or set DISPATCHER_TEST_CHROMIUM)"
        )
    expect.set_options(timeout=TIMEOUT_MS)  # generous: a loaded machine renders slowly
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture()
def context(browser: Any, server: Server) -> Iterator[Any]:
    """A fresh browser profile (no cookies) that fails on any page script error."""
    made = browser.new_context(base_url=server.base, locale="vi-VN")
    made.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    made.on("weberror", lambda error: errors.append(str(error.error)))
    yield made
    made.close()
    assert not errors, f"script errors on the pages: {errors}"


def _log_in(page: Any, key: str, path: str = "/ui/login") -> None:
    page.goto(path)
    page.get_by_label("Khóa API").fill(key)
    page.get_by_role("button", name="Đăng nhập").click()


@pytest.mark.timeout(600)
def test_an_approver_approves_in_the_browser_and_watches_it_send(
    context: Any, server: Server
) -> None:
    from playwright.sync_api import expect

    campaign_id = _campaign(server, "Cảnh báo lừa đảo tháng 11")
    page = context.new_page()

    # A page without a key answers 401 with the login form; logging in lands on that page.
    first = page.goto("/ui/approvals")
    assert first is not None and first.status == 401
    expect(page.get_by_role("heading", name="Đăng nhập bảng điều khiển")).to_be_visible()
    page.get_by_label("Khóa API").fill(server.keys["approver"] + "sai")
    page.get_by_role("button", name="Đăng nhập").click()
    expect(page.get_by_role("alert")).to_have_text("Khóa API không đúng.")
    page.get_by_label("Khóa API").fill(server.keys["approver"])
    page.get_by_role("button", name="Đăng nhập").click()
    expect(page).to_have_url(f"{server.base}/ui/approvals")
    cookie = next(c for c in context.cookies() if c["name"] == "dispatcher_key")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"

    # The campaigns page, opened before the approval, must follow it without a reload.
    watcher = context.new_page()
    watcher.goto("/ui/campaigns")
    row = watcher.locator(f'tr[data-campaign-id="{campaign_id}"]')
    expect(row.locator(".badge")).to_have_text("Chờ phê duyệt")
    watcher.evaluate("window.__notReloaded = true")

    # The approval queue: every channel's preview side by side, and the audience count.
    card = page.locator(f"#campaign-{campaign_id}")
    expect(card.get_by_role("heading", level=2)).to_contain_text("Cảnh báo lừa đảo tháng 11")
    expect(card.locator('[data-field="audience"]')).to_have_text(str(PEOPLE))
    null_preview = card.locator('[data-channel="null"]')
    email_preview = card.locator('[data-channel="email"]')
    expect(null_preview.locator("pre.message")).to_contain_text(
        "BHXH không bao giờ gọi điện yêu cầu chuyển tiền"
    )
    expect(email_preview).to_contain_text("Cảnh báo lừa đảo giả danh cơ quan BHXH")
    frame = email_preview.locator("iframe")
    expect(frame).to_have_attribute("sandbox", "")
    expect(frame.content_frame.get_by_role("heading")).to_have_text("Cảnh báo lừa đảo")
    left, right = null_preview.bounding_box(), email_preview.bounding_box()
    assert left and right and abs(left["y"] - right["y"]) < 2 and left["x"] < right["x"], (
        "the previews sit side by side"
    )
    assert page.title() != "x", "a script in the e-mail preview must not run"

    with page.expect_response(lambda r: r.url.endswith("/approve")) as answered:
        card.get_by_role("button", name="Phê duyệt chiến dịch").click()
    assert answered.value.status == 303
    expect(page.get_by_role("status")).to_contain_text("Đã phê duyệt chiến dịch")
    expect(page.locator(f"#campaign-{campaign_id}")).to_have_count(0)

    # Back on the first tab, the poller brings the bar to 100% and the badge to completed.
    bar = row.get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=60_000)
    expect(row.locator(".badge")).to_have_text("Hoàn thành", timeout=60_000)
    expect(row.locator('[data-field="sent"]')).to_have_text(str(PEOPLE))
    assert watcher.evaluate("window.__notReloaded") is True, "updated in place, not reloaded"

    # The campaign's own page shows its numbers.
    watcher.get_by_role("link", name="Cảnh báo lừa đảo tháng 11").click()
    expect(watcher.get_by_role("heading", level=1)).to_have_text("Cảnh báo lừa đảo tháng 11")
    expect(watcher.locator("tfoot")).to_contain_text(str(PEOPLE))

    # Logging out forgets the key: the pages ask for it again.
    page.get_by_role("button", name="Đăng xuất").click()
    expect(page.get_by_role("status")).to_have_text("Bạn đã đăng xuất.")
    assert not [c for c in context.cookies() if c["name"] == "dispatcher_key"]
    again = page.goto("/ui/campaigns")
    assert again is not None and again.status == 401


@pytest.mark.timeout(600)
def test_the_submitter_and_the_wrong_role_are_refused_in_vietnamese(
    context: Any, server: Server
) -> None:
    from playwright.sync_api import expect

    # The editor who submitted a campaign cannot even open the approval queue.
    _campaign(server, "Tin chính sách của biên tập viên")
    page = context.new_page()
    _log_in(page, server.keys["editor"], "/ui/approvals")
    expect(page.get_by_role("heading", level=1)).to_have_text("Không có quyền truy cập")
    expect(page.get_by_role("alert")).to_contain_text(
        "Trang này cần vai trò Người phê duyệt (approver)"
    )
    assert page.evaluate("document.documentElement.lang") == "vi"
    answer = page.goto("/ui/approvals")
    assert answer is not None and answer.status == 403

    # An admin passes the role check, but may not approve what it submitted itself.
    own = _campaign(server, "Chiến dịch tự gửi duyệt", by="admin")
    admin = context.browser.new_context(base_url=server.base, locale="vi-VN")
    try:
        page = admin.new_page()
        _log_in(page, server.keys["admin"], "/ui/approvals")
        card = page.locator(f"#campaign-{own}")
        expect(card.locator(".warning").first).to_contain_text("một người phê duyệt khác")
        posted: list[str] = []
        page.on("request", lambda r: posted.append(r.url) if r.method == "POST" else None)
        with page.expect_response(lambda r: r.url.endswith("/approve")) as answered:
            card.get_by_role("button", name="Phê duyệt chiến dịch").click()
        # Refused, and redirected (303): the refusal is a page of its own, not the POST's.
        assert answered.value.status == 303
        expect(page).to_have_url(f"{server.base}/ui/approvals")
        expect(page.locator("#approval-error")).to_contain_text(
            "Theo quy tắc hai người, một người phê duyệt khác phải phê duyệt"
        )
        expect(page.locator(f"#campaign-{own}")).to_have_class(re.compile(r"\bfocus\b"))
        # Reloading shows the queue again; the browser does not post the approval twice.
        reloaded = page.reload()
        assert reloaded is not None and reloaded.request.method == "GET"
        assert len(posted) == 1, posted
        expect(page.locator(f"#campaign-{own}")).to_have_count(1)
        expect(page.locator("#approval-error")).to_have_count(0)
    finally:
        admin.close()
    with server.api("admin") as api:
        assert api.get(f"/v1/campaigns/{own}").json()["status"] == "submitted"


@pytest.mark.timeout(600)
def test_an_approver_rejects_with_a_reason(context: Any, server: Server) -> None:
    from playwright.sync_api import expect

    campaign_id = _campaign(server, "Chúc mừng năm mới (bản nháp lỗi)")
    page = context.new_page()
    _log_in(page, server.keys["approver"], "/ui/approvals")
    card = page.locator(f"#campaign-{campaign_id}")
    card.get_by_label("Lý do từ chối").fill("Sai tên cơ quan ở dòng đầu")
    card.get_by_role("button", name="Từ chối chiến dịch").click()
    expect(page.get_by_role("status")).to_contain_text("Đã từ chối chiến dịch")
    with server.api("editor") as api:
        body = api.get(f"/v1/campaigns/{campaign_id}").json()
    assert body["status"] == "draft"
    assert body["status_reason"] == "rejected: Sai tên cơ quan ở dòng đầu"


@pytest.mark.timeout(600)
def test_an_operator_finds_a_citizens_delivery(context: Any, server: Server) -> None:
    from playwright.sync_api import expect

    campaign_id = _campaign(server, "Hỗ trợ sau bão")
    with server.api("approver") as api:
        approved = api.post(f"/v1/campaigns/{campaign_id}/approve")
        assert approved.status_code == 200, approved.text
    with server.api("operator") as api:
        wait_for(
            lambda: api.get(f"/v1/campaigns/{campaign_id}").json()["status"] == "completed",
            timeout=60,
            what="the campaign to complete",
        )

    page = context.new_page()
    _log_in(page, server.keys["operator"], "/ui/deliveries")
    page.get_by_label("Mã số BHXH người nhận").fill("7900000007")
    page.get_by_label("Mã chiến dịch").fill(str(campaign_id))
    page.get_by_label("Trạng thái").select_option("sent")
    page.get_by_role("button", name="Tra cứu").click()
    rows = page.locator("table.deliveries tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("7900000007")
    expect(rows.first.locator(".badge")).to_have_text("Đã gửi")
    rows.first.locator("summary").click()
    expect(rows.first.locator("ol.attempts li")).to_have_count(1)
    assert "thiet-bi-0007" not in page.content(), "addresses are shown masked"

    # By the address instead, over every campaign; the filters survive in the form.
    page.get_by_label("Mã số BHXH người nhận").fill("")
    page.get_by_label("Mã chiến dịch").fill("")
    page.get_by_label("Địa chỉ nhận").fill("thiet-bi-0007")
    page.get_by_role("button", name="Tra cứu").click()
    expect(rows.first).to_contain_text("7900000007")
    expect(page.get_by_label("Trạng thái")).to_have_value("sent")
    # A time range that ends before anything was sent finds nothing.
    page.get_by_label("Đến (giờ Việt Nam)").fill("2001-01-01T00:00")
    page.get_by_role("button", name="Tra cứu").click()
    expect(page.get_by_text("Không có tin nào khớp bộ lọc.")).to_be_visible()

    # The campaign's page: the bar is full, the chart drawn, the CSV export one click away.
    page.goto(f"/ui/campaigns/{campaign_id}")
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    chart = page.get_by_role("img", name="Tốc độ gửi")
    expect(chart).to_be_visible()
    expect(chart.locator("rect.sent").first).to_be_visible()
    expect(page.get_by_text("Không có tin nào gặp lỗi.")).to_be_visible()
    with page.expect_download() as download:
        page.get_by_role("link", name="Tải báo cáo CSV").click()
    lines = Path(download.value.path()).read_text(encoding="utf-8-sig").splitlines()
    assert len(lines) == PEOPLE + 1 and lines[0].startswith("delivery_id")


def test_forms_from_another_site_are_refused(server: Server) -> None:
    """The cookie is SameSite=Strict; forms also check Origin/Referer against the host."""
    with httpx.Client(base_url=server.base, timeout=15) as web:
        form = {"key": server.keys["approver"], "next": "/ui/approvals"}
        cross = web.post("/ui/login", data=form, headers={"Origin": "https://evil.example"})
        assert cross.status_code == 403 and "dispatcher_key" not in cross.cookies
        bare = web.post("/ui/login", data=form)
        assert bare.status_code == 403, "no Origin and no Referer: refused"
        ok = web.post("/ui/login", data=form, headers={"Referer": f"{server.base}/ui/login"})
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/approvals"
        set_cookie = ok.headers["set-cookie"]
        for attribute in ("HttpOnly", "Path=/", "SameSite=strict"):
            assert attribute.lower() in set_cookie.lower(), set_cookie
        assert "secure" not in set_cookie.lower(), "plain http: no Secure flag"
        # Leaving elsewhere must not be possible through ?next=.
        away = web.post(
            "/ui/login",
            data={**form, "next": "//evil.example/"},
            headers={"Origin": server.base},
        )
        assert away.headers["location"] == "/ui/approvals"

        campaign_id = _campaign(server, "Biểu mẫu giả mạo")
        web.cookies.set("dispatcher_key", server.keys["approver"])
        forged = web.post(
            f"/ui/approvals/{campaign_id}/approve", headers={"Origin": "https://evil.example"}
        )
        assert forged.status_code == 403 and "Biểu mẫu bị từ chối" in forged.text
        with server.api("admin") as api:
            assert api.get(f"/v1/campaigns/{campaign_id}").json()["status"] == "submitted"
        page = web.get("/ui/campaigns")
        assert page.status_code == 200
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert web.get("/ui/static/dashboard.css").status_code == 200


def test_refused_forms_redirect_so_a_reload_does_not_post_again(
    client: Any, db: Any, admin_key: str
) -> None:
    """Every answer to a dashboard form is a 303; a refusal is shown by the page redirected
    to, once (SQLite and PostgreSQL)."""
    from fastapi.testclient import TestClient

    campaign_id = _submitted_campaign(client, "Chiến dịch tự gửi duyệt")
    origin = {"Origin": "http://testserver"}
    with TestClient(client.app, cookies={"dispatcher_key": admin_key}) as browser:
        # The admin submitted it: the two-person rule refuses the approval.
        refused = browser.post(
            f"/ui/approvals/{campaign_id}/approve", headers=origin, follow_redirects=False
        )
        assert refused.status_code == 303 and refused.headers["location"] == "/ui/approvals"
        assert "dispatcher_flash" in refused.headers["set-cookie"]
        shown = browser.get("/ui/approvals")
        assert shown.status_code == 200
        assert "Theo quy tắc hai người" in shown.text and 'id="approval-error"' in shown.text
        assert re.search(rf'class="[^"]*\bfocus\b[^"]*" id="campaign-{campaign_id}"', shown.text)
        again = browser.get("/ui/approvals")  # a reload: shown once, nothing posted
        assert again.status_code == 200 and 'id="approval-error"' not in again.text

        # A rejection without a reason, and one of a campaign that does not exist.
        for url, data, expected in (
            (f"/ui/approvals/{campaign_id}/reject", {"reason": " "}, "Hãy ghi lý do từ chối"),
            ("/ui/approvals/999999/reject", {"reason": "sai"}, "Chiến dịch số 999999"),
        ):
            answer = browser.post(url, data=data, headers=origin, follow_redirects=False)
            assert answer.status_code == 303, answer.text
            assert expected in browser.get(answer.headers["location"]).text
        assert client.get(f"/v1/campaigns/{campaign_id}").json()["status"] == "submitted"

        # A flash cookie not signed by this service is ignored.
        browser.cookies.set("dispatcher_flash", "eyJlcnJvciI6IngifQ.AAAA.AAAA", path="/ui")
        assert 'id="approval-error"' not in browser.get("/ui/approvals").text

    with TestClient(client.app) as anonymous:
        wrong = anonymous.post(
            "/ui/login",
            data={"key": admin_key + "sai", "next": "/ui/campaigns"},
            headers=origin,
            follow_redirects=False,
        )
        assert wrong.status_code == 303
        assert wrong.headers["location"] == "/ui/login?next=%2Fui%2Fcampaigns"
        form = anonymous.get(wrong.headers["location"])
        assert "Khóa API không đúng." in form.text and 'value="/ui/campaigns"' in form.text
        assert "Khóa API không đúng." not in anonymous.get("/ui/login").text


def _submitted_campaign(client: Any, name: str) -> int:
    """News to everyone on the null channel, drafted and submitted by the client's admin."""
    template = {"key": "thu_thu", "variants": [{"channel": "default", "body": "Chào bạn"}]}
    assert client.post("/v1/templates", json=template).status_code == 201
    made = client.post(
        "/v1/campaigns",
        json={
            "name": name,
            "kind": "policy_news",
            "template": "thu_thu",
            "audience": {"all": True},
            "channels": ["null"],
        },
    )
    campaign_id = int(made.json()["id"])
    assert client.post(f"/v1/campaigns/{campaign_id}/submit").status_code == 200
    return campaign_id


def test_the_throughput_chart_keeps_its_bars_readable() -> None:
    """Quiet minutes are drawn empty; a long campaign's minutes are summed into wider bars."""
    from datetime import UTC, datetime, timedelta

    from dispatcher.web.dashboard.charts import MAX_BARS, Bucket, per_minute_chart

    start = datetime(2026, 1, 28, 1, 0, tzinfo=UTC)  # 08:00 in Hà Nội
    short = per_minute_chart([Bucket(start, 40, 2), Bucket(start + timedelta(minutes=3), 10, 0)])
    assert len(short.bars) == 4 and short.unit == "mỗi phút"
    assert [b.sent_height > 0 for b in short.bars] == [True, False, False, True]
    assert short.x_labels[0][1] == "08:00", "labels in Vietnam time"
    assert (short.total_sent, short.total_failed) == (50, 2)

    week = [Bucket(start + timedelta(minutes=m), 1, 0) for m in range(0, 7 * 24 * 60, 7)]
    long = per_minute_chart(week)
    assert len(long.bars) <= MAX_BARS and long.unit == "mỗi 2 giờ"
    assert long.total_sent == len(week)
    assert per_minute_chart([]).empty


@pytest.mark.timeout(600)
def test_the_transactional_stream_shows_as_an_open_stream(client: Any, worker: object) -> None:
    """The standing campaign of one-off messages is never "sending, 100%": it is open."""
    person = {"external_id": "8800000001", "full_name": "Lê Văn An", "addresses": {"null": "n1"}}
    assert client.post("/v1/recipients", json=[person]).status_code == 200
    template = {"key": "bien_nhan", "variants": [{"channel": "default", "body": "Đã nhận"}]}
    assert client.post("/v1/templates", json=template).status_code == 201
    message = {"recipient": "8800000001", "template": "bien_nhan", "channels": ["null"]}
    sent = client.post("/v1/messages", json=message)
    assert sent.status_code == 202, sent.text
    stream_id = sent.json()["campaign_id"]
    wait_for(
        lambda: client.get(f"/v1/messages/{sent.json()['id']}").json()["status"] == "completed",
        timeout=60,
        what="the message to be sent",
    )

    out = client.get(f"/v1/campaigns/{stream_id}").json()
    assert (out["name"], out["status"], out["stream"]) == (
        "transactional:bien_nhan",
        "running",
        True,
    )
    assert out["counts"]["by_status"] == {"sent": 1}
    polled = client.get("/ui/progress", params={"ids": str(stream_id)}).json()["campaigns"]
    assert polled == [
        {
            "id": stream_id,
            "status": "running",
            "status_label": "Luồng tin giao dịch — đang mở",
            "stream": True,
            "settled": False,
            "planned": 1,
            "sent": 1,
            "failed": 0,
            "other": 0,
            "pending": 0,
            "percent": None,
            "shares": {"sent": 100.0, "failed": 0.0, "other": 0.0},
        }
    ]
    for page in ("/ui/campaigns", f"/ui/campaigns/{stream_id}"):
        html = client.get(page).text
        assert "Luồng tin giao dịch — đang mở" in html, page
        assert 'class="badge status-stream"' in html and "Đang gửi</span>" not in html, page
        assert "progressbar" not in html and "100%" not in html, page

    # Paused, it says so; a campaign people made keeps its progress bar.
    assert client.post(f"/v1/campaigns/{stream_id}/pause").status_code == 200
    assert "Luồng tin giao dịch — tạm dừng" in client.get("/ui/campaigns").text
    assert client.post(f"/v1/campaigns/{stream_id}/resume").status_code == 200
    made = client.post(
        "/v1/campaigns",
        json={
            "name": "Tin thường",
            "kind": "policy_news",
            "template": "bien_nhan",
            "audience": {"all": True},
            "channels": ["null"],
        },
    ).json()
    assert made["stream"] is False
    listing = client.get("/ui/campaigns").text
    assert listing.count('role="progressbar"') == 1 and "Bản nháp" in listing


@pytest.mark.timeout(600)
def test_the_pages_read_a_finished_campaign(client: Any, worker: object) -> None:
    """The pages' own queries (progress, report, search) on SQLite and on PostgreSQL."""
    from tests.support import approve

    people = [
        {"external_id": f"88{i:08d}", "full_name": f"Lê Văn {i}", "addresses": {"null": f"n{i}"}}
        for i in range(3)
    ]
    assert client.post("/v1/recipients", json=people).status_code == 200
    campaign_id = _submitted_campaign(client, "Thư thử <b>đậm</b>")
    assert approve(client, campaign_id).status_code == 200
    wait_for(
        lambda: client.get(f"/v1/campaigns/{campaign_id}").json()["status"] == "completed",
        timeout=60,
        what="the campaign to complete",
    )

    listing = client.get("/ui/campaigns")
    assert listing.status_code == 200
    assert "Thư thử &lt;b&gt;đậm&lt;/b&gt;" in listing.text, "names are escaped"
    assert 'aria-valuenow="100"' in listing.text
    polled = client.get("/ui/progress", params={"ids": f"{campaign_id},999999"}).json()
    assert polled["campaigns"] == [
        {
            "id": campaign_id,
            "status": "completed",
            "status_label": "Hoàn thành",
            "stream": False,
            "settled": True,
            "planned": 3,
            "sent": 3,
            "failed": 0,
            "other": 0,
            "pending": 0,
            "percent": 100,
            "shares": {"sent": 100.0, "failed": 0.0, "other": 0.0},
        }
    ]
    detail = client.get(f"/ui/campaigns/{campaign_id}")
    assert detail.status_code == 200 and "<svg" in detail.text
    assert f"/v1/campaigns/{campaign_id}/deliveries.csv" in detail.text
    found = client.get("/ui/deliveries", params={"campaign_id": campaign_id, "status": "sent"})
    assert found.text.count('class="badge delivery-sent"') == 3
    bad = client.get("/ui/deliveries", params={"campaign_id": "abc", "since": "hôm qua"})
    assert bad.status_code == 200
    assert "Mã chiến dịch phải là một số nguyên dương." in bad.text
    assert "«Từ» không phải một thời điểm hợp lệ." in bad.text
    missing = client.get("/ui/campaigns/999999")
    assert missing.status_code == 404 and "Chiến dịch số 999999 không tồn tại." in missing.text
