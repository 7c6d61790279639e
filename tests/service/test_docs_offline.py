"""The API documentation pages (/docs, /redoc) load everything from this server, so they work offline."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import make_settings

# Every address the page's markup asks the browser to fetch: scripts, styles, icons, the OpenAPI document.
ASSET_URL = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl:\s*["']([^"']+)["']""")


def fetched_urls(html: str) -> list[str]:
    return [src or url for src, url in ASSET_URL.findall(html)]


@pytest.fixture(scope="module")
def docs_client(repository):
    with TestClient(create_app(make_settings(repository))) as client:
        yield client


@pytest.mark.parametrize(
    ("page", "script", "style"),
    [("/docs", "swagger-ui-bundle.js", "swagger-ui.css"), ("/redoc", "redoc.standalone.js", None)],
)
def test_docs_pages_reference_only_same_origin_assets_that_answer(docs_client, page, script, style):
    response = docs_client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    urls = fetched_urls(response.text)
    assert "/openapi.json" in urls
    assert any(url.endswith(script) for url in urls), urls
    if style:
        assert any(url.endswith(style) for url in urls), urls
    # Same origin: a path on this server, never a CDN (absolute or protocol-relative address).
    outside = [url for url in urls if not url.startswith("/") or url.startswith("//")]
    assert outside == [], f"{page} loads from elsewhere: {outside}"
    for url in urls:
        asset = docs_client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 0, url
        if url.endswith(".js"):
            assert "javascript" in asset.headers["content-type"] and len(asset.content) > 100_000, url
        elif url.endswith(".css"):
            assert asset.headers["content-type"].startswith("text/css"), url


def test_docs_pages_follow_the_root_path_behind_a_proxy(repository):
    with TestClient(create_app(make_settings(repository)), root_path="/pixelserve") as client:
        urls = fetched_urls(client.get("/docs").text)
    assert urls and all(url.startswith("/pixelserve/") for url in urls), urls


def test_redoc_page_policy_keeps_the_browser_on_this_server(docs_client):
    # ReDoc's bundle always asks for its maker's logo from a CDN; this policy stops that request in the browser.
    policy = docs_client.get("/redoc").headers["content-security-policy"]
    assert policy.startswith("default-src 'self'") and "http" not in policy
