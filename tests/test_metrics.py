"""``GET /metrics``: what the workers, the scheduler and the broker did, as Prometheus reads it."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine import backends, jobs
from dispatcher.engine.batch import BatchProcessor
from tests.conftest import make_key
from tests.scheduling.test_scheduler import recurring, vn
from tests.support import SmtpServer, free_port, wait_for
from tests.test_end_to_end import PEOPLE, add_people, campaign_status, launch, publish_template
from tests.test_processes import role
from workers.sweeper import sweep

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
SEND_BATCH_URGENT = jobs.actor_name(jobs.SEND_BATCH, "urgent")
PLAN_URGENT = jobs.actor_name(jobs.PLAN_RUN, "urgent")


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def scrape(client: Any, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers or None)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; a labelled series nothing has touched yet reads as zero."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def completed(client: Any, campaign_id: int, timeout: float = 30) -> dict[str, Any]:
    return dict(
        wait_for(
            lambda: (c := campaign_status(client, campaign_id))["status"] == "completed" and c,
            timeout=timeout,
            what=f"campaign {campaign_id} to complete",
        )
    )


def test_metrics_reflect_a_finished_campaign(client, worker, smtp: SmtpServer) -> None:
    before = scrape(client)
    add_people(client)
    publish_template(client)
    campaign_id = launch(client)
    done = completed(client, campaign_id)
    assert done["counts"]["by_status"] == {"sent": len(PEOPLE)}
    after = scrape(client)

    size = len(PEOPLE)
    assert delta(before, after, "dispatcher_deliveries_total", channel="email", outcome="sent") == (
        size
    )
    assert delta(before, after, "dispatcher_attempts_total", channel="email", outcome="sent") == (
        size
    )
    assert delta(before, after, "dispatcher_send_seconds_count", channel="email") == size
    for outcome in ("failed", "skipped"):
        assert not delta(
            before, after, "dispatcher_deliveries_total", channel="email", outcome=outcome
        )
    assert delta(before, after, "dispatcher_job_seconds_count", actor=SEND_BATCH_URGENT) >= 1
    assert delta(before, after, "dispatcher_job_seconds_count", actor=PLAN_URGENT) == 1
    assert value(after, "dispatcher_jobs_in_progress", actor=SEND_BATCH_URGENT) == 0
    # Read at scrape time: the database's campaigns and runs, Redis's queues.
    assert value(after, "dispatcher_campaigns", status="completed") == 1
    assert value(after, "dispatcher_runs", status="completed") == 1
    assert value(after, "dispatcher_metrics_source_up", source="database") == 1
    assert value(after, "dispatcher_metrics_source_up", source="redis") == 1
    for queue in ("urgent", "bulk"):
        assert ("dispatcher_queue_waiting", (("queue", queue),)) in after
        assert value(after, "dispatcher_queue_waiting", queue=queue) == 0
        assert value(after, "dispatcher_queue_delayed", queue=queue) == 0


def test_quick_and_delayed_retries_are_counted(client, worker, smtp: SmtpServer) -> None:
    add_people(client, PEOPLE[:1])
    publish_template(client)
    # Three refusals: the first try and two quick retries fail, then one delayed re-delivery.
    smtp.mailbox.script["an.nguyen@example.vn"] = ["421 4.3.2 Service not available"] * 3
    before = scrape(client)
    completed(client, launch(client))
    after = scrape(client)
    email = {"channel": "email"}
    assert delta(before, after, "dispatcher_attempts_total", **email, outcome="transient") == 3
    assert delta(before, after, "dispatcher_attempts_total", **email, outcome="sent") == 1
    assert delta(before, after, "dispatcher_quick_retries_total") == 2
    assert (
        delta(before, after, "dispatcher_delivery_retries_total", **email, reason="transient") == 1
    )
    assert delta(before, after, "dispatcher_deliveries_total", **email, outcome="sent") == 1


def test_broker_retries_and_dead_letters_are_counted(
    client, worker, job_queue: backends.Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(self: BatchProcessor, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(BatchProcessor, "process", crash)
    before = scrape(client)
    # One broker-level retry, 10-20 ms later, then the dead-letter queue.
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name="urgent",
        actor_name=SEND_BATCH_URGENT,
        args=(1, [1], None),
        kwargs={},
        options={"max_retries": 1, "min_backoff": 10, "max_backoff": 20},
    )
    job_queue.broker.enqueue(message)

    def dead_lettered() -> Samples | None:
        s = scrape(client)
        dead = value(s, "dispatcher_dead_letters_total", actor=SEND_BATCH_URGENT)
        return (
            s
            if dead > value(before, "dispatcher_dead_letters_total", actor=SEND_BATCH_URGENT)
            else None
        )

    after = wait_for(dead_lettered, what="the message to be dead-lettered")
    assert after is not None
    assert delta(before, after, "dispatcher_broker_retries_total", actor=SEND_BATCH_URGENT) == 1
    assert delta(before, after, "dispatcher_dead_letters_total", actor=SEND_BATCH_URGENT) == 1
    assert value(after, "dispatcher_queue_dead_letters", queue="urgent") == 1
    assert value(after, "dispatcher_queue_dead_letters", queue="bulk") == 0


def test_queue_depths_are_read_from_redis(client, job_queue: backends.Backends) -> None:
    """No worker runs: what was queued waits, and the scrape sees it."""
    add_people(client)
    publish_template(client)
    launch(client)  # its planning job waits on the urgent queue
    job_queue.enqueue(
        [
            jobs.Job(
                jobs.actor_name(jobs.SEND_BATCH, "bulk"),
                "bulk",
                (1, [1, 2], None),
                delay_ms=3_600_000,
            )
        ]
    )
    samples = scrape(client)
    assert value(samples, "dispatcher_queue_waiting", queue="urgent") == 1
    assert value(samples, "dispatcher_queue_waiting", queue="bulk") == 0
    assert value(samples, "dispatcher_queue_delayed", queue="bulk") == 1
    assert value(samples, "dispatcher_queue_delayed", queue="urgent") == 0
    assert value(samples, "dispatcher_queue_unacked", queue="urgent") == 0
    assert value(samples, "dispatcher_campaigns", status="running") == 1


def test_redis_away_is_reported_not_an_error(
    client, job_queue: backends.Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(job_queue.broker, RedisBroker)
    nowhere = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    monkeypatch.setattr(job_queue.broker, "client", nowhere)
    samples = scrape(client)
    assert value(samples, "dispatcher_metrics_source_up", source="redis") == 0
    assert value(samples, "dispatcher_metrics_source_up", source="database") == 1
    assert ("dispatcher_queue_waiting", (("queue", "urgent"),)) not in samples


def test_scheduler_firings_are_counted(
    client, db: Database, settings: Settings, job_queue: backends.Backends
) -> None:
    from dispatcher.kit.clock import clock

    clock.freeze(vn(2026, 5, 4, 6, 0))
    recurring(client, {"type": "cron", "cron": "0 * * * *"})  # hourly
    settings = settings.model_copy(update={"schedule_grace_seconds": 2 * 3600})
    before = scrape(client)
    # The scheduler was down from 07:00 to 12:30: 07-10 are beyond the grace, 11 and 12 late.
    clock.freeze(vn(2026, 5, 4, 12, 30))
    sweep(db=db, settings=settings, markers=job_queue.markers)
    middle = scrape(client)
    assert delta(before, middle, "dispatcher_schedule_firings_total", outcome="skipped") == 4
    assert delta(before, middle, "dispatcher_schedule_firings_total", outcome="late") == 2
    assert delta(before, middle, "dispatcher_schedule_firings_total", outcome="on_time") == 0
    # A minute after 13:00: on time. The same tick again fires nothing more.
    clock.freeze(vn(2026, 5, 4, 13, 1))
    sweep(db=db, settings=settings, markers=job_queue.markers)
    sweep(db=db, settings=settings, markers=job_queue.markers)
    after = scrape(client)
    assert delta(middle, after, "dispatcher_schedule_firings_total", outcome="on_time") == 1
    assert delta(middle, after, "dispatcher_schedule_firings_total", outcome="late") == 0
    assert delta(middle, after, "dispatcher_schedule_firings_total", outcome="skipped") == 0
    assert value(after, "dispatcher_runs", status="skipped") == 4


@pytest.mark.timeout(180)
def test_worker_processes_reach_the_api_through_the_shared_directory(
    client,
    db: Database,
    smtp: SmtpServer,
    settings: Settings,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real `dispatcher worker` (two processes) sends; a real `dispatcher serve` reports it."""
    shared = tmp_path / "metrics"
    monkeypatch.setenv("DISPATCHER_METRICS_DIR", str(shared))
    operator = {"Authorization": f"Bearer {make_key(db, 'operator', 'Prometheus')}"}
    add_people(client)
    publish_template(client)
    campaign_id = launch(client)
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def scrape_api() -> Samples:
        response = httpx.get(f"{base}/metrics", headers=operator, timeout=10)
        assert response.status_code == 200, response.text
        return parse(response.text)

    def api_up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    with role("serve", "--port", str(port)) as api:
        with role("worker", "--queues", "urgent", "--processes", "2", "--threads", "2") as workers:
            completed(client, campaign_id, timeout=90)
            wait_for(api_up, timeout=60, what="dispatcher serve to answer")
            running = scrape_api()
            # The worker processes' in-progress gauges are live while they run.
            assert glob.glob(str(shared / "gauge_livesum_*.db"))
            assert workers.poll() is None
        # The workers stopped: their live gauges left the directory, their counts stayed.
        after = scrape_api()
        assert api.poll() is None
    assert workers.returncode is not None
    assert not glob.glob(str(shared / "gauge_livesum_*.db"))

    size = len(PEOPLE)
    for samples in (running, after):
        assert value(samples, "dispatcher_deliveries_total", channel="email", outcome="sent") == (
            size
        )
        assert value(samples, "dispatcher_attempts_total", channel="email", outcome="sent") == size
        assert value(samples, "dispatcher_send_seconds_count", channel="email") == size
        assert value(samples, "dispatcher_job_seconds_count", actor=PLAN_URGENT) == 1
        assert value(samples, "dispatcher_runs", status="completed") == 1
    assert smtp.mailbox.count() == size
    # Every file is named after a host and a pid, so containers sharing the volume never clash.
    names = [os.path.basename(p) for p in glob.glob(str(shared / "*.db"))]
    assert names and all(n.rsplit("_", 1)[-1][:-3].rpartition("-")[2].isdigit() for n in names)


def test_the_compose_stack_shares_one_metrics_directory(repo_root: Path) -> None:
    import yaml

    compose = yaml.safe_load((repo_root / "docker-compose.yml").read_text())
    dockerfile = (repo_root / "Dockerfile").read_text()
    assert "DISPATCHER_METRICS_DIR=/var/lib/dispatcher/metrics" in dockerfile
    for name in ("api", "worker-urgent", "worker-bulk", "scheduler"):
        service = compose["services"][name]
        assert "metrics:/var/lib/dispatcher/metrics" in service["volumes"], name
        assert service["environment"].get("DISPATCHER_METRICS_DIR") in (
            None,
            "/var/lib/dispatcher/metrics",
        ), name
    assert "metrics" in compose["volumes"]


@pytest.mark.parametrize("multiprocess", [False, True])
def test_observing_a_batch_of_send_times_counts_as_observing_each(
    multiprocess: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The send-time histogram is written once per batch: its buckets, count and sum are the
    same as one observe per send, in the single-process registry and the multi-process one."""
    from prometheus_client import CollectorRegistry, Histogram, values
    from prometheus_client.multiprocess import MultiProcessCollector

    from dispatcher.observability.metrics import observe_many

    if multiprocess:
        directory = tmp_path / "metrics"
        directory.mkdir()
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: "one"))
    amounts = [0.001, 0.005, 0.0051, 0.02, 0.3, 0.3, 7.5, 31.0, 0.0]
    buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

    def samples(observe: Any) -> dict[tuple[str, str], float]:
        registry = CollectorRegistry()
        name = f"sends_{observe.__name__}"
        histogram = Histogram(name, "sends", ["channel"], buckets=buckets, registry=registry)
        observe(histogram.labels("email"))
        if multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(directory))
        return {
            (s.name.removeprefix(name), s.labels.get("le", "")): s.value
            for family in registry.collect()
            for s in family.samples
            if s.name.startswith(name) and not s.name.endswith("_created")
        }

    def each(child: Any) -> None:
        for amount in amounts:
            child.observe(amount)

    def batched(child: Any) -> None:
        observe_many(child, amounts)

    expected = samples(each)
    assert expected[("_count", "")] == len(amounts)
    assert expected[("_bucket", "0.005")] == 3
    assert samples(batched) == expected
