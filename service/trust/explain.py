"""Occlusion sensitivity (Zeiler & Fergus 2014): where the model looked, as the drop of the top class's
probability when a patch of the picture is covered. numpy only; the occluded copies are run by the caller in
one batch, through the same runner (and limits) as every other request.
"""

from __future__ import annotations

import numpy as np

PATCH_FRACTION = 0.25  # patch side as a share of the picture side: 7 pixels for 28 (49 copies)
STRIDE_FRACTION = 0.14  # 4 pixels for 28: 49 copies, not 64 at 3 (1 + 64 runs measured 4.2-6.1 ms of CPU a picture)


def positions(side: int, patch: int, stride: int) -> list[int]:
    """Patch starts along one side, the last one flush with the edge so every pixel is covered."""
    starts = list(range(0, max(side - patch, 0) + 1, stride))
    if starts[-1] != side - patch:
        starts.append(side - patch)
    return starts


def geometry(height: int, width: int) -> tuple[int, int, list[int], list[int]]:
    patch = max(1, round(min(height, width) * PATCH_FRACTION))
    stride = max(1, round(min(height, width) * STRIDE_FRACTION))
    return patch, stride, positions(height, patch, stride), positions(width, patch, stride)


def copies_per_picture(height: int, width: int) -> int:
    _, _, rows, cols = geometry(height, width)
    return len(rows) * len(cols)


def occluded_copies(picture: np.ndarray) -> np.ndarray:
    """picture [C, H, W] -> [K, C, H, W]: one copy per patch position, the patch filled with the picture's
    per-channel median (the background of an ink picture, a neutral tone of a photo)."""
    channels, height, width = picture.shape
    patch, _, rows, cols = geometry(height, width)
    fill = np.median(picture.reshape(channels, -1), axis=1).astype(picture.dtype)[:, None, None]
    copies = np.repeat(picture[np.newaxis], len(rows) * len(cols), axis=0)
    k = 0
    for top in rows:
        for left in cols:
            copies[k, :, top : top + patch, left : left + patch] = fill
            k += 1
    return copies


def sensitivity_map(probability: float, occluded: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W]: per pixel, the mean drop of the top class's probability over the patches covering it."""
    patch, _, rows, cols = geometry(height, width)
    drop = np.zeros((height, width), dtype=np.float64)
    cover = np.zeros((height, width), dtype=np.float64)
    k = 0
    for top in rows:
        for left in cols:
            drop[top : top + patch, left : left + patch] += probability - float(occluded[k])
            cover[top : top + patch, left : left + patch] += 1.0
            k += 1
    return (drop / cover).astype(np.float32)


async def explain_batch(served, batch: np.ndarray, probabilities: np.ndarray) -> list[dict]:
    """One explanation per picture of `batch` (the model's input batch, NCHW or NHWC): the occluded copies of all
    pictures in one run of `served`'s runner (so they are batched and limited like any request's images)."""
    nhwc = getattr(served.input, "layout", "NCHW") == "NHWC"
    pictures = batch.transpose(0, 3, 1, 2) if nhwc else batch
    count, _, height, width = pictures.shape
    tops = probabilities.argmax(axis=1)
    copies = np.concatenate([occluded_copies(picture) for picture in pictures])
    occluded = await served.predict(np.ascontiguousarray(copies.transpose(0, 2, 3, 1)) if nhwc else copies)
    per_picture = len(copies) // count
    patch, stride, _, _ = geometry(height, width)
    explanations = []
    for i, top in enumerate(tops.tolist()):
        column = occluded[i * per_picture : (i + 1) * per_picture, top]
        heat = sensitivity_map(float(probabilities[i, top]), column, height, width)
        explanations.append({
            "method": "occlusion", "label": served.classes[top], "patch": patch, "stride": stride,
            "map": np.round(heat, 4).tolist(),
        })
    return explanations
