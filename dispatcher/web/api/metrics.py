"""``GET /metrics``: every process's counters, plus what is read at scrape time.

In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set, as the ``dispatcher`` commands do) the
answer adds up the files of every process sharing the directory: API, workers, scheduler. Queue
depths come from Redis and campaign/run counts from the database at each scrape, so they are
right whichever process answers. Prometheus authenticates with an operator key:
``authorization: {type: Bearer, credentials_file: ...}`` (see docs/operations.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import cast

import structlog
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name, xq_name
from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from dispatcher.auth.service import Role
from dispatcher.core.db import get_database
from dispatcher.engine import backends
from dispatcher.engine.backends import Backends
from dispatcher.observability.metrics import clean_dead_processes, multiprocess_dir
from dispatcher.tables.campaigns import Campaign, Run
from dispatcher.units import scope as scopes
from dispatcher.web.http.callers import require
from dispatcher.web.http.deps import request_scope

log = structlog.get_logger(__name__)

router = APIRouter(tags=["operations"], dependencies=[Depends(require(Role.operator))])


class _Forward(Collector):
    """This process's own registry, when it counts in memory."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def _source_up() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "dispatcher_metrics_source_up",
        "Whether a scrape-time source (redis, database) could be read",
        labels=["source"],
    )


class QueueCollector(Collector):
    """Broker queue depths, read when scraped.

    dramatiq's Redis broker keeps, under its namespace, a list of waiting message ids per queue
    (``<ns>:<queue>``), the messages not yet acknowledged (``<ns>:<queue>.msgs``), the delayed
    ones (``<queue>.DQ``, held by a worker until due but still unacknowledged) and the dead
    letters (a sorted set ``<queue>.XQ``).
    """

    def __init__(self, queue: Backends) -> None:
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        settings = self.queue.settings
        names = [settings.queue_urgent, settings.queue_bulk]
        waiting = GaugeMetricFamily(
            "dispatcher_queue_waiting",
            "Messages waiting for a worker to fetch them",
            labels=["queue"],
        )
        unacked = GaugeMetricFamily(
            "dispatcher_queue_unacked",
            "Messages a worker has fetched and not yet acknowledged (running or prefetched)",
            labels=["queue"],
        )
        delayed = GaugeMetricFamily(
            "dispatcher_queue_delayed",
            "Delayed messages (retry backoff, batches not yet due), fetched or not",
            labels=["queue"],
        )
        dead = GaugeMetricFamily(
            "dispatcher_queue_dead_letters",
            "Messages in the queue's dead-letter queue (kept for dramatiq's dead_message_ttl)",
            labels=["queue"],
        )
        up = _source_up()
        broker = self.queue.broker
        try:
            if self.queue.in_process:
                depths = self._stub(cast(StubBroker, broker), names)
            else:
                depths = self._redis(cast(RedisBroker, broker), names)
        except Exception as exc:
            log.warning("metrics_redis_unreadable", error=f"{type(exc).__name__}: {exc}"[:200])
            up.add_metric(["redis"], 0)
            yield up
            return
        for name, (w, u, d, x) in zip(names, depths, strict=True):
            waiting.add_metric([name], w)
            unacked.add_metric([name], u)
            delayed.add_metric([name], d)
            dead.add_metric([name], x)
        up.add_metric(["redis"], 1)
        yield from (waiting, unacked, delayed, dead, up)

    @staticmethod
    def _redis(broker: RedisBroker, names: list[str]) -> list[tuple[int, int, int, int]]:
        ns = broker.namespace
        pipe = broker.client.pipeline(transaction=True)
        for name in names:
            pipe.llen(f"{ns}:{name}")
            pipe.hlen(f"{ns}:{name}.msgs")
            pipe.hlen(f"{ns}:{dq_name(name)}.msgs")
            pipe.zcard(f"{ns}:{xq_name(name)}")
        answers = [int(n) for n in pipe.execute()]
        out = []
        for i in range(len(names)):
            llen, stored, delayed, dead = answers[4 * i : 4 * i + 4]
            out.append((llen, max(0, stored - llen), delayed, dead))
        return out

    @staticmethod
    def _stub(broker: StubBroker, names: list[str]) -> list[tuple[int, int, int, int]]:
        out = []
        for name in names:
            main = broker.queues.get(name)
            later = broker.queues.get(dq_name(name))
            out.append(
                (
                    main.qsize() if main is not None else 0,
                    0,
                    later.qsize() if later is not None else 0,
                    len(broker.dead_letters_by_queue.get(name, ())),
                )
            )
        return out


class CampaignCollector(Collector):
    """Campaigns and runs by status (two small GROUP BY queries per scrape), of the units the
    scraping key sees (``scope``; None: every unit)."""

    def __init__(self, scope: scopes.Scope | None = None) -> None:
        self.scope = scope

    def collect(self) -> Iterator[Metric]:
        campaigns = GaugeMetricFamily(
            "dispatcher_campaigns", "Campaigns by status", labels=["status"]
        )
        runs = GaugeMetricFamily("dispatcher_runs", "Runs by status", labels=["status"])
        up = _source_up()
        try:
            with get_database().reading() as session:
                scopes.attach(session, self.scope)
                by_campaign = session.execute(
                    select(Campaign.status, func.count()).group_by(Campaign.status)
                ).all()
                by_run = session.execute(
                    select(Run.status, func.count()).group_by(Run.status)
                ).all()
        except Exception as exc:
            log.warning("metrics_database_unreadable", error=f"{type(exc).__name__}: {exc}"[:200])
            up.add_metric(["database"], 0)
            yield up
            return
        for status, n in by_campaign:
            campaigns.add_metric([status], n)
        for status, n in by_run:
            runs.add_metric([status], n)
        up.add_metric(["database"], 1)
        yield from (campaigns, runs, up)


class _MergedSourceUp(Collector):
    """Runs the scrape-time collectors, merging their ``dispatcher_metrics_source_up``."""

    def __init__(self, *collectors: Collector) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        up = _source_up()
        for collector in self.collectors:
            for family in collector.collect():
                if family.name == "dispatcher_metrics_source_up":
                    up.samples.extend(family.samples)
                else:
                    yield family
        yield up


def registry(scope: scopes.Scope | None = None) -> CollectorRegistry:
    """Everything one scrape answers: the processes' metrics and the scrape-time readings
    (the campaigns' and runs' counts of the units ``scope`` sees).

    The processes' counters and the queues are the shared service's, which the central unit
    runs: a key of any other unit is answered its own units' campaign and run counts only."""
    out = CollectorRegistry(auto_describe=False)
    if scope is not None and not scope.everything:
        out.register(_MergedSourceUp(CampaignCollector(scope)))
        return out
    path = multiprocess_dir()
    if path:
        clean_dead_processes(path)
        MultiProcessCollector(out, path=path)
    else:
        out.register(_Forward())
    readings: list[Collector] = [CampaignCollector(scope)]
    # Without a broker configured in this process, there are no queue depths to read.
    with contextlib.suppress(RuntimeError):
        readings.append(QueueCollector(backends.current()))
    # One source_up family for both readings: a family may appear only once per scrape.
    out.register(_MergedSourceUp(*readings))
    return out


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=PlainTextResponse,
)
def metrics(request: Request) -> Response:
    return Response(
        generate_latest(registry(request_scope(request))), media_type=CONTENT_TYPE_LATEST
    )
