"""Training on what serving produces: training pictures turned into synthetic photos (training/synthetic_photos.py)
and run through the service's own preprocessing (service.imaging), so a model learns the inputs an
uploaded photo becomes, not only the clean 28x28 originals.

A pool of `count` training pictures (drawn with a fixed seed) gets one processed photo each, under the
conditions of its dataset (digits: a sheet filling the frame or a card on a table; clothes: product shots
or natural photos); the pool is cached under data/photo-mix/, keyed by the preprocessing code's hash, so
a change to the preprocessing makes a new pool. During training a share `photo_mix` of each batch is
drawn from the pool (training/train.py).
"""

from __future__ import annotations

import hashlib
import sys
import time

import numpy as np

import torch

from training.data import PROJECT_ROOT, Splits
from training.synthetic_photos import CLOTHES_CONDITIONS, DIGIT_CONDITIONS, photo
from training.train import ArrayBatches, TrainConfig, augment, to_tensor

CACHE_DIR = PROJECT_ROOT / "data" / "photo-mix"
TRAINING_SIDE = 560  # photos for training are at most this large: the preprocessing works at 512 to 1,024
IMAGING = PROJECT_ROOT / "service" / "imaging"


def conditions_for(dataset: str) -> tuple[str, ...]:
    return DIGIT_CONDITIONS if dataset == "mnist" else CLOTHES_CONDITIONS


def preprocessing_hash() -> str:
    """A short hash of the service's preprocessing code: a pool made by other code is not reused."""
    digest = hashlib.sha256()
    for path in sorted(IMAGING.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def processed_pool(images: np.ndarray, labels: np.ndarray, dataset: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices into `images`, their processed photos as uint8 [count, 28, 28]), cached on disk."""
    from service.imaging import to_model_input  # the service's own preprocessing, exactly as served

    count = min(count, len(images))
    key = hashlib.sha256(images[:: max(1, len(images) // 64)].tobytes()).hexdigest()[:8]
    path = CACHE_DIR / f"{dataset}-{count}-seed{seed}-{key}-{preprocessing_hash()}.npz"
    if path.exists():
        cached = np.load(path)
        return cached["indices"], cached["photos"]
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(images), count, replace=False))
    conditions = conditions_for(dataset)
    method = "mnist-digit" if dataset == "mnist" else "fashion-fit"
    photos = np.zeros((count, 28, 28), np.uint8)
    started = time.perf_counter()
    for n, i in enumerate(indices):
        condition = conditions[n % len(conditions)]
        back = images[rng.integers(len(images))]
        data = photo(condition, images[i], rng, label=int(labels[i]), back=back, max_side=TRAINING_SIDE)
        try:
            x = to_model_input(data, method, max_pixels=40_000_000)[0]
        except Exception:  # refused (nothing found): the clean picture stands in for it
            x = images[i] / 255.0
        photos[n] = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
        if (n + 1) % 100 == 0:
            print(f"photo pool: {n + 1}/{count} ({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, indices=indices, photos=photos)
    return indices, photos


class PhotoMixBatches(ArrayBatches):
    """The IDX training batches with a share of each batch drawn from pools of processed pictures, with their
    own labels: `config.photo_mix` from the synthetic photos (`photos`, from `processed_pool`), and
    `config.real_mix` from real photos (`real`: uint8 [n, 28, 28] and labels, training/real_clothes.py), drawn
    with weights count(class) ** -config.real_balance (0: as they come, 1: every class as often)."""

    def __init__(self, splits: Splits, config: TrainConfig, photos: tuple[np.ndarray, np.ndarray] | None = None,
                 real: tuple[np.ndarray, np.ndarray] | None = None):
        super().__init__(splits, config)
        self.pools: list[tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None]] = []
        if photos is not None:
            labels = self.labels[torch.from_numpy(photos[0].astype(np.int64))]
            self.pools.append((to_tensor(photos[1]), labels, config.photo_mix, None))
        if real is not None:
            labels = torch.from_numpy(real[1].astype(np.int64))
            counts = torch.bincount(labels).float()
            weights = counts[labels] ** -config.real_balance
            self.pools.append((to_tensor(real[0]), labels, config.real_mix, weights))
        if sum(share for _, _, share, _ in self.pools) > 1:
            raise ValueError("the shares of a batch drawn from photos add up to more than 1")

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = self.inputs[index].clone(), self.labels[index].clone()
        draw = torch.rand(len(index), generator=generator)
        low = 0.0
        for pool_inputs, pool_labels, share, weights in self.pools:
            chosen = (draw >= low) & (draw < low + share)
            low += share
            count = int(chosen.sum())
            if weights is None:
                drawn = torch.randint(0, len(pool_inputs), (count,), generator=generator)
            elif count:
                drawn = torch.multinomial(weights, count, replacement=True, generator=generator)
            else:
                continue
            inputs[chosen], targets[chosen] = pool_inputs[drawn], pool_labels[drawn]
        return augment(inputs, self.shift, self.hflip, generator), targets
