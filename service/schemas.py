"""The v1 request and answer shapes, for the OpenAPI document.

The predict endpoints parse their bodies straight into numpy (pydantic validation of 784 floats per
image would cost more than the model); these schemas document what they accept and answer.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

# A 28x28 PNG of a hand-drawn "1", white ink on black.
EXAMPLE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAANklEQVR42mNgoD9gROH9RxVgQpNDAUx45JAlMeSQJP+jOwBZkhFD"
    "DtlYRjzGYgGjkrSTHAgAAHu3BSiniUrBAAAAAElFTkSuQmCC"
)

_PIXEL = {"type": "number", "minimum": 0.0, "maximum": 1.0}
PREDICT_REQUEST_SCHEMA = {
    "type": "object",
    "required": ["instances"],
    "properties": {
        "instances": {
            "type": "array",
            "minItems": 1,
            "description": "Images, answered in this order. Each is a picture file as {\"image_base64\": ...}, or the model's "
            "input tensor for one picture in its own shape ([C, H, W] or [H, W, C] as its card's layout says; [H, W] for one "
            "channel) or flat (row-major), values as its card's range, mean and std make them. The shipped models: 28 rows "
            "of 28 pixels or 784 pixels, floats in [0, 1], white ink on black (the shapes listed below).",
            "items": {
                "anyOf": [
                    {"type": "array", "minItems": 28, "maxItems": 28,
                     "items": {"type": "array", "minItems": 28, "maxItems": 28, "items": _PIXEL}},
                    {"type": "array", "minItems": 784, "maxItems": 784, "items": _PIXEL},
                    {"type": "object", "required": ["image_base64"], "additionalProperties": False,
                     "properties": {"image_base64": {"type": "string", "description": "PNG, JPEG, GIF, BMP or WebP bytes, base64 (a data: URL prefix is allowed)"}}},
                ]
            },
        },
        "top_k": {"type": "integer", "minimum": 1, "description": "How many best classes to list (default 3, at most the number of classes)"},
        "version": {"type": "integer", "minimum": 1, "description": "Model version to use (default: the highest ready one)"},
        "explain": {"type": "boolean", "description": "Add an occlusion-sensitivity map of the top class to each prediction "
                    "(default false); each picture then counts as 1 + the occluded copies against max_instances"},
    },
}
PREDICT_REQUEST_EXAMPLES = {
    "picture": {"summary": "A PNG picture, base64", "value": {"instances": [{"image_base64": EXAMPLE_PNG_BASE64}], "top_k": 3}},
    "pixels": {"summary": "A blank image as 784 pixels", "value": {"instances": [[0.0] * 784], "top_k": 2}},
}
PREDICT_IMAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "One picture (PNG, JPEG, GIF, BMP, WebP)"},
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "Several pictures"},
        "top_k": {"type": "integer", "minimum": 1},
        "version": {"type": "integer", "minimum": 1},
        "explain": {"type": "boolean", "description": "Add an occlusion-sensitivity map of the top class"},
    },
}


class TopClass(BaseModel):
    label: str
    probability: float


class Warning(BaseModel):
    code: str = Field(description="out_of_distribution | low_confidence")
    message: str


class Explanation(BaseModel):
    method: str = Field(description="occlusion (Zeiler & Fergus 2014)")
    label: str = Field(description="The class explained (the top class)")
    patch: int
    stride: int
    map: list[list[float]] = Field(description="[H][W]: drop of the class's probability when the pixel's neighbourhood is covered")


class Prediction(BaseModel):
    label: str = Field(description="The most probable class")
    probabilities: dict[str, float] = Field(description="Every class's probability (they sum to 1)")
    top: list[TopClass] = Field(description="The top_k classes, most probable first")
    typicality: float | None = Field(
        None, description="How much the picture looks like the training pictures (higher: more); null when the model has no typicality score"
    )
    warnings: list[Warning] = Field(
        default_factory=list,
        description="low_contrast, unclear_object (pictures: a faint or unclear object), out_of_distribution, low_confidence; empty when all is well",
    )
    explanation: Explanation | None = Field(None, description="Only with explain=true")


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[Prediction] = Field(description="One per image, in request order")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model": "mnist-convnet",
                    "version": 1,
                    "predictions": [
                        {
                            "label": "1",
                            "probabilities": {"0": 0.001, "1": 0.981, "2": 0.002, "3": 0.001, "4": 0.003,
                                              "5": 0.001, "6": 0.001, "7": 0.008, "8": 0.001, "9": 0.001},
                            "top": [{"label": "1", "probability": 0.981}, {"label": "7", "probability": 0.008}],
                        }
                    ],
                }
            ]
        }
    }


class VersionInfo(BaseModel):
    version: int
    state: str = Field(description="READY, UNAVAILABLE or LOADING")
    reason: str | None = Field(None, description="Why the version is not READY")
    providers: list[str] = Field(description="ONNX Runtime execution providers the version runs on")


class ModelSummary(BaseModel):
    name: str
    state: str = Field(description="READY when some version serves")
    default_version: int | None
    versions: list[VersionInfo]


class ModelList(BaseModel):
    models: list[ModelSummary]


class ModelDetail(ModelSummary):
    version: int | None = Field(None, description="The version described below")
    task: str | None = None
    classes: list[str] | None = None
    input: dict | None = None
    output: dict | None = None
    preprocessing: dict | None = None
    architecture: dict | None = None
    metrics: dict | None = None
    training: dict | None = None
    source: dict | None = Field(None, description="Where an imported model came from (python -m service import)")
    created_at: str | None = None
    providers: list[str] | None = None


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable cause, e.g. invalid_input, model_not_found")
    message: str = Field(description="What was wrong and what is accepted")


class ErrorBody(BaseModel):
    error: ErrorDetail
