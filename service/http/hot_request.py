"""Hot requests: a v1 predict or v2 infer POST with a declared body of at most HOT_BODY_LIMIT, answered by the
app's hot entry without uvicorn's per-request cycle (see service.http.protocol, which makes them), and the
transport that sends a response's head and body in one socket write."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import TYPE_CHECKING

from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE

if TYPE_CHECKING:
    from service.http.protocol import HttpProtocol

# Every status line uvicorn writes starts so, whatever the request's HTTP version.
STATUS_LINE_START = b"HTTP/1.1 "
# Largest body a hot request gathers before its app starts; a larger one goes through uvicorn's cycle,
# which reads it under flow control. A request with one to a few dozen digits is 6 to 400 KB.
HOT_BODY_LIMIT = 1 << 20
INTERNAL_ERROR = b'{"error":{"code":"internal_error","message":"Internal Server Error"}}'
# Bytes of bodies that hot requests of this process may be gathering at once (declared, not yet whole). Past it, a
# request goes through uvicorn's cycle, which reads at most 64 KiB ahead of the app, and the app reads its body
# within the worker's body budget (service.memory): many clients that stop halfway through a body of up to
# HOT_BODY_LIMIT cannot make the process gather more than this.
HOT_GATHERING_LIMIT = 32 << 20
# A hot request starts in the loop callback that read it while fewer than this many are under way in the process
# (see HotRequest.start).
EAGER_BELOW = 8



class HeaderHoldingTransport:
    """A transport that holds a write starting with a status line until the next write joins it.

    Should no body write follow in the same event-loop step (a HEAD answer, a streamed body that starts
    later, "100 Continue"), the held bytes go out at the start of the next step, so nothing waits long and
    the order of bytes never changes."""

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

    def write_now(self, data: bytes) -> None:
        """Write at once, after anything held: for a response already whole."""
        held = self._held
        if held is not None:
            self._held = None
            data = held + data
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


class HotRequest:
    """One hot request on a connection: gathers its body, runs the app's hot entry once the body is
    whole, and writes the response. Stands in `HttpProtocol.cycle` for uvicorn's RequestResponseCycle,
    with the attributes uvicorn's protocol reads there (`response_complete`, `keep_alive`)."""

    __slots__ = ("_protocol", "_transport", "scope", "_chunks", "keep_alive", "response_complete", "_task",
                 "_client_left", "_head", "_unsent", "_chunked", "_ended", "_gathering")

    gathering = 0  # bytes declared by the hot requests of this process whose bodies are not yet whole

    def __init__(self, protocol: HttpProtocol, scope: dict, keep_alive: bool, declared: int = 0) -> None:
        self._gathering = declared
        HotRequest.gathering += declared
        self._protocol = protocol
        self._transport: HeaderHoldingTransport = protocol.transport  # type: ignore[assignment]
        self.scope = scope
        self._chunks: list[bytes] | None = []
        self.keep_alive = keep_alive  # uvicorn's shutdown() sets it to False: close once answered
        self.response_complete = False
        self._task: asyncio.Task | None = None
        self._client_left = False
        self._head: bytes | None = None  # status line and headers, written with the first body bytes
        self._unsent = 0  # body bytes the content-length still promises
        self._chunked = False
        self._ended: asyncio.Future | None = None  # what a receive() after the body waits for

    def add_body(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def start(self, app) -> None:
        """The body is whole: run the app on it.

        While few requests are under way in the process, the app starts at once, in the loop callback that read
        the request. One answered without waiting (refused before its model runs) is done here. One that waits
        for its model's run goes on in a task among uvicorn's (graceful shutdown waits for them), which picks it
        up in the loop step of that run: the requests read in one step are all queued when the run's flush
        comes (service.inference.batching), and their answers leave in that same step.

        Under heavier load, each request starts in a task of its own: the loop reads every ready request before
        running any. Starting 32 requests in flight per worker at once, as each was read, cost ~10% more CPU per
        request (the code of reading and of answering taking turns in the processor's caches); below
        EAGER_BELOW, starting at once measured as fast at 8 connections, and 0.04 ms faster at one."""
        self._gathered()
        tasks = self._protocol.tasks
        if len(tasks) >= EAGER_BELOW:
            self._task = self._protocol.loop.create_task(self._run(app))
        else:
            context = contextvars.copy_context()  # as a task would: the app's context variables stay its own
            run = self._run(app)
            try:
                awaited = context.run(run.send, None)
            except StopIteration:
                return
            self._task = self._protocol.loop.create_task(_Resumed(run, awaited), context=context)
        self._task.add_done_callback(tasks.discard)
        tasks.add(self._task)

    def client_left(self) -> None:
        """The connection closed. A request not yet answered is cancelled: one still queued for the model
        is dropped before inference."""
        self._client_left = True
        self._gathered()
        if not self.response_complete:
            self.response_complete = True
            if self._task is not None:
                self._task.cancel()
        self._end()

    def _gathered(self) -> None:
        """The body is whole, or will never be: it no longer counts as being gathered."""
        HotRequest.gathering -= self._gathering
        self._gathering = 0

    async def _run(self, app) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException:
            if self._client_left:  # cancelled on purpose: nobody is waiting for the answer
                return
            # The app answers its own errors: this is a fault in answering, or a graceful shutdown that ran
            # out of time and cancelled the request. As uvicorn does: a plain 500 if nothing was sent yet.
            self._protocol.logger.exception("Exception in ASGI application")
            if self._head is None and not self.response_complete:
                self.keep_alive = False
                self._send_start(500, [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(INTERNAL_ERROR))])
                self._send_body(INTERNAL_ERROR, more_body=False)
            else:
                self._transport.close()

    async def receive(self) -> dict:
        chunks = self._chunks
        if chunks is not None:
            self._chunks = None
            return {"type": "http.request", "body": chunks[0] if len(chunks) == 1 else b"".join(chunks), "more_body": False}
        # After the body, as in uvicorn: wait until the response is complete or the client leaves.
        if not self.response_complete:
            self._ended = self._protocol.loop.create_future()
            await self._ended
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        if self.response_complete:
            if self._client_left:
                return  # nothing to write to
            raise RuntimeError(f"Unexpected ASGI message {message['type']!r} sent, after response already completed.")
        if self._head is None:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got {message['type']!r}.")
            self._send_start(message["status"], message.get("headers", ()))
        elif message["type"] == "http.response.body":
            self._send_body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got {message['type']!r}.")

    def _send_start(self, status: int, headers) -> None:
        content = [STATUS_LINE[status]]
        for name, value in self._protocol.server_state.default_headers:
            content += (name, b": ", value, b"\r\n")
        length = None
        for name, value in headers:
            name = name.lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and b"close" in [token.strip() for token in value.lower().split(b",")]:
                self.keep_alive = False
                continue  # written once, below
            content += (name, b": ", value, b"\r\n")
        # Checked together rather than one by one: each expression matches single bytes.
        if HEADER_RE.search(b"".join(name for name, _ in headers)):
            raise RuntimeError("Invalid HTTP header name.")
        if HEADER_VALUE_RE.search(b"".join(value for _, value in headers)):
            raise RuntimeError("Invalid HTTP header value.")
        if not self.keep_alive:
            content.append(b"connection: close\r\n")
        if length is None:
            self._chunked = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self._head = b"".join(content)
        self._unsent = length or 0

    def _send_body(self, body: bytes, more_body: bool) -> None:
        if self._chunked:
            body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + (b"" if more_body else b"0\r\n\r\n")
        else:
            self._unsent -= len(body)
            if self._unsent < 0:
                raise RuntimeError("Response content longer than Content-Length")
        head = self._head
        if head:
            self._head = b""
            body = head + body
        if body:
            self._transport.write_now(body)
        if not more_body:
            if self._unsent:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self._end()
            if not self.keep_alive:
                self._transport.close()
            self._protocol.on_response_complete()  # uvicorn's: the next pipelined request, or the keep-alive timer

    def _end(self) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)


class _Resumed(Coroutine):
    """The rest of a coroutine that was started by hand and waits for the future `awaited`, for a task to run.

    The task's first step hands it the future; if that is done already (a batch ran in between, in an
    earlier callback of the same loop step), the coroutine goes on at once instead, rather than one loop step
    later. A cancellation that comes before the first step cancels the future and reaches the coroutine where
    it waits, as it would in a task that had started it."""

    __slots__ = ("_coroutine", "_awaited", "_started")

    def __init__(self, coroutine: Coroutine, awaited: asyncio.Future | None) -> None:
        self._coroutine = coroutine
        self._awaited = awaited  # None: a bare yield, which asks the task to go on in the next loop step
        self._started = False

    def send(self, value):
        if self._started:
            return self._coroutine.send(value)
        self._started = True
        awaited, self._awaited = self._awaited, None
        if awaited is None or not awaited.done():
            return awaited
        awaited._asyncio_future_blocking = False  # as the task would, once the future is done
        return self._coroutine.send(None)

    def throw(self, *error):
        if not self._started:
            self._started = True
            awaited, self._awaited = self._awaited, None
            if awaited is not None:
                awaited.cancel()  # as a task does with the future it waits for: a queued request is then dropped
        return self._coroutine.throw(*error)

    def close(self) -> None:
        self._coroutine.close()

    def __next__(self):
        return self.send(None)

    def __await__(self):
        return self
