"""Rows 7 and 10 of issue 19: options are ASCII digits only, v1 pixels are JSON numbers only (422 otherwise),
protocol errors are JSON, and a version that cannot load answers 400, which clients do not retry."""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.faults.served import exchange, requests_counted, serving, status_of
from tests.onnx_models import write_bad_onnx, write_version
from tests.service.test_v1_api import png_bytes


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits") / "models"
    write_version(root, "digits", 1)
    write_bad_onnx(root, "digits", 2)
    write_bad_onnx(root, "broken", 1)
    with serving(root) as server:
        yield server


def invalid_input(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    return response.json()["error"]["message"]


@pytest.mark.parametrize("field", ["version", "top_k"])
@pytest.mark.parametrize("value", ["²", "٣", "３", "1²", "-1", "0x1"])
def test_form_options_take_ascii_digits_only(server, field, value):
    response = httpx.post(
        f"{server.url}/v1/models/digits/predict/image", files={"file": ("a.png", png_bytes(), "image/png")},
        data={field: value}, timeout=10,
    )
    assert field in invalid_input(response)


@pytest.mark.parametrize("value", ["²", "٣"])
def test_query_options_take_ascii_digits_only(server, value):
    response = httpx.post(
        f"{server.url}/v1/models/digits/predict/image", params={"top_k": value},
        files={"file": ("a.png", png_bytes(), "image/png")}, timeout=10,
    )
    assert "top_k" in invalid_input(response)


def test_ascii_digits_still_work_in_a_form(server):
    response = httpx.post(
        f"{server.url}/v1/models/digits/predict/image", files={"file": ("a.png", png_bytes(), "image/png")},
        data={"top_k": "2", "version": "1"}, timeout=10,
    )
    assert response.status_code == 200 and len(response.json()["predictions"][0]["top"]) == 2


PIXELS = [0.5] * 784
NOT_NUMBERS = {
    "a string pixel": ["0.5", *PIXELS[1:]],
    "true as a pixel": [True, *PIXELS[1:]],
    "false as a pixel": [*PIXELS[:-1], False],
    "all strings": ["1"] * 784,
    "a string in a row": [["0.5", *[0.5] * 27], *[[0.5] * 28] * 27],
}


@pytest.mark.parametrize("instance", NOT_NUMBERS.values(), ids=NOT_NUMBERS.keys())
def test_v1_pixels_are_json_numbers_only(server, instance):
    for instances in ([instance], [PIXELS, instance]):  # alone, and behind a valid instance
        response = httpx.post(f"{server.url}/v1/models/digits/predict", content=orjson.dumps({"instances": instances}), timeout=10)
        assert "JSON numbers" in invalid_input(response)


def test_v1_numbers_as_integers_and_floats_still_work(server):
    response = httpx.post(f"{server.url}/v1/models/digits/predict", json={"instances": [[0, 1, *PIXELS[2:]]]}, timeout=10)
    assert response.status_code == 200


def test_an_unparsable_request_gets_a_json_400(server):
    reply = exchange(server.port, b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n")
    assert status_of(reply) == 400 and b"content-type: application/json" in reply.lower()
    assert orjson.loads(reply.partition(b"\r\n\r\n")[2])["error"]["code"] == "bad_request"


@pytest.mark.parametrize("url", [
    "/v1/models/digits/predict?version=2", "/v1/models/broken/predict", "/v2/models/digits/versions/2/infer",
    "/v2/models/broken/infer",
])
def test_a_version_that_cannot_load_answers_400_not_a_retryable_503(server, url):
    if url.startswith("/v1"):
        version = {"version": 2} if "digits" in url else {}
        response = httpx.post(f"{server.url}{url.partition('?')[0]}", json={"instances": [PIXELS], **version}, timeout=10)
    else:
        body = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": PIXELS}]}
        response = httpx.post(f"{server.url}{url}", json=body, timeout=10)
    assert response.status_code == 400, response.text
    assert "Retry-After" not in response.headers and "cannot load" in response.text
    assert requests_counted(server.url, 503) == 0


@pytest.mark.parametrize("value", [b"1_0", b"+10", b"10\xb2"])  # \xb2: a superscript two, in latin-1
def test_the_v2_header_length_takes_ascii_digits_only(server, value):
    header = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "parameters": {"binary_data_size": 3136}}]})
    body = header + bytes(3136)
    head = (b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\nInference-Header-Content-Length: " + value
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
    reply = exchange(server.port, head + body)
    assert status_of(reply) == 422 and b"ASCII digits" in reply
