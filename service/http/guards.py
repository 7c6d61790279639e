"""What keeps one client from holding a worker: limits on a request's head, deadlines, a cap on connections.

`HttpProtocol` (service/http/protocol.py) counts the bytes of each request's line and headers as they
arrive and refuses one over `ConnectionLimits` at once (414, 431), so that parsing never goes on over an
endless header. Deadlines are checked by one `DeadlineSweep` per worker, a timer that looks at every
connection five times per deadline and measures each from when it first saw the connection waiting for a
head or a body (so a deadline is met within 1.4 times its length): the per-request cost is a few attribute
writes, no clock read and no timer per request. Every refusal answers a JSON error with `connection: close`, then shuts the write
side and reads and drops what the client still sends for a moment (`LINGER_S`): a client that is still
sending then reads the answer, not a connection reset.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus

import orjson

logger = logging.getLogger("service.connections")

# Where a connection stands, for the deadlines (while its app answers a request, none applies).
HEAD = 0  # waiting for a request's line and headers (the first, or the next after a response)
BODY = 1  # receiving a request body

# How long a refused connection's further bytes are read and dropped before it is closed, and how many at most.
LINGER_S = 2.0
LINGER_BYTES = 16 << 20

@dataclass(frozen=True)
class ConnectionLimits:
    """Per worker process; the defaults are the settings' (service/config.py)."""

    max_request_line_bytes: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    min_body_rate_bytes: int = 4096
    max_connections: int = 1000

    @classmethod
    def from_settings(cls, settings) -> ConnectionLimits:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})

    @property
    def sweep_interval_s(self) -> float:
        """Often enough that a deadline is acted on within a fifth of it (at least every second)."""
        return max(0.05, min(1.0, self.header_timeout_s / 5, self.body_timeout_s / 5))


def error_response(status: int, code: str, message: str, url: bytes = b"", headers: tuple = ()) -> bytes:
    """A whole response with a JSON error in the shape of the surface the URL belongs to (service.app)."""
    body = orjson.dumps({"error": message} if url.startswith(b"/v2") else {"error": {"code": code, "message": message}})
    head = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode()), b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n"]
    head += [b"%s: %s\r\n" % (name, value) for name, value in headers]
    return b"".join(head) + b"\r\n" + body


class DeadlineSweep:
    """One per worker (per uvicorn server state): runs while there are connections, and cuts those overdue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set, interval_s: float) -> None:
        self._loop = loop
        self._connections = connections
        self._interval_s = interval_s
        self._timer: asyncio.TimerHandle | None = None
        self.refused: Counter[str] = Counter()  # by reason, logged once per sweep

    @classmethod
    def of(cls, server_state, loop: asyncio.AbstractEventLoop, limits: ConnectionLimits) -> DeadlineSweep:
        sweep = getattr(server_state, "deadline_sweep", None)
        if sweep is None:
            sweep = server_state.deadline_sweep = cls(loop, server_state.connections, limits.sweep_interval_s)
        return sweep

    def ensure_running(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(self._interval_s, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        moment = time.monotonic()
        for connection in list(self._connections):
            check = getattr(connection, "check_deadlines", None)  # another protocol (a websocket) has none
            if check is not None:
                check(moment)
        if self.refused:
            logger.info(
                "refused or cut connections: %s", ", ".join(f"{count} {why}" for why, count in sorted(self.refused.items())),
                extra={"refused": dict(self.refused)},
            )
            self.refused.clear()
        if self._connections:
            self.ensure_running()
