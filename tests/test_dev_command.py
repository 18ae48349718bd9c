"""`dispatcher dev` runs the whole service in one process, even with no Redis around."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import cli_key, free_port, wait_for


@pytest.mark.timeout(120)
def test_dev_runs_a_first_campaign_without_redis(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")},
        "DISPATCHER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "DISPATCHER_SWEEP_INTERVAL_SECONDS": "0.5",
        # A greeting at night would wait for its window: this test is not about the hour.
        "DISPATCHER_SEND_WINDOWS": "{}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "dispatcher.cli", "dev", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=60, what="dispatcher dev to answer /readyz")
        assert (
            httpx.get(f"{base}/readyz").json()["checks"]["redis"] == "not used (in-process broker)"
        )
        assert (tmp_path / "dispatcher.db").exists(), (
            "the SQLite file lives in the working directory"
        )
        admin = cli_key("admin", env=env, cwd=tmp_path)
        approver = cli_key("approver", env=env, cwd=tmp_path)
        api = httpx.Client(base_url=base, timeout=10, headers={"Authorization": f"Bearer {admin}"})
        people = [
            {
                "external_id": f"04{i:08d}",
                "full_name": f"Hoàng Văn {i}",
                "addresses": {"null": f"n{i}"},
            }
            for i in range(25)
        ]
        assert api.post("/v1/recipients", json=people).status_code == 200
        template = {
            "key": "thu",
            "variants": [{"channel": "default", "body": "Chào {{ recipient.given_name }}"}],
        }
        assert api.post("/v1/templates", json=template).status_code == 201
        campaign = api.post(
            "/v1/campaigns",
            json={
                "name": "Chạy thử",
                "kind": "greeting",
                "template": "thu",
                "audience": {"all": True},
                "channels": ["null"],
            },
        ).json()
        api.post(f"/v1/campaigns/{campaign['id']}/submit")
        approved = api.post(
            f"/v1/campaigns/{campaign['id']}/approve",
            headers={"Authorization": f"Bearer {approver}"},
        )
        assert approved.status_code == 200, approved.text
        done = wait_for(
            lambda: (
                (c := api.get(f"/v1/campaigns/{campaign['id']}").json())["status"] == "completed"
                and c
            ),
            timeout=60,
        )
        assert done["counts"]["by_status"] == {"sent": 25}
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert "in-process broker" in output
