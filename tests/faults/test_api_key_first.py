"""Row 8 of issue 19: with an API key set, every route that takes a body checks the key before reading the
body: a 401 without the upload being received in full, let alone spooled to a temporary file."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.faults.served import digits_repository, read_answer, serving, status_of
from tests.service.test_v1_api import png_bytes

KEY = "k3y-for-tests"
UPLOAD = 12 << 20  # declared; only a little of it is ever sent
ROUTES = [
    "/", "/ui/api/predict", "/v1/models/digits/predict", "/v1/models/digits/predict/image",
    "/v2/models/digits/infer", "/v1/models/digits/reload",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(digits_repository(tmp_path_factory.mktemp("key") / "models"), {"PIXELSERVE_API_KEY": KEY}) as server:
        yield server


def multipart_head(path: str, headers: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\n{headers}Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {UPLOAD}\r\n\r\n"
    ).encode()


def first_part(field: str = "file") -> bytes:
    return f'--b\r\nContent-Disposition: form-data; name="{field}"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'.encode()


@pytest.mark.parametrize("path", ROUTES)
def test_no_key_is_a_401_before_the_body_is_read(server, path):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(multipart_head(path) + first_part() + b"\x89PNG" + b"\0" * 1000)
        started = time.monotonic()
        reply = read_answer(connection)  # the server answers while 12 MB are still to come
    assert status_of(reply) == 401, reply[:300]
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("path", ROUTES)
def test_a_wrong_key_in_a_header_is_a_401_before_the_body_is_read(server, path):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(multipart_head(path, "X-API-Key: wrong\r\n") + first_part() + b"\0" * 1000)
        assert status_of(read_answer(connection)) == 401


@pytest.mark.parametrize("path", ["/v1/models/digits/predict", "/v2/models/digits/infer"])
def test_a_small_body_without_the_key_is_refused_before_it_is_whole(server, path):
    # Bodies up to 1 MiB on these two routes are otherwise gathered whole by the HTTP protocol before the app runs.
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {500_000}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection:
        connection.sendall(head.encode() + b'{"instances": [[' + b"0.5, " * 1000)
        assert status_of(read_answer(connection)) == 401


def test_the_page_form_with_a_wrong_key_field_is_refused_before_its_file(server):
    key_field = b'--b\r\nContent-Disposition: form-data; name="api_key"\r\n\r\nwrong\r\n'
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(multipart_head("/") + key_field + first_part() + b"\0" * 1000)
        assert status_of(read_answer(connection)) == 401


def test_the_right_key_still_works_everywhere(server):
    picture = {"file": ("a.png", png_bytes(), "image/png")}
    header = {"X-API-Key": KEY}
    assert httpx.post(f"{server.url}/", data={"model": "digits", "api_key": KEY}, files=picture, timeout=10).status_code == 200
    assert httpx.post(f"{server.url}/ui/api/predict", data={"model": "digits"}, files=picture, headers=header, timeout=10).status_code == 200
    assert httpx.post(f"{server.url}/v1/models/digits/predict/image", files=picture, headers=header, timeout=10).status_code == 200
    assert httpx.post(f"{server.url}/v1/models/digits/reload", headers=header, timeout=10).status_code == 200
    # The page's form sends the key as a field before the file; a key field after the file is too late.
    late = httpx.post(f"{server.url}/", files={**picture, "api_key": (None, KEY)}, data={"model": "digits"}, timeout=10)
    assert late.status_code == 401
