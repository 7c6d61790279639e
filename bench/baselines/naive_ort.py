"""The naive server the benchmark compares against: FastAPI, a pydantic body of float lists,
ONNX Runtime called per request inside `async def`. Run with 2 uvicorn workers, 1 ORT thread each.

    BENCH_MODEL=models/mnist-convnet/1/model.onnx uvicorn --app-dir bench/baselines naive_ort:app --workers 2
"""

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["BENCH_MODEL"], options, providers=["CPUExecutionProvider"])

app = FastAPI()


class PredictRequest(BaseModel):
    instances: list[list[float]]


@app.post("/predict")
async def predict(body: PredictRequest) -> dict:
    images = np.array(body.instances, dtype=np.float32).reshape(-1, 1, 28, 28)
    probabilities = session.run(None, {"input": images})[0]
    return {"predictions": [{"probabilities": row} for row in probabilities.tolist()]}
