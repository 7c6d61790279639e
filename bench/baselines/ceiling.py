"""The ceiling: what HTTP and JSON alone cost. A raw ASGI app that reads the body, parses it with
orjson into a numpy array (as a real server must) and answers a constant 10 probabilities.

    uvicorn --app-dir bench/baselines ceiling:app
"""

import numpy as np
import orjson

ANSWER = orjson.dumps({"predictions": [{"probabilities": [0.1] * 10}]})
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":  # lifespan: nothing to set up
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
            await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    np.asarray(orjson.loads(body)["instances"], dtype=np.float32).reshape(-1, 1, 28, 28)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
