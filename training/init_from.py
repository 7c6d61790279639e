"""Start training from a published model: its ONNX weights loaded into the freshly built PyTorch model, so
a shipped model can be fine-tuned (for instance on processed photos, --photo-mix) rather than retrained.

The export folds each batch norm into the layer before it (weight scaled, a bias `<layer>.weight_bias`
added); loaded back, the batch norm becomes an identity plus that bias (mean 0, variance 1, scale 1), and
stays frozen in evaluation mode while fine-tuning (training/train.py), so the loaded model computes
exactly what the published one does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

PREFIX = "classifier."  # the exported graph wraps the classifier (training/models.py WithSoftmax)


def load_published_weights(model: nn.Module, onnx_path: Path) -> None:
    """Copy the published model's weights into `model` (same architecture and options); raises
    ValueError naming what does not match."""
    initializers = {i.name: np.array(numpy_helper.to_array(i)) for i in onnx.load(str(onnx_path)).graph.initializer}
    weights = {k[len(PREFIX):]: v for k, v in initializers.items() if k.startswith(PREFIX)}
    modules = dict(model.named_modules())
    state = model.state_dict()
    loaded = set()
    for name, value in weights.items():
        if name.endswith(".weight_bias"):  # a folded batch norm: the next module of the same Sequential
            layer = name[: -len(".weight_bias")]
            parent, _, index = layer.rpartition(".")
            norm_name = f"{parent}.{int(index) + 1}"
            norm = modules.get(norm_name)
            if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
                raise ValueError(f"{onnx_path}: {name} has no batch norm after {layer} in this architecture")
            with torch.no_grad():
                norm.weight.fill_(1.0)
                norm.bias.copy_(torch.from_numpy(value))
                norm.running_mean.zero_()
                norm.running_var.fill_(1.0 - norm.eps)
            loaded |= {f"{norm_name}.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
            continue
        if name not in state or tuple(state[name].shape) != tuple(value.shape):
            raise ValueError(f"{onnx_path}: {name} {list(value.shape)} does not fit this architecture")
        with torch.no_grad():
            state[name].copy_(torch.from_numpy(value).reshape(state[name].shape))
        loaded.add(name)
    missing = sorted(k for k in state if k not in loaded)
    if missing:
        raise ValueError(f"{onnx_path}: no weights for {', '.join(missing)}; is it the same architecture and options?")


def freeze_batch_norms(model: nn.Module) -> None:
    """Batch norms in evaluation mode: their statistics are the published model's, not the batch's."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
