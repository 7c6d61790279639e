"""A strict reader for the IDX format the MNIST family of datasets ships in.

An IDX file is: two zero bytes, one byte naming the element type, one byte giving the number of
dimensions, one big-endian uint32 per dimension, then the elements in big-endian row-major order.
Files may be gzip-compressed (recognised by their magic bytes, not by their name).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

# IDX element type code -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


class IdxError(ValueError):
    """The file is not a well-formed IDX file (or not the one expected); the message says why."""


def read_idx_bytes(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse raw (uncompressed) IDX bytes into an array of native byte order."""
    if len(data) < 4:
        raise IdxError(f"{source}: {len(data)} bytes is too short for an IDX header (needs at least 4)")
    if data[0] != 0 or data[1] != 0:
        raise IdxError(
            f"{source}: bad magic number 0x{data[:4].hex()}: an IDX file starts with two zero bytes"
        )
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise IdxError(f"{source}: unknown element type 0x{type_code:02X} (known: {known})")
    if ndim == 0:
        raise IdxError(f"{source}: header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxError(
            f"{source}: truncated header: {ndim} dimensions need {header_size} bytes, file has {len(data)}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_size
    if actual < expected:
        raise IdxError(
            f"{source}: truncated data: shape {shape} of {dtype.name} needs {expected} bytes "
            f"after the header, file has {actual}"
        )
    if actual > expected:
        raise IdxError(
            f"{source}: {actual - expected} unexpected trailing bytes after the {expected} bytes "
            f"of data that shape {shape} declares"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise IdxError(f"{path}: damaged gzip stream ({exc})") from exc
    return read_idx_bytes(raw, source=str(path))


def read_images(path: str | Path, height: int = 28, width: int = 28) -> np.ndarray:
    """Read an IDX image file: uint8, shape [N, height, width]."""
    images = read_idx(path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (height, width):
        raise IdxError(
            f"{path}: expected uint8 images of shape [N, {height}, {width}], "
            f"found {images.dtype.name} of shape {list(images.shape)}"
        )
    return images


def read_labels(path: str | Path, num_classes: int) -> np.ndarray:
    """Read an IDX label file: uint8 class indices in [0, num_classes), shape [N]."""
    labels = read_idx(path)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IdxError(
            f"{path}: expected a 1-D uint8 label vector, found {labels.dtype.name} "
            f"of shape {list(labels.shape)}"
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise IdxError(f"{path}: label {int(labels.max())} is outside 0..{num_classes - 1}")
    return labels


def read_pair(images_path: str | Path, labels_path: str | Path, num_classes: int):
    """Read matching image and label files and check that their counts agree."""
    images = read_images(images_path)
    labels = read_labels(labels_path, num_classes)
    if len(images) != len(labels):
        raise IdxError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    return images, labels
