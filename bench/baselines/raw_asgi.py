"""What the raw ASGI baselines share: the lifespan handshake and reading the whole request body."""


async def lifespan(receive, send) -> None:
    """Answer uvicorn's lifespan messages: these apps have nothing to set up."""
    message = await receive()
    if message["type"] == "lifespan.startup":
        await send({"type": "lifespan.startup.complete"})
        await receive()
    await send({"type": "lifespan.shutdown.complete"})


async def read_body(receive) -> bytes:
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body
