"""`dispatcher dev` runs the whole service in one process, even with no Redis around."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import SmtpServer, cli_key, dev_env, dev_server, wait_for


def greet_everyone(
    api: httpx.Client, template: dict[str, Any], channel: str, *, approver: str
) -> int:
    """Publish ``template``, and a greeting with it to everyone on ``channel``, approved by a
    second person: the campaign's id."""
    assert api.post("/v1/templates", json=template).status_code == 201
    campaign = api.post(
        "/v1/campaigns",
        json={
            "name": "Chạy thử",
            "kind": "greeting",
            "template": template["key"],
            "audience": {"all": True},
            "channels": [channel],
        },
    ).json()
    api.post(f"/v1/campaigns/{campaign['id']}/submit")
    approved = api.post(
        f"/v1/campaigns/{campaign['id']}/approve",
        headers={"Authorization": f"Bearer {approver}"},
    )
    assert approved.status_code == 200, approved.text
    return int(campaign["id"])


@pytest.mark.timeout(300)
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
        campaign_id = greet_everyone(api, template, "null", approver=approver)
        done = wait_for(
            lambda: (
                (c := api.get(f"/v1/campaigns/{campaign_id}").json())["status"] == "completed" and c
            ),
            timeout=300,
        )
        assert done["counts"]["by_status"] == {"sent": 25}
    assert "in-process broker" in log.read_text()


def test_dev_links_follow_its_port_unless_a_public_url_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dispatcher.cli.processes import dev_public_url
    from dispatcher.core.config import Settings

    monkeypatch.delenv("DISPATCHER_PUBLIC_URL", raising=False)
    default = Settings()
    assert dev_public_url(default, "127.0.0.1", 8123) == "http://127.0.0.1:8123"
    assert dev_public_url(default, "0.0.0.0", 8123) == "http://127.0.0.1:8123"
    assert dev_public_url(default, "::1", 8123) == "http://[::1]:8123"
    assert dev_public_url(default, "localhost", 80) == "http://localhost:80"
    chosen = Settings(public_url="https://thongbao.baohiemxahoi.gov.vn")
    assert dev_public_url(chosen, "127.0.0.1", 8123) is None


@pytest.mark.timeout(300)
def test_dev_on_another_port_sends_unsubscribe_links_to_that_port(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    env = dev_env(DISPATCHER_SMTP_HOST="127.0.0.1", DISPATCHER_SMTP_PORT=str(smtp.port))
    assert "DISPATCHER_PUBLIC_URL" not in env
    with dev_server(tmp_path, env) as base:
        admin = cli_key("admin", env=env, cwd=tmp_path)
        approver = cli_key("approver", env=env, cwd=tmp_path)
        api = httpx.Client(base_url=base, timeout=10, headers={"Authorization": f"Bearer {admin}"})
        person = {
            "external_id": "0400000001",
            "full_name": "Hoàng Văn An",
            "addresses": {"email": "an.hoang@example.vn"},
        }
        assert api.post("/v1/recipients", json=[person]).status_code == 200
        template = {
            "key": "loi_chuc",
            "variants": [
                {
                    "channel": "default",
                    "subject": "Lời chúc",
                    "body": "Chào {{ recipient.given_name }}",
                }
            ],
        }
        greet_everyone(api, template, "email", approver=approver)
        (mail,) = wait_for(lambda: smtp.mailbox.to("an.hoang@example.vn"), timeout=60)
        link = str(mail["List-Unsubscribe"]).strip().strip("<>")
        assert link.startswith(f"{base}/u/"), link
        assert httpx.get(link, timeout=10).status_code == 200, "the link reaches this server"
