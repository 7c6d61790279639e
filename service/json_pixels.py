"""A v1 predict body of plain numeric instances, read straight from its JSON text into float32.

orjson turns each of an image's 784 numbers into a Python float, and numpy then reads them back one
by one: about 27 µs per image on this project's machine, more than the model's run. simdjson parses
the text into its own tape, and `Array.as_buffer` copies the numbers out as C doubles: about 10 µs.

This is an accelerator, not a second parser with its own rules. `read_numeric_instances` answers
only when it is certain that orjson plus `pixels_to_batch` would give the same array and fields,
and returns None otherwise; the caller then takes the orjson path, which also explains every error.

How it is certain the instances are regular without visiting the numbers: it checks the length of
every array it expects (the instances, each instance, each row), and the count of '[' in the body
equals the number of those arrays. Every array in the text holds one '[' (and a string may hold
more), so equality means no other array exists: every element below the expected arrays is a
scalar, and `as_buffer` refuses any scalar that is not a number.
"""

from __future__ import annotations

import numpy as np
import simdjson

V1_FIELDS = frozenset({"instances", "top_k", "version"})
SIDE = 28
# orjson refuses a byte order mark and simdjson skips it; leave such a body to orjson.
BYTE_ORDER_MARK = b"\xef\xbb\xbf"


def read_numeric_instances(body: bytes) -> tuple[np.ndarray, dict] | None:
    """For a body {"instances": [...], "top_k"?, "version"?} whose instances are all numeric with an
    accepted shape (784, 28x28 or 1x28x28): the unchecked pixels as float32 [N,1,28,28] and the other
    fields as Python values. None for any other body."""
    if body.startswith(BYTE_ORDER_MARK):
        return None
    try:
        document = simdjson.Parser().parse(body)
    except (ValueError, RuntimeError):  # not JSON, or a number simdjson cannot hold: orjson's to judge
        return None
    if not isinstance(document, simdjson.Object):
        return None
    keys = list(document.keys())
    if len(keys) != len(set(keys)) or not V1_FIELDS.issuperset(keys):  # duplicates: orjson keeps the last
        return None
    instances = document.get("instances")
    fields = {key: document[key] for key in keys if key != "instances"}
    if not isinstance(instances, simdjson.Array) or not instances or any(
        isinstance(value, (simdjson.Array, simdjson.Object)) for value in fields.values()
    ):
        return None
    arrays = 1  # the instances list itself
    for instance in instances:
        count = _arrays_in_instance(instance)
        if count is None:
            return None
        arrays += count
    if body.count(b"[") != arrays:
        return None
    try:
        numbers = np.frombuffer(instances.as_buffer(of_type="d"), dtype=np.float64)
    except TypeError:  # null, true, a string or an object among the pixels
        return None
    if numbers.size != len(instances) * SIDE * SIDE:
        return None
    with np.errstate(over="ignore"):  # beyond float32 becomes infinity, which check_pixels rejects
        pixels = numbers.astype(np.float32)
    return pixels.reshape(len(instances), 1, SIDE, SIDE), fields


def _arrays_in_instance(instance: object) -> int | None:
    """How many arrays make up an instance of an accepted shape, itself included; None if its
    lengths are not those of an accepted shape."""
    if not isinstance(instance, simdjson.Array):
        return None
    length = len(instance)
    if length == SIDE * SIDE:
        return 1
    if length == 1:  # 1x28x28: one channel of rows
        rows, arrays = instance[0], 2
        if not isinstance(rows, simdjson.Array) or len(rows) != SIDE:
            return None
    elif length == SIDE:
        rows, arrays = instance, 1
    else:
        return None
    for row in rows:
        if not isinstance(row, simdjson.Array) or len(row) != SIDE:
            return None
    return arrays + SIDE
