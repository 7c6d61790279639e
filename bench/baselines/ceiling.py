"""The ceiling: what HTTP and JSON alone cost. A raw ASGI app that reads the body, parses it with
orjson into a numpy array (as a real server must) and answers a constant 10 probabilities.

    uvicorn --app-dir bench/baselines ceiling:app
"""

import numpy as np
import orjson
from raw_asgi import lifespan, read_body

ANSWER = orjson.dumps({"predictions": [{"probabilities": [0.1] * 10}]})
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":
        await lifespan(receive, send)
        return
    body = await read_body(receive)
    np.asarray(orjson.loads(body)["instances"], dtype=np.float32).reshape(-1, 1, 28, 28)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
