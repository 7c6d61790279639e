"""Training batches from a folder of pictures, with the augmentations usual for photos: a random resized
crop (torchvision's RandomResizedCrop: a random share of the area and aspect ratio, resized to the model's
size), a horizontal flip, and colour jitter (brightness, contrast, saturation, each by a random factor in
[1 - j, 1 + j], in torchvision's ColorJitter way). Crops are resampled by Pillow with the card's
interpolation; the jitter runs on the whole batch in torch."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch import nn

from training.photos import PhotoPreprocessing

# RandomResizedCrop's range of aspect ratios.
CROP_RATIOS = (3 / 4, 4 / 3)
CROP_TRIES = 10
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L") and torchvision use


def random_crop_box(
    width: int, height: int, min_scale: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop covering [min_scale, 1] of the area with an aspect ratio
    in CROP_RATIOS; after CROP_TRIES misses, the largest centred crop within those ratios (as torchvision)."""
    area = width * height
    log_ratios = (math.log(CROP_RATIOS[0]), math.log(CROP_RATIOS[1]))
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(*log_ratios))
        w, h = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < CROP_RATIOS[0]:
        w, h = width, int(round(width / CROP_RATIOS[0]))
    elif ratio > CROP_RATIOS[1]:
        w, h = int(round(height * CROP_RATIOS[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def colour_jitter(batch: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and (RGB only) saturation of each picture of a [N, C, H, W] batch in [0, 1],
    each scaled by its own random factor in [1 - strength, 1 + strength]; the result clamped to [0, 1]."""
    if strength <= 0:
        return batch
    n, channels = batch.shape[:2]

    def factors() -> torch.Tensor:
        return (1 + strength * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)).clamp_(min=0)

    def grey(x: torch.Tensor) -> torch.Tensor:
        if channels == 1:
            return x
        weights = torch.tensor(GREY_WEIGHTS, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)

    batch = (batch * factors()).clamp_(0, 1)
    mean = grey(batch).mean(dim=(1, 2, 3), keepdim=True)
    batch = ((batch - mean) * factors() + mean).clamp_(0, 1)
    if channels == 3:
        batch = ((batch - grey(batch)) * factors() + grey(batch)).clamp_(0, 1)
    return batch


class PhotoBatches:
    """`fit`'s source of augmented training batches for a folder of pictures: each batch's pictures are
    cropped and resized by Pillow, flipped and jittered, then normalised by the card's mean / std."""

    def __init__(
        self, pictures: list[np.ndarray], labels: np.ndarray, preprocessing: PhotoPreprocessing, *,
        min_scale: float, hflip: bool, jitter: float,
    ):
        self.pictures, self.labels = pictures, torch.from_numpy(labels)
        self.preprocessing = preprocessing
        self.min_scale, self.hflip, self.jitter = min_scale, hflip, jitter

    def __len__(self) -> int:
        return len(self.labels)

    def prepare(self, model: nn.Module) -> None:
        """Nothing to fit: the card's mean / std normalise the input outside the model."""

    def crop(self, picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        size = self.preprocessing.size
        image = Image.fromarray(picture)
        if self.min_scale >= 1:  # no random crop: the picture as evaluation sees it
            return self.centre(image)
        box = random_crop_box(image.width, image.height, self.min_scale, rng)
        return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=box))

    def centre(self, image: Image.Image) -> np.ndarray:
        size = self.preprocessing.size
        if self.preprocessing.method == "resize":
            return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
        left, top = int(round((image.width - size) / 2.0)), int(round((image.height - size) / 2.0))
        return np.asarray(image.crop((left, top, left + size, top + size)))

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator)))
        views = np.stack([self.crop(self.pictures[i], rng) for i in index.tolist()])
        pixels = torch.from_numpy(views).float().div_(255.0)
        pixels = pixels.unsqueeze(1) if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
        if self.hflip:
            flip = torch.rand(len(pixels), generator=generator) < 0.5
            pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
        pixels = colour_jitter(pixels, self.jitter, generator)
        mean = torch.tensor(self.preprocessing.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.preprocessing.std).view(1, -1, 1, 1)
        return ((pixels - mean) / std).contiguous()
