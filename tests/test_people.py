"""People: argon2id passwords, TOTP for approvers and admins (enrolment, one use per code),
lock-out, the dashboard session they make; keys that carry only a role their person holds; and
approval inside the unit's chain (own unit and ancestors yes, siblings and descendants no)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from dispatcher.auth import people
from dispatcher.auth.service import authenticate, create_key
from dispatcher.campaigns import approval
from dispatcher.core.config import Settings, get_settings
from dispatcher.core.db import Database
from dispatcher.core.secrets import decrypt
from dispatcher.kit.clock import clock
from dispatcher.kit.errors import Invalid
from dispatcher.tables.auth import Principal
from dispatcher.units import service as units

PASSWORD = "mật khẩu đủ dài 2026"
ORIGIN = {"Origin": "http://testserver"}
TREE = [
    units.UnitSpec("VN", "Bảo hiểm xã hội Việt Nam", None, ()),
    units.UnitSpec("KV1", "Bảo hiểm xã hội khu vực I", "VN", ("01", "24")),
    units.UnitSpec("HN", "Bảo hiểm xã hội thành phố Hà Nội", "KV1", ("01",)),
    units.UnitSpec("BN", "Bảo hiểm xã hội tỉnh Bắc Ninh", "KV1", ("24",)),
]


@pytest.fixture()
def secret_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The suite's settings with DISPATCHER_SECRET_KEY set: TOTP secrets need it."""
    monkeypatch.setenv("DISPATCHER_SECRET_KEY", "khóa bí mật ngoài cơ sở dữ liệu")
    get_settings.cache_clear()
    clock.freeze(datetime(2026, 12, 1, 3, 0, tzinfo=UTC))
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture()
def web(secret_settings: Settings, db: Database, job_queue: Any) -> Iterator[TestClient]:
    from dispatcher.web.app import create_app

    with TestClient(create_app(secret_settings, configure_jobs=False)) as client:
        yield client


def _tree(db: Database) -> dict[str, int]:
    with db.transaction() as session:
        units.apply(session, TREE)
        return {u.code: u.id for u in units.all_units(session)}


def _person(db: Database, login: str, unit: str, *roles: str) -> int:
    with db.transaction() as session:
        person = people.add_person(
            session,
            login=login,
            name=login.title(),
            unit=units.by_code(session, unit),
            roles=list(roles),
            password=PASSWORD,
        )
        return person.id


def _sign_in(web: TestClient, login: str, password: str = PASSWORD) -> Any:
    return web.post(
        "/ui/login",
        data={"login": login, "password": password},
        headers=ORIGIN,
        follow_redirects=False,
    )


def _code(db: Database, person_id: int, settings: Settings, at: datetime) -> str:
    with db.transaction() as session:
        person = session.get(Principal, person_id)
        assert person is not None and person.totp_secret is not None
        assert "secret" not in person.totp_secret.lower()
        secret = decrypt(settings, people.TOTP_PURPOSE, person.totp_secret)
    assert secret is not None
    return pyotp.TOTP(secret).at(at)


def test_an_editor_signs_in_with_a_password_and_sees_their_unit(
    web: TestClient, db: Database
) -> None:
    _tree(db)
    _person(db, "bien.tap", "HN", "editor")
    with db.transaction() as session:
        stored = session.scalar(
            select(Principal.password_hash).where(Principal.login == "bien.tap")
        )
    assert stored is not None and stored.startswith("$argon2id$") and PASSWORD not in stored

    wrong = _sign_in(web, "bien.tap", "sai mật khẩu rồi")
    assert wrong.status_code == 303 and "dispatcher_session" not in wrong.cookies
    assert "Tên đăng nhập hoặc mật khẩu không đúng." in web.get(wrong.headers["location"]).text
    unknown = _sign_in(web, "khong.co.ai")
    assert "Tên đăng nhập hoặc mật khẩu không đúng." in web.get(unknown.headers["location"]).text

    right = _sign_in(web, "bien.tap")
    assert right.status_code == 303 and right.headers["location"] == "/ui/campaigns"
    assert "httponly" in right.headers["set-cookie"].lower()
    page = web.get("/ui/campaigns")
    assert page.status_code == 200
    assert re.search(r"data-caller-unit[^>]*>Bảo hiểm xã hội thành phố Hà Nội<", page.text)
    # The session is the person's: what they make belongs to their unit.
    template = {"key": "tin_hn", "variants": [{"channel": "default", "body": "Chào"}]}
    made = web.post("/v1/templates", json=template, headers=ORIGIN)
    assert made.status_code == 201, made.text
    with db.transaction() as session:
        from dispatcher.tables.content import Template

        row = session.scalar(select(Template).where(Template.key == "tin_hn"))
        assert row is not None and row.unit_id == units.by_code(session, "HN").id
    # An approver's page is not theirs.
    assert web.get("/ui/approvals").status_code == 403
    web.post("/ui/logout", headers=ORIGIN)
    assert web.get("/ui/campaigns").status_code == 401


def test_an_approver_enrols_totp_then_needs_a_fresh_code(
    web: TestClient, db: Database, secret_settings: Settings
) -> None:
    _tree(db)
    person_id = _person(db, "phe.duyet", "KV1", "approver", "editor")
    first = _sign_in(web, "phe.duyet")
    assert first.headers["location"] == "/ui/login/code"
    assert "dispatcher_session" not in first.cookies
    # Not signed in yet: the pages still want a login.
    assert web.get("/ui/approvals").status_code == 401
    enrol = web.get("/ui/login/code")
    assert enrol.status_code == 200 and "<svg" in enrol.text and "data-totp-enrol" in enrol.text
    now = clock.now()
    wrong = web.post(
        "/ui/login/code", data={"code": "000000"}, headers=ORIGIN, follow_redirects=False
    )
    assert wrong.status_code == 303 and "dispatcher_session" not in wrong.cookies
    assert "Mã xác thực không đúng" in web.get(wrong.headers["location"]).text
    code = _code(db, person_id, secret_settings, now)
    done = web.post("/ui/login/code", data={"code": code}, headers=ORIGIN, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/ui/approvals"
    assert web.get("/ui/approvals").status_code == 200

    # Next time: a code, no QR, and the code already used is refused.
    web.cookies.clear()
    assert _sign_in(web, "phe.duyet").headers["location"] == "/ui/login/code"
    again = web.get("/ui/login/code")
    assert "<svg" not in again.text and "data-totp-enrol" not in again.text
    reused = web.post("/ui/login/code", data={"code": code}, headers=ORIGIN, follow_redirects=False)
    assert "dispatcher_session" not in reused.cookies
    clock.shift(timedelta(seconds=30))
    fresh = _code(db, person_id, secret_settings, clock.now())
    ok = web.post("/ui/login/code", data={"code": fresh}, headers=ORIGIN, follow_redirects=False)
    assert "dispatcher_session" in ok.cookies

    # A reset voids the session and asks for a new enrolment.
    with db.transaction() as session:
        people.reset_totp(session, people.find(session, "phe.duyet"))
    clock.shift(timedelta(seconds=1))
    assert web.get("/ui/approvals").status_code == 401


def test_repeated_wrong_passwords_lock_the_person_out(web: TestClient, db: Database) -> None:
    _tree(db)
    _person(db, "van.hanh", "BN", "operator")
    for _ in range(people.MAX_FAILURES):
        assert "dispatcher_session" not in _sign_in(web, "van.hanh", "đoán bừa mật khẩu").cookies
    locked = _sign_in(web, "van.hanh")  # the right password, while locked
    assert "dispatcher_session" not in locked.cookies
    assert "Tài khoản tạm bị khóa" in web.get(locked.headers["location"]).text
    clock.shift(people.LOCK_FOR + timedelta(seconds=1))
    assert "dispatcher_session" in _sign_in(web, "van.hanh").cookies


def test_wrong_codes_count_towards_the_lock_out(
    web: TestClient, db: Database, secret_settings: Settings
) -> None:
    _tree(db)
    person_id = _person(db, "quan.tri", "VN", "admin")
    _sign_in(web, "quan.tri")
    web.get("/ui/login/code")
    for _ in range(people.MAX_FAILURES):
        web.post("/ui/login/code", data={"code": "123456"}, headers=ORIGIN)
    code = _code(db, person_id, secret_settings, clock.now())
    late = web.post("/ui/login/code", data={"code": code}, headers=ORIGIN, follow_redirects=False)
    assert "dispatcher_session" not in late.cookies
    with db.transaction() as session:
        person = session.get(Principal, person_id)
        assert person is not None and person.locked_until is not None


def test_totp_needs_the_outside_key(settings: Settings, db: Database, job_queue: Any) -> None:
    """Without DISPATCHER_SECRET_KEY no TOTP secret is stored (it would sit beside its key)."""
    from dispatcher.web.app import create_app

    _tree(db)
    _person(db, "phe.duyet2", "HN", "approver")
    with TestClient(create_app(settings, configure_jobs=False)) as web:
        _sign_in(web, "phe.duyet2")
        page = web.get("/ui/login/code")
        assert "DISPATCHER_SECRET_KEY" in page.text
    with db.transaction() as session:
        assert people.find(session, "phe.duyet2").totp_secret is None


def test_passwords_and_roles_are_checked(db: Database, settings: Settings) -> None:
    _tree(db)
    with db.transaction() as session:
        hn = units.by_code(session, "HN")
        with pytest.raises(Invalid, match="at least 12"):
            people.add_person(
                session, login="ngan", name="Ngắn", unit=hn, roles=["editor"], password="short"
            )
        with pytest.raises(Invalid, match="not a role of a person"):
            people.add_person(session, login="gui", name="Gửi", unit=hn, roles=["sender"])


def test_a_persons_keys_carry_only_roles_they_hold(db: Database, settings: Settings) -> None:
    _tree(db)
    person_id = _person(db, "bien.tap2", "HN", "editor")
    admin_id = _person(db, "quan.tri2", "VN", "admin")
    with db.transaction() as session:
        person = session.get(Principal, person_id)
        assert person is not None
        with pytest.raises(Invalid, match="holds editor"):
            create_key(session, role="approver", name="laptop", owner=person)
        _, key = create_key(session, role="editor", name="laptop", owner=person)
        admin = people.find(session, str(admin_id))
        create_key(session, role="approver", name="an admin holds every role", owner=admin)
    # Taking the role away stops the key.
    from dispatcher.auth.service import Unauthenticated, authenticate
    from dispatcher.tables.auth import PersonRole

    with db.transaction() as session:
        caller = authenticate(session, key)
        assert caller.unit_name == "Bảo hiểm xã hội thành phố Hà Nội"
        session.execute(delete(PersonRole).where(PersonRole.principal_id == person_id))
    with db.transaction() as session, pytest.raises(Unauthenticated, match="no longer held"):
        authenticate(session, key)


@pytest.mark.parametrize(
    ("approver_unit", "allowed"),
    [("HN", True), ("KV1", True), ("VN", True), ("BN", False)],
    ids=["own-unit", "parent", "root", "sibling"],
)
def test_approval_stays_inside_the_chain(
    client: Any, db: Database, approver_unit: str, allowed: bool
) -> None:
    _tree(db)
    editor = _person(db, "bt.hn", "HN", "editor")
    approver = _person(db, f"pd.{approver_unit.lower()}", approver_unit, "approver")
    with db.transaction() as session:
        _, editor_key = create_key(
            session, role="editor", name="k", owner=session.get(Principal, editor)
        )
        _, approver_key = create_key(
            session, role="approver", name="k", owner=session.get(Principal, approver)
        )
    as_editor = {"Authorization": f"Bearer {editor_key}"}
    template = {"key": "tin", "variants": [{"channel": "default", "body": "Chào"}]}
    assert client.post("/v1/templates", json=template, headers=as_editor).status_code == 201
    made = client.post(
        "/v1/campaigns",
        headers=as_editor,
        json={
            "name": "Tin Hà Nội",
            "kind": "policy_news",
            "template": "tin",
            "audience": {"all": True},
            "channels": ["null"],
            "send_at": "2100-01-01T00:00:00Z",
        },
    )
    assert made.status_code == 201, made.text
    cid = made.json()["id"]
    assert client.post(f"/v1/campaigns/{cid}/submit", headers=as_editor).status_code == 200
    answer = client.post(
        f"/v1/campaigns/{cid}/approve", headers={"Authorization": f"Bearer {approver_key}"}
    )
    if allowed:
        assert answer.status_code == 200, answer.text
    else:
        # A sibling unit's campaign is outside the approver's scope: it does not exist for
        # them, in the API and on the dashboard.
        assert answer.status_code == 404
        assert answer.json()["detail"] == f"campaign {cid} does not exist"
        with TestClient(client.app, cookies={"dispatcher_key": approver_key}) as browser:
            refused = browser.post(
                f"/ui/approvals/{cid}/approve", headers=ORIGIN, follow_redirects=False
            )
            assert refused.status_code == 303
            shown = browser.get(refused.headers["location"]).text
            assert f"Chiến dịch số {cid} không tồn tại." in shown
        assert client.get(f"/v1/campaigns/{cid}").json()["status"] == "submitted"
        # Past the scope (a service call without one), the chain itself still refuses.
        with db.transaction() as session:
            caller = authenticate(session, approver_key)
            with pytest.raises(approval.OutsideChain, match="of HN or of a unit above it"):
                approval.approve(
                    session=session, campaign_id=cid, settings=get_settings(), caller=caller
                )


def test_a_unit_above_cannot_be_approved_from_below(client: Any, db: Database) -> None:
    """A descendant's approver may not approve the region's campaign."""
    _tree(db)
    editor = _person(db, "bt.kv1", "KV1", "editor")
    approver = _person(db, "pd.hn2", "HN", "approver")
    with db.transaction() as session:
        _, editor_key = create_key(
            session, role="editor", name="k", owner=session.get(Principal, editor)
        )
        _, approver_key = create_key(
            session, role="approver", name="k", owner=session.get(Principal, approver)
        )
    as_editor = {"Authorization": f"Bearer {editor_key}"}
    template = {"key": "tin2", "variants": [{"channel": "default", "body": "Chào"}]}
    assert client.post("/v1/templates", json=template, headers=as_editor).status_code == 201
    cid = client.post(
        "/v1/campaigns",
        headers=as_editor,
        json={
            "name": "Tin khu vực",
            "kind": "policy_news",
            "template": "tin2",
            "audience": {"all": True},
            "channels": ["null"],
            "send_at": "2100-01-01T00:00:00Z",
        },
    ).json()["id"]
    with db.transaction() as session:
        from dispatcher.tables.campaigns import Campaign

        campaign = session.get(Campaign, cid)
        assert campaign is not None and campaign.unit_id == units.by_code(session, "KV1").id
    assert client.post(f"/v1/campaigns/{cid}/submit", headers=as_editor).status_code == 200
    refused = client.post(
        f"/v1/campaigns/{cid}/approve", headers={"Authorization": f"Bearer {approver_key}"}
    )
    # The region's campaign is outside the scope of a unit below it: 404.
    assert refused.status_code == 404
