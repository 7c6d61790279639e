"""IDX writing and small synthetic datasets in the MNIST file layout, so the training tests need
neither the internet nor the real datasets."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

TYPE_CODES = {np.dtype("uint8"): 0x08, np.dtype("int8"): 0x09, np.dtype("int16"): 0x0B,
              np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D, np.dtype("float64"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, TYPE_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data, compresslevel=1) if compress else data)
    return path


def synthetic_images(count: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Ten fixed random blob patterns, each drawn shifted by up to 2 pixels with varying
    brightness and noise: learnable in an epoch or two, far from trivial for chance (10%)."""
    prototypes = np.random.default_rng(1234).random((num_classes, 7, 7)) > 0.6
    prototypes = prototypes.repeat(3, axis=1).repeat(3, axis=2).astype(np.float32)  # 21x21 blobs
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, count)
    images = np.zeros((count, 28, 28), dtype=np.float32)
    offsets = rng.integers(1, 6, (count, 2))
    for i, (label, (dy, dx)) in enumerate(zip(labels, offsets)):
        images[i, dy : dy + 21, dx : dx + 21] = prototypes[label] * rng.uniform(0.6, 1.0)
    images += rng.normal(0, 0.15, images.shape)
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels.astype(np.uint8)
