"""Pictures decoded within the worker's memory: the cost of a request's pictures read from their headers, the
request's pixels capped, and the decoding run once the decode budget has room for its largest picture (its
pictures are decoded one after another). Used by every endpoint that takes pictures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from service.errors import ImageTooLarge
from service.imaging import WORK_SIDE
from service.imaging.decode import decode_cost
from service.memory import WorkerMemory

T = TypeVar("T")


async def decode_within_budget(pictures: list[bytes], work: Callable[[], T], *, memory: WorkerMemory,
                               max_request_pixels: int, reduce_to: int | None = WORK_SIDE) -> T:
    """Run `work` (blocking: it decodes `pictures` one by one) on a thread once the memory it needs is free.
    `reduce_to`: the side a JPEG is decoded at least at (Pillow's draft), as `work` decodes it; None: full size."""
    # Headers only, but up to max_instances of them, some with large metadata: off the event loop too.
    costs = await asyncio.to_thread(lambda: [decode_cost(data, reduce_to=reduce_to) for data in pictures])
    pixels = sum(p for p, _ in costs)
    if pixels > max_request_pixels:
        raise ImageTooLarge(
            f"the pictures of this request decode to {pixels} pixels in all; at most {max_request_pixels} are "
            "accepted per request (send fewer or smaller pictures, or several requests)"
        )
    peak = max((size for _, size in costs), default=0)
    async with memory.decode.hold(peak):
        decoding = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            result = await asyncio.shield(decoding)
        except asyncio.CancelledError:
            # The client left; the thread decodes on regardless: its memory stays counted until it is done.
            await asyncio.wait([decoding])
            raise
    await memory.after_decoding(peak)
    return result
