"""The people API: an admin manages the people of their unit and the units below it, and
nobody else (404, as if they did not exist); answers never carry a password hash or a TOTP
secret; bad input is a 422 naming the field and changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from dispatcher.auth import people
from dispatcher.auth.service import create_key
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.kit.clock import utcnow
from dispatcher.tables.auth import ApiKey, Principal
from dispatcher.units import service as units

PASSWORD = "mật khẩu đủ dài 2026"
TREE = [
    units.UnitSpec("VN", "Bảo hiểm xã hội Việt Nam", None, ()),
    units.UnitSpec("KV1", "Bảo hiểm xã hội khu vực I", "VN", ("01", "24")),
    units.UnitSpec("HN", "Bảo hiểm xã hội thành phố Hà Nội", "KV1", ("01",)),
    units.UnitSpec("BN", "Bảo hiểm xã hội tỉnh Bắc Ninh", "KV1", ("24",)),
    units.UnitSpec("KV2", "Bảo hiểm xã hội khu vực II", "VN", ("79",)),
]


def _person(db: Database, login: str, unit: str, *roles: str) -> int:
    with db.transaction() as session:
        return people.add_person(
            session,
            login=login,
            name=login.title(),
            unit=units.by_code(session, unit),
            roles=list(roles),
            password=PASSWORD,
        ).id


def _key(db: Database, person_id: int, role: str) -> dict[str, str]:
    with db.transaction() as session:
        _, key = create_key(
            session, role=role, name="máy tính", owner=session.get(Principal, person_id)
        )
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def api(settings: Settings, db: Database, job_queue: Any) -> Iterator[TestClient]:
    from dispatcher.web.app import create_app

    with db.transaction() as session:
        units.apply(session, TREE)
    with TestClient(create_app(settings, configure_jobs=False)) as client:
        yield client


@pytest.fixture()
def region_admin(api: TestClient, db: Database) -> dict[str, str]:
    """An admin of the region KV1 (Hà Nội and Bắc Ninh below it)."""
    return _key(db, _person(db, "qt.kv1", "KV1", "admin"), "admin")


def _people_rows(db: Database) -> list[tuple[Any, ...]]:
    with db.transaction() as session:
        return [
            (p.id, p.login, p.unit_id, p.password_hash, tuple(r.role for r in p.roles))
            for p in session.scalars(select(Principal).order_by(Principal.id))
        ]


def test_create_and_list_without_secrets(
    api: TestClient, db: Database, region_admin: dict[str, str]
) -> None:
    made = api.post(
        "/v1/people",
        json={"login": "bt.hanoi", "name": "Trần Thị Bình", "unit": "HN", "roles": ["editor"]},
        headers=region_admin,
    )
    assert made.status_code == 201, made.text
    body = made.json()
    generated = body["initial_password"]
    assert isinstance(generated, str) and len(generated) >= 12
    assert body["unit"]["code"] == "HN" and body["roles"] == ["editor"]
    assert body["has_password"] and not body["totp_required"] and not body["disabled"]
    with db.transaction() as session:
        attempt = people.sign_in_password(session, login="bt.hanoi", password=generated)
        assert attempt.step == people.Step.done

    given = api.post(
        "/v1/people",
        json={
            "login": "pd.bacninh",
            "name": "Lê Văn Cường",
            "unit": "BN",
            "roles": ["approver", "editor"],
            "password": PASSWORD,
        },
        headers=region_admin,
    )
    assert given.status_code == 201, given.text
    assert given.json()["initial_password"] is None
    assert given.json()["totp_required"] and not given.json()["totp_enrolled"]

    with db.transaction() as session:
        person = people.find(session, "pd.bacninh")
        person.totp_secret = "mã hóa-bí-mật"
        stored = person.password_hash
    listed = api.get("/v1/people", headers=region_admin)
    assert listed.status_code == 200
    assert [p["login"] for p in listed.json()] == ["qt.kv1", "bt.hanoi", "pd.bacninh"]
    for answer in (listed, api.get(f"/v1/people/{given.json()['id']}", headers=region_admin)):
        text = answer.text
        assert stored is not None and stored not in text and "$argon2" not in text
        assert PASSWORD not in text and generated not in text and "mã hóa-bí-mật" not in text
        assert "password_hash" not in text and "totp_secret" not in text


def test_grant_and_revoke_roles(api: TestClient, db: Database, region_admin: dict[str, str]):
    person_id = _person(db, "vh.hanoi", "HN", "editor", "operator")
    as_operator = _key(db, person_id, "operator")
    assert api.get("/v1/deliveries", headers=as_operator).status_code == 200

    granted = api.post(
        f"/v1/people/{person_id}/grant", json={"roles": ["approver"]}, headers=region_admin
    )
    assert granted.status_code == 200, granted.text
    assert granted.json()["roles"] == ["approver", "editor", "operator"]
    assert granted.json()["totp_required"]

    revoked = api.post(
        f"/v1/people/{person_id}/revoke", json={"roles": ["operator"]}, headers=region_admin
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["roles"] == ["approver", "editor"]
    # The key carrying the role taken stops working at once.
    assert api.get("/v1/deliveries", headers=as_operator).status_code == 401

    before = _people_rows(db)
    last = api.post(
        f"/v1/people/{person_id}/revoke",
        json={"roles": ["approver", "editor"]},
        headers=region_admin,
    )
    assert last.status_code == 422
    assert last.json()["detail"][0]["loc"] == ["body", "roles"]
    assert "disable" in last.json()["detail"][0]["msg"]
    assert _people_rows(db) == before


def test_reset_totp_unlock_and_disable(
    api: TestClient, db: Database, region_admin: dict[str, str]
) -> None:
    person_id = _person(db, "pd.hanoi", "HN", "approver")
    as_approver = _key(db, person_id, "approver")
    with db.transaction() as session:
        person = session.get(Principal, person_id)
        assert person is not None
        person.totp_secret = "bí mật đã mã hóa"
        person.totp_confirmed_at = utcnow()
        person.locked_until = utcnow() + timedelta(minutes=10)
    shown = api.get(f"/v1/people/{person_id}", headers=region_admin).json()
    assert shown["totp_enrolled"] and shown["locked_until"] is not None

    reset = api.post(f"/v1/people/{person_id}/reset-totp", headers=region_admin)
    assert reset.status_code == 200, reset.text
    assert not reset.json()["totp_enrolled"]
    with db.transaction() as session:
        person = session.get(Principal, person_id)
        assert person is not None and person.totp_secret is None

    unlocked = api.post(f"/v1/people/{person_id}/unlock", headers=region_admin)
    assert unlocked.status_code == 200 and unlocked.json()["locked_until"] is None

    disabled = api.post(f"/v1/people/{person_id}/disable", headers=region_admin)
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["disabled"] and disabled.json()["roles"] == []
    assert not disabled.json()["has_password"]
    assert api.get("/v1/units", headers=as_approver).status_code == 401
    with db.transaction() as session:
        assert (
            session.scalar(
                select(func.count()).where(
                    ApiKey.principal_id == person_id, ApiKey.revoked_at.is_(None)
                )
            )
            == 0
        )
        attempt = people.sign_in_password(session, login="pd.hanoi", password=PASSWORD)
        assert attempt.refusal == people.Refusal.wrong


def test_people_outside_the_admins_units_are_not_found(
    api: TestClient, db: Database, region_admin: dict[str, str]
) -> None:
    above = _person(db, "qt.trunguong", "VN", "admin")
    sibling = _person(db, "bt.kv2", "KV2", "editor")
    below = _person(db, "bt.bacninh", "BN", "editor")
    assert api.get(f"/v1/people/{below}", headers=region_admin).status_code == 200
    before = _people_rows(db)
    for person_id in (above, sibling, 10**9):
        for method, path, body in (
            ("GET", "", None),
            ("POST", "/grant", {"roles": ["operator"]}),
            ("POST", "/revoke", {"roles": ["editor"]}),
            ("POST", "/reset-totp", None),
            ("POST", "/unlock", None),
            ("POST", "/disable", None),
        ):
            answer = api.request(
                method, f"/v1/people/{person_id}{path}", json=body, headers=region_admin
            )
            assert answer.status_code == 404, (person_id, path, answer.text)
            assert answer.json() == {"detail": f"there is no person {person_id}"}
    assert {p["login"] for p in api.get("/v1/people", headers=region_admin).json()} == {
        "qt.kv1",
        "bt.bacninh",
    }
    # A unit outside is refused like one that does not exist.
    for code in ("KV2", "VN", "XX"):
        outside = api.post(
            "/v1/people",
            json={"login": "moi", "name": "Mới", "unit": code, "roles": ["editor"]},
            headers=region_admin,
        )
        assert outside.status_code == 422
        assert outside.json()["detail"][0]["loc"] == ["body", "unit"]
        assert outside.json()["detail"][0]["msg"] == f"there is no unit with code {code!r}"
    assert _people_rows(db) == before
    # The central admin manages everyone.
    central = _key(db, above, "admin")
    assert api.get(f"/v1/people/{sibling}", headers=central).status_code == 200
    assert len(api.get("/v1/people", headers=central).json()) == 4


def test_only_admins_manage_people(api: TestClient, db: Database) -> None:
    person_id = _person(db, "nhieu.vai", "KV1", "editor", "approver", "operator")
    for role in ("editor", "approver", "operator"):
        headers = _key(db, person_id, role)
        assert api.get("/v1/people", headers=headers).status_code == 403
        assert api.get(f"/v1/people/{person_id}", headers=headers).status_code == 403
        made = api.post(
            "/v1/people",
            json={"login": "moi", "name": "Mới", "unit": "KV1", "roles": ["admin"]},
            headers=headers,
        )
        assert made.status_code == 403
        granted = api.post(
            f"/v1/people/{person_id}/grant", json={"roles": ["admin"]}, headers=headers
        )
        assert granted.status_code == 403
    assert api.get("/v1/people").status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"login": "Có Dấu"}, "login", id="login"),
        pytest.param({"roles": ["sender"]}, "roles", id="system-role"),
        pytest.param({"roles": []}, "roles", id="no-role"),
        pytest.param({"password": "ngắn"}, "password", id="short-password"),
        pytest.param({"name": "   "}, "name", id="blank-name"),
        pytest.param({"unit": "không phải mã"}, "unit", id="unit-code"),
        pytest.param({"secret": "x"}, "secret", id="unknown-field"),
    ],
)
def test_bad_input_names_the_field_and_changes_nothing(
    api: TestClient,
    db: Database,
    region_admin: dict[str, str],
    body: dict[str, Any],
    field: str,
) -> None:
    good = {"login": "moi.nguoi", "name": "Người Mới", "unit": "HN", "roles": ["editor"]}
    before = _people_rows(db)
    answer = api.post("/v1/people", json={**good, **body}, headers=region_admin)
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["detail"][0]["loc"], answer.json()
    assert _people_rows(db) == before
    bad_grant = api.post(
        f"/v1/people/{before[0][0]}/grant", json={"roles": ["chủ tịch"]}, headers=region_admin
    )
    assert bad_grant.status_code == 422 and "roles" in bad_grant.json()["detail"][0]["loc"]


def test_an_admin_does_not_disable_or_demote_themselves(
    api: TestClient, db: Database, region_admin: dict[str, str]
) -> None:
    me = api.get("/v1/people", headers=region_admin).json()[0]["id"]
    assert api.post(f"/v1/people/{me}/disable", headers=region_admin).status_code == 409
    demoted = api.post(f"/v1/people/{me}/revoke", json={"roles": ["admin"]}, headers=region_admin)
    assert demoted.status_code == 409
    taken = api.post(
        "/v1/people",
        json={"login": "qt.kv1", "name": "Trùng", "unit": "HN", "roles": ["editor"]},
        headers=region_admin,
    )
    assert taken.status_code == 409


def test_the_command_line_shares_the_service(settings: Settings, db: Database) -> None:
    from typer.testing import CliRunner

    from dispatcher.cli import app

    with db.transaction() as session:
        units.apply(session, TREE)
    person_id = _person(db, "vh.bacninh", "BN", "operator", "editor")
    _key(db, person_id, "operator")

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, ["people", *args])
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    assert "holds editor" in run("revoke", "vh.bacninh", "--role", "operator")
    with db.transaction() as session:
        person = people.find(session, "vh.bacninh")
        person.locked_until = utcnow() + timedelta(minutes=5)
    assert "unlocked" in run("unlock", "vh.bacninh")
    assert "disabled" in run("disable", str(person_id))
    listed = run("list")
    assert f"{person_id} vh.bacninh Vh.Bacninh BN - -" in listed
    with db.transaction() as session:
        person = people.find(session, "vh.bacninh")
        assert person.locked_until is None and person.password_hash is None
        open_keys = select(func.count()).where(
            ApiKey.principal_id == person_id, ApiKey.revoked_at.is_(None)
        )
        assert session.scalar(open_keys) == 0
    refused = CliRunner().invoke(app, ["people", "revoke", "nobody", "--role", "editor"])
    assert refused.exit_code == 2 and "no person with login or id 'nobody'" in refused.output
