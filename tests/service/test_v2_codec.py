"""The V2 tensor codec on its own: JSON and binary requests in, model batches and responses out."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from service.errors import InvalidInput
from service.http.v2_codec import (
    HEADER_LENGTH,
    RequestedOutput,
    decode_request,
    encode_response,
    image_batch,
    resolve_outputs,
)


def json_body(data, shape, datatype="FP32", **extra) -> bytes:
    return orjson.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}], **extra})


def binary_body(array: np.ndarray, shape, datatype="FP32", **extra) -> tuple[bytes, str]:
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    tensor = {"name": "input", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": len(raw)}}
    header = orjson.dumps({"inputs": [tensor], **extra})
    return header + raw, str(len(header))


def batch_of(body: bytes, header_length: str | None = None, max_batch: int = 64) -> np.ndarray:
    return image_batch(decode_request(body, header_length), input_name="input", max_batch=max_batch)


pixels = arrays(np.float32, st.tuples(st.integers(1, 4), st.just(784)), elements=st.floats(0, 1, width=32))


@settings(max_examples=30, deadline=None)
@given(pixels, st.booleans(), st.booleans())
def test_json_and_binary_requests_give_the_same_exact_batch(images, nested, flat_shape):
    n = len(images)
    shape = [n, 784] if flat_shape else [n, 1, 28, 28]
    data = images.reshape(shape).tolist() if nested else images.reshape(-1).tolist()
    from_json = batch_of(json_body(data, shape))
    from_binary = batch_of(*binary_body(images, shape))
    assert from_json.shape == from_binary.shape == (n, 1, 28, 28)
    assert from_json.dtype == from_binary.dtype == np.float32
    np.testing.assert_array_equal(from_json.reshape(n, 784), images)
    np.testing.assert_array_equal(from_binary.reshape(n, 784), images)


def test_fp64_and_uint8_inputs_become_float32_in_unit_range():
    values = np.linspace(0, 1, 784)
    np.testing.assert_allclose(batch_of(json_body(values.tolist(), [1, 784], "FP64")).ravel(), values, atol=1e-7)
    np.testing.assert_allclose(batch_of(*binary_body(values, [1, 784], "FP64")).ravel(), values, atol=1e-7)
    levels = np.arange(784) % 256
    expected = (levels / 255).astype(np.float32)
    np.testing.assert_allclose(batch_of(json_body(levels.tolist(), [1, 784], "UINT8")).ravel(), expected, atol=1e-7)
    np.testing.assert_allclose(batch_of(*binary_body(levels.astype(np.uint8), [1, 784], "UINT8")).ravel(), expected, atol=1e-7)


def test_rounding_slack_just_outside_the_unit_range_is_clipped_as_on_v1():
    values = [1.0004, -0.0004] + ONE_IMAGE[2:]
    batch = batch_of(json_body(values, [1, 784])).ravel()
    assert (batch[0], batch[1]) == (1.0, 0.0)
    read_only = batch_of(*binary_body(np.array(values, np.float32), [1, 784])).ravel()  # np.frombuffer gives a read-only view
    assert (read_only[0], read_only[1]) == (1.0, 0.0)


def test_request_id_outputs_and_binary_defaults_are_read():
    body = json_body([0.0] * 784, [1, 784], id="abc", parameters={"binary_data_output": True})
    request = decode_request(body, None)
    assert request.id == "abc"
    assert resolve_outputs(request, ["probabilities"]) == [RequestedOutput("probabilities", True)]
    named = decode_request(json_body([0.0] * 784, [1, 784], outputs=[{"name": "probabilities"}]), None)
    assert resolve_outputs(named, ["probabilities"]) == [RequestedOutput("probabilities", False)]
    override = decode_request(
        json_body(
            [0.0] * 784,
            [1, 784],
            outputs=[{"name": "probabilities", "parameters": {"binary_data": False}}],
            parameters={"binary_data_output": True},
        ),
        None,
    )
    assert resolve_outputs(override, ["probabilities"]) == [RequestedOutput("probabilities", False)]


def test_json_response_carries_the_values_and_binary_response_the_little_endian_bytes():
    probs = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
    body, headers = encode_response(
        model_name="m", model_version="3", request_id="r1", outputs=[(RequestedOutput("probabilities", False), probs)]
    )
    assert headers == {"Content-Type": "application/json"}
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "3",
        "id": "r1",
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 0.5, 0.5]}],
    }

    body, headers = encode_response(
        model_name="m", model_version="3", request_id=None, outputs=[(RequestedOutput("probabilities", True), probs)]
    )
    length = int(headers[HEADER_LENGTH])
    header = orjson.loads(body[:length])
    assert header["id"]  # one is made up when the request has none
    assert header["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}}]
    np.testing.assert_array_equal(np.frombuffer(body[length:], dtype="<f4").reshape(2, 2), probs)


ONE_IMAGE = [0.5] * 784

BAD_REQUESTS = {
    "not JSON": (b"{inputs", None, "not valid JSON"),
    "not an object": (b"[1, 2]", None, "JSON object"),
    "no inputs": (b"{}", None, '"inputs"'),
    "empty inputs": (b'{"inputs": []}', None, '"inputs"'),
    "input not an object": (b'{"inputs": [3]}', None, "inputs[0]"),
    "id not a string": (json_body(ONE_IMAGE, [1, 784], id=5), None, '"id"'),
    "name missing": (orjson.dumps({"inputs": [{"shape": [1, 784], "datatype": "FP32", "data": ONE_IMAGE}]}), None, "name"),
    "unknown datatype": (json_body(ONE_IMAGE, [1, 784], "INT64"), None, "FP32, FP64, UINT8"),
    "BYTES datatype": (json_body(["a"], [1], "BYTES"), None, "not accepted"),
    "shape not a list": (json_body(ONE_IMAGE, "1x784"), None, "shape"),
    "negative dimension": (json_body(ONE_IMAGE, [-1, 784]), None, "shape"),
    "float dimension": (json_body(ONE_IMAGE, [1.0, 784]), None, "shape"),
    "data not a list": (json_body("pixels", [1, 784]), None, "data"),
    "strings in data": (json_body(["0.5"] * 784, [1, 784]), None, "only numbers"),
    "nulls in data": (json_body([None] * 784, [1, 784]), None, "only numbers"),
    "ragged nested data": (json_body([[0.1, 0.2], [0.3]], [2, 2]), None, "only numbers"),
    "too few values": (json_body([0.5] * 783, [1, 784]), None, "783 values"),
    "too many values": (json_body([0.5] * 785, [1, 784]), None, "785 values"),
    "no data": (orjson.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32"}]}), None, "no \"data\""),
    "parameters not an object": (json_body(ONE_IMAGE, [1, 784], parameters=[1]), None, "parameters"),
    "binary_data_output not a flag": (json_body(ONE_IMAGE, [1, 784], parameters={"binary_data_output": "yes"}), None, "true or false"),
    "outputs not objects": (json_body(ONE_IMAGE, [1, 784], outputs=["probabilities"]), None, '"outputs"'),
    "header length not a number": (json_body(ONE_IMAGE, [1, 784]), "ten", HEADER_LENGTH),
    "header length zero": (json_body(ONE_IMAGE, [1, 784]), "0", HEADER_LENGTH),
    "NaN literal in JSON": (json_body(ONE_IMAGE, [1, 784]).replace(b"0.5", b"NaN", 1), None, "not valid JSON"),
    "infinite number in JSON": (json_body(ONE_IMAGE, [1, 784]).replace(b"0.5", b"1e999", 1), None, "infinity"),
    "header length beyond the body": (b'{"inputs": []}', "1000", "body holds 14 bytes"),
}


@pytest.mark.parametrize("body, header_length, words", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_malformed_requests_are_rejected_with_what_is_accepted(body, header_length, words):
    with pytest.raises(InvalidInput) as caught:
        decode_request(body, header_length)
    assert words in caught.value.message
    assert caught.value.status_code == 422


def binary_with(size: int, *, payload: bytes, data=None) -> tuple[bytes, str]:
    tensor = {"name": "input", "shape": [1, 784], "datatype": "FP32", "parameters": {"binary_data_size": size}}
    if data is not None:
        tensor["data"] = data
    header = orjson.dumps({"inputs": [tensor]})
    return header + payload, str(len(header))


BAD_BINARY = {
    "size disagrees with shape": (binary_with(3132, payload=b"\0" * 3132), "needs 3136"),
    "fewer bytes than announced": (binary_with(3136, payload=b"\0" * 3000), "only 3000 follow"),
    "bytes left over": (binary_with(3136, payload=b"\0" * 3140), "add up to 3136"),
    "size not an integer": (binary_with("3136", payload=b"\0" * 3136), "binary_data_size"),
    "both data and binary": (binary_with(3136, payload=b"\0" * 3136, data=ONE_IMAGE), "both"),
}


@pytest.mark.parametrize("request_and_length, words", BAD_BINARY.values(), ids=BAD_BINARY.keys())
def test_malformed_binary_requests_are_rejected(request_and_length, words):
    with pytest.raises(InvalidInput) as caught:
        decode_request(*request_and_length)
    assert words in caught.value.message


BAD_IMAGES = {
    "NaN in binary": (binary_body(np.array([np.nan] + ONE_IMAGE[1:], np.float32), [1, 784]), "NaN, infinity"),
    "NaN in binary FP64": (binary_body(np.array([np.nan] + ONE_IMAGE[1:], np.float64), [1, 784], "FP64"), "NaN, infinity"),
    "infinity in binary": (binary_body(np.array([np.inf] + ONE_IMAGE[1:], np.float32), [1, 784]), "NaN, infinity"),
    "above one": (json_body([1.5] + ONE_IMAGE[1:], [1, 784]), "must be in [0, 1]"),
    "negative": (json_body([-0.1] + ONE_IMAGE[1:], [1, 784]), "must be in [0, 1]"),
    "too large for float32": (json_body([1e300] + ONE_IMAGE[1:], [1, 784]), "must be in [0, 1]"),
    "UINT8 above 255": (json_body([256] + [0] * 783, [1, 784], "UINT8"), "0..255"),
    "UINT8 fraction": (json_body([0.5] + [0] * 783, [1, 784], "UINT8"), "0..255"),
    "UINT8 negative": (json_body([-1] + [0] * 783, [1, 784], "UINT8"), "0..255"),
    "28x28 without channel": (json_body(ONE_IMAGE, [1, 28, 28]), "[N, 1, 28, 28] or [N, 784]"),
    "wrong width": (json_body([0.5] * 900, [1, 900]), "[N, 1, 28, 28] or [N, 784]"),
    "scalar": (json_body([0.5], []), "[N, 1, 28, 28] or [N, 784]"),
    "empty batch": (json_body([], [0, 784]), "1 to 64 images"),
    "batch above the limit": (json_body([0.5] * 784 * 65, [65, 784]), "1 to 64 images; got 65"),
    "unknown input name": (orjson.dumps({"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": ONE_IMAGE}]}), "unknown input 'x'"),
    "two inputs": (
        orjson.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": ONE_IMAGE}] * 2}),
        "exactly one input",
    ),
}


@pytest.mark.parametrize("body, words", BAD_IMAGES.values(), ids=BAD_IMAGES.keys())
def test_tensors_the_model_cannot_take_are_rejected(body, words):
    body, header_length = body if isinstance(body, tuple) else (body, None)
    with pytest.raises(InvalidInput) as caught:
        batch_of(body, header_length)
    assert words in caught.value.message


BAD_OUTPUTS = {
    "unknown name": ([{"name": "logits"}], "unknown output 'logits'"),
    "missing name": ([{}], "unknown output None"),
    "asked twice": ([{"name": "probabilities"}, {"name": "probabilities"}], "twice"),
    "binary_data not a flag": ([{"name": "probabilities", "parameters": {"binary_data": 1}}], "true or false"),
    "classification": ([{"name": "probabilities", "parameters": {"classification": 3}}], "classification"),
}


@pytest.mark.parametrize("outputs, words", BAD_OUTPUTS.values(), ids=BAD_OUTPUTS.keys())
def test_unknown_or_malformed_requested_outputs_are_rejected(outputs, words):
    request = decode_request(json_body(ONE_IMAGE, [1, 784], outputs=outputs), None)
    with pytest.raises(InvalidInput) as caught:
        resolve_outputs(request, ["probabilities"])
    assert words in caught.value.message


# --- fuzz: whatever arrives, the codec answers a batch or an InvalidInput, never another exception -----

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-300, 300) | st.floats(-2, 2) | st.text(max_size=4),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=12,
)
shapes = st.lists(st.integers(-1, 800), max_size=4) | st.sampled_from([[1, 784], [2, 1, 28, 28], [1, 28, 28], [0, 784]]) | json_values
tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["input", "x"]) | json_values, "shape": shapes, "datatype": st.sampled_from(["FP32", "FP64", "UINT8", "INT8", "BYTES"]) | json_values},
    optional={
        "data": st.lists(st.floats(-0.5, 1.5) | st.integers(-1, 256), max_size=800) | json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-4, 7000) | json_values}) | json_values,
    },
)
documents = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=2) | json_values},
    optional={
        "id": json_values,
        "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["probabilities", "logits"]) | json_values}, optional={"parameters": json_values}), max_size=2) | json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": json_values}) | json_values,
    },
) | json_values


@settings(max_examples=300, deadline=None)
@given(documents, st.binary(max_size=64) | st.just(b"\0" * 3136), st.sampled_from([None, "json", "short", "long", "junk"]))
def test_any_request_gives_a_batch_or_a_clear_invalid_input(document, tail, header_mode):
    header = orjson.dumps(document)
    body = header + tail if header_mode else header
    header_length = {None: None, "json": str(len(header)), "short": str(max(len(header) - 3, 1)), "long": str(len(body) + 1), "junk": "x1"}[header_mode]
    try:
        request = decode_request(body, header_length)
        batch = image_batch(request, input_name="input", max_batch=4)
        resolve_outputs(request, ["probabilities"])
    except InvalidInput as error:
        assert error.message and error.status_code == 422
        return
    assert batch.dtype == np.float32 and batch.shape[1:] == (1, 28, 28)
    assert 0.0 <= batch.min() and batch.max() <= 1.0
