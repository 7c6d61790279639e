"""CPU per request of the HTTP protocol alone, for comparing two trees side by side.

Feeds `GET /healthz`-like requests to service.http.protocol.HttpProtocol on one keep-alive connection through a
fake transport, answered by a trivial ASGI app (so that the protocol's own bookkeeping is most of the cost), and
prints the lowest CPU time per request (time.process_time) over `repeats` runs of `requests` requests.
Run it alternately against two checkouts on the same machine and compare:

    for i in 1 2 3 4 5; do
        for tree in /path/to/before /path/to/after; do PYTHONPATH=$tree python bench/protocol_overhead.py; done
    done
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvicorn
from uvicorn.server import ServerState

from service.http.protocol import HttpProtocol

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"


class _Transport:
    """Enough of an asyncio transport for the protocol; each write completes the request being timed."""

    def __init__(self) -> None:
        self.answered: asyncio.Future | None = None
        self.closing = False

    def write(self, data: bytes) -> None:
        if self.answered is not None and not self.answered.done():
            self.answered.set_result(None)

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 5000) if name in ("peername", "sockname") else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def _app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def measure(requests: int, repeats: int) -> float:
    config = uvicorn.Config(_app, http=HttpProtocol, log_level="warning", lifespan="off")
    config.load()
    loop = asyncio.get_running_loop()
    protocol = HttpProtocol(config, ServerState(), {}, _loop=loop)
    transport = _Transport()
    protocol.connection_made(transport)
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(requests):
            transport.answered = loop.create_future()
            protocol.data_received(REQUEST)
            await transport.answered
            await asyncio.sleep(0)  # the response's held status line leaves
        best = min(best, (time.process_time() - started) / requests)
    protocol.connection_lost(None)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    print(f"protocol CPU per request: {asyncio.run(measure(args.requests, args.repeats)) * 1e6:.2f} us")


if __name__ == "__main__":
    main()
