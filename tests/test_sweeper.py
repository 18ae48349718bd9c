"""The sweeper recovers what a killed worker held and what Redis lost."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from dispatcher.core.db import Database
from dispatcher.kit.clock import utcnow
from dispatcher.tables.deliveries import Attempt, Batch
from tests.support import SmtpServer, wait_for
from tests.test_end_to_end import (
    add_people,
    campaign_status,
    launch,
    plan_campaign,
    publish_template,
)
from workers.sweeper import sweep


def test_a_claim_whose_worker_died_is_sent_again_and_flagged(
    client, smtp: SmtpServer, db: Database, settings, job_queue, redis_client
) -> None:
    # No worker yet: the plan job waits in Redis. Run the planner ourselves, as a worker would.
    campaign_id, _ = plan_campaign(client, db, settings)
    # A worker claimed every batch and was killed -9: its lease has run out, its job is gone.
    redis_client.flushall()
    with db.transaction() as session:
        session.execute(
            update(Batch).values(status="claimed", lease_until=utcnow() - timedelta(seconds=1))
        )
    report = sweep(db=db, settings=settings, markers=job_queue.markers)
    assert report.leases_expired == 5
    assert report.requeued == 5

    import dramatiq

    from workers import actors

    actors.declare(job_queue.broker, settings)
    worker = dramatiq.Worker(job_queue.broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        wait_for(lambda: campaign_status(client, campaign_id)["status"] == "completed")
    finally:
        worker.stop()
        actors.set_processor(None)
    assert smtp.mailbox.count() == 5
    with db.transaction() as session:
        flagged = session.scalars(select(Attempt.possible_duplicate)).all()
    assert flagged == [True] * 5, "a send after a lost claim is marked as a possible repeat"


def test_sweep_is_quiet_when_nothing_is_lost(client, db: Database, settings, job_queue) -> None:
    report = sweep(db=db, settings=settings, markers=job_queue.markers)
    assert (report.requeued, report.leases_expired, report.planners_restarted) == (0, 0, 0)


def test_scheduled_campaign_launches_when_due(
    client, worker, smtp: SmtpServer, db: Database, settings, job_queue
) -> None:
    add_people(client)
    publish_template(client)
    send_at = (utcnow() + timedelta(hours=1)).isoformat()
    campaign_id = launch(client, send_at=send_at)
    assert campaign_status(client, campaign_id)["status"] == "scheduled"
    assert sweep(db=db, settings=settings, markers=job_queue.markers).campaigns_launched == 0
    later = utcnow() + timedelta(hours=1, seconds=1)
    report = sweep(db=db, settings=settings, markers=job_queue.markers, now=later)
    assert report.campaigns_launched == 1
    wait_for(lambda: campaign_status(client, campaign_id)["status"] == "completed")
    assert smtp.mailbox.count() == 5
    # The slot is unique: a second sweep (or a second scheduler) cannot launch it again.
    assert (
        sweep(db=db, settings=settings, markers=job_queue.markers, now=later).campaigns_launched
        == 0
    )


def test_pause_then_resume_finishes_the_campaign(
    client, smtp: SmtpServer, db: Database, settings, job_queue
) -> None:
    people = [(f"03{i:08d}", f"Người {i}", f"p{i}@example.vn", "Huế") for i in range(30)]
    add_people(client, people)
    publish_template(client)
    campaign_id = launch(client)
    # Plan everything with no worker running, then pause: queued batches find a paused run.
    from dispatcher.tables.campaigns import Run
    from workers import actors

    with db.transaction() as session:
        run_id = session.scalar(select(Run.id).where(Run.campaign_id == campaign_id))
    assert run_id is not None
    actors.plan_run(run_id)
    assert client.post(f"/v1/campaigns/{campaign_id}/pause").json()["status"] == "paused"

    import dramatiq

    actors.declare(job_queue.broker, settings)
    worker = dramatiq.Worker(job_queue.broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        # Every queued batch is dropped untouched while paused.
        job_queue.broker.join(settings.queue_urgent, timeout=30_000)
        assert smtp.mailbox.count() == 0
        assert campaign_status(client, campaign_id)["counts"]["by_status"] == {"pending": 30}
        assert client.post(f"/v1/campaigns/{campaign_id}/resume").json()["status"] == "running"
        wait_for(lambda: campaign_status(client, campaign_id)["status"] == "completed")
    finally:
        worker.stop()
        actors.set_processor(None)
    assert smtp.mailbox.count() == 30


def test_cancel_stops_what_has_not_been_sent(
    client, smtp: SmtpServer, db: Database, job_queue
) -> None:
    add_people(client)
    publish_template(client)
    campaign_id = launch(client)
    cancelled = client.post(f"/v1/campaigns/{campaign_id}/cancel").json()
    assert cancelled["status"] == "cancelled"
    from dispatcher.tables.campaigns import Run
    from workers import actors

    with db.transaction() as session:
        run_id = session.scalar(select(Run.id).where(Run.campaign_id == campaign_id))
    assert run_id is not None
    actors.plan_run(run_id)  # a plan job that was already queued does nothing now
    assert campaign_status(client, campaign_id)["counts"]["total"] == 0
    assert smtp.mailbox.count() == 0
