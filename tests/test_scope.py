# ruff: noqa: E501  (the table reads best one route to a line)
"""Who sees what: every /v1 route answered to the staff of the owner's unit, of the unit above
it, of a unit below it and of a sibling unit; a campaign reaching only its unit's territory;
the approval counting whom the territory removed; the dashboard refusing another province's
campaign by URL.

The tree: VN (the whole country) > KV1 > HN (Hà Nội 01 and three more) and HP (Hải Phòng 31),
and HN1 (Hà Nội 01) below HN. What the table reads belongs to HN.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select

from dispatcher.auth.service import Role, create_key, new_principal
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine.planner import plan_run
from dispatcher.kit.clock import utcnow
from dispatcher.tables.auth import PrincipalKind
from dispatcher.tables.campaigns import Run
from dispatcher.tables.inbox import InboxItem
from dispatcher.tables.recipients import Recipient
from dispatcher.units import service as units
from tests.deliveries.conftest import configure
from tests.support import planned_recipients, run_batches
from tests.test_channel_accounts import OUTSIDE_KEY, TELEGRAM_TOKEN

TREE = [
    units.UnitSpec("VN", "Bảo hiểm xã hội Việt Nam", None, ()),
    units.UnitSpec("KV1", "Bảo hiểm xã hội khu vực I", "VN", ("01", "22", "31", "33", "37")),
    # Room below HN for the units the table makes (each needs a province of its own).
    units.UnitSpec("HN", "Bảo hiểm xã hội thành phố Hà Nội", "KV1", ("01", "22", "33", "37")),
    units.UnitSpec("HP", "Bảo hiểm xã hội thành phố Hải Phòng", "KV1", ("31",)),
    units.UnitSpec("HN1", "Bảo hiểm xã hội khu vực Hà Nội 1", "HN", ("01",)),
]
HN_TERRITORY = ["01", "22", "33", "37"]
# The caller's unit, by its place next to the owner (HN).
SCOPES = {"own": "HN", "parent": "KV1", "child": "HN1", "sibling": "HP"}
ORIGIN = {"Origin": "http://testserver"}
HN_CITIZEN = "0100000001"
HP_CITIZEN = "0310000001"
FAR = "2100-01-01T00:00:00Z"
_codes = itertools.count(1)
# Provinces of HN that new units below it take, one each (the refused requests take some too).
_free = itertools.cycle(["33", "37"])


@dataclass
class World:
    client: TestClient
    db: Database
    unit_ids: dict[str, int]
    admins: dict[str, str]  # unit code -> an admin person's key
    editor: str  # HN's editor (the author of what the table reads)
    sender: str  # HN's system, sending transactional messages
    campaign: int = 0  # HN's scheduled campaign
    message: int = 0
    message_campaign: int = 0
    inbox_item: int = 0
    editor_key_id: int = 0
    spare: int = 0

    def as_(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def draft(self, **extra: Any) -> int:
        body = {
            "name": "Tin Hà Nội",
            "kind": "policy_news",
            "template": "tin_hn",
            "audience": {"all": True},
            "channels": ["email"],
            "send_at": FAR,
            **extra,
        }
        made = self.client.post("/v1/campaigns", json=body, headers=self.as_(self.editor))
        assert made.status_code == 201, made.text
        return int(made.json()["id"])

    def submitted(self, **extra: Any) -> int:
        cid = self.draft(**extra)
        done = self.client.post(f"/v1/campaigns/{cid}/submit", headers=self.as_(self.editor))
        assert done.status_code == 200, done.text
        return cid

    def scheduled(self, **extra: Any) -> int:
        cid = self.submitted(**extra)
        done = self.client.post(f"/v1/campaigns/{cid}/approve", headers=self.as_(self.admins["VN"]))
        assert done.status_code == 200 and done.json()["status"] == "scheduled", done.text
        return cid

    def paused(self) -> int:
        cid = self.scheduled()
        done = self.client.post(f"/v1/campaigns/{cid}/pause", headers=self.as_(self.admins["VN"]))
        assert done.status_code == 200, done.text
        return cid

    def spare_unit(self) -> int:
        """An empty unit below HN (the one left by a refused delete, or a new one)."""
        root = self.as_(self.admins["VN"])
        if self.spare and self.client.get(f"/v1/units/{self.spare}", headers=root).is_success:
            return self.spare
        made = self.client.post(
            "/v1/units",
            json={"code": f"HN-X{next(_codes)}", "name": "Tổ thử", "parent": "HN",
                  "territory": ["22"]},
            headers=root,
        )  # fmt: skip
        assert made.status_code == 201, made.text
        self.spare = int(made.json()["id"])
        return self.spare

    def person(self) -> int:
        """A new person of HN, editor and operator (a fresh one for each change)."""
        with self.db.transaction() as session:
            person = new_principal(
                session, kind=PrincipalKind.person, name=f"Nhân viên HN {next(_codes)}",
                unit_id=self.unit_ids["HN"], roles=[Role.editor, Role.operator],
            )  # fmt: skip
            return person.id

    def account(self) -> str:
        """HN's own Telegram account, set by the central unit's admin."""
        body = {"values": {"token": TELEGRAM_TOKEN}}
        put = self.client.put(
            "/v1/units/HN/accounts/telegram", json=body, headers=self.as_(self.admins["VN"])
        )
        assert put.status_code == 200, put.text
        return "/v1/units/HN/accounts/telegram"

    def spare_key(self) -> int:
        with self.db.transaction() as session:
            from dispatcher.tables.auth import ApiKey, Principal

            owner_id = session.scalar(
                select(ApiKey.principal_id).where(ApiKey.id == self.editor_key_id)
            )
            row, _ = create_key(
                session, role="editor", name="dự phòng", owner=session.get(Principal, owner_id)
            )
            return row.id


def _person(session: Any, unit_id: int, name: str, role: Role) -> str:
    person = new_principal(
        session, kind=PrincipalKind.person, name=name, unit_id=unit_id, roles=[role]
    )
    _, key = create_key(session, role=role.value, name=name, owner=person)
    return key


def _world(client: TestClient, db: Database) -> World:
    with db.transaction() as session:
        units.apply(session, TREE)
        ids = {u.code: u.id for u in units.all_units(session)}
        admins = {code: _person(session, ids[code], f"Quản trị {code}", Role.admin) for code in ids}
        editor = _person(session, ids["HN"], "Biên tập HN", Role.editor)
        system = new_principal(
            session, kind=PrincipalKind.system, name="Hệ thống HN", unit_id=ids["HN"]
        )
        _, sender = create_key(session, role="sender", name="Hệ thống HN", owner=system)
    world = World(client, db, ids, admins, editor, sender)
    root = world.as_(admins["VN"])
    people = [
        {"external_id": HN_CITIZEN, "full_name": "Nguyễn Văn An", "province": "Hà Nội",
         "addresses": {"email": "an@example.vn"}},
        {"external_id": HP_CITIZEN, "full_name": "Trần Thị Bình", "province": "Hải Phòng",
         "addresses": {"email": "binh@example.vn"}},
    ]  # fmt: skip
    assert client.post("/v1/recipients", json=people, headers=root).status_code == 200
    as_editor = world.as_(editor)
    template = {"key": "tin_hn", "variants": [{"channel": "default", "body": "Chào {{ recipient.full_name }}"}]}  # fmt: skip
    assert client.post("/v1/templates", json=template, headers=as_editor).status_code == 201
    saved = {"name": "hn_all", "filter": {"province": ["Hà Nội"]}}
    assert client.post("/v1/audiences", json=saved, headers=as_editor).status_code == 200
    sent = client.post(
        "/v1/messages",
        json={"recipient": HN_CITIZEN, "template": "tin_hn", "channels": ["email"]},
        headers=world.as_(sender),
    )
    assert sent.status_code == 202, sent.text
    world.message, world.message_campaign = sent.json()["id"], sent.json()["campaign_id"]
    soon = (utcnow() + timedelta(days=10)).isoformat()
    world.campaign = world.scheduled(send_at=soon)
    with db.transaction() as session:
        from dispatcher.tables.auth import ApiKey, Principal

        recipient = session.scalar(select(Recipient).where(Recipient.external_id == HN_CITIZEN))
        assert recipient is not None
        item = InboxItem(
            recipient_id=recipient.id, kind="notice", title="Thông báo", body="Nội dung",
            created_at=utcnow(),
        )  # fmt: skip
        session.add(item)
        session.flush()
        world.inbox_item = item.id
        world.editor_key_id = session.execute(
            select(ApiKey.id)
            .join(Principal, Principal.id == ApiKey.principal_id)
            .where(Principal.name == "Biên tập HN")
        ).scalar_one()
    return world


Request = tuple[str, dict[str, Any]]  # the URL, and what else the request carries


@dataclass
class Case:
    make: Callable[[World], Request]
    expect: dict[str, int]
    # What the answer must show, by scope (a list that includes or leaves out HN's things).
    check: Callable[[Any, str], bool] | None = field(default=None)


def owned(ok: int) -> dict[str, int]:
    """HN's own things: seen by HN and the units above it only."""
    return {"own": ok, "parent": ok, "child": 404, "sibling": 404}


def territory(ok: int) -> dict[str, int]:
    """A citizen of Hà Nội: seen by every unit whose territory holds Hà Nội."""
    return {"own": ok, "parent": ok, "child": ok, "sibling": 404}


def everyone(ok: int) -> dict[str, int]:
    return {scope: ok for scope in SCOPES}


def sees_hn(scope: str) -> bool:
    return scope in ("own", "parent")


NEW_YEAR = {"type": "occasion", "occasion": "new_year", "at": "06:30"}
CSV = "external_id,full_name,province,email\n0100000099,Lê Văn Cường,Hà Nội,cuong@example.vn\n"

CASES: dict[tuple[str, str], Case] = {
    ("POST", "/v1/recipients/import"): Case(
        lambda w: ("/v1/recipients/import", {"content": CSV.encode(), "headers": {"content-type": "text/csv"}}),
        everyone(200),
        lambda r, s: r.json()["rejected"] == (1 if s == "sibling" else 0),
    ),
    ("POST", "/v1/recipients"): Case(
        lambda w: ("/v1/recipients", {"json": {"external_id": HN_CITIZEN, "full_name": "Nguyễn Văn An", "province": "Hà Nội", "addresses": {"email": "an@example.vn"}}}),
        {"own": 200, "parent": 200, "child": 200, "sibling": 422},
    ),
    ("GET", "/v1/recipients/{external_id}"): Case(
        lambda w: (f"/v1/recipients/{HN_CITIZEN}", {}), territory(200)
    ),
    ("POST", "/v1/audiences/preview"): Case(
        lambda w: ("/v1/audiences/preview", {"json": {"audience": {"all": True}}}),
        everyone(200),
        # Hà Nội has one or two citizens (the import adds one), Hải Phòng one; KV1 sees both.
        lambda r, s: {e["province"] for e in r.json()["sample"]}
        == {"own": {"Hà Nội"}, "child": {"Hà Nội"}, "parent": {"Hà Nội", "Hải Phòng"}, "sibling": {"Hải Phòng"}}[s],
    ),
    ("POST", "/v1/audiences"): Case(
        lambda w: ("/v1/audiences", {"json": {"name": "hn_all", "filter": {"province": ["Hà Nội"], "kind": "person"}}}),
        {"own": 200, "parent": 200, "child": 409, "sibling": 409},
    ),
    ("GET", "/v1/audiences"): Case(
        lambda w: ("/v1/audiences", {}),
        everyone(200),
        lambda r, s: ("hn_all" in [a["name"] for a in r.json()]) == sees_hn(s),
    ),
    ("GET", "/v1/audiences/{name}"): Case(lambda w: ("/v1/audiences/hn_all", {}), owned(200)),
    ("POST", "/v1/templates"): Case(
        lambda w: ("/v1/templates", {"json": {"key": "tin_hn", "variants": [{"channel": "default", "body": "Xin chào"}]}}),
        {"own": 201, "parent": 201, "child": 409, "sibling": 409},
    ),
    ("GET", "/v1/templates"): Case(
        lambda w: ("/v1/templates", {}),
        everyone(200),
        # Built-in templates are everyone's; HN's own only HN's and those above.
        lambda r, s: ("tin_hn" in (keys := [t["key"] for t in r.json()])) == sees_hn(s)
        and "fraud_warning" in keys,
    ),
    ("GET", "/v1/templates/{key}"): Case(lambda w: ("/v1/templates/tin_hn", {}), owned(200)),
    ("POST", "/v1/templates/{key}/preview"): Case(
        lambda w: ("/v1/templates/tin_hn/preview", {"json": {"channel": "email"}}), owned(200)
    ),
    ("POST", "/v1/campaigns"): Case(
        lambda w: ("/v1/campaigns", {"json": {"name": "Tin", "kind": "policy_news", "template": "tin_hn", "audience": {"all": True}, "channels": ["email"], "send_at": FAR}}),
        # The template is HN's: below and beside HN it does not exist.
        {"own": 201, "parent": 201, "child": 422, "sibling": 422},
    ),
    ("GET", "/v1/campaigns"): Case(
        lambda w: ("/v1/campaigns", {}),
        everyone(200),
        lambda r, s: (r.json() != []) == sees_hn(s),
    ),
    ("GET", "/v1/campaigns/{campaign_id}"): Case(
        lambda w: (f"/v1/campaigns/{w.campaign}", {}), owned(200)
    ),
    ("POST", "/v1/campaigns/{campaign_id}/submit"): Case(
        lambda w: (f"/v1/campaigns/{w.draft()}/submit", {}), owned(200)
    ),
    ("POST", "/v1/campaigns/{campaign_id}/approve"): Case(
        lambda w: (f"/v1/campaigns/{w.submitted()}/approve", {}), owned(200)
    ),
    ("POST", "/v1/campaigns/{campaign_id}/reject"): Case(
        lambda w: (f"/v1/campaigns/{w.submitted()}/reject", {"json": {"reason": "Sửa lại"}}),
        owned(200),
    ),
    ("GET", "/v1/campaigns/{campaign_id}/preview"): Case(
        lambda w: (f"/v1/campaigns/{w.campaign}/preview", {}), owned(200)
    ),
    ("GET", "/v1/campaigns/{campaign_id}/audience"): Case(
        lambda w: (f"/v1/campaigns/{w.campaign}/audience", {}), owned(200)
    ),
    ("PUT", "/v1/campaigns/{campaign_id}/schedule"): Case(
        lambda w: (f"/v1/campaigns/{w.draft(send_at=None, schedule=NEW_YEAR)}/schedule", {"json": {"schedule": {"type": "occasion", "occasion": "new_year", "at": "06:30"}}}),
        owned(200),
    ),
    ("POST", "/v1/campaigns/{campaign_id}/pause"): Case(
        lambda w: (f"/v1/campaigns/{w.scheduled()}/pause", {}), owned(200)
    ),
    ("POST", "/v1/campaigns/{campaign_id}/resume"): Case(
        lambda w: (f"/v1/campaigns/{w.paused()}/resume", {}), owned(200)
    ),
    ("POST", "/v1/campaigns/{campaign_id}/cancel"): Case(
        lambda w: (f"/v1/campaigns/{w.draft()}/cancel", {}), owned(200)
    ),
    ("POST", "/v1/messages"): Case(
        lambda w: ("/v1/messages", {"json": {"recipient": HN_CITIZEN, "template": "tin_hn", "channels": ["email"]}}),
        # Below HN the citizen is seen but HN's template is not; beside HN neither is.
        {"own": 202, "parent": 202, "child": 422, "sibling": 422},
    ),
    ("GET", "/v1/messages/{message_id}"): Case(
        lambda w: (f"/v1/messages/{w.message}", {}), owned(200)
    ),
    ("GET", "/v1/deliveries"): Case(
        lambda w: (f"/v1/deliveries?campaign_id={w.message_campaign}", {}),
        everyone(200),
        lambda r, s: (r.json()["items"] != []) == sees_hn(s),
    ),
    ("GET", "/v1/campaigns/{campaign_id}/deliveries.csv"): Case(
        lambda w: (f"/v1/campaigns/{w.message_campaign}/deliveries.csv", {}), owned(200)
    ),
    ("GET", "/v1/campaigns/{campaign_id}/report"): Case(
        lambda w: (f"/v1/campaigns/{w.message_campaign}/report", {}), owned(200)
    ),
    ("GET", "/v1/inbox/{external_id}"): Case(
        lambda w: (f"/v1/inbox/{HN_CITIZEN}", {}), territory(200)
    ),
    ("POST", "/v1/inbox/{external_id}/{item_id}/read"): Case(
        lambda w: (f"/v1/inbox/{HN_CITIZEN}/{w.inbox_item}/read", {}), territory(200)
    ),
    ("POST", "/v1/recipients/{external_id}/devices"): Case(
        lambda w: (f"/v1/recipients/{HN_CITIZEN}/devices", {"json": {"token": f"fcm-token-{next(_codes):06d}"}}),
        territory(201),
    ),
    ("GET", "/v1/schedules/upcoming"): Case(
        lambda w: ("/v1/schedules/upcoming?days=30", {}),
        everyone(200),
        lambda r, s: (r.json() != []) == sees_hn(s),
    ),
    ("GET", "/v1/occasions"): Case(lambda w: ("/v1/occasions", {}), everyone(200)),
    ("POST", "/v1/keys"): Case(lambda w: ("/v1/keys", {"json": {"role": "operator", "name": "giám sát"}}), everyone(201)),
    ("GET", "/v1/keys"): Case(
        lambda w: ("/v1/keys", {}),
        everyone(200),
        lambda r, s: (_CURRENT["editor_key"] in [k["id"] for k in r.json()]) == sees_hn(s),
    ),
    ("DELETE", "/v1/keys/{key_id}"): Case(lambda w: (f"/v1/keys/{w.spare_key()}", {}), owned(200)),
    ("GET", "/v1/units"): Case(lambda w: ("/v1/units", {}), everyone(200)),
    ("GET", "/v1/units/{unit_id}"): Case(lambda w: (f"/v1/units/{w.unit_ids['HN']}", {}), everyone(200)),
    ("POST", "/v1/units"): Case(
        lambda w: ("/v1/units", {"json": {"code": f"HN-N{next(_codes)}", "name": "Tổ mới", "parent": "HN", "territory": [next(_free)]}}),
        # A unit goes below the admin's own unit: below HN or above it, not below a sibling
        # or below a unit under HN from HN1.
        {"own": 201, "parent": 201, "child": 422, "sibling": 422},
    ),
    ("PATCH", "/v1/units/{unit_id}"): Case(
        lambda w: (f"/v1/units/{w.unit_ids['HN']}", {"json": {"name": "Bảo hiểm xã hội Hà Nội"}}),
        # A unit's own admins do not change their unit: the units above it do.
        {"own": 404, "parent": 200, "child": 404, "sibling": 404},
    ),
    ("DELETE", "/v1/units/{unit_id}"): Case(
        lambda w: (f"/v1/units/{w.spare_unit()}", {}), owned(200)
    ),
    ("GET", "/v1/people"): Case(
        lambda w: ("/v1/people", {}),
        everyone(200),
        lambda r, s: any(p["name"] == "Biên tập HN" for p in r.json()) == sees_hn(s),
    ),
    ("POST", "/v1/people"): Case(
        lambda w: ("/v1/people", {"json": {"login": f"nv.hn{next(_codes)}", "name": "Nhân viên mới", "unit": "HN", "roles": ["editor"]}}),
        # Only into the admin's unit or one below it: a unit outside is as unknown.
        {"own": 201, "parent": 201, "child": 422, "sibling": 422},
    ),
    ("GET", "/v1/people/{person_id}"): Case(lambda w: (f"/v1/people/{w.person()}", {}), owned(200)),
    ("POST", "/v1/people/{person_id}/grant"): Case(
        lambda w: (f"/v1/people/{w.person()}/grant", {"json": {"roles": ["approver"]}}), owned(200)
    ),
    ("POST", "/v1/people/{person_id}/revoke"): Case(
        lambda w: (f"/v1/people/{w.person()}/revoke", {"json": {"roles": ["operator"]}}), owned(200)
    ),
    ("POST", "/v1/people/{person_id}/reset-totp"): Case(
        lambda w: (f"/v1/people/{w.person()}/reset-totp", {}), owned(200)
    ),
    ("POST", "/v1/people/{person_id}/unlock"): Case(
        lambda w: (f"/v1/people/{w.person()}/unlock", {}), owned(200)
    ),
    ("POST", "/v1/people/{person_id}/disable"): Case(
        lambda w: (f"/v1/people/{w.person()}/disable", {}), owned(200)
    ),
    ("GET", "/v1/units/{code}/accounts"): Case(
        lambda w: (w.account().rsplit("/", 1)[0], {}), owned(200)
    ),
    ("PUT", "/v1/units/{code}/accounts/{channel}"): Case(
        lambda w: ("/v1/units/HN/accounts/telegram", {"json": {"values": {"token": TELEGRAM_TOKEN}}}),
        owned(200),
    ),
    ("DELETE", "/v1/units/{code}/accounts/{channel}"): Case(
        lambda w: (w.account(), {}), owned(200)
    ),
    ("GET", "/metrics"): Case(
        lambda w: ("/metrics", {}),
        everyone(200),
        # Another unit's key reads its own campaigns' counts, not the shared queues.
        lambda r, s: "dispatcher_queue_waiting" not in r.text
        and ('dispatcher_campaigns{status="scheduled"}' in r.text) == sees_hn(s),
    ),
}  # fmt: skip
_CURRENT: dict[str, int] = {}


def _routes(app: Any) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for route in iter_route_contexts(app.routes):
        path = route.path_format or ""
        if path.startswith("/v1") or path == "/metrics":
            found |= {(m, path) for m in (route.methods or set()) - {"HEAD"}}
    return found


def test_every_route_has_an_entry_in_the_scope_table(client: Any) -> None:
    """A new route must say here who sees it."""
    routes = _routes(client.app)
    assert sorted(routes - set(CASES)) == [], "routes without an entry in CASES"
    assert sorted(set(CASES) - routes) == [], "entries in CASES for routes that do not exist"


def test_every_route_by_scope(client: Any, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each route, asked by an admin of HN, of KV1 above it, of HN1 below it and of HP beside
    it, about HN's things: the expected status, and lists that show only what the caller's
    scope holds."""
    configure(monkeypatch, {"SECRET_KEY": OUTSIDE_KEY})  # units' accounts keep secrets sealed
    world = _world(client, db)
    _CURRENT["editor_key"] = world.editor_key_id
    wrong = []
    for (method, path), case in sorted(CASES.items()):
        for scope, unit in SCOPES.items():
            url, extra = case.make(world)
            headers = {**world.as_(world.admins[unit]), **extra.pop("headers", {})}
            answer = client.request(method, url, headers=headers, **extra)
            if answer.status_code != case.expect[scope]:
                wrong.append(
                    f"{method} {path} [{scope}]: {answer.status_code}, expected "
                    f"{case.expect[scope]}: {answer.text[:200]}"
                )
            elif case.check is not None and not case.check(answer, scope):
                wrong.append(f"{method} {path} [{scope}]: wrong content: {answer.text[:300]}")
    assert wrong == []


def test_a_provincial_campaign_to_everyone_reaches_only_its_territory(
    client: Any, db: Database, settings: Settings
) -> None:
    """HN's editor writes {"all": true}: the run plans Hà Nội's citizens only; the approval
    says how many the territory removed. The central unit's campaign reaches the country."""
    world = _world(client, db)
    cid = world.submitted(send_at=None)
    audience = client.get(f"/v1/campaigns/{cid}/audience", headers=world.as_(world.admins["KV1"]))
    assert audience.json() == {"count": 1, "outside_territory": 1, "territory": HN_TERRITORY}
    approved = client.post(f"/v1/campaigns/{cid}/approve", headers=world.as_(world.admins["KV1"]))
    assert approved.status_code == 200, approved.text
    assert approved.json()["approved_audience_count"] == 1
    run_id = approved.json()["runs"][0]["id"]
    plan_run(db=db, run_id=run_id, settings=settings)
    assert planned_recipients(db, run_id) == [HN_CITIZEN]
    assert len(run_batches(db, run_id)) == 1
    with db.reading() as session:
        from dispatcher.tables.audit import AuditEntry

        entry = session.scalar(
            select(AuditEntry).where(
                AuditEntry.action == "campaign.approve", AuditEntry.subject == f"campaign:{cid}"
            )
        )
        assert entry is not None and json.loads(entry.data)["outside_territory"] == 1
    # The central unit's campaign, the same filter: the whole country.
    root = world.as_(world.admins["VN"])
    made = client.post(
        "/v1/campaigns",
        headers=root,
        json={"name": "Toàn quốc", "kind": "policy_news", "template": "fraud_warning",
              "audience": {"all": True}, "channels": ["email"]},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    national = made.json()["id"]
    assert client.post(f"/v1/campaigns/{national}/submit", headers=root).status_code == 200
    assert client.get(f"/v1/campaigns/{national}/audience", headers=root).json() == {
        "count": 2,
        "outside_territory": 0,
        "territory": None,
    }
    done = client.post(f"/v1/campaigns/{national}/approve", headers=world.as_(world.admins["KV1"]))
    # KV1 is below the central unit: the national campaign does not exist for it.
    assert done.status_code == 404
    with db.transaction() as session:
        second = _person(session, world.unit_ids["VN"], "Phê duyệt VN", Role.approver)
    done = client.post(f"/v1/campaigns/{national}/approve", headers=world.as_(second))
    assert done.status_code == 200, done.text
    national_run = done.json()["runs"][0]["id"]
    plan_run(db=db, run_id=national_run, settings=settings)
    assert planned_recipients(db, national_run) == [HN_CITIZEN, HP_CITIZEN]


def test_the_territory_is_read_when_a_run_plans(
    client: Any, db: Database, settings: Settings
) -> None:
    """A run plans with its unit's territory as it is then: a citizen who moved out of Hà Nội
    after the approval is not sent HN's campaign."""
    world = _world(client, db)
    cid = world.submitted(send_at=None)
    approved = client.post(f"/v1/campaigns/{cid}/approve", headers=world.as_(world.admins["VN"]))
    run_id = approved.json()["runs"][0]["id"]
    with db.transaction() as session:
        moved = session.scalar(select(Recipient).where(Recipient.external_id == HN_CITIZEN))
        assert moved is not None
        moved.province = "Hải Phòng"
    plan_run(db=db, run_id=run_id, settings=settings)
    assert planned_recipients(db, run_id) == []
    with db.reading() as session:
        run = session.get(Run, run_id)
        assert run is not None and run.planned_count == 0


def test_writes_outside_the_scope_change_nothing(client: Any, db: Database) -> None:
    """A built-in template is changed by the central unit only; a sibling's citizen is not
    overwritten by a post or an import."""
    world = _world(client, db)
    hp = world.as_(world.admins["HP"])
    builtin = {"key": "fraud_warning", "variants": [{"channel": "default", "body": "Khác"}]}
    refused = client.post("/v1/templates", json=builtin, headers=hp)
    assert refused.status_code == 403 and "built in" in refused.json()["detail"]
    moved = {"external_id": HN_CITIZEN, "full_name": "Giả mạo", "province": "Hải Phòng"}
    answer = client.post("/v1/recipients", json=moved, headers=hp)
    assert answer.status_code == 409, answer.text
    csv = f"external_id,full_name,province\n{HN_CITIZEN},Giả mạo,Hải Phòng\n"
    imported = client.post(
        "/v1/recipients/import", content=csv.encode(), headers={**hp, "content-type": "text/csv"}
    )
    assert imported.status_code == 200 and imported.json()["rejected"] == 1
    assert "outside your unit's territory" in imported.json()["rejected_rows"][0]["reason"]
    root = world.as_(world.admins["VN"])
    shown = client.get(f"/v1/recipients/{HN_CITIZEN}", headers=root).json()
    assert (shown["full_name"], shown["province"]) == ("Nguyễn Văn An", "Hà Nội")


def test_the_approvals_queue_lists_what_the_caller_may_approve(client: Any, db: Database) -> None:
    """HN's submitted campaign is in the queue of HN, KV1 and VN, not of HP or HN1; the card
    says how many people the territory removed."""
    world = _world(client, db)
    cid = world.submitted()
    for unit, listed in [("HN", True), ("KV1", True), ("VN", True), ("HP", False), ("HN1", False)]:
        with TestClient(client.app, cookies={"dispatcher_key": world.admins[unit]}) as browser:
            page = browser.get("/ui/approvals")
            assert page.status_code == 200
            assert (f'data-campaign-id="{cid}"' in page.text) == listed, unit
            if listed:
                assert "Ngoài địa bàn đơn vị" in page.text


@pytest.mark.parametrize("unit", ["HP", "HN1"])
def test_another_units_campaign_by_url_is_not_found_on_the_dashboard(
    client: Any, db: Database, unit: str
) -> None:
    world = _world(client, db)
    with TestClient(client.app, cookies={"dispatcher_key": world.admins[unit]}) as browser:
        page = browser.get(f"/ui/campaigns/{world.campaign}")
        assert page.status_code == 404
        assert "Tin Hà Nội" not in page.text
        listing = browser.get("/ui/campaigns")
        assert "Tin Hà Nội" not in listing.text
    with TestClient(client.app, cookies={"dispatcher_key": world.admins["KV1"]}) as browser:
        assert browser.get(f"/ui/campaigns/{world.campaign}").status_code == 200


def test_a_new_version_below_withdraws_the_approval_above(client: Any, db: Database) -> None:
    """KV1's campaign uses HN's template: HN's editor, who cannot see that campaign, publishing
    a new version still withdraws its approval."""
    world = _world(client, db)
    kv1 = world.as_(world.admins["KV1"])
    made = client.post(
        "/v1/campaigns",
        headers=kv1,
        json={"name": "Tin khu vực", "kind": "policy_news", "template": "tin_hn",
              "audience": {"all": True}, "channels": ["email"], "send_at": FAR},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    cid = made.json()["id"]
    assert client.post(f"/v1/campaigns/{cid}/submit", headers=kv1).status_code == 200
    approved = client.post(f"/v1/campaigns/{cid}/approve", headers=world.as_(world.admins["VN"]))
    assert approved.json()["status"] == "scheduled"
    template = {"key": "tin_hn", "variants": [{"channel": "default", "body": "Bản mới"}]}
    published = client.post("/v1/templates", json=template, headers=world.as_(world.editor))
    assert published.status_code == 201
    assert client.get(f"/v1/campaigns/{cid}", headers=world.as_(world.editor)).status_code == 404
    after = client.get(f"/v1/campaigns/{cid}", headers=kv1).json()
    assert after["status"] == "submitted"
    assert "template has a new version" in after["status_reason"]


def test_the_scope_reaches_every_form_of_statement(client: Any, db: Database) -> None:
    """The forms the services use: entities, columns, counts, joins, subqueries, get, ORM
    updates; and a statement marked UNSCOPED, and a session without a scope."""
    from sqlalchemy import func, update

    from dispatcher.tables.campaigns import Campaign
    from dispatcher.tables.deliveries import Delivery
    from dispatcher.units import scope as scopes

    world = _world(client, db)
    with db.transaction() as session:
        hp = scopes.for_unit(session, world.unit_ids["HP"])
        kv1 = scopes.for_unit(session, world.unit_ids["KV1"])
        assert scopes.for_unit(session, world.unit_ids["VN"]).everything
    assert hp.unit_ids == {world.unit_ids["HP"]} and hp.territory == ("31",)
    with db.transaction() as session:
        every = session.scalar(select(func.count()).select_from(Campaign))
        assert every and every >= 2
        scopes.attach(session, hp)
        assert session.scalars(select(Campaign)).all() == []
        assert session.scalars(select(Campaign.id)).all() == []
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0
        assert session.scalar(select(func.count()).where(Delivery.campaign_id > 0)) == 0
        assert session.get(Campaign, world.campaign) is None
        assert session.scalars(select(Recipient.external_id)).all() == [HP_CITIZEN]
        joined = select(Delivery.id).join(Recipient, Recipient.id == Delivery.recipient_id)
        assert session.scalars(joined).all() == []
        nested = select(Recipient.id).where(Recipient.id.in_(select(Delivery.recipient_id)))
        assert session.scalars(nested).all() == []
        changed = session.execute(update(Campaign).values(name="Đổi tên"))
        assert getattr(changed, "rowcount", None) == 0
        past = session.scalar(
            select(func.count()).select_from(Campaign), execution_options=scopes.UNSCOPED
        )
        assert past == every
        session.rollback()
    with db.transaction() as session:
        scopes.attach(session, kv1)
        assert session.get(Campaign, world.campaign) is not None
        assert sorted(session.scalars(select(Recipient.external_id))) == [HN_CITIZEN, HP_CITIZEN]


def test_a_units_deliveries_stay_its_own_when_the_citizen_moves(client: Any, db: Database) -> None:
    """HN sent a message to a citizen who has since moved to Hải Phòng: HN still finds the
    delivery (its campaign's), HP does not (not its campaign), though HP now sees the citizen."""
    world = _world(client, db)
    with db.transaction() as session:
        moved = session.scalar(select(Recipient).where(Recipient.external_id == HN_CITIZEN))
        assert moved is not None
        moved.province = "Hải Phòng"
    url = f"/v1/deliveries?recipient={HN_CITIZEN}"
    found = client.get(url, headers=world.as_(world.admins["HN"])).json()["items"]
    assert [d["campaign_id"] for d in found] == [world.message_campaign]
    assert found[0]["recipient"] == HN_CITIZEN
    assert client.get(url, headers=world.as_(world.admins["HP"])).json()["items"] == []
    hn = client.get(f"/v1/recipients/{HN_CITIZEN}", headers=world.as_(world.admins["HN"]))
    assert hn.status_code == 404
    hp = client.get(f"/v1/recipients/{HN_CITIZEN}", headers=world.as_(world.admins["HP"]))
    assert hp.status_code == 200
