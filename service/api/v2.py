"""The Open Inference Protocol (V2, the KServe / Triton REST protocol) so that standard clients work.

Metadata and readiness of the server and of each model, and inference with JSON tensors or the
binary tensor data extension. Tensor decoding and encoding live in service.http.v2_codec; errors raised
here are answered by the app as {"error": "..."} with their status code.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response

from service import __version__
from service.api.dependencies import API_KEY_SECURITY, check_api_key, tag_request
from service.errors import ServiceError, VersionNotFound
from service.observability import request_id_var
from service.inference.registry import READY
from service.trust.assess import trust_parameters
from service.http.v2_codec import (
    ACCEPTED_DATATYPES,
    BINARY_EXTENSION,
    HEADER_LENGTH,
    IMAGE_SHAPES,
    OUTPUT_DATATYPE,
    ModelMetadata,
    ModelReady,
    ServerMetadata,
    TensorMetadata,
    decode_request,
    encode_response,
    image_batch,
    resolve_outputs,
)

SERVER_NAME = "pixelserve"
TYPICALITY = "typicality"
PLATFORM = "onnxruntime_onnx"

router = APIRouter(prefix="/v2", tags=["v2: Open Inference Protocol"])

# --- OpenAPI documentation of the infer endpoint (the body is parsed by hand for speed) -------------

_TENSOR_SCHEMA = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "example": "input"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "description": f"{IMAGE_SHAPES}"},
        "datatype": {"type": "string", "enum": ["FP32", "FP64", "FP16", "UINT8"], "description": ACCEPTED_DATATYPES},
        "data": {"type": "array", "description": "The model's input tensor in row-major order, flat or nested (the shipped models: pixels in [0, 1], white ink on black)"},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
            "description": "binary_data_size: the tensor's bytes follow the JSON header instead of data",
        },
    },
}
_REQUESTED_OUTPUT_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "example": "probabilities"},
        "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
    },
}
_REQUEST_SCHEMA = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": _TENSOR_SCHEMA},
        "outputs": {"type": "array", "items": _REQUESTED_OUTPUT_SCHEMA},
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
    },
}
_RESPONSE_SCHEMA = {
    "type": "object",
    "required": ["model_name", "model_version", "id", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "datatype", "shape"],
                "properties": {
                    "name": {"type": "string"},
                    "datatype": {"type": "string", "enum": [OUTPUT_DATATYPE]},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "data": {"type": "array", "items": {"type": "number"}},
                    "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}},
                },
            },
        },
    },
}
_ERROR = {"content": {"application/json": {"schema": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}
_BINARY_BODY = {
    "schema": {
        "type": "string",
        "format": "binary",
        "description": f"Binary tensor data extension: a JSON header of {HEADER_LENGTH} bytes, then the raw little-endian tensors",
    }
}
INFER_DOCS = {
    "openapi_extra": API_KEY_SECURITY | {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _REQUEST_SCHEMA,
                    "examples": {
                        "one image, flat": {
                            "value": {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}]}
                        },
                        "binary output": {
                            "value": {
                                "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}],
                                "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
                            }
                        },
                    },
                },
                "application/octet-stream": _BINARY_BODY,
            },
        }
    },
    "responses": {
        200: {
            "description": "Class probabilities [N, C]; outputs asked for in binary follow the JSON header",
            "content": {
                "application/json": {
                    "schema": _RESPONSE_SCHEMA,
                    "example": {
                        "model_name": "mnist-convnet",
                        "model_version": "1",
                        "id": "42",
                        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 10], "data": [0.1] * 10}],
                    },
                },
                "application/octet-stream": _BINARY_BODY,
            },
        },
        400: {"description": "The model version failed to load (not worth retrying until its files change)", **_ERROR},
        401: {"description": "The server has an API key and the request did not send it", **_ERROR},
        404: {"description": "Unknown model or version", **_ERROR},
        415: {"description": "Compressed request bodies are not accepted", **_ERROR},
        422: {"description": "Malformed request, wrong datatype or shape, NaN or out-of-range pixels", **_ERROR},
        413: {"description": "The body is larger than the server accepts", **_ERROR},
        503: {"description": "The model version is still loading, or its queue or memory budget is full (Retry-After)", **_ERROR},
    },
}
METADATA_ERRORS = {
    400: {"description": "The model version failed to load", **_ERROR},
    404: {"description": "Unknown model or version", **_ERROR},
    503: {"description": "The model version is still loading (Retry-After)", **_ERROR},
}


# --- endpoints --------------------------------------------------------------------------------------


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=[BINARY_EXTENSION])


@router.get("/models/{name}", response_model=ModelMetadata, responses=METADATA_ERRORS, summary="Model metadata")
async def model_metadata(request: Request, name: str) -> ModelMetadata:
    return _metadata(request, name, None)


@router.get(
    "/models/{name}/versions/{version}", response_model=ModelMetadata, responses=METADATA_ERRORS, summary="Model version metadata"
)
async def model_version_metadata(request: Request, name: str, version: str) -> ModelMetadata:
    return _metadata(request, name, _parse_version(version))


@router.get("/models/{name}/ready", response_model=ModelReady, responses=METADATA_ERRORS, summary="Model readiness")
async def model_ready(request: Request, name: str) -> ModelReady:
    return _ready(request, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready", response_model=ModelReady, responses=METADATA_ERRORS, summary="Model version readiness"
)
async def model_version_ready(request: Request, name: str, version: str) -> ModelReady:
    return _ready(request, name, _parse_version(version))


@router.post("/models/{name}/infer", summary="Infer", **INFER_DOCS)
async def infer(
    request: Request, name: str, header_length: Annotated[str | None, Header(alias=HEADER_LENGTH)] = None
) -> Response:
    return await _infer(request, name, None, header_length)


@router.post("/models/{name}/versions/{version}/infer", summary="Infer with a model version", **INFER_DOCS)
async def infer_version(
    request: Request, name: str, version: str, header_length: Annotated[str | None, Header(alias=HEADER_LENGTH)] = None
) -> Response:
    return await _infer(request, name, _parse_version(version), header_length)


# --- shared by the endpoints ------------------------------------------------------------------------


def _parse_version(version: str) -> int:
    if not (version.isascii() and version.isdigit() and int(version) >= 1):
        raise VersionNotFound(f"version {version!r} does not exist; versions are positive integers")
    return int(version)


def _metadata(request: Request, name: str, version: int | None) -> ModelMetadata:
    repository = request.app.state.repository
    model = repository.get(name, version)
    if version is None:
        versions = [str(v.version) for v in repository.describe(name).versions if v.state == READY]
    else:
        versions = [str(model.version)]
    return ModelMetadata(
        name=model.name,
        versions=versions,
        platform=PLATFORM,
        inputs=[TensorMetadata(name=model.input_name, datatype=model.input.datatype, shape=[-1, *model.input.instance_shape])],
        outputs=[TensorMetadata(name=model.output_name, datatype=OUTPUT_DATATYPE, shape=[-1, len(model.classes)])]
        + ([TensorMetadata(name=TYPICALITY, datatype=OUTPUT_DATATYPE, shape=[-1])] if model.has_typicality else []),
        providers=list(model.providers),
        classes=list(model.classes),
    )


def _ready(request: Request, name: str, version: int | None) -> ModelReady:
    # get() raises ModelNotFound / VersionNotFound (404) or ModelNotReady (400 failed, 503 loading) when it cannot serve.
    model = request.app.state.repository.get(name, version)
    return ModelReady(name=model.name, version=str(model.version), ready=True)


async def _infer(request: Request, name: str, version: int | None, header_length: str | None) -> Response:
    # A plain call rather than a FastAPI security dependency: cheaper per request on this hot path.
    check_api_key(request)
    model = request.app.state.repository.get(name, version)
    tag_request(request, model.name, model.version)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise ServiceError(
            f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed",
            status_code=415,
            code="unsupported_encoding",
        )
    parsed = decode_request(await request.body(), header_length)
    batch = image_batch(parsed, input_name=model.input_name, max_batch=model.max_instances, model_input=model.input)
    outputs = resolve_outputs(parsed, [model.output_name], (TYPICALITY,) if model.has_typicality else ())
    probabilities, typicality = await model.predict_scored(batch)
    tensors = {model.output_name: probabilities, TYPICALITY: typicality}
    content, headers = encode_response(
        model_name=model.name,
        model_version=str(model.version),
        request_id=parsed.id or request_id_var.get(),
        outputs=[(output, tensors[output.name]) for output in outputs],
        parameters=trust_parameters(probabilities, typicality, model.classes, model.trust),
    )
    return Response(content, headers=headers)
