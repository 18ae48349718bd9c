"""`dispatcher dev` runs the whole service in one process, even with no Redis around."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support import cli_key, dev_env, dev_server, wait_for


@pytest.mark.timeout(120)
def test_dev_runs_a_first_campaign_without_redis(tmp_path: Path) -> None:
    env = dev_env(DISPATCHER_SWEEP_INTERVAL_SECONDS="0.5")
    log = tmp_path / "dispatcher-dev.log"
    with dev_server(tmp_path, env, output=log) as base:
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
    assert "in-process broker" in log.read_text()
