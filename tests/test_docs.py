"""The API's documentation pages work with no internet: their assets come from the API itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dispatcher.core.config import load_settings
from dispatcher.web.app import create_app

# src="...", href="..." and the quoted URLs in the pages' inline scripts (url: '/openapi.json').
URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\s*:\s*["']([^"']+)["']""")


@pytest.fixture()
def docs_client(tmp_path: Path) -> TestClient:
    # No lifespan: the documentation needs neither a database nor Redis.
    settings = load_settings(database_url=f"sqlite:///{tmp_path / 'docs.db'}")
    return TestClient(create_app(settings, configure_jobs=False))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_documentation_pages_load_only_local_assets(docs_client: TestClient, page: str) -> None:
    html = docs_client.get(page)
    assert html.status_code == 200
    urls = [a or b for a, b in URL.findall(html.text)]
    assert urls, f"{page} references no assets"
    outside = [u for u in urls if re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", u, re.IGNORECASE)]
    assert outside == [], f"{page} needs the internet for {outside}"
    assert "cdn" not in html.text.lower()
    for url in urls:
        answer = docs_client.get(url)
        assert answer.status_code == 200, f"{page} references {url}, which answers {answer}"
        assert answer.content, url
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, f"{page} loads no script of its own"
