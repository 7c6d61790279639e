"""The naive PyTorch server: like naive_ort.py, but the model runs in PyTorch eager mode.

The torch module is rebuilt from the ONNX file itself (onnx2torch), so it holds exactly the
weights ONNX Runtime serves. Run with 2 uvicorn workers, 1 torch thread each.

    BENCH_MODEL=models/mnist-convnet/1/model.onnx uvicorn --app-dir bench/baselines naive_torch:app --workers 2
"""

import os

import numpy as np
import onnx
import onnx2torch
import torch
from fastapi import FastAPI
from pydantic import BaseModel

torch.set_num_threads(1)


def load_torch_model(path: str) -> torch.nn.Module:
    graph = onnx.load(path)
    # onnx2torch refuses Reshape(allowzero=1); with no 0 in the target shape it means the same as 0.
    for node in graph.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Reshape" and attribute.name == "allowzero":
                attribute.i = 0
    return onnx2torch.convert(graph).eval()


model = load_torch_model(os.environ["BENCH_MODEL"])

app = FastAPI()


class PredictRequest(BaseModel):
    instances: list[list[float]]


@app.post("/predict")
async def predict(body: PredictRequest) -> dict:
    images = torch.from_numpy(np.array(body.instances, dtype=np.float32).reshape(-1, 1, 28, 28))
    with torch.inference_mode():
        probabilities = model(images)
    return {"predictions": [{"probabilities": row} for row in probabilities.tolist()]}
