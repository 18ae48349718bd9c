"""API keys and roles: every route refuses a missing key and a wrong role."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dispatcher.auth.service import Role
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.kit.clock import utcnow
from dispatcher.web.app import create_app
from tests.conftest import make_key

EDITOR, APPROVER, OPERATOR, SENDER = "editor", "approver", "operator", "sender"
STAFF = {EDITOR, APPROVER, OPERATOR}

# Who may call what (admins may call everything). A route missing here fails the test, so a
# new route cannot ship without a decision about who may use it.
ROLES: dict[tuple[str, str], set[str]] = {
    ("POST", "/v1/recipients/import"): {EDITOR},
    ("POST", "/v1/recipients"): {EDITOR},
    ("GET", "/v1/recipients/{external_id}"): {EDITOR, OPERATOR},
    ("POST", "/v1/recipients/{external_id}/devices"): {SENDER},
    ("POST", "/v1/audiences/preview"): {EDITOR},
    ("POST", "/v1/audiences"): {EDITOR},
    ("GET", "/v1/audiences"): {EDITOR},
    ("GET", "/v1/audiences/{name}"): {EDITOR},
    ("POST", "/v1/templates"): {EDITOR},
    ("GET", "/v1/templates"): STAFF,
    ("GET", "/v1/templates/{key}"): STAFF,
    ("POST", "/v1/templates/{key}/preview"): STAFF,
    ("POST", "/v1/campaigns"): {EDITOR},
    ("GET", "/v1/campaigns"): STAFF,
    ("GET", "/v1/campaigns/{campaign_id}"): STAFF,
    ("POST", "/v1/campaigns/{campaign_id}/submit"): {EDITOR},
    ("POST", "/v1/campaigns/{campaign_id}/approve"): {APPROVER},
    ("POST", "/v1/campaigns/{campaign_id}/reject"): {APPROVER},
    ("GET", "/v1/campaigns/{campaign_id}/preview"): STAFF,
    ("GET", "/v1/campaigns/{campaign_id}/audience"): STAFF,
    ("PUT", "/v1/campaigns/{campaign_id}/schedule"): {EDITOR},
    ("POST", "/v1/campaigns/{campaign_id}/pause"): {OPERATOR},
    ("POST", "/v1/campaigns/{campaign_id}/resume"): {OPERATOR},
    ("POST", "/v1/campaigns/{campaign_id}/cancel"): {OPERATOR},
    ("POST", "/v1/messages"): {SENDER},
    ("GET", "/v1/messages/{message_id}"): {SENDER, OPERATOR},
    ("GET", "/v1/deliveries"): {OPERATOR},
    ("GET", "/v1/campaigns/{campaign_id}/deliveries.csv"): {OPERATOR},
    ("GET", "/v1/campaigns/{campaign_id}/report"): {OPERATOR},
    ("GET", "/v1/inbox/{external_id}"): {SENDER, OPERATOR},
    ("POST", "/v1/inbox/{external_id}/{item_id}/read"): {SENDER},
    ("GET", "/v1/schedules/upcoming"): STAFF,
    ("GET", "/v1/occasions"): STAFF,
    ("POST", "/v1/keys"): set(),
    ("GET", "/v1/keys"): set(),
    ("DELETE", "/v1/keys/{key_id}"): set(),
    ("GET", "/v1/units"): STAFF,
    ("GET", "/v1/units/{unit_id}"): STAFF,
    ("POST", "/v1/units"): set(),
    ("PATCH", "/v1/units/{unit_id}"): set(),
    ("DELETE", "/v1/units/{unit_id}"): set(),
    ("GET", "/v1/people"): set(),
    ("POST", "/v1/people"): set(),
    ("GET", "/v1/people/{person_id}"): set(),
    ("POST", "/v1/people/{person_id}/grant"): set(),
    ("POST", "/v1/people/{person_id}/revoke"): set(),
    ("POST", "/v1/people/{person_id}/reset-totp"): set(),
    ("POST", "/v1/people/{person_id}/unlock"): set(),
    ("POST", "/v1/people/{person_id}/disable"): set(),
    ("GET", "/v1/units/{code}/accounts"): set(),
    ("PUT", "/v1/units/{code}/accounts/{channel}"): set(),
    ("DELETE", "/v1/units/{code}/accounts/{channel}"): set(),
    ("GET", "/metrics"): {OPERATOR},
    # The dashboard: the same roles as the API calls behind each page.
    ("GET", "/ui"): STAFF,
    ("GET", "/ui/campaigns"): STAFF,
    ("GET", "/ui/progress"): STAFF,
    ("GET", "/ui/campaigns/{campaign_id}"): STAFF,
    ("GET", "/ui/approvals"): {APPROVER},
    ("POST", "/ui/approvals/{campaign_id}/approve"): {APPROVER},
    ("POST", "/ui/approvals/{campaign_id}/reject"): {APPROVER},
    ("GET", "/ui/deliveries"): {OPERATOR},
}

# Open on purpose: probes, the citizen's unsubscribe link, and the API's own description.
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/u/{token}"),
    ("POST", "/u/{token}"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    # A login page cannot need a login; logging out only forgets the browser's cookie.
    ("GET", "/ui/login"),
    ("POST", "/ui/login"),
    ("POST", "/ui/logout"),
    # The TOTP step of a password sign-in: its own signed, short-lived cookie stands for it.
    ("GET", "/ui/login/code"),
    ("POST", "/ui/login/code"),
}


def _walk(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for route in routes:
        if hasattr(route, "original_router"):  # an included router
            yield from _walk(route.original_router.routes, prefix + route.include_context.prefix)
            continue
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                yield method, prefix + route.path


def route_table(app: Any) -> list[tuple[str, str]]:
    return sorted(set(_walk(app.routes)))


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "999999", path)


@pytest.fixture()
def keys(db: Database) -> dict[str, str]:
    return {role.value: make_key(db, role.value, f"{role.value} key") for role in Role}


@pytest.fixture()
def bare(settings: Settings, db: Database, job_queue: object) -> Iterator[TestClient]:
    with TestClient(create_app(settings, configure_jobs=False)) as test_client:
        yield test_client


def test_every_route_is_in_the_role_table(bare: TestClient) -> None:
    table = route_table(bare.app)
    unknown = [r for r in table if r not in ROLES and r not in PUBLIC]
    assert not unknown, f"routes with no decision about who may call them: {unknown}"
    gone = [r for r in ROLES if r not in table]
    assert not gone, f"the role table lists routes the app does not have: {gone}"


def test_every_route_refuses_a_missing_key_and_a_wrong_role(
    bare: TestClient, keys: dict[str, str]
) -> None:
    checked = 0
    for method, path in route_table(bare.app):
        if (method, path) in PUBLIC:
            continue
        url = _concrete(path)
        page = path.startswith("/ui")
        # The dashboard's forms must come from its own origin, as a browser's would.
        origin = {"Origin": "http://testserver"}
        missing = bare.request(method, url, headers=origin)
        assert missing.status_code == 401, (method, path, missing.text)
        assert missing.headers["www-authenticate"] == "Bearer"
        if page:  # a browser lands on the login form
            assert 'action="/ui/login"' in missing.text, (method, path)
        allowed = ROLES[(method, path)] | {"admin"}
        for role, key in keys.items():
            answer = bare.request(method, url, headers={"Authorization": f"Bearer {key}", **origin})
            if role in allowed:
                assert answer.status_code not in (401, 403), (role, method, path, answer.text)
            else:
                assert answer.status_code == 403, (role, method, path, answer.text)
                if page:  # a Vietnamese page naming the role needed and the caller's
                    assert answer.headers["content-type"].startswith("text/html")
                    assert f'data-caller-role="{role}"' in answer.text, (role, method, path)
                    assert "Trang này cần vai trò" in answer.text
                else:
                    assert f"is {role}" in answer.json()["detail"]
        checked += 1
    assert checked >= len(ROLES)


def test_cookie_changes_need_this_sites_origin(bare: TestClient, keys: dict[str, str]) -> None:
    """The dashboard's cookie works on /v1 for reads; a change carried by it must name this
    site as its Origin (or Referer), as the dashboard's own forms do. Bearer keys are not
    concerned."""
    admin = keys["admin"]
    changes = [
        (method, path)
        for method, path in route_table(bare.app)
        if method not in {"GET", "OPTIONS"} and (method, path) not in PUBLIC
    ]
    assert ("POST", "/v1/recipients") in changes and ("DELETE", "/v1/keys/{key_id}") in changes
    with TestClient(bare.app, cookies={"dispatcher_key": admin}) as browser:
        assert browser.get("/v1/campaigns").status_code == 200
        for method, path in changes:
            url = _concrete(path)
            for headers in (
                {},
                {"Origin": "https://evil.example"},
                {"Origin": "null"},
                {"Referer": "https://evil.example/ui/approvals"},
                {"Origin": "http://testserver.evil.example"},
            ):
                refused = browser.request(method, url, headers=headers)
                assert refused.status_code == 403, (method, path, headers, refused.text)
                if path.startswith("/ui"):
                    assert "Biểu mẫu bị từ chối" in refused.text, (method, path)
                else:
                    assert "must come from this site" in refused.json()["detail"], (method, path)
            for headers in (
                {"Origin": "http://testserver"},
                {"Referer": "http://testserver/ui/campaigns"},
            ):
                allowed = browser.request(method, url, headers=headers)
                assert allowed.status_code not in (401, 403), (method, path, allowed.text)
        made = browser.post(
            "/v1/recipients",
            json={"external_id": "0100000077", "full_name": "Trình Duyệt"},
            headers={"Origin": "http://testserver"},
        )
        assert made.status_code == 201, made.text
    # A bearer key is not a browser's: no Origin needed, and a foreign one does not matter.
    bearer = {"Authorization": f"Bearer {admin}"}
    for headers in ({}, {"Origin": "https://evil.example"}):
        answer = bare.post(
            "/v1/recipients",
            json={"external_id": "0100000078", "full_name": "Hệ Thống"},
            headers={**bearer, **headers},
        )
        assert answer.status_code in (200, 201), answer.text


def test_unusable_keys_are_refused_with_the_reason(
    bare: TestClient, db: Database, keys: dict[str, str]
) -> None:
    def status(key: str) -> tuple[int, str]:
        answer = bare.get("/v1/campaigns", headers={"Authorization": f"Bearer {key}"})
        body = answer.json()
        return answer.status_code, body["detail"] if isinstance(body, dict) else ""

    assert status("nonsense") == (401, "not an API key of this service")
    editor = keys["editor"]
    assert status(editor[:-2] + "xx") == (401, "unknown API key")
    with TestClient(bare.app, cookies={"dispatcher_key": editor}) as browser:
        assert browser.get("/v1/campaigns").status_code == 200

    from dispatcher.auth.service import create_key

    with db.transaction() as session:
        row, short_lived = create_key(
            session, role="operator", name="tạm", expires_at=utcnow() + timedelta(hours=1)
        )
    assert status(short_lived) == (200, "")
    with db.transaction() as session:
        row = session.merge(row)
        row.expires_at = utcnow() - timedelta(seconds=1)
    assert status(short_lived) == (401, "this API key has expired")


def test_admins_create_list_and_revoke_keys(bare: TestClient, keys: dict[str, str]) -> None:
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    made = bare.post(
        "/v1/keys", json={"name": "Phòng Truyền thông", "role": "editor"}, headers=admin
    )
    assert made.status_code == 201, made.text
    body = made.json()
    new = {"Authorization": f"Bearer {body['key']}"}
    assert bare.get("/v1/templates", headers=new).status_code == 200

    listed = bare.get("/v1/keys", headers=admin).json()
    assert body["id"] in [k["id"] for k in listed]
    assert all("key" not in k and "secret_hash" not in k for k in listed), "never shown again"
    own = next(k for k in listed if k["name"] == "admin key")
    assert own["owner"]["kind"] == "person"
    assert body["owner"] == own["owner"], "a key minted over the API is the minter's own"
    assert next(k for k in listed if k["name"] == "sender key")["owner"]["kind"] == "system"

    bad_role = bare.post("/v1/keys", json={"name": "x", "role": "root"}, headers=admin)
    assert bad_role.status_code == 422
    assert (
        bare.post("/v1/keys", json={"name": "x", "role": "admin"}, headers=new).status_code == 403
    )

    assert bare.delete(f"/v1/keys/{own['id']}", headers=admin).status_code == 409

    revoked = bare.delete(f"/v1/keys/{body['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    refused = bare.get("/v1/templates", headers=new)
    assert (refused.status_code, refused.json()["detail"]) == (401, "this API key was revoked")
    again = bare.delete(f"/v1/keys/{body['id']}", headers=admin)
    assert again.status_code == 409


def test_the_key_is_stored_hashed(db: Database, keys: dict[str, str]) -> None:
    from sqlalchemy import select

    from dispatcher.tables.auth import ApiKey

    with db.transaction() as session:
        stored = session.scalars(select(ApiKey.secret_hash)).all()
    for key in keys.values():
        assert key not in stored
        assert all(key.split("_", 2)[2] not in h for h in stored)


def test_transactional_messages_are_rate_limited_per_key(
    bare: TestClient, db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "messages_per_second_per_key", 0.01)
    monkeypatch.setattr(settings, "messages_burst_per_key", 2)
    first = {"Authorization": f"Bearer {make_key(db, 'sender', 'Cổng dịch vụ công')}"}
    second = {"Authorization": f"Bearer {make_key(db, 'sender', 'Ứng dụng VssID')}"}
    body = {"recipient": "nobody", "template": "fraud_warning", "channels": ["email"]}
    # Unknown recipient: 422 each time, but each call still spends the key's budget.
    codes = [bare.post("/v1/messages", json=body, headers=first).status_code for _ in range(3)]
    assert codes == [422, 422, 429]
    limited = bare.post("/v1/messages", json=body, headers=first)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "over its rate" in limited.json()["detail"]
    assert bare.post("/v1/messages", json=body, headers=second).status_code == 422, "per key"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "keys", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_keys_create_on_the_command_line(settings: Settings, db: Database, tmp_path: Any) -> None:
    made = _cli(
        "create",
        "--role",
        "approver",
        "--person",
        "Nguyễn Văn A",
        "--name",
        "Trưởng phòng",
        "--expires-in-days",
        "30",
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("bhxh_") and "\n" not in key
    assert "printed below once" in made.stderr and key not in made.stderr
    assert "for new person" in made.stderr and "Nguyễn Văn A" in made.stderr

    # A second key of the same person carries a role they hold: editor once granted.
    lacking = _cli("create", "--role", "editor", "--person", "Nguyễn Văn A")
    assert lacking.returncode == 2 and "holds approver" in lacking.stderr
    person_id = made.stderr.split("for new person ", 1)[1].split(" ", 1)[0]
    granted = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "people", "grant", person_id, "--role", "editor"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert granted.returncode == 0, granted.stderr
    second = _cli("create", "--role", "editor", "--person", "Nguyễn Văn A")
    assert second.returncode == 0, second.stderr
    assert "for new person" not in second.stderr
    portal = _cli("create", "--role", "sender", "--system", "Cổng DVC")
    assert portal.returncode == 0, portal.stderr
    refused = _cli("create", "--role", "approver", "--system", "Cổng DVC")
    assert refused.returncode == 2 and "is a system" in refused.stderr
    # The old form still works: a key alone is its own person.
    alone = _cli("create", "--role", "operator", "--name", "Trực ca đêm")
    assert alone.returncode == 0, alone.stderr
    assert "for new person" in alone.stderr
    nobody = _cli("create", "--role", "editor")
    assert nobody.returncode == 2 and "whose key" in nobody.stderr

    bad = _cli("create", "--role", "boss", "--name", "x")
    assert bad.returncode == 2 and "unknown role 'boss'" in bad.stderr

    listed = _cli("list")
    assert listed.returncode == 0, listed.stderr
    assert key not in listed.stdout
    lines = listed.stdout.splitlines()
    person_a = [line for line in lines if "Nguyễn Văn A" in line]
    assert len(person_a) == 2 and all("\tperson " in line for line in person_a)
    assert len({line.split("\t")[4] for line in person_a}) == 1, "one person, two keys"
    assert any("Trưởng phòng" in line for line in person_a)
    assert any("\tsystem " in line and "Cổng DVC" in line for line in lines)
