"""The v1 REST surface: list and describe models, predict from JSON pixels or pictures, reload a model.

Predict bodies are read as bytes. Plain numeric instances go straight from the JSON text to numpy
(service.http.json_tensors); any other body is parsed with orjson and converted in one go (see
service.predictions). Answers are serialised with orjson. The OpenAPI document still describes both.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated

import numpy as np
import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from service import schemas
from service.api.dependencies import API_KEY_SECURITY, check_api_key, tag_request
from service.decoding import decode_within_budget
from service.errors import InvalidInput, ReloadDisabled, ServiceError
from service.imaging import WORK_SIDE
from service.http.json_tensors import V1_FIELDS, read_numeric_instances
from service.predictions import (
    INSTANCE_FORMS,
    decode_base64_picture,
    format_predictions,
    instance_forms,
    pictures_to_batch,
    pixel_instance,
    pixels_to_batch,
)
from service.inference.registry import ModelDescription, ModelRepository, ServedModel
from service.trust.explain import copies_per_picture, explain_batch
from service.workers import ask_workers_to_rescan

router = APIRouter(prefix="/v1", tags=["v1"])

ERRORS = {status: {"model": schemas.ErrorBody} for status in (400, 401, 404, 413, 415, 422, 503)}
JSON = "application/json"
ModelName = Annotated[str, Path(description="A model of the repository", examples=["mnist-convnet"])]
ASCII_DIGITS = re.compile(r"[0-9]+")
UPLOAD_FORMS = "send multipart/form-data with one picture in field 'file' or several in 'files' (PNG, JPEG, GIF, BMP, WebP)"


def _json(content: object, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON)


def _repository(request: Request) -> ModelRepository:
    return request.app.state.repository


def _summary(description: ModelDescription) -> dict:
    return {
        "name": description.name,
        "state": description.state,
        "default_version": description.default_version,
        "versions": [
            {"version": v.version, "state": v.state, "reason": v.reason, "providers": list(v.providers)}
            for v in description.versions
        ],
    }


@router.get("/models", response_model=schemas.ModelList, summary="List every model and the state of its versions")
async def list_models(request: Request) -> Response:
    repository = _repository(request)
    return _json({"models": [_summary(repository.describe(name)) for name in repository.names()]})


@router.get(
    "/models/{name}", response_model=schemas.ModelDetail, responses=ERRORS,
    summary="Describe a model: versions, classes, input, providers, metrics from its card",
)
async def describe_model(
    request: Request, name: ModelName, version: int | None = Query(None, ge=1, description="Describe this version instead of the default")
) -> Response:
    repository = _repository(request)
    detail = _summary(repository.describe(name))
    if version is not None or detail["default_version"] is not None:
        served = repository.get(name, version)
        card = served.card
        detail.update({key: card.get(key) for key in ("task", "architecture", "metrics", "training", "source", "created_at")})
        # The card's sections as the server reads them: what a legacy card leaves out is filled in.
        detail.update({key: getattr(served.spec, key).model_dump(mode="json") for key in ("input", "output")})
        detail["preprocessing"] = served.spec.preprocessing.model_dump(mode="json", exclude_none=True)
        detail.update(version=served.version, classes=served.classes, providers=served.providers)
    return _json(detail)


def _optional_int(value: object, field: str, *, text: bool = False) -> int | None:
    """A positive integer option; `text` for form fields, which arrive as strings. ASCII digits only: str.isdigit()
    is true for '²' (which int() refuses) and '٣' (which int() reads as 3)."""
    if value is None:
        return None
    if text and isinstance(value, str) and ASCII_DIGITS.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{field} must be a positive integer, got {value!r}")
    return value


def _instance_count(count: int, limit: int, accepted: str) -> None:
    if count == 0:
        raise InvalidInput(f"no images sent; {accepted}")
    if count > limit:
        raise InvalidInput(f"{count} images in one request; at most {limit} are accepted (send several requests)")


def _served(request: Request, name: str, version: int | None) -> ServedModel:
    served = _repository(request).get(name, version)
    tag_request(request, served.name, served.version)
    return served


async def _answer(
    request: Request, served: ServedModel, batch, top_k: int | None, explain: bool = False,
    picture_warnings: dict[int, list[dict]] | None = None,
) -> Response:
    probabilities, typicality = await served.predict_scored(batch)
    top_k = request.app.state.settings.default_top_k if top_k is None else top_k
    predictions = format_predictions(probabilities, served.classes, top_k, typicality, served.trust)
    for index, found in (picture_warnings or {}).items():  # what was doubtful in each picture comes first
        predictions[index]["warnings"] = found + predictions[index]["warnings"]
    if explain:
        for prediction, explanation in zip(predictions, await explain_batch(served, batch, probabilities)):
            prediction["explanation"] = explanation
    return _json({"model": served.name, "version": served.version, "predictions": predictions})


def _explain_flag(value: object, *, text: bool = False) -> bool:
    if value is None:
        return False
    if text and isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "on"):
        return value.lower() in ("true", "1", "on")
    if not isinstance(value, bool):
        raise InvalidInput(f"explain must be true or false, got {value!r}")
    return value


def _explained_count(count: int, explain: bool, served: ServedModel) -> None:
    """With explain, each picture runs 1 + its occluded copies: the request's images are counted that way."""
    if not explain:
        return
    per_picture = 1 + copies_per_picture(served.input.height, served.input.width)
    limit = served.max_instances
    if count * per_picture > limit:
        raise InvalidInput(
            f"explain=true runs {per_picture} images per picture ({count} pictures: {count * per_picture}); at most "
            f"{limit} images are accepted per request, so send at most {max(limit // per_picture, 0)} pictures with explain"
        )


async def _decode(request: Request, pictures: list[bytes], served: ServedModel) -> tuple[np.ndarray, list[list[dict]]]:
    """Picture files -> the model's input batch, decoded within the worker's memory budget, and each
    picture's warnings."""
    settings = request.app.state.settings
    return await decode_within_budget(
        pictures, partial(pictures_to_batch, pictures, served.spec, served.input, max_pixels=settings.max_image_pixels),
        memory=request.app.state.memory, max_request_pixels=settings.max_request_pixels,
        reduce_to=WORK_SIDE if served.spec.is_ink else None,  # photo methods: the whole picture, to be safe
    )


def _v1_payload(body: bytes) -> dict:
    """The predict body parsed with orjson, with its fields checked; instances are left as JSON values."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"the body is not valid JSON ({error}); send {{\"instances\": [...]}}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise InvalidInput(f"the body must be a JSON object with a list 'instances'; {INSTANCE_FORMS}")
    unknown = set(payload) - V1_FIELDS
    if unknown:
        raise InvalidInput(f"unknown fields {sorted(unknown)}; accepted: {', '.join(sorted(V1_FIELDS))}")
    return payload


@router.post(
    "/models/{name}/predict", response_model=schemas.PredictResponse, responses=ERRORS,
    summary="Classify images sent as JSON pixel arrays or base64 pictures",
    openapi_extra=API_KEY_SECURITY | {"requestBody": {"required": True, "content": {JSON: {
        "schema": schemas.PREDICT_REQUEST_SCHEMA, "examples": schemas.PREDICT_REQUEST_EXAMPLES}}}},
)
async def predict(request: Request, name: ModelName) -> Response:
    check_api_key(request)
    settings = request.app.state.settings
    body = await request.body()
    numeric = read_numeric_instances(body) if _digits_shaped(request, name) else None
    if numeric is not None:
        instances, payload = numeric
    else:
        payload = _v1_payload(body)
        instances = payload["instances"]
    _instance_count(len(instances), settings.max_instances, INSTANCE_FORMS)
    top_k = _optional_int(payload.get("top_k"), "top_k")
    explain = _explain_flag(payload.get("explain"))
    served = _served(request, name, _optional_int(payload.get("version"), "version"))
    model_input = served.input
    _instance_count(len(instances), served.max_instances, instance_forms(model_input))
    _explained_count(len(instances), explain, served)
    if numeric is not None and not model_input.is_digits_shape:  # a version named in the body takes other pictures
        numeric, instances = None, _v1_payload(body)["instances"]

    if numeric is not None:
        return await _answer(request, served, model_input.check_values(instances, "instances"), top_k, explain)
    pictures = [i for i, item in enumerate(instances) if isinstance(item, dict)]
    if not pictures:
        batch = pixels_to_batch(instances, model_input)
    else:
        data = [decode_base64_picture(i, instances[i]) for i in pictures]
        decoded, found = await _decode(request, data, served)
        picture_warnings = dict(zip(pictures, found, strict=True))
        if len(pictures) == len(instances):
            batch = decoded
        else:  # pixels and pictures mixed: put each back in its place
            picture_set = set(pictures)
            numeric = [i for i in range(len(instances)) if i not in picture_set]
            batch = np.empty((len(instances), *model_input.instance_shape), dtype=model_input.dtype)
            batch[pictures] = decoded
            batch[numeric] = np.concatenate([pixel_instance(i, instances[i], model_input) for i in numeric])
        return await _answer(request, served, batch, top_k, explain, picture_warnings)
    return await _answer(request, served, batch, top_k, explain)


def _digits_shaped(request: Request, name: str) -> bool:
    """Whether the model's default version takes 1x28x28 pictures, the shape the JSON fast path reads."""
    try:
        return _repository(request).get(name).input.is_digits_shape
    except ServiceError:  # unknown or not ready: the request's own checks explain it
        return True


@router.post(
    "/models/{name}/predict/image", response_model=schemas.PredictResponse, responses=ERRORS,
    summary="Classify uploaded pictures (multipart field 'file' or 'files')",
    openapi_extra=API_KEY_SECURITY | {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schemas.PREDICT_IMAGE_SCHEMA}}}},
)
async def predict_image(
    request: Request,
    name: ModelName,
    top_k: int | None = Query(None, ge=1, description="How many best classes to list"),
    version: int | None = Query(None, ge=1, description="Model version (default: the highest ready one)"),
    explain: bool = Query(False, description="Add an occlusion-sensitivity map of the top class to each prediction"),
) -> Response:
    check_api_key(request)
    settings = request.app.state.settings
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidInput(f"{UPLOAD_FORMS}, not {content_type or 'no content type'}")
    try:
        form = await request.form(max_files=settings.max_instances, max_fields=16)
    except MultiPartException as error:
        raise InvalidInput(f"malformed multipart body ({error.message}); {UPLOAD_FORMS}") from None
    except StarletteHTTPException as error:  # Starlette's own limits on parts; the body limit (413) stays as it is
        if error.status_code == 413:
            raise
        raise InvalidInput(f"{error.detail} (at most {settings.max_instances} pictures per request); {UPLOAD_FORMS}") from None
    try:
        uploads = form.getlist("file") + form.getlist("files")
        if any(not isinstance(u, UploadFile) for u in uploads):
            raise InvalidInput("fields 'file' and 'files' must be file uploads (multipart parts with a filename)")
        _instance_count(len(uploads), settings.max_instances, UPLOAD_FORMS)
        top_k = _optional_int(form.get("top_k"), "top_k", text=True) or top_k
        explain = _explain_flag(form.get("explain"), text=True) or explain
        served = _served(request, name, _optional_int(form.get("version"), "version", text=True) or version)
        _instance_count(len(uploads), served.max_instances, UPLOAD_FORMS)
        _explained_count(len(uploads), explain, served)
        data = [await upload.read() for upload in uploads]
    finally:
        await form.close()  # uploads spill to temporary files past 1 MB
    batch, found = await _decode(request, data, served)
    return await _answer(request, served, batch, top_k, explain, dict(enumerate(found)))


QUERY_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


async def predict_image_from_query(request: Request, name: str) -> Response:
    """`predict_image` with its query options read here, as FastAPI reads them (the hot path calls this)."""
    query = request.query_params
    explain = query.get("explain")
    if explain is not None and explain.lower() not in QUERY_BOOLEANS:
        raise InvalidInput(f"explain must be true or false, got {explain!r}")
    return await predict_image(
        request, name, top_k=_optional_int(query.get("top_k"), "top_k", text=True),
        version=_optional_int(query.get("version"), "version", text=True),
        explain=QUERY_BOOLEANS.get((explain or "false").lower(), False),
    )


predict_image.from_query = predict_image_from_query  # the hot path's way in (service.http.hot_paths)


@router.post(
    "/models/{name}/reload", response_model=schemas.ModelSummary, responses=ERRORS | {403: {"model": schemas.ErrorBody}},
    summary="Rescan the model's directory now: load new versions, drop removed ones",
    description="Needs the API key when the server has one; answers 403 when the server runs with "
    "PIXELSERVE_ALLOW_RELOAD=false. Reloads coalesce: however many arrive, one rescan runs and one waits.",
    openapi_extra=API_KEY_SECURITY,
)
async def reload_model(request: Request, name: ModelName) -> Response:
    check_api_key(request)  # first: a client without the key learns nothing of the server's settings
    if not request.app.state.settings.allow_reload:
        raise ReloadDisabled()
    description = await _repository(request).reload(name)
    ask_workers_to_rescan()  # the other worker processes, if any, rescan too
    tag_request(request, name, description.default_version)
    return _json(_summary(description))
