"""Open Inference Protocol (V2) data types: JSON tensors and the binary tensor data extension.

Requests are parsed straight into numpy (no per-element validation objects): a flat "data" list of
numbers by simdjson (service.http.json_tensors), anything else by orjson. They are then checked
for what the model accepts: one tensor named as its input, of its own shape [N, *instance] or flat
[N, values], its own datatype (or FP32 / FP64 / FP16, cast), values checked by the same rules as the v1
surface (within what the card's preprocessing makes; rounding slack clipped); UINT8 pictures are
scaled by the card's range, mean and std.

Binary tensor data extension: when the header `Inference-Header-Content-Length: L` is present, the
first L bytes of the body are the JSON header; each input carrying `"parameters": {"binary_data_size": n}`
has its n raw little-endian bytes after the header, in input order. Responses put the outputs asked
for in binary (`"binary_data": true` on a requested output, or `"binary_data_output": true` in the
request parameters) after the JSON header the same way.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

import numpy as np
import orjson
from pydantic import BaseModel

from service.errors import InvalidInput
from service.http.json_tensors import read_infer_document
from service.inference.model_input import ModelInput
from service.predictions import DIGITS_INPUT

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_EXTENSION = "binary_tensor_data"
OUTPUT_DATATYPE = "FP32"
IMAGE_SHAPES = "the model's input shape, batch first, or flat: [N, 1, 28, 28] or [N, 784] for the shipped models"

# Input datatypes accepted, as little-endian numpy dtypes. UINT8 pixels (0..255) are scaled as the card says
# (by 1/255 for the shipped models).
INPUT_DATATYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "UINT8": np.dtype("u1"), "FP16": np.dtype("<f2")}
ACCEPTED_DATATYPES = ", ".join(INPUT_DATATYPES) + " (UINT8 pixels 0..255 are scaled as the model card says: by 1/255 for [0, 1])"


@dataclass(frozen=True, slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray  # flat: the sent dtype for binary data, float64 or int64 for JSON numbers


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True, slots=True)
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[dict] | None  # as sent; resolved against the model by resolve_outputs
    binary_output: bool  # the request-level default for outputs without their own binary_data


# --- metadata documents (small, so plain pydantic models) -------------------------------------------


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    providers: list[str]
    classes: list[str]


class ModelReady(BaseModel):
    name: str
    version: str
    ready: bool


# --- request decoding -------------------------------------------------------------------------------


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer request body (JSON, or JSON header plus binary tensors) without touching the model."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        length = _header_length(header_length, len(body))
        header, binary = body[:length], memoryview(body)[length:]
    document = read_infer_document(header)
    if document is None:
        try:
            document = orjson.loads(header)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"the request is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput('the request must be a JSON object {"inputs": [...]}')

    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput('"id" must be a string')
    parameters = _object(document.get("parameters"), '"parameters"')
    binary_output = _flag(parameters.get("binary_data_output", False), '"parameters.binary_data_output"')

    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput('"inputs" must be a non-empty list of tensors {"name", "shape", "datatype", "data"}')
    decoded, offset = [], 0
    for position, tensor in enumerate(inputs):
        one, offset = _decode_input(tensor, position, binary, offset)
        decoded.append(one)
    if offset != len(binary):
        raise InvalidInput(
            f"the body holds {len(binary)} bytes after the JSON header but the inputs' binary_data_size add up to {offset}"
        )

    outputs = document.get("outputs")
    if outputs is not None and not (isinstance(outputs, list) and all(isinstance(o, dict) for o in outputs)):
        raise InvalidInput('"outputs" must be a list of objects {"name", "parameters"?}')
    return InferRequest(id=request_id, inputs=decoded, outputs=outputs, binary_output=binary_output)


def _header_length(value: str, body_length: int) -> int:
    if not (value.isascii() and value.isdigit()):  # int() would also take ' 12', '1_2' and '²'-free Unicode digits
        raise InvalidInput(f"{HEADER_LENGTH} must be a byte count in ASCII digits, got {value!r}")
    length = int(value)
    if not 0 < length <= body_length:
        raise InvalidInput(f"{HEADER_LENGTH} is {length} but the body holds {body_length} bytes")
    return length


def _decode_input(tensor: object, position: int, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    where = f"inputs[{position}]"
    if not isinstance(tensor, dict):
        raise InvalidInput(f'{where} must be an object {{"name", "shape", "datatype", "data"}}')
    name = tensor.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f'{where}.name must be a string')
    datatype = tensor.get("datatype")
    dtype = INPUT_DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(f"{where}.datatype {datatype!r} is not accepted; accepted: {ACCEPTED_DATATYPES}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(f"{where}.shape must be a list of non-negative integers, e.g. {IMAGE_SHAPES}")
    count = math.prod(shape)

    size = _object(tensor.get("parameters"), f"{where}.parameters").get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise InvalidInput(f"{where}.parameters.binary_data_size must be a non-negative integer")
        if "data" in tensor:
            raise InvalidInput(f'{where} has both "data" and binary_data_size; send one of them')
        if size != count * dtype.itemsize:
            raise InvalidInput(
                f"{where}.parameters.binary_data_size is {size} bytes but shape {shape} of {datatype} needs {count * dtype.itemsize}"
            )
        if offset + size > len(binary):
            raise InvalidInput(f"{where} needs {size} binary bytes but only {len(binary) - offset} follow the JSON header")
        data = np.frombuffer(binary[offset : offset + size], dtype=dtype)
        offset += size
    else:
        if "data" not in tensor:
            raise InvalidInput(f'{where} has no "data" (nor parameters.binary_data_size for binary data)')
        data = _json_data(tensor["data"], where)
        if data.size != count:
            raise InvalidInput(f"{where}.data holds {data.size} values but shape {shape} needs {count}")
    return InputTensor(name=name, datatype=datatype, shape=tuple(shape), data=data), offset


def _json_data(values: object, where: str) -> np.ndarray:
    """JSON numbers as a flat numpy array (float64 or int64); the datatype is applied by image_batch."""
    if isinstance(values, np.ndarray):  # read straight from the JSON text by read_infer_document
        return values
    if not isinstance(values, list):
        raise InvalidInput(f"{where}.data must be a list of numbers (flat or nested)")
    try:
        data = np.asarray(values).reshape(-1)
    except (ValueError, TypeError, OverflowError):
        data = None
    if data is None or data.dtype.kind not in "fiu":
        raise InvalidInput(f"{where}.data must hold only numbers, nested as a regular array")
    return data


def _object(value: object, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be true or false")
    return value


# --- from the request to the model and back ---------------------------------------------------------


def image_batch(request: InferRequest, *, input_name: str, max_batch: int, model_input: ModelInput = DIGITS_INPUT) -> np.ndarray:
    """The request's one input as the model's batch [N, *instance_shape] in its element type."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"the model takes exactly one input, {input_name!r}; got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name != input_name:
        raise InvalidInput(f"unknown input {tensor.name!r}; the model's input is {input_name!r}")
    shape, instance = tensor.shape, model_input.instance_shape
    if len(shape) < 2 or shape[1:] not in (instance, (model_input.values,)):
        accepted = f"[N, {', '.join(map(str, instance))}] or [N, {model_input.values}]"
        raise InvalidInput(f"input shape {list(shape)} is not accepted; accepted: {accepted}")
    if not 1 <= shape[0] <= max_batch:
        raise InvalidInput(f"a request carries 1 to {max_batch} images; got {shape[0]}")

    data, where = tensor.data, f"the pixels of input {tensor.name!r}"
    if tensor.datatype == "UINT8":
        # NaN fails the integer test, infinity the range test (JSON numbers arrive as float64 or int64).
        if data.min() < 0 or data.max() > 255 or (data.dtype.kind == "f" and not np.array_equal(data, np.round(data))):
            raise InvalidInput(f"{where} hold values that are not UINT8 integers 0..255")
        return model_input.from_uint8_tensor(data.astype(np.uint8, copy=False).reshape(shape[0], *instance))
    # The v1 surface's rules. Checked in float64 when sent so (1e300 is out of range, not infinity);
    # astype copies, as the check clips rounding slack in place and binary data is read-only.
    values = data.astype(np.float64 if data.dtype == np.float64 else np.float32)
    return model_input.check_values(values.reshape(shape[0], *instance), where)


def resolve_outputs(request: InferRequest, available: list[str], on_request: tuple[str, ...] = ()) -> list[RequestedOutput]:
    """Which outputs to answer with, and whether each goes in binary; every one of `available` when none is named
    (`on_request` outputs, such as typicality, only when named)."""
    if request.outputs is None:
        return [RequestedOutput(name, request.binary_output) for name in available]
    available = [*available, *on_request]
    resolved: list[RequestedOutput] = []
    for position, output in enumerate(request.outputs):
        where = f"outputs[{position}]"
        name = output.get("name")
        if name not in available:
            raise InvalidInput(f"unknown output {name!r}; the model's outputs: {', '.join(available)}")
        if any(r.name == name for r in resolved):
            raise InvalidInput(f"output {name!r} is requested twice")
        parameters = _object(output.get("parameters"), f"{where}.parameters")
        if parameters.get("classification"):
            raise InvalidInput("the classification extension is not supported; request the probabilities tensor")
        binary = _flag(parameters.get("binary_data", request.binary_output), f"{where}.parameters.binary_data")
        resolved.append(RequestedOutput(name, binary))
    return resolved


def encode_response(
    *, model_name: str, model_version: str, request_id: str | None, outputs: list[tuple[RequestedOutput, np.ndarray]],
    parameters: dict | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: plain JSON, or a JSON header followed by the binary outputs."""
    documents, chunks = [], []
    for output, array in outputs:
        document = {"name": output.name, "datatype": OUTPUT_DATATYPE, "shape": list(array.shape)}
        values = np.ascontiguousarray(array, dtype="<f4")
        if output.binary:
            chunk = values.tobytes()
            document["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            document["data"] = values.reshape(-1)
        documents.append(document)
    response = {"model_name": model_name, "model_version": model_version, "id": request_id or uuid.uuid4().hex, "outputs": documents}
    if parameters is not None:
        response["parameters"] = parameters
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *chunks]), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
