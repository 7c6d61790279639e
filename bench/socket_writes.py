"""What a second socket write per response costs: CPU time of two send() calls (headers, then body)
against one send() of both, over TCP on loopback with a reader draining the other end.

    .venv/bin/python bench/socket_writes.py

Sizes are those of a v1 answer: about 180 bytes of status line and headers, 330 of JSON body.
"""

from __future__ import annotations

import os
import socket
import time

HEADERS, BODY = b"h" * 180, b"b" * 330
RESPONSES = 100_000


def main() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    if os.fork() == 0:  # the reader: drains everything, as a client reading responses would
        reader = socket.create_connection(listener.getsockname())
        while reader.recv(1 << 20):
            pass
        os._exit(0)
    writer, _ = listener.accept()
    writer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio and uvloop set it on every connection
    for _ in range(3):
        started = time.process_time()
        for _ in range(RESPONSES):
            writer.send(HEADERS)
            writer.send(BODY)
        two = (time.process_time() - started) / RESPONSES * 1e6
        started = time.process_time()
        for _ in range(RESPONSES):
            writer.send(HEADERS + BODY)
        one = (time.process_time() - started) / RESPONSES * 1e6
        print(f"per response: two writes {two:.2f} us of CPU, one write {one:.2f} us")
    writer.close()
    os.wait()


if __name__ == "__main__":
    main()
