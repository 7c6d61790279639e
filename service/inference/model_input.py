"""A model's input tensor as its card declares it: the shapes a request may send, the values it may hold,
and the step from 8-bit pixels to the tensor (range, then mean / std, then layout and element type).

Everything per request is whole-array numpy: one multiply-add per channel, one transpose, one cast.
"""

from __future__ import annotations

import math

import numpy as np

from service.errors import InvalidInput
from service.inference.card import InputSpec

# Values a little outside what the preprocessing can make (float rounding in a client's scaling) are
# clipped, not rejected: this share of the allowed span.
SLACK = 1e-3
NUMPY_TYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "uint8": np.dtype(np.uint8)}
DIGIT_VALUES = 28 * 28  # the pictures the settings' floors were chosen for
JSON_BYTES_PER_VALUE = 12  # "0.45098039," : a pixel in JSON, as clients usually write it
V2_DATATYPES = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8"}


class ModelInput:
    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.layout = spec.layout
        self.channels = spec.channels
        self.height, self.width = spec.height, spec.width
        self.instance_shape: tuple[int, ...] = tuple(spec.instance_shape)
        self.values = math.prod(self.instance_shape)
        self.dtype = NUMPY_TYPES[spec.dtype]
        self.datatype = V2_DATATYPES[spec.dtype]
        # Shapes one instance may take in a request: the model's own, flat, and for one channel [H, W].
        self.shapes = {self.instance_shape, (self.values,)}
        if self.channels == 1:
            self.shapes.add((self.height, self.width))
        low, high = spec.range
        mean = np.asarray(spec.mean if spec.mean is not None else [0.0] * self.channels, dtype=np.float64)
        std = np.asarray(spec.std if spec.std is not None else [1.0] * self.channels, dtype=np.float64)
        # pixel p in 0..255 -> ((p / 255) * (high - low) + low - mean) / std  ==  p * scale + offset
        self._scale = ((high - low) / 255.0 / std).astype(np.float32)
        self._offset = ((low - mean) / std).astype(np.float32)
        self._identity = spec.dtype == "uint8"  # raw pixels: range [0, 255], no mean/std (the card checks it)
        ends = np.stack([(low - mean) / std, (high - mean) / std])
        self.low, self.high = float(ends.min()), float(ends.max())

    def max_instances(self, ceiling: int, tensor_budget_bytes: int) -> int:
        """Most pictures in one request: `ceiling`, fewer where their float32 batch would pass the byte budget."""
        return max(1, min(ceiling, tensor_budget_bytes // (4 * self.values)))

    def max_body_bytes(self, floor: int, instances: int) -> int:
        """The largest request body: `floor` (set for 28x28 pictures) grown with the picture's size, up to what a
        full request of numbers in JSON needs."""
        grown = floor * self.values // DIGIT_VALUES
        return max(floor, min(grown, instances * self.values * JSON_BYTES_PER_VALUE))

    @property
    def is_digits_shape(self) -> bool:
        """One channel of 28x28 in NCHW: the shape the v1 JSON fast path reads (service.http.json_tensors)."""
        return self.instance_shape == (1, 28, 28)

    def describe_shapes(self) -> str:
        c, h, w = self.channels, self.height, self.width
        own = f"[{c}, {h}, {w}] (channels, rows, columns)" if self.layout == "NCHW" else f"[{h}, {w}, {c}] (rows, columns, channels)"
        extra = f", {h} rows of {w} pixels" if c == 1 else ""
        return f"{own}{extra} or a flat list of {self.values} values"

    def describe_values(self) -> str:
        if self._identity:
            return "8-bit pixels, integers 0..255"
        return f"values in [{self.low:g}, {self.high:g}] (pixels mapped by the model card's range, mean and std)"

    # --- pictures --------------------------------------------------------------------------------

    def from_pixels(self, pixels: np.ndarray, full_scale: float = 255.0) -> np.ndarray:
        """Pictures [N, H, W, C] (colour order already the model's), values 0..full_scale -> the model's batch."""
        if self._identity:
            values = pixels if full_scale == 255.0 else np.rint(pixels * (255.0 / full_scale))
            tensor = values.astype(np.uint8, copy=False)
            if self.layout == "NCHW":
                tensor = tensor.transpose(0, 3, 1, 2)
            return np.ascontiguousarray(tensor)
        scale = self._scale * np.float32(255.0 / full_scale)
        # One multiply-add per channel straight into the model's layout: as measured on a 224x224 RGB picture,
        # 0.12 ms against 1.1 ms for a broadcast multiply-add, a transpose and a contiguous copy.
        count, height, width, channels = pixels.shape
        if self.layout == "NCHW":
            tensor = np.empty((count, channels, height, width), dtype=np.float32)
            for channel in range(channels):
                plane = tensor[:, channel]
                np.multiply(pixels[..., channel], scale[channel], out=plane, casting="unsafe")
                plane += self._offset[channel]
        else:
            tensor = np.empty(pixels.shape, dtype=np.float32)
            np.multiply(pixels, scale, out=tensor, casting="unsafe")
            tensor += self._offset
        return tensor if self.dtype == np.float32 else tensor.astype(self.dtype)

    def from_uint8_tensor(self, tensor: np.ndarray) -> np.ndarray:
        """A batch of 8-bit pixels already in the model's layout ([N, *instance_shape]) -> the model's batch."""
        if self._identity:
            return np.ascontiguousarray(tensor, dtype=np.uint8)
        if self.layout == "NCHW":
            channels_last = tensor.transpose(0, 2, 3, 1)
        else:
            channels_last = tensor
        return self.from_pixels(channels_last)

    # --- tensors sent as numbers -----------------------------------------------------------------

    def check_values(self, array: np.ndarray, what: str) -> np.ndarray:
        """A request's numbers, already shaped [N, *instance_shape], as the model's batch: finite, within what
        the card's preprocessing can make (rounding slack clipped), in the model's element type."""
        if self._identity:
            low, high = float(array.min()), float(array.max())
            if not (low >= 0 and high <= 255) or (array.dtype.kind == "f" and not np.array_equal(array, np.round(array))):
                raise InvalidInput(f"{what} hold values that are not 8-bit pixels; this model takes integers 0..255")
            return np.ascontiguousarray(array, dtype=np.uint8)
        if self.spec.mean is None:  # pixels in the card's range (the digits: [0, 1]), rounding slack clipped
            checked = check_range(array, what, self.low, self.high)
        else:
            checked = self._check_normalised(array, what)
        return np.ascontiguousarray(checked, dtype=self.dtype)

    def _check_normalised(self, array: np.ndarray, what: str) -> np.ndarray:
        """A normalised tensor is taken as sent where it is finite and within one span of what the preprocessing
        makes: tensors from a client's own pipeline (or test noise) pass; 8-bit pixels that were never scaled do not."""
        least, most = float(array.min()), float(array.max())
        span = self.high - self.low
        if least >= self.low - span and most <= self.high + span:
            return array
        if math.isnan(least) or math.isnan(most) or math.isinf(least) or math.isinf(most):
            raise InvalidInput(f"{what} contain NaN, infinity or null; values must be finite numbers")
        raise InvalidInput(
            f"{what} hold values from {least:g} to {most:g}; this model's input (pixels mapped by its card's range, mean "
            f"and std) lies in [{self.low:g}, {self.high:g}], and values beyond [{self.low - span:g}, {self.high + span:g}] "
            "are refused (scale 8-bit pixels as the card says, or send them as UINT8 over v2)"
        )


def check_range(array: np.ndarray, what: str, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Reject NaN, infinity (and JSON null, which arrives as NaN) and values outside [low, high]; clip rounding slack.
    Clips in place when it must: pass a copy of data that is not the caller's to change."""
    least, most = float(array.min()), float(array.max())
    if least >= low and most <= high:
        return array
    if math.isnan(least) or math.isnan(most) or math.isinf(least) or math.isinf(most):
        raise InvalidInput(f"{what} contain NaN, infinity or null; pixels must be finite numbers in [{low:g}, {high:g}]")
    slack = SLACK * (high - low)
    if least < low - slack or most > high + slack:
        hint = " (divide 8-bit pixels by 255)" if (low, high) == (0.0, 1.0) and most > high + slack else ""
        raise InvalidInput(f"{what} hold values from {least:g} to {most:g}; pixels must be in [{low:g}, {high:g}]{hint}")
    return np.clip(array, low, high, out=array)
