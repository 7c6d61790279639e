"""The web page at /: pick a model, upload or draw a picture, see what the model saw and its probabilities.

Without JavaScript the page is a plain multipart form posted to `POST /`, answered with the same page
holding the result. With JavaScript the page posts to `POST /ui/api/predict` and draws the result in
place; that endpoint answers the v1 prediction plus the picture the model saw (at the model's size, in colour
when the model takes colour) as a PNG and the time taken. The drawing canvas is offered for the models whose
card prepares pictures as ink (mnist-digit, fashion-fit); every model takes uploads.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from dataclasses import dataclass
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from PIL import Image
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.api.dependencies import tag_request
from service.api.forms import read_form
from service.decoding import decode_within_budget
from service.errors import InvalidInput, ServiceError
from service.imaging import ACCEPTED_DESCRIPTION, WORK_SIDE, pixels_png, pixels_picture_and_warnings
from service.predictions import format_predictions
from service.trust.explain import explain_batch

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
templates = Jinja2Templates(directory=PACKAGE_DIR / "templates")

router = APIRouter(include_in_schema=False)
router.mount("/static", StaticFiles(directory=PACKAGE_DIR / "static"), name="static")

# Everything the page needs comes from this server; inline style attributes only carry the bar widths.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

# A headline per error code, shown above the server's own explanation (the script reads them too).
ERROR_TITLES = {
    "invalid_image": "That file is not a picture we can read.",
    "image_too_large": "That picture is too large.",
    "over_memory_budget": "That picture is too large for this server's memory.",
    "payload_too_large": "That file is too large.",
    "invalid_input": "That upload could not be used.",
    "model_not_found": "That model does not exist.",
    "invalid_model_name": "That model does not exist.",
    "version_not_found": "That model version does not exist.",
    "model_not_ready": "That model is not ready to answer.",
    "overloaded": "The server is busy.",
    "unauthorized": "This server needs an API key to predict.",
    "internal_error": "Something went wrong on the server.",
    "network_error": "The server could not be reached.",
}
GROUP_NAMES = {
    "digits": "Handwritten digits", "fashion": "Clothing (Fashion-MNIST)", "image-classification": "Image classifiers",
    "": "Not loaded",
}
DISPLAY_SIZE = 280  # the uploaded picture is shown at most this many pixels wide or high
WEB_TOP_K = 10  # bars shown: every class of the digit models, the ten most probable of a larger label set


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model picker; `details` is the sentence shown under it when chosen."""

    name: str
    version: int | None
    task: str
    test_accuracy: float | None
    ready: bool
    details: str
    input_size: str = ""  # "224×224 colour", shown in the picker
    drawable: bool = False  # an ink model: the canvas makes sense for it


def describe_card(card: dict) -> str:
    """'99.1% test accuracy on <split> (2,000 pictures) · convnet, 12,345 parameters', from what the card holds."""
    metrics = card.get("metrics") or {}
    architecture = card.get("architecture") or {}
    parts = []
    if isinstance(metrics.get("test_accuracy"), (int, float)):
        measured = f"{metrics['test_accuracy']:.1%} test accuracy"
        if metrics.get("test_split"):
            measured += f" on {metrics['test_split']}"
        if isinstance(metrics.get("test_size"), int) and metrics["test_size"] > 0:
            measured += f" ({metrics['test_size']:,} pictures)"
        parts.append(measured)
    if architecture.get("arch"):
        size = architecture.get("parameters")
        parts.append(architecture["arch"] + (f", {size:,} parameters" if isinstance(size, int) else ""))
    return " · ".join(parts)


def model_choices(repository: Any) -> list[ModelChoice]:
    choices = []
    for name in repository.names():
        try:
            served = repository.get(name)
        except ServiceError as exc:
            choices.append(ModelChoice(name, None, "", None, ready=False, details=exc.message))
            continue
        accuracy = (served.card.get("metrics") or {}).get("test_accuracy")
        spec = served.spec.input
        choices.append(
            ModelChoice(
                name,
                served.version,
                str(served.card.get("task", "")),
                float(accuracy) if isinstance(accuracy, (int, float)) else None,
                ready=True,
                details=describe_card(served.card),
                input_size=f"{spec.width}×{spec.height} {'grey' if spec.channels == 1 else 'colour'}",
                drawable=served.spec.is_ink,
            )
        )
    # Grouped by task in the picker; models that failed to load come last.
    return sorted(choices, key=lambda c: (not c.ready, c.task, c.name))


def default_model(choices: list[ModelChoice]) -> str:
    """The most accurate ready digits model (the canvas is for digits), else any ready model."""
    ready = [c for c in choices if c.ready]
    if not ready:
        return ""
    best = max(ready, key=lambda c: (c.task == "digits", c.test_accuracy or 0.0))
    return best.name


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def display_picture(image: Image.Image) -> str:
    """The uploaded picture as a small PNG, so any format Pillow reads shows in every browser."""
    if image.mode not in ("1", "L", "LA", "RGB", "RGBA"):
        image = image.convert("RGBA")
    scale = DISPLAY_SIZE // max(image.size)
    if scale >= 2:  # a small picture is enlarged with crisp pixels, as the browser would blur it
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    image.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return png_data_url(buffer.getvalue())


def overlay_png(seen: np.ndarray, heat: np.ndarray) -> bytes:
    """What the model saw ([H, W] or [H, W, 3] in [0, 1]) with the occlusion map over it in red (stronger = the
    class lost more there)."""
    rgb = np.clip(np.asarray(seen, dtype=np.float32), 0.0, 1.0)
    if rgb.ndim == 2 or rgb.shape[-1] == 1:
        rgb = rgb.reshape(*heat.shape, 1) * np.ones(3, np.float32)
    weight = np.clip(heat / max(float(heat.max()), 1e-6), 0.0, 1.0)[..., np.newaxis] * 0.7
    rgb = rgb * (1.0 - weight) + np.array([1.0, 0.15, 0.1], np.float32) * weight
    buffer = io.BytesIO()
    Image.fromarray(np.rint(rgb * 255).astype(np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def prepare_picture(data: bytes, served: Any, max_pixels: int) -> tuple[np.ndarray, str, str, np.ndarray]:
    """Picture bytes -> (the model's input batch of one, what the model saw as a PNG, the picture to show back,
    what the model saw in [0, 1] for the explanation's overlay); the input is the API's own."""
    return prepare_picture_with_warnings(data, served, max_pixels)[:4]


def prepare_picture_with_warnings(data: bytes, served: Any, max_pixels: int) -> tuple[np.ndarray, str, str, np.ndarray, list[dict]]:
    """`prepare_picture`, and the API's warnings about what was doubtful in the picture (a faint or unclear object)."""
    pixels, full_scale, picture, doubts = pixels_picture_and_warnings(
        data, served.spec, max_pixels=max_pixels, picture_side=DISPLAY_SIZE
    )
    seen = png_data_url(pixels_png(pixels, full_scale, served.spec.input.color_order))
    seen_unit = np.asarray(pixels, dtype=np.float32) / float(full_scale)
    if served.spec.input.color_order == "BGR":
        seen_unit = seen_unit[..., ::-1]
    warnings = [{"code": w.code, "message": w.message} for w in doubts]
    return served.input.from_pixels(pixels[np.newaxis], full_scale), seen, display_picture(picture), seen_unit, warnings


async def predict_picture(request: Request, model: str, upload: UploadFile | None) -> dict[str, Any]:
    """Run one uploaded picture through a model; the answer both the page and the script render."""
    settings = request.app.state.settings
    data = await upload.read() if upload is not None else b""
    if not data:
        raise InvalidInput(f"no picture was sent: choose a {ACCEPTED_DESCRIPTION} file, or draw a digit")
    if not model:
        raise InvalidInput("no model was chosen: pick one of the models listed on the page")
    served = request.app.state.repository.get(model)
    tag_request(request, served.name, served.version)

    started = time.perf_counter()
    # Decoding is CPU work: off the event loop and within the worker's memory budget, as the v1 endpoints do it.
    x, input_png, picture_png, seen_unit, picture_warnings = await decode_within_budget(
        [data], partial(prepare_picture_with_warnings, data, served, settings.max_image_pixels),
        memory=request.app.state.memory, max_request_pixels=settings.max_request_pixels,
        reduce_to=WORK_SIDE if served.spec.is_ink else None,  # photo methods: the whole picture, to be safe
    )
    preprocessed = time.perf_counter()
    probabilities, typicality = await served.predict_scored(x)
    finished = time.perf_counter()
    # Where the model looked: one more batched run of the occluded copies (a few ms for a 28x28 model).
    explanation = (await explain_batch(served, x, probabilities))[0]

    prediction = format_predictions(probabilities, served.classes, WEB_TOP_K, typicality, served.trust)[0]
    return {
        "model": served.name,
        "version": served.version,
        "task": served.card.get("task", ""),
        "label": prediction["label"],
        "probabilities": prediction["probabilities"],
        "top": prediction["top"],
        "input_png": input_png,
        "input_size": [served.spec.input.height, served.spec.input.width],
        "typicality": prediction["typicality"],
        "warnings": picture_warnings + prediction["warnings"],
        "explanation_png": png_data_url(overlay_png(seen_unit, np.asarray(explanation["map"], dtype=np.float32))),
        "explained_label": explanation["label"],
        "picture_png": picture_png,
        "timing_ms": {
            "preprocess": round((preprocessed - started) * 1000, 2),
            "inference": round((finished - preprocessed) * 1000, 2),
            "total": round((finished - started) * 1000, 2),
        },
    }


def render_page(
    request: Request,
    *,
    chosen: str = "",
    result: dict[str, Any] | None = None,
    error: ServiceError | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    choices = model_choices(request.app.state.repository)
    names = {c.name for c in choices}
    settings = request.app.state.settings
    chosen = chosen if chosen in names else default_model(choices)
    context = {
        "base": request.scope.get("root_path", "").rstrip("/"),
        "choices": choices,
        "chosen": chosen,
        "any_ready": any(c.ready for c in choices),
        "result": result,
        "error": error,
        "error_title": ERROR_TITLES.get(error.code, ERROR_TITLES["invalid_input"]) if error else "",
        "error_titles": ERROR_TITLES,
        "groups": [(GROUP_NAMES.get(task, task), list(group)) for task, group in groupby(choices, lambda c: c.task)],
        "max_body_bytes": settings.max_body_bytes,
        "accepted_formats": ACCEPTED_DESCRIPTION,
        "needs_api_key": settings.api_key is not None,
    }
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-store"}
    if error is not None:
        headers.update(error.headers)
    return templates.TemplateResponse(request, "index.html", context, status_code=status_code, headers=headers)


@router.get("/", response_class=HTMLResponse)
async def page(request: Request) -> HTMLResponse:
    return render_page(request)


async def _form_fields(request: Request, *, key_field: str | None) -> tuple[str, UploadFile | None, FormData]:
    """The model and the picture of the page's form, read once the API key is known to be right (service.api.forms)."""
    try:
        form = await read_form(request, max_files=1, max_fields=4, key_field=key_field)
    except MultiPartException as error:
        raise InvalidInput(f"malformed form ({error.message}); choose a model and a picture") from None
    model, upload = form.get("model", ""), form.get("file")
    if not isinstance(model, str) or (upload is not None and not isinstance(upload, UploadFile)):
        await form.close()
        raise InvalidInput("the form's 'model' must be a name and its 'file' a picture upload")
    return model, upload, form


@router.post("/", response_class=HTMLResponse)
async def predict_form(request: Request) -> HTMLResponse:
    """The no-JavaScript path: the form posts here and gets the page back with the result.

    A form cannot send headers: the key, when the server has one, comes as its field api_key, which the page
    places before the file."""
    model, form = "", None
    try:
        model, upload, form = await _form_fields(request, key_field="api_key")
        result = await predict_picture(request, model, upload)
    except ServiceError as exc:
        return render_page(request, chosen=model, error=exc, status_code=exc.status_code)
    except (ClientDisconnect, StarletteHTTPException):
        raise  # the client left mid-upload (logged as 499), or a body over the limit (the app's 413 page)
    except Exception:
        logger.exception("web form prediction failed for model %r", model)
        failure = ServiceError(
            "the prediction failed on the server and the error was logged; try again, or pick another model",
            status_code=500,
            code="internal_error",
        )
        return render_page(request, chosen=model, error=failure, status_code=500)
    finally:
        if form is not None:
            await form.close()
    return render_page(request, chosen=model, result=result)


@router.post("/ui/api/predict")
async def predict_for_page(request: Request) -> dict[str, Any]:
    """The script's path: the prediction, the picture the model saw as a PNG and the time taken, as JSON. The
    key, when the server has one, comes in a header, checked before the body is read.

    Errors are ServiceErrors, answered by the app as {"error": {"code": ..., "message": ...}}.
    """
    model, upload, form = await _form_fields(request, key_field=None)
    try:
        return await predict_picture(request, model, upload)
    finally:
        await form.close()
