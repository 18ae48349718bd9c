"""A real ``dispatcher dev`` refuses every template over its budget within 10 s, answers
``/healthz`` within 2 s meanwhile, stays under 1 GiB, and still stops on SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.content.test_budget import BAD_BODIES
from tests.support import cli_key, dev_env, dispatcher_process, free_port, wait_until_ready

GiB = 1 << 30


def post_in_background(
    api: httpx.Client, template: dict[str, Any]
) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def post() -> None:
        started = time.monotonic()
        try:
            outcome["response"] = api.post("/v1/templates", json=template)
        finally:
            outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.timeout(900)
def test_dev_stays_responsive_and_small_while_refusing_templates_over_budget(
    tmp_path: Path,
) -> None:
    env = dev_env()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with dispatcher_process(
        "dev", "--port", str(port), env=env, cwd=tmp_path, output=tmp_path / "dev.log"
    ) as dev:
        wait_until_ready(base, process=dev)
        admin = cli_key("admin", env=env, cwd=tmp_path)
        api = httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {admin}"})
        good = {"key": "tot", "variants": [{"channel": "email", "subject": "x", "body": "Chào"}]}
        assert api.post("/v1/templates", json=good).status_code == 201
        service = psutil.Process(dev.pid)
        slowest_health = peak_rss = 0.0
        for name, (body, reason) in BAD_BODIES.items():
            template = {
                "key": "ngan_sach",
                "variants": [{"channel": "email", "subject": "x", "body": body}],
            }
            thread, outcome = post_in_background(api, template)
            while thread.is_alive():
                started = time.monotonic()
                health = httpx.get(f"{base}/healthz", timeout=10)
                took = time.monotonic() - started
                assert health.status_code == 200
                assert took < 2, f"/healthz took {took:.2f} s during {name}"
                slowest_health = max(slowest_health, took)
                peak_rss = max(peak_rss, service.memory_info().rss)
                assert peak_rss < GiB, f"{peak_rss / 2**20:.0f} MiB during {name}"
                thread.join(timeout=0.2)
            response = outcome["response"]
            assert response.status_code == 422, (name, response.text)
            message = response.json()["detail"][0]["msg"]
            assert reason in message or "template budget exceeded" in message, (name, message)
            assert outcome["seconds"] < 10, (name, outcome["seconds"])
        print(
            f"slowest /healthz {slowest_health * 1000:.0f} ms, "
            f"peak API RSS {peak_rss / 2**20:.0f} MiB"
        )

        # SIGTERM with a check in flight still stops the whole service.
        slow = {
            "key": "ngan_sach",
            "variants": [
                {"channel": "email", "subject": "x", "body": BAD_BODIES["nested_loops"][0]}
            ],
        }
        post_in_background(api, slow)
        dev.send_signal(signal.SIGTERM)
        started = time.monotonic()
        dev.wait(timeout=30)
        assert dev.returncode != -signal.SIGKILL
        assert time.monotonic() - started < 30
