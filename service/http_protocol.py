"""uvicorn's HTTP protocol (httptools), with each response leaving in one socket write.

uvicorn writes a response's status line and headers, then its body, as two writes: two send()
system calls per response, each ~4.5 us of CPU on loopback (bench/socket_writes.py), and two
segments for the client to read. `OneWriteProtocol` holds the status line and headers back and
sends them together with the body's first write. Should no body write follow in the same
event-loop step (a HEAD answer, a streamed body that starts later, "100 Continue"), the held bytes
go out at the start of the next step, so nothing waits long and the order of bytes never changes.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Every status line uvicorn writes starts so, whatever the request's HTTP version.
STATUS_LINE_START = b"HTTP/1.1 "


class HeaderHoldingTransport:
    """A transport that holds a write starting with a status line until the next write joins it."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data[: len(STATUS_LINE_START)] == STATUS_LINE_START:
            self._held = bytes(data)
            self._loop.call_soon(self.release)
        else:
            self._transport.write(data)

    def release(self) -> None:
        """Write what is held, if anything."""
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.release()
        self._transport.close()

    def write_eof(self) -> None:
        self.release()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    # Called on every request by uvicorn's flow control: direct, not through __getattr__.
    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeaderHoldingTransport(transport, self.loop))  # type: ignore[arg-type]
