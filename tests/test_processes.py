"""The production roles as real processes: `dispatcher worker` and `dispatcher scheduler`."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
import redis

from dispatcher.core.config import Settings
from dispatcher.kit.clock import utcnow
from tests.support import SmtpServer, dispatcher_process, wait_for
from tests.test_end_to_end import PEOPLE, add_people, campaign_status, launch, publish_template
from workers.scheduler import leader_key


def role(*args: str) -> contextlib.AbstractContextManager[Any]:
    """Run ``dispatcher <args>`` as its own process."""
    return dispatcher_process(*args)


@pytest.mark.timeout(180)
def test_worker_and_scheduler_processes_deliver_a_scheduled_campaign(
    client, smtp: SmtpServer, settings: Settings, redis_client: redis.Redis
) -> None:
    add_people(client)
    publish_template(client)
    campaign_id = launch(client, send_at=(utcnow() + timedelta(seconds=2)).isoformat())
    assert campaign_status(client, campaign_id)["status"] == "scheduled"
    with (
        role("worker", "--queues", "urgent", "--threads", "2") as worker,
        role("scheduler") as first,
        role("scheduler") as second,
    ):
        done = wait_for(
            lambda: campaign_status(client, campaign_id)["status"] == "completed",
            timeout=90,
            interval=0.2,
            what="the scheduler to launch and the worker to deliver",
        )
        assert done
        assert worker.poll() is None and first.poll() is None and second.poll() is None
        # Exactly one of the two schedulers leads.
        leader = redis_client.get(leader_key(settings.redis_namespace))
        assert isinstance(leader, bytes)
        leading = first if leader.decode().split(":")[1] == str(first.pid) else second
        standby = second if leading is first else first
        assert leader.decode().split(":")[1] == str(leading.pid)

        # kill -9 the leader: the standby takes over within the lock's TTL (10 s here).
        killed = time.monotonic()
        leading.kill()

        def standby_leads() -> bool:
            holder = redis_client.get(leader_key(settings.redis_namespace))
            return isinstance(holder, bytes) and holder.decode().split(":")[1] == str(standby.pid)

        wait_for(standby_leads, timeout=20, interval=0.1, what="the standby to take over")
        assert time.monotonic() - killed <= 10 + 1.5, "within the TTL (and a poll)"
        # ...and it does the leader's work: the next scheduled campaign goes out.
        later = launch(client, send_at=(utcnow() + timedelta(seconds=1)).isoformat())
        wait_for(
            lambda: campaign_status(client, later)["status"] == "completed",
            timeout=60,
            interval=0.2,
            what="the new leader to launch the next campaign",
        )
    assert smtp.mailbox.count() == 2 * len(PEOPLE)


def test_worker_refuses_an_unknown_queue(settings: Settings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "worker", "--queues", "slow"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown queue 'slow'" in result.stderr
