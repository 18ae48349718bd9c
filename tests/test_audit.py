"""The audit: verify catches an edited, a deleted and a reordered entry; an edited, inserted or
deleted attempt or delivery (every column that matters); a cut-off tail, a rewound head and a
chain rewritten with its seals deleted, against the witness outside the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from dispatcher import audit
from dispatcher.audit import coverage
from dispatcher.audit.chain import entry_hash
from dispatcher.core import secrets
from dispatcher.core.config import Settings, get_settings
from dispatcher.core.db import Database
from dispatcher.tables.audit import AuditEntry, AuditHead
from tests.support import wait_for
from tests.test_end_to_end import (
    add_people,
    campaign_status,
    launch,
    plan_launched,
    publish_template,
)


@dataclass
class History:
    entries: list[AuditEntry]
    witness: Path
    settings: Settings


def key_of(db: Database, settings: Settings) -> bytes:
    with db.transaction() as session:
        return secrets.audit_key(session, settings)


def verify(
    db: Database, settings: Settings, *, witness: Path | None = None, **options: Any
) -> audit.VerifyReport:
    key = key_of(db, settings)
    with db.transaction() as session:
        return audit.verify(
            session, key, witness_path=None if witness is None else str(witness), **options
        )


def seal(db: Database, settings: Settings) -> None:
    with db.transaction() as session:
        made = audit.seal(
            session, secrets.audit_key(session, settings), witness_path=settings.audit_witness
        )
    assert made is not None


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "audit", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def sql(db: Database, statement: str, **params: Any) -> None:
    with db.engine.begin() as connection:
        connection.execute(text(statement), params)


def scalar(db: Database, statement: str, **params: Any) -> Any:
    with db.engine.begin() as connection:
        return connection.execute(text(statement), params).scalar()


def rewrite_chain(
    db: Database, change: Callable[[AuditEntry], None] = lambda row: None, *, upto: int = 0
) -> None:
    """What someone with database access but no key does: change entries, recompute every
    hash after them and the head, so that the chain is consistent again."""
    with db.transaction() as session:
        rows = list(session.scalars(select(AuditEntry).order_by(AuditEntry.seq)))
        if upto:
            for row in rows[upto:]:
                session.delete(row)
            rows = rows[:upto]
        prev = audit.GENESIS
        for row in rows:
            change(row)
            row.prev_hash = prev
            row.hash = entry_hash(prev, row.at, row.actor, row.action, row.subject, row.data)
            prev = row.hash
        session.execute(update(AuditHead).values(seq=rows[-1].seq, hash=prev))


@pytest.fixture()
def witnessed(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path
) -> Iterator[Settings]:
    """The settings with a witness file."""
    monkeypatch.setenv("DISPATCHER_AUDIT_WITNESS", str(tmp_path / "witness" / "seals.jsonl"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture()
def history(client, worker, db: Database, witnessed: Settings) -> Iterator[History]:
    """A campaign sent to five people, a key created, and the chain sealed into the witness:
    a real audit to tamper with."""
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
    seal(db, witnessed)
    with db.transaction() as session:
        rows = list(session.scalars(select(AuditEntry).order_by(AuditEntry.seq)))
        session.expunge_all()
    assert witnessed.audit_witness is not None
    yield History(rows, Path(witnessed.audit_witness), witnessed)


def check(db: Database, h: History, kind: str, words: str) -> audit.Problem:
    """Verify reports ``kind`` first, and its message says ``words``."""
    report = verify(db, h.settings, witness=h.witness)
    found = report.first
    assert found is not None, "verify says intact"
    assert found.kind == kind and words in found.message, report.problems
    return found


def test_an_untouched_audit_verifies(history: History, db: Database) -> None:
    actions = [e.action for e in history.entries]
    assert actions[:3] == ["template.publish", "campaign.submit", "campaign.approve"]
    assert "deliveries.plan" in actions and "attempts" in actions
    assert actions[-1] == "key.create"
    attempts = [json.loads(e.data) for e in history.entries if e.action == "attempts"]
    assert sum(a["count"] for a in attempts) == 5
    report = verify(db, history.settings, witness=history.witness)
    assert report.ok, report.problems
    assert report.entries == len(history.entries) and report.attempt_entries == len(attempts)
    assert (report.seals, report.witnessed, report.deliveries) == (1, 1, 5)
    line = json.loads(history.witness.read_text().splitlines()[0])
    assert line["seq"] == history.entries[-1].seq and line["event"] == "audit_sealed"
    done = run_cli("verify")
    assert done.returncode == 0, done.stderr
    assert "intact" in done.stdout and "witnessed: 1" in done.stdout
    assert "WARNING" not in done.stderr


def test_without_a_witness_verify_says_what_it_cannot_see(history: History, db) -> None:
    done = run_cli("verify", DISPATCHER_AUDIT_WITNESS="")
    assert done.returncode == 0, done.stderr
    assert "no witness" in done.stdout
    assert "WARNING" in done.stderr and "cannot be detected" in done.stderr


def test_an_edited_entry_is_caught(history: History, db: Database) -> None:
    approval = next(e for e in history.entries if e.action == "campaign.approve")
    data = json.loads(approval.data)
    data["audience_count"] = 1
    sql(
        db,
        "UPDATE audit_log SET data = :data WHERE seq = :seq",
        data=json.dumps(data),
        seq=approval.seq,
    )
    assert check(db, history, "altered", "was altered").seq == approval.seq
    done = run_cli("verify")
    assert done.returncode == 1
    assert f"entry {approval.seq} was altered" in done.stderr
    assert "TAMPERED" in done.stdout


def test_a_deleted_entry_is_caught(history: History, db: Database) -> None:
    sql(db, "DELETE FROM audit_log WHERE seq = 2")
    assert check(db, history, "missing", "entry 2 is missing").seq == 2


def test_reordered_entries_are_caught(history: History, db: Database) -> None:
    # Swap entries 2 and 3, each keeping its own (valid) hash.
    sql(db, "UPDATE audit_log SET seq = -1 WHERE seq = 2")
    sql(db, "UPDATE audit_log SET seq = 2 WHERE seq = 3")
    sql(db, "UPDATE audit_log SET seq = 3 WHERE seq = -1")
    assert check(db, history, "reordered", "out of order").seq == 2


# -- attempts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("provider_reply", "'250 accepted by someone else'"),
        ("locale", "'en'"),
        ("outcome", "'permanent'"),
        ("worker", "'elsewhere'"),
    ],
)
def test_an_edited_attempt_is_caught(
    history: History, db: Database, column: str, value: str
) -> None:
    sql(db, f"UPDATE attempts SET {column} = {value} WHERE id = (SELECT MIN(id) FROM attempts)")
    check(db, history, "attempts", "attempts")
    assert verify(db, history.settings, check_attempts=False).ok, "the chain itself is intact"


def test_a_fake_sent_attempt_is_caught(history: History, db: Database) -> None:
    # A second, successful try of a delivery that was sent, as the worker would have written it.
    sql(
        db,
        "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, outcome, "
        "error_class, provider_code, provider_reply, provider_message_id, locale, "
        "possible_duplicate, worker, period) SELECT delivery_id, number + 1, started_at, "
        "duration_ms, 'sent', NULL, provider_code, provider_reply, 'forged', locale, "
        "possible_duplicate, worker, period FROM attempts "
        "WHERE id = (SELECT MIN(id) FROM attempts)",
    )
    check(db, history, "attempts", "attempt rows but the audit covers 1")


def test_a_deleted_attempt_is_caught(history: History, db: Database) -> None:
    sql(db, "DELETE FROM attempts WHERE id = (SELECT MAX(id) FROM attempts)")
    check(db, history, "attempts", "were changed, added to or removed")


# -- deliveries -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        "status = 'failed', error_class = 'permanent', error_reason = '550 no such user'",
        "error_reason = 'reached'",
        "provider_message_id = 'another'",
        "sent_at = NULL",
        "attempts = 3",
        "channel = 'zalo'",
    ],
)
def test_an_edited_delivery_is_caught(history: History, db: Database, change: str) -> None:
    target = scalar(db, "SELECT MIN(id) FROM deliveries")
    sql(db, f"UPDATE deliveries SET {change} WHERE id = :id", id=target)
    found = check(db, history, "delivery", f"delivery {target} (")
    assert "was changed after entry" in found.message


def test_a_fake_delivery_is_caught(history: History, db: Database) -> None:
    """A delivery (and its sent attempt) for a new id, shaped like the real ones."""
    new_id = int(scalar(db, "SELECT MAX(id) FROM deliveries")) + 100
    columns = (
        "run_id, campaign_id, recipient_id, channel, status, batch_id, available_at, "
        "lease_until, attempts, failures, reclaimed, locale, provider_message_id, error_class, "
        "error_reason, created_at, updated_at, sent_at, period"
    )
    copied = columns.replace("channel", "'zalo'")
    sql(
        db,
        f"INSERT INTO deliveries (id, {columns}) SELECT :id, {copied} FROM deliveries "
        "WHERE id = (SELECT MIN(id) FROM deliveries) ",
        id=new_id,
    )
    sql(
        db,
        "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, outcome, "
        "possible_duplicate, worker, period) SELECT :id, 1, started_at, duration_ms, 'sent', "
        "possible_duplicate, worker, period FROM attempts "
        "WHERE id = (SELECT MIN(id) FROM attempts)",
        id=new_id,
    )
    check(db, history, "delivery", f"delivery {new_id} (sent) is in no audit entry")


def append_without_key(db: Database, entry: audit.Draft) -> None:
    """Append an entry as someone without the key can: a plain hash, the head moved on."""
    with db.transaction() as session:
        head = session.get(AuditHead, 1)
        assert head is not None
        at = datetime.now(UTC)
        digest = entry_hash(head.hash, at, entry.actor, entry.action, entry.subject, entry.body)
        session.add(
            AuditEntry(
                seq=head.seq + 1,
                at=at,
                actor=entry.actor,
                action=entry.action,
                subject=entry.subject,
                data=entry.body,
                prev_hash=head.hash,
                hash=digest,
            )
        )
        head.seq, head.hash = head.seq + 1, digest


def test_a_fake_delivery_named_by_a_forged_entry_is_caught(history: History, db) -> None:
    """A delivery turned `failed`, and an entry naming it in that state as a writer of the
    service would: without the key, the entry gives itself away."""
    target = scalar(db, "SELECT MIN(id) FROM deliveries")
    sql(db, "UPDATE deliveries SET status = 'failed', error_reason = 'x' WHERE id = :id", id=target)
    with db.transaction() as session:
        rows = [
            r._mapping
            for r in session.execute(
                select(*audit.state_columns()).where(coverage.deliveries_t.c.id == target)
            )
        ]
    [entry] = audit.deliveries_drafts(rows, actor="planner", action=audit.PLANNED, subject="run:1")
    append_without_key(db, entry)
    found = check(db, history, "forged", "was not written by the service")
    assert found.seq == history.entries[-1].seq + 1


def test_a_deleted_delivery_is_caught(history: History, db: Database) -> None:
    target = scalar(db, "SELECT MAX(id) FROM deliveries")
    sql(db, "DELETE FROM attempts WHERE delivery_id = :id", id=target)
    sql(db, "DELETE FROM deliveries WHERE id = :id", id=target)
    report = verify(db, history.settings, witness=history.witness, stop_at_first=False)
    messages = [p.message for p in report.problems]
    assert any(f"delivery {target}, last recorded in entry" in m for m in messages), messages
    assert any("were changed, added to or removed" in m for m in messages), messages


def test_planning_skips_and_a_cancellation_are_covered(
    client, db: Database, witnessed: Settings
) -> None:
    """The planner's rows (a skipped one among them) and a cancellation's, without a worker."""
    publish_template(client)
    add_people(client)
    sql(
        db,
        "UPDATE addresses SET dead_at = '2026-01-01 00:00:00.000000' "
        "WHERE value = 'duc.le@example.vn'",
    )
    campaign_id, _ = plan_launched(client, db, witnessed)
    # The skipped delivery is a row; the pending ones wait in their batch, without one yet.
    statuses = {
        "pending": scalar(db, "SELECT SUM(size) FROM batches WHERE status = 'open'"),
        "skipped": scalar(db, "SELECT COUNT(*) FROM deliveries WHERE status = 'skipped'"),
    }
    assert statuses == {"pending": 4, "skipped": 1}
    assert scalar(db, "SELECT COUNT(*) FROM deliveries") == 1
    assert (
        client.post(f"/v1/campaigns/{campaign_id}/cancel", json={"reason": "sai"}).status_code
        == 200
    )
    assert scalar(db, "SELECT COUNT(*) FROM deliveries WHERE status = 'cancelled'") == 4
    report = verify(db, witnessed)
    assert report.ok, report.problems
    assert report.deliveries == 5
    # Someone turns a cancelled delivery back into one that is waiting to be sent.
    sql(
        db,
        "UPDATE deliveries SET status = 'pending', error_reason = NULL "
        "WHERE id = (SELECT MIN(id) FROM deliveries WHERE status = 'cancelled')",
    )
    found = verify(db, witnessed).first
    assert found is not None and found.kind == "delivery", found
    assert "(pending now) was changed after entry" in found.message


def _pending_row(client: Any, db: Database) -> int:
    """A one-off message's delivery, a pending row whose job waits in Redis: its run."""
    add_people(client)
    publish_template(client)
    body = {"recipient": "0100000001", "template": "canh_bao_test", "channels": ["email"]}
    assert client.post("/v1/messages", json=body).status_code == 202
    return int(scalar(db, "SELECT run_id FROM deliveries WHERE status = 'pending'"))


def test_a_batch_that_lost_rows_states_what_they_hold(client, db, witnessed: Settings) -> None:
    """A worker whose lease ran out names the rows it could not write as they stand (rows of
    the row path: a batch row's record writes all of its deliveries, or none)."""
    run_id = _pending_row(client, db)
    target = scalar(db, "SELECT MIN(id) FROM deliveries")
    with db.transaction() as session:
        row = dict(
            session.execute(
                select(*audit.state_columns()).where(coverage.deliveries_t.c.id == target)
            )
            .one()
            ._mapping
        )
    # What the worker meant to write; the row was taken back before it could.
    meant = {**row, "status": "sent", "attempts": 1, "provider_message_id": "x"}
    entry = audit.batch_draft(attempts=[], deliveries=[meant], worker="w", run_id=run_id)
    assert entry is not None
    with db.transaction() as session:
        audit.append(session, entry, amend=audit.restate)
    assert verify(db, witnessed).ok
    with db.transaction() as session:
        audit.append(session, entry)
    found = verify(db, witnessed).first
    assert found is not None and f"delivery {target} (pending now)" in found.message


# -- seals and the witness ------------------------------------------------------------------


def test_a_rewrite_with_its_seals_deleted_is_caught_by_the_witness(
    history: History, db: Database
) -> None:
    """The attack of issue 12: delete every seal, rewrite the chain consistently."""

    def forge(row: AuditEntry) -> None:
        if row.action == "campaign.approve":
            row.actor = "key 999 (someone else)"

    sql(db, "DELETE FROM audit_seals")
    rewrite_chain(db, forge)
    assert verify(db, history.settings, check_attempts=False).ok, "invisible without a witness"
    found = check(db, history, "witness", "no longer has the hash the witness saw sealed")
    assert found.seq == history.entries[-1].seq
    done = run_cli("verify")
    assert done.returncode == 1 and "TAMPERED" in done.stdout
    assert "the chain was rewritten" in done.stderr


def test_a_rewritten_chain_is_caught_by_its_seal(history: History, db: Database) -> None:
    done = run_cli("seal")
    assert done.returncode == 0 and done.stdout.strip() == "nothing new to seal"
    rewrite_chain(db, lambda row: setattr(row, "actor", row.actor + " ") if row.seq == 2 else None)
    report = verify(db, history.settings, check_attempts=False, stop_at_first=False)
    assert [p.kind for p in report.problems] == ["seal"]
    assert "the chain was rewritten" in report.problems[0].message


def test_a_removed_tail_is_caught(history: History, db: Database) -> None:
    sql(db, "DELETE FROM audit_log WHERE seq = :seq", seq=history.entries[-1].seq)
    check(db, history, "head", "entries were removed from the end")


def test_a_cut_tail_with_its_head_and_seals_is_caught_by_the_witness(
    history: History, db: Database
) -> None:
    """The last entries gone, the head moved back to match, the seals deleted."""
    keep = len(history.entries) - 2
    sql(db, "DELETE FROM audit_seals")
    rewrite_chain(db, upto=keep)
    found = check(db, history, "witness", f"the chain ends at entry {keep}, but the witness")
    assert "tail was cut off or its head rewound" in found.message


def test_a_rewound_head_that_grew_again_is_caught_by_the_witness(
    history: History, db: Database
) -> None:
    """The head moved back before a witnessed seal, and new entries written from there: the
    chain is as long as before but different."""
    sql(db, "DELETE FROM audit_seals")
    rewrite_chain(db, upto=len(history.entries) - 1)
    with db.transaction() as session:
        audit.record(session, actor="someone", action="key.revoke", subject="key:1", data={})
    check(db, history, "witness", "no longer has the hash the witness saw sealed")


def test_a_deleted_seal_is_caught_by_the_witness(history: History, db: Database) -> None:
    sql(db, "DELETE FROM audit_seals")
    check(db, history, "witness", "is missing from the database: it was deleted")


def test_a_witness_that_lost_lines_is_caught(history: History, db: Database) -> None:
    with db.transaction() as session:
        audit.record(session, actor="someone", action="key.revoke", subject="key:1", data={})
    seal(db, history.settings)
    lines = history.witness.read_text().splitlines(keepends=True)
    assert len(lines) == 2
    history.witness.write_text(lines[1])
    check(db, history, "witness", "is not in the witness")
    history.witness.unlink()
    check(db, history, "witness", "is not in the witness")
    done = run_cli("verify", "--witness", str(history.witness))
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_a_forged_witness_line_is_caught(history: History, db: Database) -> None:
    line = json.loads(history.witness.read_text())
    line["hash"] = "f" * 64
    with history.witness.open("a") as handle:
        handle.write(json.dumps(line) + "\n")
    check(db, history, "witness", "has a bad MAC")


def test_seal_log_lines_serve_as_a_witness(history: History, db: Database, tmp_path) -> None:
    """A JSON log export holding the scheduler's seal lines among others."""
    seal_line = json.loads(history.witness.read_text())
    exported = tmp_path / "export.jsonl"
    exported.write_text(
        json.dumps({"event": "sweep", "requeued": 3})
        + "\nnot json at all\n"
        + json.dumps({**seal_line, "level": "info", "timestamp": "2026-01-01T00:00:00Z"})
        + "\n"
    )
    report = verify(db, history.settings, witness=exported)
    assert report.ok and report.witnessed == 1, report.problems


@pytest.mark.timeout(600)
def test_deliveries_from_before_the_upgrade_are_not_reported(
    client, db: Database, witnessed: Settings
) -> None:
    """Migration 0011 marks where coverage starts: a delivery made by an older version (in no
    entry) is reported before it, and not after; one made after it still is."""
    from alembic import command

    from dispatcher.core import migrate

    _pending_row(client, db)
    older = int(scalar(db, "SELECT MAX(id) FROM deliveries")) + 1
    columns = (
        "run_id, campaign_id, recipient_id, status, available_at, attempts, failures, "
        "reclaimed, created_at, updated_at, period"
    )
    copy = f"INSERT INTO deliveries (id, channel, {columns}) SELECT :id, :channel, {columns} "
    copy += "FROM deliveries WHERE id = (SELECT MIN(id) FROM deliveries)"
    sql(db, copy, id=older, channel="zalo")
    found = verify(db, witnessed).first
    assert found is not None and f"delivery {older} (pending) is in no audit entry" in found.message
    config = migrate.alembic_config(witnessed.database_url)
    command.downgrade(config, "0009")
    command.upgrade(config, "head")
    report = verify(db, witnessed)
    assert report.ok, report.problems
    sql(db, copy, id=older + 1, channel="telegram")
    found = verify(db, witnessed).first
    assert found is not None and f"delivery {older + 1} (pending)" in found.message


def test_a_batchs_entry_from_values_digests_as_the_rows_do() -> None:
    """The record drafts its entry from values in field order; the digests are those the
    verification computes from the stored rows (mappings)."""
    at = datetime(2026, 2, 3, 4, 5, 6, 789, tzinfo=UTC)
    tries = [
        (11, 1, at, 12, "sent", None, "250", "ok", "m-11", "vi", False, "host:1"),
        (10, 2, at, 40, "transient", "transient", None, "blip", None, "en", True, "host:1"),
    ]
    states = [
        (11, 3, 4, 501, "email", "sent", 1, 0, "vi", "m-11", None, None, at),
        (10, 3, 4, 500, "email", "retrying", 2, 1, "en", None, "transient", "blip", None),
    ]
    entry = audit.batch_draft_of(attempts=tries, deliveries=states, worker="host:1", run_id=3)
    assert entry is not None
    data = json.loads(entry.body)
    attempt_rows = [dict(zip(coverage.ATTEMPT_FIELDS, t, strict=True)) for t in tries]
    state_rows = [dict(zip(coverage.DELIVERY_FIELDS, v, strict=True)) for v in states]
    assert data["digest"] == audit.attempt_digest(attempt_rows)
    assert data["deliveries"]["ids"] == [[10, 11]]
    assert data["deliveries"]["states"] == [audit.delivery_state(r) for r in state_rows[::-1]]
    assert data["tries"] == [[11, 11, 1], [10, 10, 2]]
    same = audit.batch_draft(
        attempts=attempt_rows, deliveries=state_rows, worker="host:1", run_id=3
    )
    assert same is not None and same.body == entry.body
