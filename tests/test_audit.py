"""The audit log's hash chain: verify catches an edited, a deleted and a reordered entry,
a changed delivery attempt, a cut-off tail and a rewritten, sealed chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, text, update

from dispatcher import audit, secrets
from dispatcher.audit.chain import entry_hash
from dispatcher.audit.models import AuditEntry, AuditHead
from dispatcher.config import Settings
from dispatcher.db import Database
from tests.support import wait_for
from tests.test_end_to_end import add_people, campaign_status, launch, publish_template


def verify(db: Database, settings: Settings, **options: Any) -> audit.VerifyReport:
    with db.transaction() as session:
        return audit.verify(session, secrets.audit_key(session, settings), **options)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "audit", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )


def sql(db: Database, statement: str, **params: Any) -> None:
    with db.engine.begin() as connection:
        connection.execute(text(statement), params)


@pytest.fixture()
def history(client, worker, db: Database, settings: Settings) -> Iterator[list[AuditEntry]]:
    """A campaign sent to five people, plus a key created: a real chain to tamper with."""
    publish_template(client)
    add_people(client)
    campaign_id = launch(client)
    wait_for(
        lambda: campaign_status(client, campaign_id)["status"] == "completed",
        timeout=30,
        what="the campaign to complete",
    )
    assert (
        client.post("/v1/keys", json={"name": "Kiểm toán", "role": "operator"}).status_code == 201
    )
    with db.transaction() as session:
        rows = list(session.scalars(select(AuditEntry).order_by(AuditEntry.seq)))
        session.expunge_all()
    yield rows


def test_an_untouched_chain_verifies(history: list[AuditEntry], db: Database, settings) -> None:
    actions = [e.action for e in history]
    assert actions[:3] == ["template.publish", "campaign.submit", "campaign.approve"]
    assert "attempts" in actions and actions[-1] == "key.create"
    attempts = [json.loads(e.data) for e in history if e.action == "attempts"]
    assert sum(a["count"] for a in attempts) == 5
    report = verify(db, settings)
    assert report.ok, report.problems
    assert report.entries == len(history) and report.attempt_entries == len(attempts)
    done = run_cli("verify")
    assert done.returncode == 0, done.stderr
    assert "intact" in done.stdout


def test_an_edited_entry_is_caught(history: list[AuditEntry], db: Database, settings) -> None:
    approval = next(e for e in history if e.action == "campaign.approve")
    data = json.loads(approval.data)
    data["audience_count"] = 1
    sql(
        db,
        "UPDATE audit_log SET data = :data WHERE seq = :seq",
        data=json.dumps(data),
        seq=approval.seq,
    )
    report = verify(db, settings)
    assert report.first is not None
    assert (report.first.kind, report.first.seq) == ("altered", approval.seq)
    done = run_cli("verify")
    assert done.returncode == 1
    assert f"entry {approval.seq} was altered" in done.stderr
    assert "TAMPERED" in done.stdout


def test_a_deleted_entry_is_caught(history: list[AuditEntry], db: Database, settings) -> None:
    sql(db, "DELETE FROM audit_log WHERE seq = 2")
    report = verify(db, settings)
    assert report.first is not None
    assert (report.first.kind, report.first.seq) == ("missing", 2)
    assert report.first.message == "entry 2 is missing"


def test_reordered_entries_are_caught(history: list[AuditEntry], db: Database, settings) -> None:
    # Swap entries 2 and 3, each keeping its own (valid) hash.
    sql(db, "UPDATE audit_log SET seq = -1 WHERE seq = 2")
    sql(db, "UPDATE audit_log SET seq = 2 WHERE seq = 3")
    sql(db, "UPDATE audit_log SET seq = 3 WHERE seq = -1")
    report = verify(db, settings)
    assert report.first is not None
    assert (report.first.kind, report.first.seq) == ("reordered", 2)
    assert "out of order" in report.first.message


def test_a_changed_delivery_attempt_is_caught(
    history: list[AuditEntry], db: Database, settings
) -> None:
    sql(db, "UPDATE attempts SET outcome = 'permanent' WHERE id = (SELECT MIN(id) FROM attempts)")
    report = verify(db, settings)
    assert report.first is not None and report.first.kind == "attempts"
    assert verify(db, settings, check_attempts=False).ok, "the chain itself is intact"


def test_a_removed_tail_is_caught(history: list[AuditEntry], db: Database, settings) -> None:
    sql(db, "DELETE FROM audit_log WHERE seq = :seq", seq=history[-1].seq)
    report = verify(db, settings)
    assert report.first is not None and report.first.kind == "head"


def test_a_rewritten_chain_is_caught_by_its_seal(
    history: list[AuditEntry], db: Database, settings
) -> None:
    done = run_cli("seal")
    assert done.returncode == 0 and f"at entry {history[-1].seq}" in done.stdout
    assert run_cli("seal").stdout.strip() == "nothing new to seal"
    # Someone with database access edits entry 2 and recomputes every hash after it.
    with db.transaction() as session:
        rows = list(session.scalars(select(AuditEntry).order_by(AuditEntry.seq)))
        prev = rows[0].hash
        for row in rows[1:]:
            if row.seq == 2:
                row.actor = "key 999 (someone else)"
            row.prev_hash = prev
            row.hash = entry_hash(prev, row.at, row.actor, row.action, row.subject, row.data)
            prev = row.hash
        session.execute(update(AuditHead).values(hash=prev))
    report = verify(db, settings, stop_at_first=False)
    assert [p.kind for p in report.problems] == ["seal"]
    assert "the chain was rewritten" in report.problems[0].message
