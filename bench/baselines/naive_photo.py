"""The naive photo server the big-model benchmark compares against: FastAPI, an `UploadFile`, Pillow
(open, EXIF orientation, RGB, resize the shorter side, centre crop), numpy normalisation, one ONNX Runtime
run per picture inside `async def`, the top k answered. What a tutorial's image classifier endpoint
looks like. Run with 2 uvicorn workers, 1 ORT thread each (the same 2 cores as the service).

    BENCH_MODEL_DIR=/tmp/bench-models/resnet18-bench/1 uvicorn --app-dir bench/baselines naive_photo:app --workers 2

It reads the card (model.json) beside the model for the labels, sizes and mean / std, and answers
`POST /v1/models/{name}/predict/image?top_k=5` with `{"predictions": [{"label", "top": [...]}]}`,
the same shape as pixelserve's, so the benchmark checks both the same way.
"""

import io
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, UploadFile
from PIL import Image, ImageOps

MODEL_DIR = Path(os.environ["BENCH_MODEL_DIR"])
CARD = json.loads((MODEL_DIR / "model.json").read_text())
SIZE = CARD["input"]["height"]
SHORTER = CARD["preprocessing"]["resize_shorter"]
MEAN = np.array(CARD["input"]["mean"], dtype=np.float32)
STD = np.array(CARD["input"]["std"], dtype=np.float32)
CLASSES = CARD["classes"]

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(str(MODEL_DIR / "model.onnx"), options, providers=["CPUExecutionProvider"])

app = FastAPI()


@app.post("/v1/models/{name}/predict/image")
async def predict_image(name: str, file: UploadFile = File(...), top_k: int = 5) -> dict:
    picture = ImageOps.exif_transpose(Image.open(io.BytesIO(await file.read()))).convert("RGB")
    width, height = picture.size
    scale = SHORTER / min(width, height)
    resized = picture.resize((round(width * scale), round(height * scale)), Image.BILINEAR)
    left, top = (resized.width - SIZE) // 2, (resized.height - SIZE) // 2
    pixels = np.asarray(resized.crop((left, top, left + SIZE, top + SIZE)), dtype=np.float32) / 255.0
    tensor = ((pixels - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)
    probabilities = session.run(None, {"input": tensor})[0][0]
    best = np.argsort(-probabilities)[:top_k]
    return {"predictions": [{"label": CLASSES[best[0]],
                             "top": [{"label": CLASSES[i], "probability": float(probabilities[i])} for i in best]}]}
