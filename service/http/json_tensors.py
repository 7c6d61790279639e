"""Pixel tensors read straight from a request's JSON text into numpy, for the two JSON predict routes.

orjson turns each of an image's 784 numbers into a Python float, and numpy then reads them back one
by one: about 27 µs per image on this project's machine, more than the model's run. simdjson parses
the text into its own tape, and `Array.as_buffer` copies the numbers out as C doubles: about 10 µs.

This is an accelerator, not a second parser with its own rules. Each reader answers only when it is
certain that the orjson path would make the same values of the same body, and returns None
otherwise; the caller then takes the orjson path, which also explains every error. (The two parsers
accept the same JSON, except that simdjson skips a byte order mark and refuses integers beyond 64
bits, and that for a repeated key orjson keeps the last value: such bodies are left to orjson.)

How a reader knows that nested lists are regular without visiting the numbers: it accounts for every
array it expects (and checks their lengths), and requires the count of '[' in the text to equal the
number of those arrays. Every array in the text holds one '[' (and a string may hold more), so
equality means that no other array exists: every element below the expected arrays is a scalar,
and `as_buffer` refuses any scalar that is not a number.
"""

from __future__ import annotations

import numpy as np
import simdjson

V1_FIELDS = frozenset({"instances", "top_k", "version", "explain"})
SIDE = 28
BYTE_ORDER_MARK = b"\xef\xbb\xbf"
# A v2 document smaller than this is left to orjson, which reads it faster than simdjson plus the checks
# here do: a binary request's JSON header (~160 bytes) in 0.6 against 7.9 µs. The accelerator pays from
# about 230 numbers of data on (~4.6 KB of JSON), where numpy's conversion of orjson's floats dominates.
ACCELERATE_FROM_BYTES = 4096


def read_numeric_instances(body: bytes) -> tuple[np.ndarray, dict] | None:
    """For a v1 predict body {"instances": [...], "top_k"?, "version"?} whose instances are all numeric
    and all of one accepted shape (784, 28x28 or 1x28x28): the unchecked pixels as float32 [N,1,28,28] and
    the other fields as Python values. None for any other body."""
    document = _parse_object(body)
    if document is None or not V1_FIELDS.issuperset(document.keys()):
        return None
    instances = document.get("instances")
    fields = {key: document[key] for key in document.keys() if key != "instances"}
    if not isinstance(instances, simdjson.Array) or not instances or any(
        isinstance(value, (simdjson.Array, simdjson.Object)) for value in fields.values()
    ):
        return None
    # Instances all of one layout: the orjson path checks mixed layouts one instance at a time, and
    # its errors then name the instance.
    layouts = {_arrays_in_instance(instance) for instance in instances}
    if len(layouts) != 1 or None in layouts:
        return None
    arrays = 1 + len(instances) * layouts.pop()  # the instances list and each instance's arrays
    if _brackets(body) != arrays:
        return None
    numbers = _numbers(instances)
    if numbers is None or numbers.size != len(instances) * SIDE * SIDE:
        return None
    with np.errstate(over="ignore"):  # beyond float32 becomes infinity, which check_pixels rejects
        pixels = numbers.astype(np.float32)
    return pixels.reshape(len(instances), 1, SIDE, SIDE), fields


def read_infer_document(header: bytes) -> dict | None:
    """A v2 infer request's JSON document as Python values, where each input's "data", when it is a
    flat list of numbers, is a float64 array. None when the document is not an object, or any
    "data" is nested or holds something other than numbers, or the document is small."""
    if len(header) < ACCELERATE_FROM_BYTES:
        return None
    document = _parse_object(header)
    if document is None:
        return None
    arrays, result = 0, {}
    for key in document.keys():
        value = document[key]
        if key == "inputs" and isinstance(value, simdjson.Array):
            tensors = [_tensor(item) for item in value]
            if None in tensors:
                return None
            result[key] = [plain for plain, _ in tensors]
            arrays += 1 + sum(count for _, count in tensors)
        else:
            result[key], lists = _plain(value)
            arrays += lists
    if _brackets(header) != arrays:
        return None
    return result


def _tensor(value: object) -> tuple[object, int] | None:
    """One input tensor as Python values, its "data" as a float64 array when that is a list, and how
    many arrays it holds; None if its data holds something other than numbers or a key repeats."""
    if not isinstance(value, simdjson.Object):
        return _plain(value)
    fields = _unique_keys(value)
    if fields is None:
        return None
    plain, arrays = {}, 0
    for field in fields:
        item = value[field]
        if field == "data" and isinstance(item, simdjson.Array):
            plain[field] = _numbers(item)
            if plain[field] is None:
                return None
            arrays += 1
        else:
            plain[field], lists = _plain(item)
            arrays += lists
    return plain, arrays


def _parse_object(text: bytes) -> simdjson.Object | None:
    """The text's top-level object, if simdjson reads it the way orjson would and its keys are unique."""
    if text.startswith(BYTE_ORDER_MARK):
        return None
    try:
        document = simdjson.Parser().parse(text)
    except (ValueError, RuntimeError):  # not JSON, or a number simdjson cannot hold: orjson's to judge
        return None
    if not isinstance(document, simdjson.Object) or _unique_keys(document) is None:
        return None
    return document


def _brackets(text: bytes) -> int:
    """How many '[' the text holds. bytes.count walks the text byte by byte; replace finds each one with
    memchr, several times faster on a 6 KB body."""
    return len(text) - len(text.replace(b"[", b""))


def _unique_keys(document: simdjson.Object) -> list[str] | None:
    """The object's keys, if none repeats and each can be looked up: simdjson cannot find a key that
    holds a NUL character ("\\u0000") by name."""
    keys = list(document.keys())
    if len(keys) != len(set(keys)) or any("\0" in key for key in keys):
        return None
    return keys


def _numbers(array: simdjson.Array) -> np.ndarray | None:
    """Every number in the array and the arrays within it, as float64; None if it holds anything else."""
    try:
        return np.frombuffer(array.as_buffer(of_type="d"), dtype=np.float64)
    except TypeError:  # null, true, a string or an object
        return None


def _plain(value: object) -> tuple[object, int]:
    """A parsed value as Python objects, and how many lists it holds."""
    if isinstance(value, simdjson.Array):
        value = value.as_list()
    elif isinstance(value, simdjson.Object):
        value = value.as_dict()
    return value, _lists_in(value)


def _lists_in(value: object) -> int:
    lists, pending = 0, [value]  # a stack, not recursion: JSON may nest deeper than Python's recursion limit
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            lists += 1
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return lists


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
