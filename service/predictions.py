"""The v1 data path: request instances -> the model's input batch, probabilities -> the v1 answer.

Numeric instances become one float32 array in one `np.asarray` call, then shape, NaN and range are
checked on the whole array at once; per-instance work happens only to explain an error or to decode
pictures.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from service.errors import InvalidInput
from service.trust.assess import TrustPolicy, typicality_values

NO_TRUST = TrustPolicy()

# Pixels a little outside [0, 1] (float rounding in a client's scaling) are clipped, not rejected.
PIXEL_TOLERANCE = 1e-3
INSTANCE_FORMS = (
    "each instance is 28 rows of 28 pixels, a flat list of 784 pixels, or {\"image_base64\": \"<PNG/JPEG/... bytes in base64>\"}"
)
_BATCH_SHAPES = {(28, 28), (784,), (1, 28, 28)}


def pixels_to_batch(instances: list) -> np.ndarray:
    """Numeric instances (each 28x28, 784 or 1x28x28) -> float32 [N,1,28,28] in [0, 1]."""
    try:
        with np.errstate(over="ignore"):  # numbers beyond float32 become infinity, rejected below
            array = np.asarray(instances, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        return np.concatenate([pixel_instance(i, item) for i, item in enumerate(instances)])
    if array.shape[1:] not in _BATCH_SHAPES:
        if array.ndim >= 2:
            # Uniform but wrong: say so for the first instance.
            raise InvalidInput(f"instance 0 has shape {list(array.shape[1:])}; {INSTANCE_FORMS}")
        return np.concatenate([pixel_instance(i, item) for i, item in enumerate(instances)])
    return check_pixels(array.reshape(len(array), 1, 28, 28), "instances")


def pixel_instance(index: int, item: object) -> np.ndarray:
    """Convert one instance on its own, to say exactly which one is wrong and how."""
    if not isinstance(item, list):
        raise InvalidInput(f"instance {index} is a JSON {type(item).__name__}; {INSTANCE_FORMS}")
    try:
        with np.errstate(over="ignore"):
            array = np.asarray(item, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(
            f"instance {index} is not a regular array of numbers (ragged rows, or a value that is not a number); {INSTANCE_FORMS}"
        ) from None
    if array.shape not in _BATCH_SHAPES:
        raise InvalidInput(f"instance {index} has shape {list(array.shape)}; {INSTANCE_FORMS}")
    return check_pixels(array.reshape(1, 1, 28, 28), f"instance {index}")


def check_pixels(array: np.ndarray, what: str) -> np.ndarray:
    """Reject NaN, infinity (and JSON null, which arrives as NaN) and values outside [0, 1]; clip rounding slack."""
    low, high = float(array.min()), float(array.max())
    if low >= 0.0 and high <= 1.0:
        return array
    if np.isnan(low) or np.isnan(high) or np.isinf(low) or np.isinf(high):
        raise InvalidInput(f"{what} contain NaN, infinity or null; pixels must be finite numbers in [0, 1]")
    if low < -PIXEL_TOLERANCE or high > 1.0 + PIXEL_TOLERANCE:
        hint = " (divide 8-bit pixels by 255)" if high > 1.0 + PIXEL_TOLERANCE else ""
        raise InvalidInput(f"{what} hold values from {low:g} to {high:g}; pixels must be in [0, 1]{hint}")
    return np.clip(array, 0.0, 1.0, out=array)


def decode_base64_picture(index: int, item: dict) -> bytes:
    """{"image_base64": "..."} -> picture bytes; a data: URL prefix is allowed."""
    if set(item) != {"image_base64"} or not isinstance(item["image_base64"], str):
        raise InvalidInput(f"instance {index} is an object with keys {sorted(item)}; {INSTANCE_FORMS}")
    text = item["image_base64"]
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"instance {index}: image_base64 is not valid base64") from None
    if not data:
        raise InvalidInput(f"instance {index}: image_base64 is empty; send the bytes of a picture file")
    return data


def pictures_to_batch(pictures: list[bytes], method: str, *, max_pixels: int) -> np.ndarray:
    """Picture files -> float32 [N,1,28,28] prepared as the model card's preprocessing says (blocking)."""
    from service.imaging import to_model_input  # Pillow is only needed once a picture arrives

    return np.stack([to_model_input(data, method, max_pixels=max_pixels) for data in pictures])


def format_predictions(
    probs: np.ndarray, classes: list[str], top_k: int, typicality: np.ndarray | None = None, trust: TrustPolicy | None = None
) -> list[dict]:
    """One dict per row, in row order:
    {"label": "7", "probabilities": {"0": 0.001, ...}, "top": [{"label": "7", "probability": 0.98}, ...],
     "typicality": -0.4 or None, "warnings": [{"code": ..., "message": ...}]}.
    `top_k` is clipped to the number of classes; ties keep class order."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"probabilities of shape {list(probs.shape)} do not match {len(classes)} classes")
    k = max(1, min(int(top_k), len(classes)))
    indices = range(len(classes))
    trust = trust or NO_TRUST
    scores = typicality_values(typicality, len(probs))
    predictions = []
    for row, score in zip(probs.tolist(), scores):
        # Python's sort is stable with reverse=True too: equal probabilities keep class order. For one row
        # it takes half the time of numpy's argsort and the calls around it (2.5 against 4.5-5.4 µs).
        ranked = sorted(indices, key=row.__getitem__, reverse=True)
        order = ranked[:k]
        predictions.append(
            {
                "label": classes[order[0]],
                "probabilities": dict(zip(classes, row)),
                "top": [{"label": classes[i], "probability": row[i]} for i in order],
                "typicality": score,
                "warnings": trust.warnings(row, ranked, classes, score),
            }
        )
    return predictions
