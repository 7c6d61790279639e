"""Numeric instances read straight from JSON text: the same array as the orjson path, or no answer."""

from __future__ import annotations

import copy
import json
import re
from unittest import mock

import numpy as np
import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from service.errors import InvalidInput
from service.http.json_tensors import BYTE_ORDER_MARK, read_infer_document, read_numeric_instances
from service.predictions import check_pixels, pixels_to_batch
from service.http.v2_codec import decode_request, image_batch

RNG = np.random.default_rng(7)
IMAGES = RNG.random((3, 28, 28), dtype=np.float32)
LAYOUTS = {
    "flat": lambda image: image.reshape(784).tolist(),
    "rows": lambda image: image.tolist(),
    "channel": lambda image: image[None].tolist(),
}


def orjson_path(body: bytes) -> np.ndarray:
    """What the predict endpoint makes of the same body without the accelerator."""
    return pixels_to_batch(orjson.loads(body)["instances"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_gives_the_orjson_paths_array(layout):
    body = orjson.dumps({"instances": [LAYOUTS[layout](image) for image in IMAGES]})
    pixels, fields = read_numeric_instances(body)
    assert pixels.dtype == np.float32 and pixels.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(pixels, orjson_path(body))
    np.testing.assert_array_equal(pixels, IMAGES[:, None])
    assert fields == {}


def test_fields_whitespace_and_number_forms():
    instances = [LAYOUTS["flat"](image) for image in IMAGES]
    instances[0][:4] = [0, 1, 1e-1, 2.5E-1]  # integers and exponents are numbers too
    body = json.dumps({"version": 1, "instances": instances, "top_k": 3}, indent=2).encode()
    pixels, fields = read_numeric_instances(body)
    np.testing.assert_array_equal(pixels, orjson_path(body))
    assert fields == {"version": 1, "top_k": 3}


def test_values_outside_float32_or_the_pixel_range_are_left_for_check_pixels():
    body = b'{"instances": [[' + b", ".join([b"1e39", b"-3", b"1.0005"] + [b"0"] * 781) + b"]]}"
    pixels, _ = read_numeric_instances(body)
    assert np.isposinf(pixels[0, 0, 0, 0]) and pixels[0, 0, 0, 1] == -3
    with pytest.raises(InvalidInput) as fast_error:
        check_pixels(pixels, "instances")
    with pytest.raises(InvalidInput) as orjson_error:
        orjson_path(body)
    assert str(fast_error.value) == str(orjson_error.value)


FLAT = LAYOUTS["flat"](IMAGES[0])
ROWS = LAYOUTS["rows"](IMAGES[0])
FLAT_TEXT = orjson.dumps(FLAT).decode()


def body_of(instances: list, **fields) -> str:
    return orjson.dumps({"instances": instances, **fields}).decode()


NOT_FOR_THE_ACCELERATOR = {
    "not JSON": '{"instances": [' + FLAT_TEXT,
    "byte order mark": "\ufeff" + body_of([FLAT]),
    "a list, not an object": body_of([FLAT])[len('{"instances":') : -1],
    "duplicate key": body_of([FLAT])[:-1] + ', "top_k": 1, "top_k": 2}',
    "unknown field": body_of([FLAT], extra=1),
    "no instances": '{"top_k": 1}',
    "instances not a list": '{"instances": 5}',
    "empty instances": body_of([]),
    "a field that is a list": body_of([FLAT], top_k=[1]),
    "a bracket in a string field": body_of([FLAT], version="["),
    "mixed layouts": body_of([FLAT, ROWS]),  # the orjson path names the instance in its errors
    "a picture": body_of([{"image_base64": "iVBORw0KGgo="}]),
    "a null pixel": body_of([[None, *FLAT[1:]]]),
    "a string pixel": body_of([["0", *FLAT[1:]]]),
    "an object pixel": body_of([[{}, *FLAT[1:]]]),
    "a nested pixel": body_of([[[0.5], *FLAT[1:]]]),
    "783 pixels": body_of([FLAT[1:]]),
    "a short row": body_of([[ROWS[0][1:], *ROWS[1:]]]),
    "a long row": body_of([[[*ROWS[0], 0.5], *ROWS[1:]]]),
    "a row that is a number": body_of([[0.5, *ROWS[1:]]]),
    "big integer": '{"instances": [[18446744073709551616, ' + FLAT_TEXT[FLAT_TEXT.index(",") + 1 :] + "]}",
    "a key with a NUL character": body_of([FLAT])[:-1] + ', "top\\u0000k": 1}',  # simdjson cannot look it up
}


@pytest.mark.parametrize("case", NOT_FOR_THE_ACCELERATOR)
def test_other_bodies_are_left_to_orjson(case):
    assert read_numeric_instances(NOT_FOR_THE_ACCELERATOR[case].encode()) is None


def test_nesting_that_keeps_every_count_right_is_still_refused():
    # Two instances that each have 784 numbers and the expected top-level lengths, where one has
    # an extra array and the other one too few: only the count of '[' can tell.
    first = [[0.5]] + [0.0] * 783
    rows = [[0.25] * 55, 0.75] + [[0.0] * 28 for _ in range(26)]
    body = orjson.dumps({"instances": [first, rows]})
    assert read_numeric_instances(body) is None
    with pytest.raises(InvalidInput):
        orjson_path(body)


# Anything JSON can put where a pixel or a row should be; numbers often, so that many bodies stay readable.
INTRUDERS = st.one_of(
    st.floats(-0.5, 1.5),
    st.integers(-1, 300),
    st.sampled_from([[], [0.5], [0.5, 0.25], {}, {"a": [1]}, None, True, "[", "x", -0.0, [[0.5]]]).map(copy.deepcopy),
)


@st.composite
def damaged_bodies(draw):
    images = draw(st.integers(1, 3))
    instances = [LAYOUTS[draw(st.sampled_from(sorted(LAYOUTS)))](IMAGES[i]) for i in range(images)]
    for _ in range(draw(st.integers(0, 3))):
        target = instances[draw(st.integers(0, images - 1))]
        while draw(st.booleans()):  # go down into a row (or a channel), or stay
            lists = [item for item in target if isinstance(item, list) and item]
            if not lists:
                break
            target = lists[draw(st.integers(0, len(lists) - 1))]
        place = draw(st.integers(0, max(len(target) - 1, 0)))
        action = draw(st.sampled_from(["replace", "replace", "insert", "delete"])) if target else "insert"
        if action == "delete":
            del target[place]
        elif action == "insert":
            target.insert(place, draw(INTRUDERS))
        else:
            target[place] = draw(INTRUDERS)
    document = {"instances": instances}
    if draw(st.booleans()):
        document["top_k"] = draw(st.sampled_from([1, 3, "[", [2], None]))
    return orjson.dumps(document)


@settings(max_examples=300, deadline=None)
@given(damaged_bodies())
def test_any_answer_it_gives_is_the_orjson_paths(body):
    fast = read_numeric_instances(body)
    event("left to orjson" if fast is None else "read by the accelerator")
    if fast is None:
        return
    pixels, fields = fast
    assert fields == {key: value for key, value in orjson.loads(body).items() if key != "instances"}
    try:
        expected = orjson_path(body)
    except InvalidInput as error:
        with pytest.raises(InvalidInput, match=re.escape(str(error))):
            check_pixels(pixels, "instances")
    else:
        np.testing.assert_array_equal(check_pixels(pixels, "instances"), expected)


# --- v2 infer documents ----------------------------------------------------------------------------


def infer_body(data, shape=(1, 784), datatype="FP32", **extra) -> bytes:
    return orjson.dumps({"inputs": [{"name": "input", "shape": list(shape), "datatype": datatype, "data": data}], **extra})


def outcome(body: bytes, *, accelerated: bool) -> tuple:
    """What the codec makes of a body: the request's fields and batch, or the error it says."""
    with mock.patch("service.http.v2_codec.read_infer_document", read_infer_document if accelerated else refuse):
        try:
            request = decode_request(body, None)
            batch = image_batch(request, input_name="input", max_batch=4)
        except InvalidInput as error:
            return ("invalid", str(error))
    return ("batch", request.id, request.outputs, request.binary_output, batch.tobytes())


def refuse(header: bytes) -> None:
    return None


def test_flat_data_is_read_as_float64_and_the_rest_as_orjson_reads_it():
    body = infer_body(FLAT, id="r-1", parameters={"binary_data_output": True}, outputs=[{"name": "probabilities"}])
    document = read_infer_document(body)
    data = document["inputs"][0].pop("data")
    assert data.dtype == np.float64
    np.testing.assert_array_equal(data, np.asarray(FLAT, dtype=np.float64))
    expected = orjson.loads(body)
    del expected["inputs"][0]["data"]
    assert document == expected
    assert outcome(body, accelerated=True) == outcome(body, accelerated=False)


V2_NOT_FOR_THE_ACCELERATOR = {
    "nested data": infer_body(ROWS, shape=(1, 28, 28)),
    "a null in the data": infer_body([None, *FLAT[1:]]),
    "a bracket in a string": infer_body(FLAT, id="[1]"),
    "a repeated key": infer_body(FLAT)[:-1] + b', "id": "a", "id": "b"}',
    "a repeated tensor key": infer_body(FLAT).replace(b'"name":"input"', b'"name":"input","name":"x"'),
    "byte order mark": BYTE_ORDER_MARK + infer_body(FLAT),
    "not an object": orjson.dumps([FLAT]),
    # simdjson lists such a key but cannot look it up by name (found by the property in test_v2_codec).
    "a key with a NUL character": infer_body(FLAT)[:-1] + b', "a\\u0000b": 1}',
    "a tensor key with a NUL character": infer_body(FLAT).replace(b'"name":"input"', b'"name":"input","x\\u0000":1'),
    # Faster through orjson: a binary request's JSON header, or a little data.
    "a small document": orjson.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                                                  "parameters": {"binary_data_size": 3136}}]}),
    "a little data": infer_body([0.5] * 100, shape=(1, 100)),
}


@pytest.mark.parametrize("case", V2_NOT_FOR_THE_ACCELERATOR)
def test_v2_documents_left_to_orjson(case):
    body = V2_NOT_FOR_THE_ACCELERATOR[case]
    assert read_infer_document(body) is None
    assert outcome(body, accelerated=True) == outcome(body, accelerated=False)


V2_FIELD_VALUES = st.sampled_from([None, 1, "x", "[", [], [1, [2]], {"a": [1]}, {"binary_data_output": True}, True])


@st.composite
def damaged_infer_bodies(draw):
    data = draw(st.sampled_from([FLAT, ROWS, [FLAT, FLAT], [0, 1] * 392, FLAT[:-1]]))
    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(0, 2))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(INTRUDERS)
    tensor = {"name": draw(st.sampled_from(["input", "other"])), "shape": draw(st.sampled_from([[1, 784], [1, 1, 28, 28], [2, 784], [784]])),
              "datatype": draw(st.sampled_from(["FP32", "FP64", "UINT8", "INT8"])), "data": data}
    for field in draw(st.lists(st.sampled_from(["name", "shape", "datatype", "data", "parameters"]), max_size=2)):
        tensor[field] = draw(V2_FIELD_VALUES)
    document = {"inputs": [tensor] * draw(st.integers(1, 2))}
    for field in draw(st.lists(st.sampled_from(["id", "parameters", "outputs", "inputs"]), max_size=2)):
        document[field] = draw(V2_FIELD_VALUES)
    return orjson.dumps(document)


@settings(max_examples=300, deadline=None)
@given(damaged_infer_bodies())
def test_any_infer_document_it_reads_decodes_as_orjsons_would(body):
    event("left to orjson" if read_infer_document(body) is None else "read by the accelerator")
    assert outcome(body, accelerated=True) == outcome(body, accelerated=False)
