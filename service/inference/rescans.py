"""Rescans of the model repository that coalesce: however many are asked for, one runs and one waits at most.

A reload request, the repository watcher and a reload passed on from another worker process all ask for a
rescan here. While one runs, every request that comes in joins the single pending rescan, which covers the
union of what they asked for and starts once the running one ends. A storm of reloads thus costs at most two
scans in a row, never a queue of them, and each caller still sees a scan that began after it asked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger("service.registry")

# A rescan of the whole repository (rather than of some models' directories).
EVERYTHING = None


class CoalescingRescans:
    def __init__(self, rescan: Callable[[frozenset[str] | None], Awaitable[None]]) -> None:
        self._rescan = rescan  # called with the model names to rescan, or None for the whole repository
        self._pending: asyncio.Future | None = None
        self._pending_names: set[str] | None = set()
        self._runner: asyncio.Task | None = None

    def ask(self, name: str | None = EVERYTHING) -> asyncio.Future:
        """A future done when a rescan that covers `name` (None: everything) and started after this call ends;
        it holds the rescan's exception if it failed. Await it through asyncio.shield: it is shared."""
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_future()
            self._pending.add_done_callback(_mark_retrieved)
            self._pending_names = set()
        if name is EVERYTHING:
            self._pending_names = None
        elif self._pending_names is not None:
            self._pending_names.add(name)
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="model-repository-rescan")
        return self._pending

    async def rescan(self, name: str | None = EVERYTHING) -> None:
        """Ask for a rescan and wait for it; a caller cancelled meanwhile leaves it running for the others."""
        await asyncio.shield(self.ask(name))

    async def _run(self) -> None:
        try:
            while self._pending is not None:
                done, names = self._pending, self._pending_names
                self._pending = None
                try:
                    await self._rescan(None if names is None else frozenset(names))
                except Exception as error:  # reported to every caller, and logged once for those that did not wait
                    logger.exception("scanning the model repository failed")
                    if not done.done():
                        done.set_exception(error)
                else:
                    if not done.done():
                        done.set_result(None)
        finally:
            self._runner = None

    async def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)


def _mark_retrieved(future: asyncio.Future) -> None:
    """A failure is logged where it happens; asyncio need not warn that nobody waited for it."""
    if not future.cancelled():
        future.exception()
