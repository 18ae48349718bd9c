"""Test helpers shared by the suite: waiting on conditions, a scriptable SMTP server, the
service's own processes."""

from __future__ import annotations

import asyncio
import contextlib
import email
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from aiosmtpd.controller import Controller

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate}; last={last!r}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mailbox:
    """An aiosmtpd handler that stores messages and answers scripted codes per recipient.

    ``script["a@b.vn"] = ["451 4.7.1 Try again later"]`` makes the next RCPT for that address
    answer 451 once, then 250 again.
    """

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.script: dict[str, list[str]] = {}
        self.rcpt_log: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        # When set, DATA waits until ``gate`` is set (used to hold a campaign mid-flight).
        self.hold_after: int | None = None
        self.gate = threading.Event()
        self.holding = threading.Event()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            replies = self.script.get(address)
            reply = replies.pop(0) if replies else None
        if reply is not None:
            self.rcpt_log.append((address, reply))
            return reply
        self.rcpt_log.append((address, "250"))
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.hold_after is not None:
            with self.lock:
                reached = len(self.messages) >= self.hold_after
            if reached:
                self.holding.set()
                while not self.gate.is_set():
                    await asyncio.sleep(0.01)
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        with self.lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if m["To"] == address]

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


class SmtpServer:
    def __init__(self) -> None:
        self.mailbox = Mailbox()
        self.port = free_port()
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.mailbox.gate.set()
        self.controller.stop()


def parts(message: EmailMessage) -> dict[str, Any]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    return {
        "subject": str(message["Subject"]),
        "text": text.get_content() if text is not None else None,
        "html": html.get_content() if html is not None else None,
    }


def second_person() -> dict[str, str]:
    """Headers of a fresh approver key: the two-person rule refuses the submitter's own."""
    from dispatcher.auth.service import create_key
    from dispatcher.core.db import get_database

    with get_database().transaction() as session:
        _, key = create_key(session, role="approver", name="Người phê duyệt")
    return {"Authorization": f"Bearer {key}"}


def approve(client: Any, campaign_id: int) -> Any:
    """Approve as a second person; returns the response."""
    return client.post(f"/v1/campaigns/{campaign_id}/approve", headers=second_person())


def cli_key(role: str, *, env: dict[str, str], cwd: Any, name: str = "test") -> str:
    """A key made with ``dispatcher keys create`` against the database ``env`` names."""
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "keys", "create", "--role", role, "--name", name],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def dispatcher_process(
    *args: str,
    output: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stop: signal.Signals = signal.SIGTERM,
) -> Iterator[subprocess.Popen[bytes]]:
    """``dispatcher <args>`` as its own process, everything it prints going to ``output`` (a
    temporary file when not given: a pipe nobody reads would fill up and freeze a chatty
    process). At the end it gets ``stop``, and is killed if it has not exited 30 s later."""
    if output is None:
        opened: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - entered just below
    else:
        opened = output.open("wb")
    with opened as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", *args],
            env=dict(os.environ if env is None else env),
            cwd=cwd,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            process.send_signal(stop)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_ready(
    base: str, *, timeout: float = 300.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Until the API at ``base`` answers ``/readyz`` with 200. ``timeout`` is only a ceiling
    for a wedged start (a busy machine can take minutes to migrate and load the built-in
    templates); a ``process`` that exits ends the wait at once."""

    def ready() -> bool:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the API at {base} exited with {process.returncode}")
        try:
            return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout=timeout, what=f"the API at {base} to answer /readyz")


def dev_env(**extra: str) -> dict[str, str]:
    """The environment for a ``dispatcher dev`` of a test: none of the suite's own
    ``DISPATCHER_*`` settings, a Redis URL where nothing listens (so it uses the in-process
    broker), no send windows (a greeting at night would wait for the morning: tests are not
    about the hour), then ``extra``."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")},
        "DISPATCHER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "DISPATCHER_SEND_WINDOWS": "{}",
        **extra,
    }


@contextlib.contextmanager
def dev_server(cwd: Path, env: Mapping[str, str], *, output: Path | None = None) -> Iterator[str]:
    """``dispatcher dev`` on a free port in ``cwd``, answering ``/readyz``: its base URL.
    Stopped with SIGINT, as at a terminal."""
    port = free_port()
    with dispatcher_process(
        "dev", "--port", str(port), env=env, cwd=cwd, output=output, stop=signal.SIGINT
    ) as process:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(base, process=process)
        yield base


# -- deliveries as the readers see them -----------------------------------------------------------


def run_batches(db: Any, run_id: int) -> list[tuple[str, list[int]]]:
    """A run's open batch rows as (job id, reserved delivery ids), in planning order."""
    from sqlalchemy import select

    from dispatcher.engine.batches import decode_ids
    from dispatcher.tables.deliveries import Batch

    with db.reading() as session:
        return [
            (str(job_id), decode_ids(ids))
            for job_id, ids in session.execute(
                select(Batch.job_id, Batch.delivery_ids)
                .where(Batch.run_id == run_id, Batch.status.in_(["open", "claimed"]))
                .order_by(Batch.first_id)
            )
        ]


def delivery_statuses(db: Any, ids: list[int]) -> list[str]:
    """Each delivery's status, in id order: from its row, or (no row yet) from its open batch,
    as the search and the reports show it (pending, or claimed)."""
    from sqlalchemy import select

    from dispatcher.engine.batches import open_members
    from dispatcher.tables.deliveries import Delivery

    with db.reading() as session:
        found = dict(
            session.execute(select(Delivery.id, Delivery.status).where(Delivery.id.in_(ids))).all()
        )
        for member in open_members(session):
            if member.id in ids and member.id not in found:
                found[member.id] = member.status
    return [found[i] for i in sorted(ids) if i in found]


def planned_recipients(db: Any, run_id: int) -> list[str]:
    """The external ids of everyone a run planned a delivery for (its rows, and the members of
    its open batches, which have no row yet), sorted, one per delivery."""
    from sqlalchemy import select

    from dispatcher.engine.batches import open_members
    from dispatcher.tables.deliveries import Batch, Delivery
    from dispatcher.tables.recipients import Recipient

    with db.reading() as session:
        ids = list(session.scalars(select(Delivery.recipient_id).where(Delivery.run_id == run_id)))
        ids += [m.recipient_id for m in open_members(session, Batch.run_id == run_id)]
        external = dict(
            session.execute(
                select(Recipient.id, Recipient.external_id).where(Recipient.id.in_(set(ids)))
            ).all()
        )
    return sorted(external[i] for i in ids)
