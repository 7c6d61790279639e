"""The least a server that runs the model per request can do: the ceiling's raw ASGI app and orjson
parse, one ONNX Runtime run (1 thread) on the pixels, the probabilities answered with orjson. No
checks, no batching, nothing else. At one connection it is the floor for any such server on this
machine with this model.

    BENCH_MODEL=models/mnist-convnet/1/model.onnx uvicorn --app-dir bench/baselines minimal_ort:app
"""

import os

import numpy as np
import onnxruntime as ort
import orjson
from raw_asgi import lifespan, read_body

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["BENCH_MODEL"], options, providers=["CPUExecutionProvider"])
INPUT = session.get_inputs()[0].name
HEADERS = [(b"content-type", b"application/json")]


async def app(scope, receive, send):
    if scope["type"] != "http":
        await lifespan(receive, send)
        return
    body = await read_body(receive)
    images = np.asarray(orjson.loads(body)["instances"], dtype=np.float32).reshape(-1, 1, 28, 28)
    probabilities = session.run(None, {INPUT: images})[0]
    answer = orjson.dumps({"predictions": [{"probabilities": row} for row in probabilities.tolist()]})
    await send({"type": "http.response.start", "status": 200, "headers": [*HEADERS, (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})
