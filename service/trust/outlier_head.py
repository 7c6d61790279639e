"""The outlier-exposure member: a small two-layer network on a model's own features that tells its training pictures
from pictures that are none of its classes (Hendrycks, Mazeika and Dietterich 2019, "Deep Anomaly Detection with
Outlier Exposure"). The other members only describe the training pictures, and a digit model's framing crops, scales
and thickens whatever it gets: a scribble or a shape arrives drawn like a digit, close to the training pictures on
every distance they measure. Shown drawings that are not digits, the head learns the directions in which they differ.

It reads the input of the model's second linear layer (the first hidden features; the last layer's input where there
is one linear layer) beside the picture statistics, standardised on the training pictures; its score (higher = more
like the training pictures) is standardised like every member. numpy only: the importer fits without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from service.trust.typicality import standardisation

# An ensemble of HEADS networks of HIDDEN // HEADS units each, folded as one network of HIDDEN units (their mean logit
# is one ReLU layer of all their units and one output column). As measured on mnist-convnet (docs/trust.md): one network
# of 64 units caught 1-2 points fewer uploaded scribbles than 4 of 32 at the same share of photos of digits flagged, 5 of
# 16 up to 1.5 fewer; 5 of 64 as many as 4 of 32, at two and a half times the cost.
HIDDEN, HEADS = 128, 4
EPOCHS, BATCH, LEARNING_RATE, WEIGHT_DECAY = 30, 256, 1e-3, 1e-3


@dataclass(frozen=True)
class OutlierHeadFit:
    """score(f) = relu(((f - mean) / spread) @ w1 + b1) @ w2 + b2, the logit of "a training picture"."""

    mean: np.ndarray  # [D]
    spread: np.ndarray  # [D]
    w1: np.ndarray  # [D, H]
    b1: np.ndarray  # [H]
    w2: np.ndarray  # [H]
    b2: float
    offset: float = 0.0
    scale: float = 1.0

    def score(self, features: np.ndarray) -> np.ndarray:
        hidden = np.maximum(((np.asarray(features, np.float64) - self.mean) / self.spread) @ self.w1 + self.b1, 0.0)
        return hidden @ self.w2 + self.b2

    def standardised(self, features: np.ndarray) -> np.ndarray:
        return (self.score(features) - self.offset) / self.scale

    def calibrated(self, held_out_features: np.ndarray) -> OutlierHeadFit:
        offset, scale = standardisation(self.score(held_out_features))
        return replace(self, offset=offset, scale=scale)


def fit_outlier_head(inliers: np.ndarray, outliers: np.ndarray, hidden: int = HIDDEN, seed: int = 0,
                     inlier_groups: np.ndarray | None = None, heads: int = HEADS) -> OutlierHeadFit:
    """Fit on features [N, D] of the training pictures (inliers) and of pictures that are none of the classes
    (outliers): `heads` networks of hidden // heads units (seeds seed, seed + 1, ...), their mean folded into one.
    Each is fitted on a balanced logistic loss (each side weighs half, however many pictures it has; within the
    inliers, each of `inlier_groups`' groups weighs alike: a few hundred photos beside thousands of clean pictures
    would otherwise hardly count), Adam with decoupled weight decay, EPOCHS passes in batches of BATCH."""
    inliers, outliers = np.asarray(inliers, np.float64), np.asarray(outliers, np.float64)
    if len(outliers) == 0:
        raise ValueError("the outlier head needs pictures that are not the model's classes")
    # Floored at a hundredth of the features' mean spread: a feature constant on the training pictures (a dead unit,
    # a pixel always blank) would otherwise be divided by almost nothing, and the graph's float32 sums lose the score.
    std = inliers.std(0)
    mean, spread = inliers.mean(0), np.maximum(std, 0.01 * std.mean() + 1e-6)
    x = (np.concatenate([inliers, outliers]) - mean) / spread
    y = np.r_[np.ones(len(inliers)), np.zeros(len(outliers))]
    groups = np.zeros(len(inliers), np.int64) if inlier_groups is None else np.asarray(inlier_groups, np.int64)
    if len(groups) != len(inliers):
        raise ValueError(f"{len(groups)} inlier groups for {len(inliers)} inliers")
    _, index, counts = np.unique(groups, return_inverse=True, return_counts=True)
    inlier_weight = 1.0 / (counts[index] * len(counts))  # sums to 1 over the inliers, each group a share alike
    weight = np.r_[0.5 * inlier_weight, np.full(len(outliers), 0.5 / len(outliers))] * len(y)
    nets = [_fit_network(x, y, weight, hidden // heads, seed + k) for k in range(heads)]
    return OutlierHeadFit(mean=mean, spread=spread, w1=np.concatenate([n[0] for n in nets], axis=1),
                          b1=np.concatenate([n[1] for n in nets]), w2=np.concatenate([n[2] for n in nets]) / heads,
                          b2=float(np.mean([n[3] for n in nets])))


def _fit_network(x: np.ndarray, y: np.ndarray, weight: np.ndarray, hidden: int, seed: int) -> list:
    """One two-layer network on standardised features x, labels y (1 = inlier), per-sample loss weights: [w1, b1, w2, b2]."""
    rng = np.random.default_rng(seed)
    params = [rng.normal(0, np.sqrt(2.0 / x.shape[1]), (x.shape[1], hidden)), np.zeros(hidden),
              rng.normal(0, np.sqrt(1.0 / hidden), hidden), np.zeros(())]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    step = 0
    for _ in range(EPOCHS):
        order = rng.permutation(len(y))
        for start in range(0, len(y), BATCH):
            b = order[start : start + BATCH]
            w1, b1, w2, b2 = params
            pre = x[b] @ w1 + b1
            h = np.maximum(pre, 0.0)
            logit = h @ w2 + b2
            # d(mean weighted logistic loss)/d(logit)
            delta = weight[b] * (1.0 / (1.0 + np.exp(-np.clip(logit, -30, 30))) - y[b]) / len(b)
            dh = np.outer(delta, w2) * (pre > 0)
            grads = [x[b].T @ dh, dh.sum(0), h.T @ delta, delta.sum()]
            step += 1
            for i, (p, g) in enumerate(zip(params, grads)):
                m, v = moments[i]
                m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
                moments[i] = (m, v)
                update = (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
                params[i] = p * (1 - LEARNING_RATE * WEIGHT_DECAY) - LEARNING_RATE * update
    return params
