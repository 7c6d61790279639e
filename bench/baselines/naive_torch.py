"""The naive PyTorch server: like naive_ort.py, but the model runs in PyTorch eager mode.

The torch module is rebuilt from the ONNX file itself (its chain of layers and their weights), so
it holds exactly the weights ONNX Runtime serves. Run with 2 uvicorn workers, 1 torch thread each.

    BENCH_MODEL=models/mnist-convnet/1/model.onnx uvicorn --app-dir bench/baselines naive_torch:app --workers 2
"""

import os

import numpy as np
import onnx
import torch
from fastapi import FastAPI
from onnx import numpy_helper
from pydantic import BaseModel
from torch import nn

torch.set_num_threads(1)

ELEMENTWISE = {"Sub": torch.sub, "Div": torch.div, "Add": torch.add, "Mul": torch.mul}
ACTIVATIONS = {"Relu": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid}


class WithConstant(nn.Module):
    """x (op) constant, e.g. the normalisation at the start of the exported graphs."""

    def __init__(self, op, constant: np.ndarray) -> None:
        super().__init__()
        self.op = op
        self.register_buffer("constant", torch.from_numpy(constant.copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x, self.constant)


def _layer(node: onnx.NodeProto, weights: dict[str, np.ndarray]) -> nn.Module:
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    params = [torch.from_numpy(weights[name].copy()) for name in node.input[1:] if name]
    if node.op_type in ELEMENTWISE:
        return WithConstant(ELEMENTWISE[node.op_type], weights[node.input[1]])
    if node.op_type in ACTIVATIONS:
        return ACTIVATIONS[node.op_type]()
    if node.op_type == "Conv":
        pads = attributes.get("pads", [0, 0, 0, 0])
        assert pads[:2] == pads[2:], "asymmetric padding"
        weight = params[0]
        conv = nn.Conv2d(weight.shape[1] * attributes.get("group", 1), weight.shape[0], tuple(weight.shape[2:]),
                         stride=tuple(attributes.get("strides", [1, 1])), padding=tuple(pads[:2]),
                         dilation=tuple(attributes.get("dilations", [1, 1])), groups=attributes.get("group", 1),
                         bias=len(params) > 1)
        conv.weight.data = weight
        if len(params) > 1:
            conv.bias.data = params[1]
        return conv
    if node.op_type == "MaxPool":
        pads = attributes.get("pads", [0, 0, 0, 0])
        return nn.MaxPool2d(tuple(attributes["kernel_shape"]), stride=tuple(attributes.get("strides", [1, 1])),
                            padding=tuple(pads[:2]), ceil_mode=bool(attributes.get("ceil_mode", 0)))
    if node.op_type in ("Reshape", "Flatten"):
        # The exported graphs flatten [N, ...] to [N, features] before the dense layers.
        assert node.op_type == "Flatten" or len(weights[node.input[1]]) == 2, "only a reshape to [N, features]"
        return nn.Flatten()
    if node.op_type == "Gemm":
        assert attributes.get("alpha", 1.0) == 1.0 and attributes.get("beta", 1.0) == 1.0 and not attributes.get("transA", 0)
        weight = params[0] if attributes.get("transB", 0) else params[0].T.contiguous()
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=len(params) > 1)
        linear.weight.data = weight
        if len(params) > 1:
            linear.bias.data = params[1]
        return linear
    if node.op_type == "Softmax":
        return nn.Softmax(dim=attributes.get("axis", -1))
    raise NotImplementedError(f"no torch layer for ONNX {node.op_type}")


def load_torch_model(path: str) -> nn.Module:
    """An nn.Sequential equal to the ONNX graph, which must be a chain of layers."""
    graph = onnx.load(path).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    layers, previous = [], graph.input[0].name
    for node in graph.node:
        if node.input[0] != previous:
            raise NotImplementedError(f"{node.op_type} does not follow the previous layer: only chains are rebuilt")
        layers.append(_layer(node, weights))
        previous = node.output[0]
    return nn.Sequential(*layers).eval()


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
