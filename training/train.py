"""The training loop: mini-batch optimisation with a learning-rate schedule, light augmentation,
early stopping on validation accuracy (best weights restored, ties broken by validation loss),
and batch prediction."""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.data import Splits
from training.init_from import freeze_batch_norms

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 128
    optimizer: str = "adamw"  # "adamw" | "sgd" (with Nesterov momentum 0.9)
    lr: float = 3e-3  # peak learning rate of the schedule
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    shift: int = 0  # augmentation: random translation by up to this many pixels
    hflip: bool = False  # augmentation: random horizontal mirror (clothes, not digits)
    label_smoothing: float = 0.0
    photo_mix: float = 0.0  # share of each batch drawn from the pool of processed photos (training/photo_mix.py)
    photo_pool: int = 0  # how many training pictures get a processed photo
    real_mix: float = 0.0  # share of each batch drawn from real photos (training/real_clothes.py)
    real_balance: float = 0.5  # real photos drawn with weights count(class) ** -real_balance
    real_photos: str | None = None  # the manifest of the real photos, when real_mix > 0
    init_from: str | None = None  # a published model.onnx to start from (fine-tuning; batch norms frozen)
    patience: int = 5  # stop after this many epochs without a better validation accuracy
    seed: int = 0
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)


@dataclass
class EpochStats:
    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    images_per_s: float
    seconds: float


@dataclass
class TrainResult:
    history: list[EpochStats]
    best_epoch: int
    best_val_accuracy: float
    wall_time_s: float
    images_per_s: float  # training throughput over all epochs

    def as_dict(self) -> dict:
        return asdict(self)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """The model's input from what a split holds: uint8 grey [N, H, W] -> float32 [N, 1, H, W] in [0, 1];
    float32 [N, C, H, W] (pictures already turned into model inputs, see training/photos.py) as it is."""
    if images.dtype == np.float32 and images.ndim == 4:
        return torch.from_numpy(np.ascontiguousarray(images))
    return torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float().div_(255.0)


class ArrayBatches:
    """Training batches from the IDX datasets: every training image in one tensor, augmented by random
    shifts and mirroring. Its pixel statistics become the model's own normalisation."""

    def __init__(self, splits: Splits, config: TrainConfig):
        self.inputs = to_tensor(splits.train_images)
        self.labels = torch.from_numpy(splits.train_labels)
        self.shift, self.hflip = config.shift, config.hflip
        self.keep_normalisation = bool(config.init_from)

    def __len__(self) -> int:
        return len(self.labels)

    def prepare(self, model: nn.Module) -> None:
        if self.keep_normalisation:  # a published model keeps the normalisation it was trained with
            return
        model.normalize.mean.fill_(self.inputs.mean().item())
        model.normalize.std.fill_(self.inputs.std().item())

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return augment(self.inputs[index], self.shift, self.hflip, generator)


def augment(batch: torch.Tensor, shift: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by a random (dy, dx) in [-shift, shift] (zero fill), optionally mirror it."""
    n, _, height, width = batch.shape
    if shift > 0:
        # Crop a random HxW window from each zero-padded image, as one gather over flattened pixels.
        padded_width = width + 2 * shift
        padded = F.pad(batch, (shift, shift, shift, shift)).reshape(n, -1)
        window = (torch.arange(height)[:, None] * padded_width + torch.arange(width)).reshape(1, -1)
        dy = torch.randint(0, 2 * shift + 1, (n, 1), generator=generator)
        dx = torch.randint(0, 2 * shift + 1, (n, 1), generator=generator)
        batch = padded.gather(1, window + dy * padded_width + dx).reshape(n, 1, height, width)
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    return batch


def _uses_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    outputs = [model(to_tensor(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0)


def predict_probabilities(model: nn.Module, images: np.ndarray) -> np.ndarray:
    return torch.softmax(predict_logits(model, images), dim=1).numpy()


def _evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    logits = predict_logits(model, images)
    target = torch.from_numpy(labels)
    loss = F.cross_entropy(logits, target).item()
    return loss, (logits.argmax(1) == target).float().mean().item()


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def _schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, steps: int):
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if config.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise ValueError(f"unknown schedule {config.schedule!r}; choose one of {', '.join(SCHEDULES)}")


def fit(
    model: nn.Module, splits: Splits, config: TrainConfig, *, progress: bool = True, batches=None
) -> TrainResult:
    """Train `model` in place on the training split, select on validation accuracy, keep the best weights.

    `batches` makes the augmented training batches (default: `ArrayBatches` of the IDX images; folders of
    pictures bring their own, training/photo_batches.py). `progress` shows a per-batch bar; a one-line
    summary of each epoch is always printed."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    if batches is None:
        batches = ArrayBatches(splits, config)
    batches.prepare(model)
    train_y = batches.labels
    memory_format = torch.channels_last if _uses_convolutions(model) else torch.contiguous_format
    model.to(memory_format=memory_format)  # channels-last convolutions run faster on CPU

    steps_per_epoch = math.ceil(len(batches) / config.batch_size)
    optimizer = _optimizer(model, config)
    scheduler = _schedule(optimizer, config, steps_per_epoch * config.epochs)

    # One-cycle spends its first 30% raising the learning rate; validation accuracy may stall
    # there without meaning anything, so patience counts only from the end of that warm-up.
    warmup_epochs = math.ceil(0.3 * config.epochs) if config.schedule == "onecycle" else 0
    history: list[EpochStats] = []
    best_state, best_epoch, best_score = copy.deepcopy(model.state_dict()), 0, (-1.0, 0.0)
    train_seconds, start = 0.0, time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        if config.init_from:
            freeze_batch_norms(model)
        order = torch.randperm(len(batches), generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        epoch_start = time.perf_counter()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", unit="batch",
                   disable=not progress, leave=False, mininterval=1.0)
        for step in bar:
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            made = batches.batch(index, generator)  # a photo mix brings labels of its own
            inputs, targets = made if isinstance(made, tuple) else (made, train_y[index])
            inputs = inputs.contiguous(memory_format=memory_format)
            logits = model(inputs)
            loss = F.cross_entropy(logits, targets, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(index)
            correct += (logits.argmax(1) == targets).sum().item()
            seen += len(index)
            if progress and step % 20 == 0:
                rate = seen / (time.perf_counter() - epoch_start)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", img_s=f"{rate:.0f}")
        bar.close()
        seconds = time.perf_counter() - epoch_start
        train_seconds += seconds
        val_loss, val_accuracy = _evaluate(model, splits.val_images, splits.val_labels)
        stats = EpochStats(
            epoch=epoch,
            lr=optimizer.param_groups[0]["lr"],
            train_loss=loss_sum / seen,
            train_accuracy=correct / seen,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            images_per_s=seen / seconds,
            seconds=seconds,
        )
        history.append(stats)
        print(
            f"epoch {epoch}: loss {stats.train_loss:.4f} acc {stats.train_accuracy:.4f} | "
            f"val loss {val_loss:.4f} val acc {val_accuracy:.4f} | {stats.images_per_s:.0f} img/s, {seconds:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        # Best = highest validation accuracy; a small validation set ties often, so loss breaks ties.
        score = (val_accuracy, -val_loss)
        if score > best_score:
            best_state, best_epoch, best_score = copy.deepcopy(model.state_dict()), epoch, score
        elif epoch - max(best_epoch, warmup_epochs) >= config.patience and epoch < config.epochs:
            print(f"early stop: no better validation accuracy since epoch {best_epoch}", file=sys.stderr, flush=True)
            break
    model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    wall = time.perf_counter() - start
    images = sum(s.images_per_s * s.seconds for s in history)
    return TrainResult(history, best_epoch, best_score[0], wall, images / train_seconds)
