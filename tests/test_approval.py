"""The two-person rule: who may approve, what an approval freezes, and what withdraws it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from dispatcher.auth.service import create_key, principal_named
from dispatcher.campaigns import firing as campaigns
from dispatcher.campaigns.firing import fire_due
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine.planner import plan_run
from dispatcher.kit.clock import clock
from dispatcher.kit.errors import Invalid
from dispatcher.scheduling.windows import VIETNAM
from dispatcher.tables.audiences import AudienceVersion, SavedAudience
from dispatcher.tables.audit import AuditEntry
from dispatcher.tables.auth import PrincipalKind
from tests.conftest import make_key
from tests.support import planned_recipients, second_person
from tests.test_api_validation import TEMPLATE_DATA
from tests.test_end_to_end import TEMPLATE, publish_template

SEND_AT = datetime(2030, 5, 1, 1, 0, tzinfo=UTC)


def add_people(client: Any, n: int) -> None:
    body = [
        {
            "external_id": f"01{i:08d}",
            "full_name": f"Trần Văn {i}",
            "addresses": {"email": f"nguoi{i}@example.vn"},
        }
        for i in range(n)
    ]
    assert client.post("/v1/recipients", json=body).status_code == 200


def draft(client: Any, **overrides: Any) -> int:
    body = {
        "name": "Tin chính sách tháng 5",
        "kind": "policy_news",
        "template": TEMPLATE["key"],
        "audience": {"all": True},
        "channels": ["email"],
        "send_at": SEND_AT.isoformat(),
        **overrides,
    }
    response = client.post("/v1/campaigns", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def audit_actions(db: Database, campaign_id: int) -> list[tuple[str, dict[str, Any]]]:
    import json

    with db.transaction() as session:
        rows = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.subject == f"campaign:{campaign_id}")
            .order_by(AuditEntry.seq)
        ).all()
        return [(r.action, json.loads(r.data)) for r in rows]


def test_the_submitter_cannot_approve_a_second_person_can(client, db: Database) -> None:
    publish_template(client)
    add_people(client, 3)
    cid = draft(client)
    assert client.post(f"/v1/campaigns/{cid}/submit").status_code == 200

    own = client.post(f"/v1/campaigns/{cid}/approve")  # the admin who submitted it
    assert own.status_code == 403
    assert "a different approver must approve it" in own.json()["detail"]
    assert client.get(f"/v1/campaigns/{cid}").json()["status"] == "submitted"

    approver = second_person()
    approved = client.post(f"/v1/campaigns/{cid}/approve", headers=approver)
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["status"] == "scheduled"
    assert body["approved_by"] not in (None, body["submitted_by"])
    assert body["author"]["name"] == body["submitter"]["name"] == "Quản trị viên"
    assert body["approver"]["name"] == "Người phê duyệt"
    assert body["template_version"] == 1
    assert body["approved_audience_count"] == 3
    assert body["approved_audiences"] == {}
    assert datetime.fromisoformat(body["approved_preview_for"]) == SEND_AT
    assert body["approval_expires_at"] is not None

    actions = audit_actions(db, cid)
    assert [a for a, _ in actions] == ["campaign.submit", "campaign.approve"]
    frozen = actions[1][1]
    assert frozen["audience_count"] == 3 and len(frozen["preview_hash"]) == 64
    assert frozen["saved_audiences"] == {}


def test_an_approver_rejects_with_a_reason(client, db: Database) -> None:
    publish_template(client)
    cid = draft(client)
    client.post(f"/v1/campaigns/{cid}/submit")
    approver = second_person()
    no_reason = client.post(f"/v1/campaigns/{cid}/reject", json={}, headers=approver)
    assert no_reason.status_code == 422
    rejected = client.post(
        f"/v1/campaigns/{cid}/reject", json={"reason": "Sai ngày hiệu lực"}, headers=approver
    )
    assert rejected.status_code == 200
    assert rejected.json()["status"] == "draft"
    assert rejected.json()["status_reason"] == "rejected: Sai ngày hiệu lực"
    # Back in draft: the editor fixes and submits again.
    assert client.post(f"/v1/campaigns/{cid}/submit").json()["status"] == "submitted"


def test_a_new_template_version_withdraws_the_approval(client, db: Database) -> None:
    publish_template(client)
    add_people(client, 2)
    cid = draft(client)
    client.post(f"/v1/campaigns/{cid}/submit")
    assert client.post(f"/v1/campaigns/{cid}/approve", headers=second_person()).status_code == 200

    variant: dict[str, Any] = dict(TEMPLATE_DATA["variants"][0])
    variant["body"] += " Đã cập nhật."
    edited = {**TEMPLATE_DATA, "variants": [variant]}
    publish_template(client, edited)

    campaign = client.get(f"/v1/campaigns/{cid}").json()
    assert campaign["status"] == "submitted"
    assert campaign["status_reason"] == ("approval withdrawn: the template has a new version (v2)")
    assert campaign["approved_at"] is None
    assert audit_actions(db, cid)[-1][0] == "campaign.withdraw"
    # Approving again freezes the new version.
    again = client.post(f"/v1/campaigns/{cid}/approve", headers=second_person()).json()
    assert again["template_version"] == 2


def test_new_members_of_the_rule_do_not_withdraw_the_approval(
    client, db: Database, settings: Settings
) -> None:
    """What is frozen is the rule: people who come to match it get the message."""
    publish_template(client)
    add_people(client, 2)
    cid = draft(client)
    client.post(f"/v1/campaigns/{cid}/submit")
    client.post(f"/v1/campaigns/{cid}/approve", headers=second_person())
    add_people(client, 3)  # one more person joins the audience

    with db.transaction() as session:
        runs = campaigns.launch_due(session=session, settings=settings, now=SEND_AT)
    assert len(runs) == 1
    assert client.get(f"/v1/campaigns/{cid}").json()["status"] == "running"
    plan_run(db=db, run_id=runs[0].id, settings=settings)
    assert recipients_of(db, runs[0].id) == {"0100000000", "0100000001", "0100000002"}


def save_audience(client: Any, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    saved = client.post("/v1/audiences", json={"name": name, "filter": spec})
    assert saved.status_code == 200, saved.text
    return dict(saved.json())


def people(*numbers: int) -> dict[str, Any]:
    return {"external_ids": [f"01{i:08d}" for i in numbers]}


def recipients_of(db: Database, run_id: int) -> set[str]:
    return set(planned_recipients(db, run_id))


def test_swapping_a_saved_audience_withdraws_a_one_shot_approval(
    client, db: Database, settings: Settings
) -> None:
    publish_template(client)
    add_people(client, 4)
    save_audience(client, "hn", people(0, 1))
    save_audience(client, "hn_va_lan_can", {"saved": "hn"})  # names another saved audience
    direct = draft(client, audience={"saved": "hn"})
    nested = draft(client, audience={"saved": "hn_va_lan_can"})
    for cid in (direct, nested):
        client.post(f"/v1/campaigns/{cid}/submit")
        approved = client.post(f"/v1/campaigns/{cid}/approve", headers=second_person()).json()
        assert approved["status"] == "scheduled"
    assert client.get(f"/v1/campaigns/{direct}").json()["approved_audiences"] == {"hn": 1}
    assert client.get(f"/v1/campaigns/{nested}").json()["approved_audiences"] == {
        "hn": 1,
        "hn_va_lan_can": 1,
    }

    # An editor replaces the two people of "hn" by two others: the same count, other people.
    swapped = save_audience(client, "hn", people(2, 3))
    assert swapped["version"] == 2
    assert sorted(swapped["withdrew_approvals"]) == sorted([direct, nested])
    with db.transaction() as session:
        assert campaigns.launch_due(session=session, settings=settings, now=SEND_AT) == []
    for cid in (direct, nested):
        campaign = client.get(f"/v1/campaigns/{cid}").json()
        assert campaign["status"] == "submitted"
        assert campaign["status_reason"] == (
            "approval withdrawn: saved audience 'hn' has a new version (v2)"
        )
        assert campaign["runs"] == []
    assert client.get("/v1/audiences/hn", params={"version": 1}).json()["filter"] == people(0, 1)


def test_a_run_plans_from_the_saved_audience_versions_it_was_approved_for(
    client, db: Database, settings: Settings
) -> None:
    publish_template(client)
    add_people(client, 4)
    save_audience(client, "hn", people(0, 1))
    cid = draft(client, audience={"saved": "hn"}, send_at=None)
    client.post(f"/v1/campaigns/{cid}/submit")
    approved = client.post(f"/v1/campaigns/{cid}/approve", headers=second_person()).json()
    assert approved["status"] == "running"  # no send_at: its run started at approval
    # The audience changes while the run waits for its planner: the run keeps what was approved.
    save_audience(client, "hn", people(2, 3))
    run_id = approved["runs"][0]["id"]
    plan_run(db=db, run_id=run_id, settings=settings)
    assert recipients_of(db, run_id) == {"0100000000", "0100000001"}


def test_widening_a_recurring_campaigns_saved_audience_stops_the_next_firing(
    client, db: Database, settings: Settings
) -> None:
    clock.freeze(datetime(2026, 5, 4, 0, 0, tzinfo=UTC))
    publish_template(client)
    add_people(client, 4)
    save_audience(client, "nhom", people(0))
    cid = draft(
        client,
        audience={"saved": "nhom"},
        send_at=None,
        schedule={"type": "cron", "cron": "0 * * * *"},
    )
    client.post(f"/v1/campaigns/{cid}/submit")
    assert (
        client.post(f"/v1/campaigns/{cid}/approve", headers=second_person()).json()["status"]
        == "scheduled"
    )
    first = datetime(2026, 5, 4, 1, 0, tzinfo=UTC)
    with db.transaction() as session:
        assert fire_due(session=session, settings=settings, now=first).fired == 1
    (run,) = client.get(f"/v1/campaigns/{cid}").json()["runs"]
    plan_run(db=db, run_id=run["id"], settings=settings)
    assert recipients_of(db, run["id"]) == {"0100000000"}

    save_audience(client, "nhom", people(0, 1, 2, 3))  # widened from 1 to 4 people
    with db.transaction() as session:
        report = fire_due(session=session, settings=settings, now=first + timedelta(hours=1))
    assert report.fired == 0
    campaign = client.get(f"/v1/campaigns/{cid}").json()
    assert campaign["status"] == "submitted"
    assert campaign["status_reason"] == (
        "approval withdrawn: saved audience 'nhom' has a new version (v2)"
    )
    assert len(campaign["runs"]) == 1

    # Approved again for version 2. A version that lands beside an approval (a save racing with
    # it, unseen by the save's own withdrawal) is caught by the check before the next firing.
    assert client.post(f"/v1/campaigns/{cid}/approve", headers=second_person()).status_code == 200
    with db.transaction() as session:
        audience = session.scalar(select(SavedAudience).where(SavedAudience.name == "nhom"))
        assert audience is not None
        session.add(AudienceVersion(audience_id=audience.id, version=3, filter=people(0, 1)))
    with db.transaction() as session:
        report = fire_due(session=session, settings=settings, now=first + timedelta(hours=2))
    assert report.fired == 0
    campaign = client.get(f"/v1/campaigns/{cid}").json()
    assert campaign["status"] == "submitted"
    assert campaign["status_reason"] == (
        "approval withdrawn: saved audience 'nhom' has a new version (v3)"
    )
    assert len(campaign["runs"]) == 1


def test_the_preview_is_rendered_for_the_send_time(
    client, db: Database, settings: Settings
) -> None:
    clock.freeze(datetime(2026, 12, 2, 3, 0, tzinfo=UTC))
    add_people(client, 1)
    send_at = datetime(2027, 1, 1, 7, 0, tzinfo=VIETNAM)
    once = draft(
        client,
        name="Chúc mừng năm mới",
        kind="greeting",
        template="new_year",
        send_at=send_at.isoformat(),
    )
    yearly = draft(
        client,
        name="Chúc mừng năm mới hằng năm",
        kind="greeting",
        template="new_year",
        send_at=None,
        schedule={"type": "occasion", "occasion": "new_year", "at": "07:00"},
    )
    for cid in (once, yearly):
        (email,) = client.get(f"/v1/campaigns/{cid}/preview").json()
        assert email["subject"] == "Bảo hiểm xã hội Việt Nam chúc mừng năm mới 2027"
        assert "năm mới 2027" in email["body"] and "2026" not in email["body"]
        assert datetime.fromisoformat(email["rendered_for"]) == send_at
        client.post(f"/v1/campaigns/{cid}/submit")

    approver = second_person()
    page = client.get("/ui/approvals", headers=approver)
    assert page.status_code == 200
    assert "chúc mừng năm mới 2027" in page.text
    assert "năm mới 2026" not in page.text

    # The approval freezes what the first run will render, and the launch compares like with
    # like: the same send time's calendar.
    for cid in (once, yearly):
        approved = client.post(f"/v1/campaigns/{cid}/approve", headers=approver).json()
        assert approved["status"] == "scheduled", approved
        assert datetime.fromisoformat(approved["approved_preview_for"]) == send_at
    with db.transaction() as session:
        assert len(campaigns.launch_due(session=session, settings=settings, now=send_at)) == 1
        assert fire_due(session=session, settings=settings, now=send_at).fired == 1
    for cid in (once, yearly):
        campaign = client.get(f"/v1/campaigns/{cid}").json()
        assert campaign["status_reason"] is None and len(campaign["runs"]) == 1


def test_an_admin_cannot_approve_their_own_submission_with_a_key_they_mint(
    client, db: Database
) -> None:
    publish_template(client)
    cid = draft(client)
    assert client.post(f"/v1/campaigns/{cid}/submit").status_code == 200
    minted = client.post("/v1/keys", json={"name": "Khóa phê duyệt", "role": "approver"})
    assert minted.status_code == 201, minted.text
    own = {"Authorization": f"Bearer {minted.json()['key']}"}

    refused = client.post(f"/v1/campaigns/{cid}/approve", headers=own)
    assert refused.status_code == 403
    assert "submitted this campaign" in refused.json()["detail"]
    assert minted.json()["owner"] == {
        "id": client.get(f"/v1/campaigns/{cid}").json()["submitter"]["id"],
        "kind": "person",
        "name": "Quản trị viên",
    }, "a key minted over the API belongs to the person who minted it"
    # Nor can the admin mint a key that stands for somebody else.
    for other in ({"person": "Người khác"}, {"owner": 999}, {"system": "Cổng DVC"}):
        dodge = client.post("/v1/keys", json={"name": "x", "role": "approver", **other})
        assert dodge.status_code == 422, dodge.text
        assert next(iter(other)) in dodge.text
    assert client.get(f"/v1/campaigns/{cid}").json()["status"] == "submitted"


def test_the_author_cannot_approve_what_someone_else_submitted(client, db: Database) -> None:
    publish_template(client)
    cid = draft(client)  # written by the admin
    editor = {"Authorization": f"Bearer {make_key(db, 'editor', 'Biên tập viên')}"}
    assert client.post(f"/v1/campaigns/{cid}/submit", headers=editor).status_code == 200

    refused = client.post(f"/v1/campaigns/{cid}/approve")
    assert refused.status_code == 403
    assert "wrote this campaign" in refused.json()["detail"]
    minted = client.post("/v1/keys", json={"name": "phê duyệt", "role": "approver"}).json()
    again = client.post(
        f"/v1/campaigns/{cid}/approve", headers={"Authorization": f"Bearer {minted['key']}"}
    )
    assert again.status_code == 403

    approved = client.post(f"/v1/campaigns/{cid}/approve", headers=second_person())
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["author"]["name"] == "Quản trị viên"
    assert body["submitter"]["name"] == "Biên tập viên"
    assert body["approver"]["name"] == "Người phê duyệt"
    assert len({body["author"]["id"], body["submitter"]["id"], body["approver"]["id"]}) == 3


def test_a_system_key_cannot_approve(client, db: Database) -> None:
    publish_template(client)
    cid = draft(client)
    client.post(f"/v1/campaigns/{cid}/submit")
    with db.transaction() as session:
        portal, _ = principal_named(session, kind=PrincipalKind.system, name="Cổng DVC")
        with pytest.raises(Invalid, match="is a system"):
            create_key(session, role="approver", name="Cổng DVC", owner=portal)
        with pytest.raises(Invalid, match="is a system"):
            create_key(session, role="admin", name="Cổng DVC", owner=portal)
        row, key = create_key(session, role="operator", name="Cổng DVC", owner=portal)
        # A row edited behind the service's back (or restored from an old backup) still
        # does not make a system an approver.
        row.role = "approver"
    refused = client.post(
        f"/v1/campaigns/{cid}/approve", headers={"Authorization": f"Bearer {key}"}
    )
    assert refused.status_code == 403
    assert "belongs to a system" in refused.json()["detail"]
    assert client.get(f"/v1/campaigns/{cid}").json()["status"] == "submitted"


def test_an_unchanged_approved_campaign_launches_when_due(
    client, db: Database, settings: Settings
) -> None:
    publish_template(client)
    add_people(client, 2)
    cid = draft(client)
    client.post(f"/v1/campaigns/{cid}/submit")
    client.post(f"/v1/campaigns/{cid}/approve", headers=second_person())
    with db.transaction() as session:
        runs = campaigns.launch_due(session=session, settings=settings, now=SEND_AT)
    assert len(runs) == 1
    assert client.get(f"/v1/campaigns/{cid}").json()["status"] == "running"


def test_an_approval_expires_if_not_sent(client, db: Database, settings: Settings) -> None:
    publish_template(client)
    add_people(client, 2)
    cid = draft(client)
    client.post(f"/v1/campaigns/{cid}/submit")
    approved = client.post(f"/v1/campaigns/{cid}/approve", headers=second_person()).json()
    expires = datetime.fromisoformat(approved["approval_expires_at"])
    assert expires == SEND_AT + timedelta(seconds=settings.approval_ttl_seconds)

    # The scheduler was stopped past the approval's lifetime: nothing goes out on a stale one.
    late = expires + timedelta(minutes=1)
    with db.transaction() as session:
        assert campaigns.launch_due(session=session, settings=settings, now=late) == []
    campaign = client.get(f"/v1/campaigns/{cid}").json()
    assert campaign["status"] == "submitted"
    assert campaign["status_reason"] == (
        "approval withdrawn: it expired before the campaign was sent"
    )


def test_roles_are_enforced_along_the_life_cycle(client, db: Database) -> None:
    publish_template(client)
    editor = {"Authorization": f"Bearer {make_key(db, 'editor', 'Biên tập viên')}"}
    operator = {"Authorization": f"Bearer {make_key(db, 'operator', 'Vận hành')}"}
    approver = second_person()
    cid = draft(client)
    assert client.post(f"/v1/campaigns/{cid}/submit", headers=operator).status_code == 403
    assert client.post(f"/v1/campaigns/{cid}/submit", headers=editor).status_code == 200
    assert client.post(f"/v1/campaigns/{cid}/approve", headers=editor).status_code == 403
    assert client.post(f"/v1/campaigns/{cid}/approve", headers=approver).status_code == 200
    assert client.post(f"/v1/campaigns/{cid}/pause", headers=approver).status_code == 403
    assert client.post(f"/v1/campaigns/{cid}/pause", headers=operator).status_code == 200
    preview = client.get(f"/v1/campaigns/{cid}/preview", headers=approver)
    assert preview.status_code == 200
    assert [p["channel"] for p in preview.json()] == ["email"]
    assert preview.json()[0]["body"]
