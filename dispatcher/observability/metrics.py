"""Prometheus metrics of the service, served at ``GET /metrics`` by the API (operator role).

Every process counts in its own memory, unless ``PROMETHEUS_MULTIPROC_DIR`` is set (the
``dispatcher`` commands set it from ``DISPATCHER_METRICS_DIR`` before this module is imported):
then each process writes its values to files in that directory and the API adds them all up at
every scrape. The files are named after the host and the pid, so processes of different
containers sharing one volume (where pids repeat) never write to the same file.

Counted here: attempts, send latency, rate-limit waits and channel pauses (where a send
happens, in the pipeline); deliveries recorded and the retries they are put back for; quick
in-call retries; broker-level retries and dead letters (the :class:`JobMetrics` dramatiq
middleware); scheduler firings and sweeper actions. Queue depths and campaign/run counts are
read at scrape time (``dispatcher.web.api.metrics``).
"""

from __future__ import annotations

import atexit
import glob
import os
import socket
import threading
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any, Protocol

import dramatiq
from dramatiq.middleware import Middleware
from prometheus_client import Counter, Gauge, Histogram, multiprocess, values

_HOST = socket.gethostname().replace("_", "-") or "localhost"


def process_id() -> str:
    """This process in the file names of the metrics directory: ``<host>-<pid>``.

    prometheus_client splits those names on ``_``, hence none in the host part.
    """
    return f"{_HOST}-{os.getpid()}"


def multiprocess_dir() -> str | None:
    """The shared directory when this process counts in files, else None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


if multiprocess_dir():
    # Files left by an earlier process with this same identity (a restarted container reuses
    # its hostname and pids) hold stale live gauges: they are not ours to continue.
    multiprocess.mark_process_dead(process_id())
    values.ValueClass = values.MultiProcessValue(process_identifier=process_id)
    atexit.register(lambda: process_exiting())


# -- sends (incremented in the pipeline) ---------------------------------------------------------

DELIVERY_OUTCOMES = Counter(
    "dispatcher_attempts_total", "Send attempts by channel and outcome", ["channel", "outcome"]
)
SEND_SECONDS = Histogram(
    "dispatcher_send_seconds",
    "Time one send took at the provider",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RATE_LIMIT_WAIT_SECONDS = Counter(
    "dispatcher_rate_limit_wait_seconds_total",
    "Time spent waiting for a rate-limit slot",
    ["channel"],
)
CHANNEL_PAUSES = Counter(
    "dispatcher_channel_pauses_total", "Channel-wide pauses started, by cause", ["channel", "cause"]
)
AUTH_FAILURES = Counter(
    "dispatcher_channel_auth_failures_total",
    "Account-wide faults (a refused credential, app or permission) that paused a channel",
    ["channel"],
)
CHANNEL_RESUMES = Counter(
    "dispatcher_channel_resumes_total", "Channel pauses an operator lifted", ["channel"]
)
EMAIL_BOUNCES = Counter(
    "dispatcher_email_bounces_total",
    "Delivery status notifications recorded, by kind: hard (the address is dead) or soft "
    "(a full mailbox, a server down; the address stays)",
    ["kind"],
)

# -- deliveries and retries ----------------------------------------------------------------------

DELIVERIES = Counter(
    "dispatcher_deliveries_total",
    "Deliveries a worker recorded as finished, by channel and outcome (sent, failed, skipped); "
    "failed ones failed for good",
    ["channel", "outcome"],
)
DELIVERY_RETRIES = Counter(
    "dispatcher_delivery_retries_total",
    "Deliveries put back for a delayed retry through the broker, by channel and reason "
    "(transient, rate_limited, auth, deferred, send_window)",
    ["channel", "reason"],
)
QUICK_RETRIES = Counter(
    "dispatcher_quick_retries_total", "Quick in-call retries of a transient failure"
)

# -- broker jobs (the JobMetrics middleware) -----------------------------------------------------

JOBS_IN_PROGRESS = Gauge(
    "dispatcher_jobs_in_progress",
    "Broker messages being processed now, by actor",
    ["actor"],
    multiprocess_mode="livesum",
)
JOB_SECONDS = Histogram(
    "dispatcher_job_seconds",
    "Time one broker message (a batch, a planning step) took, by actor",
    ["actor"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
BROKER_RETRIES = Counter(
    "dispatcher_broker_retries_total",
    "Broker messages dramatiq scheduled again after their actor raised, by actor",
    ["actor"],
)
DEAD_LETTERS = Counter(
    "dispatcher_dead_letters_total",
    "Broker messages dramatiq moved to its dead-letter queue, by actor",
    ["actor"],
)

# -- the scheduler -------------------------------------------------------------------------------

SCHEDULE_FIRINGS = Counter(
    "dispatcher_schedule_firings_total",
    "Firings of recurring campaigns: on_time and late ones made a run, skipped ones were "
    "missed beyond the grace period",
    ["outcome"],
)
SWEEPER_ACTIONS = Counter(
    "dispatcher_sweeper_actions_total",
    "What the sweeper did: campaigns_launched, planners_restarted, leases_expired, requeued "
    "(deliveries), runs_completed",
    ["action"],
)


class Recorded(Protocol):
    """What :func:`record_outcomes` reads of a delivery the pipeline has just recorded."""

    @property
    def channel(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def error_class(self) -> str | None: ...


FINISHED = ("sent", "failed", "skipped")


def record_outcomes(work: Iterable[Recorded]) -> None:
    """Count a batch's recorded deliveries (once per batch and label, not once per row)."""
    finished: Tally[tuple[str, str]] = Tally()
    retried: Tally[tuple[str, str]] = Tally()
    for item in work:
        status = str(item.status)
        if status in FINISHED:
            finished[(item.channel, status)] += 1
        elif status == "retrying":
            retried[(item.channel, item.error_class or "transient")] += 1
    for labels, n in finished.items():
        DELIVERIES.labels(*labels).inc(n)
    for labels, n in retried.items():
        DELIVERY_RETRIES.labels(*labels).inc(n)


def observe_many(histogram: Any, amounts: Iterable[float]) -> None:
    """``histogram.observe(a)`` for each amount, each bucket and the sum written once.

    A send's duration is observed for every delivery; in a multi-process registry each
    observation is two writes to a memory-mapped file under a lock (4% of a worker's CPU at
    a thousand deliveries per batch). Counted here first, the batch writes each bucket once.
    Falls back to one ``observe`` per amount should the client's histogram change shape.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for amount in amounts:
            histogram.observe(amount)
        return
    counts = [0] * len(bounds)
    summed = 0.0
    for amount in amounts:
        summed += amount
        # The first bucket whose bound holds it, as Histogram.observe picks (the last is +Inf).
        counts[bisect_left(bounds, amount)] += 1
    if not any(counts):
        return
    total.inc(summed)
    for bucket, n in zip(buckets, counts, strict=True):
        if n:
            bucket.inc(n)


def count_quick_retry(retry_state: Any) -> None:
    """A tenacity ``before`` hook: every attempt of the quick-retry loop is a quick retry."""
    QUICK_RETRIES.inc()


# -- processes -----------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_dead_processes(path: str | None = None) -> int:
    """Drop the live gauges of this host's processes that are gone (killed, crashed).

    Counters and histograms of a dead process stay: their totals must not go backwards. Other
    hosts' files are left to those hosts, whose processes clean them when they start.
    """
    path = path or multiprocess_dir()
    if not path:
        return 0
    prefix = f"{_HOST}-"
    dead: set[str] = set()
    for name in glob.glob(os.path.join(path, "gauge_live*.db")):
        identity = os.path.basename(name).split("_", 2)[-1][: -len(".db")]
        host, _, pid = identity.rpartition("-")
        if f"{host}-" == prefix and pid.isdigit() and not _alive(int(pid)):
            dead.add(identity)
    for identity in dead:
        multiprocess.mark_process_dead(identity, path)
    return len(dead)


def process_exiting() -> None:
    """This process stops: its live gauges leave the sums (its counters stay)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(process_id())


class JobMetrics(Middleware):
    """Counts broker messages: in progress, duration, retries and dead letters."""

    def __init__(self) -> None:
        self._local = threading.local()

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        clean_dead_processes()

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        JOBS_IN_PROGRESS.labels(message.actor_name).inc()
        self._local.started = time.perf_counter()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        JOBS_IN_PROGRESS.labels(message.actor_name).dec()
        started = getattr(self._local, "started", None)
        if started is not None:
            JOB_SECONDS.labels(message.actor_name).observe(time.perf_counter() - started)
            self._local.started = None

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        JOBS_IN_PROGRESS.labels(message.actor_name).dec()
        self._local.started = None

    def after_enqueue(self, broker: dramatiq.Broker, message: Any, delay: int | None) -> None:
        # Our own jobs never carry "retries"; dramatiq's Retries middleware sets it and enqueues
        # with a delay. (A due delayed message moved to its queue is enqueued without one.)
        if delay is not None and message.options.get("retries"):
            BROKER_RETRIES.labels(message.actor_name).inc()

    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        DEAD_LETTERS.labels(message.actor_name).inc()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        process_exiting()
