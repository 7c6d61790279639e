"""A body over the limit from the web page's form, or from a browser asking for HTML, gets the page back
with its error block (413) instead of the JSON error the API clients get."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from service.app import create_app, prefers_html
from tests.service.conftest import make_settings

LIMIT = 4096
# What Chromium sends when it navigates or submits a form.
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.fixture(scope="module")
def client(repository):
    with TestClient(create_app(make_settings(repository, max_body_bytes=LIMIT))) as test_client:
        yield test_client


def oversized_upload() -> dict:
    return {"file": ("big.png", b"\0" * (LIMIT * 2), "image/png")}


def opening_tag(html: str, element_id: str) -> str:
    match = re.search(rf'<[a-z]+ id="{element_id}"[^>]*>', html)
    assert match, f"no element #{element_id} in the page"
    return match.group(0)


def assert_page_with_error(response, status: int = 413) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    assert "Content-Security-Policy" in response.headers
    assert response.headers["x-request-id"]
    html = response.text
    assert "hidden" not in opening_tag(html, "error") and "hidden" in opening_tag(html, "result")
    assert "That file is too large." in html
    assert f"{LIMIT} bytes accepted" in html
    assert "hidden" not in opening_tag(html, "predict-form")  # the page still works: choose another file


def test_the_no_javascript_form_gets_the_page_when_content_length_is_over_the_limit(client):
    response = client.post("/", data={"model": "digits"}, files=oversized_upload())
    sent = int(response.request.headers["content-length"])
    assert sent > LIMIT
    assert_page_with_error(response)
    assert f"({sent} bytes)" in response.text


def test_the_no_javascript_form_gets_the_page_when_streamed_bytes_go_over_the_limit(client):
    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n"
        for _ in range(10):
            yield b"\0" * 1000

    response = client.post("/", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert "content-length" not in response.request.headers
    assert_page_with_error(response)


def test_a_browser_asking_for_html_gets_the_page_elsewhere_too(client):
    response = client.post("/ui/api/predict", files=oversized_upload(), headers={"Accept": BROWSER_ACCEPT})
    assert_page_with_error(response)


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json, text/html;q=0.9"])
def test_api_clients_keep_the_json_error(client, accept):
    headers = {"Accept": accept} if accept else {}
    page_script = client.post("/ui/api/predict", files=oversized_upload(), headers=headers)
    assert page_script.status_code == 413
    assert page_script.json()["error"]["code"] == "payload_too_large"
    v2 = client.post("/v2/models/digits/infer", content=b"x" * (LIMIT + 1), headers=headers)
    assert v2.status_code == 413 and isinstance(v2.json()["error"], str)


def test_bodies_under_the_limit_still_reach_the_form(client):
    response = client.post("/", data={"model": "digits"}, files={"file": ("notes.txt", b"not pixels", "text/plain")})
    assert response.status_code == 415 and response.headers["content-type"].startswith("text/html")
    assert "That file is not a picture we can read." in response.text


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER_ACCEPT, True),
        ("text/html", True),
        ("TEXT/HTML; charset=utf-8", True),
        ("application/json;q=0.5, text/html;q=0.8", True),
        ("*/*", False),
        ("", False),
        ("application/json", False),
        ("application/json, text/html", False),
        ("text/html;q=0.1, application/json", False),
        ("text/html;q=oops, application/json;q=0.2", False),
    ],
)
def test_prefers_html(accept, html):
    assert prefers_html(accept) is html
