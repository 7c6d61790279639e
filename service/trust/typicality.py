"""The typicality score: how much a picture and its features look like the training pictures'.

Members, each standardised on held-out training-distribution pictures (0 at its median there, -1 at its TAIL
quantile); typicality is the lowest of them (higher = more typical):
- PCA residual, on the picture itself (pooled when large): minus its squared distance from the principal subspace
  of the training pictures. It catches pictures unlike the training pictures (noise, scribbles, another dataset's
  pictures).
- PCA within, optionally: minus the squared Mahalanobis distance of the picture's coordinates inside that subspace.
  It catches pictures made of the training pictures' broad shapes in unusual amounts (a solid blob for a digit).
- picture statistics: class-conditional Gaussians (as below) on a 7-number summary of how the picture is drawn
  (ink, saturation, stroke edges and curvature: `picture_statistics`). It catches what framing makes look like a
  digit but is drawn unlike one (a garment's outline, a scribble's hard thickened line).
- Mahalanobis (Lee et al. 2018), optionally, on the input of every linear layer (their feature ensemble): one
  Gaussian per class sharing one covariance; minus the squared Mahalanobis distance to the nearest class mean.
- the energy score (Liu et al. 2020), log-sum-exp of the logits: how much evidence the model finds for any class.
  It catches pictures that are framed like the training pictures but hold none of their classes.
- extent, optionally: how far the picture's object reaches the edges of the frame, the log of the ink in its outermost
  rows (top and bottom) or columns (left and right), whichever holds more. Fashion-MNIST's items were scaled so their
  longer side spans the frame (and the fashion-fit preprocessing fits an upload so); an MNIST digit sent as a tensor
  sits in a 20x20 box in the middle, with no ink at the edges at all.
numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

MAHALANOBIS, RESIDUAL, WITHIN, STATISTICS, ENERGY = "mahalanobis", "pca-residual", "pca-within", "picture-statistics", "energy"
EXTENT = "extent"
# Added to the extent's ink before its log: a picture with no ink at its edges scores log(EXTENT_FLOOR), far below the
# 1-2% quantile of Fashion-MNIST's items (about 0.015-0.02 of ink in the outer rows or columns, uploaded or not).
EXTENT_FLOOR = 1e-3
COMPONENTS = 64  # principal components of the training pictures kept by the residual member
# Shrinks the shared covariance towards its mean variance, so it stays invertible when features are
# fewer-valued than their dimension (dead ReLUs, few pictures).
SHRINKAGE = 1e-2
# Each member is standardised so that 0 is its median on held-out pictures of the training distribution and -1 its
# TAIL quantile there: the members' low tails line up, so each adds about as much to the share of typical pictures
# the lowest of them flags (a member with a long low tail standardised by its spread would set the threshold alone).
TAIL = 0.02
# The picture statistics' 3x3 kernels (valid convolution, on the picture's mean over its channels): first
# differences across and down, second differences across and down. The mean absolute response of each, with the
# mean of x, x^2 and x^4, is a 7-number summary of how the picture is drawn: how much ink, how saturated, how thick
# and how curved its strokes are. (Adding the two diagonal differences flagged more uploaded scribbles but also more
# photos of digits taken larger than the photos fitted on: 13% against 6%. Computed on the picture average-pooled
# 2x2, or with the kernels at every other pixel, they cost a third as much but let through twice as many uploaded
# scribbles and letters: the full resolution's thin, hard strokes are what they see.)
STATISTICS_KERNELS = np.array([
    [[0, 0, 0], [0, -1, 1], [0, 0, 0]], [[0, 0, 0], [0, -1, 0], [0, 1, 0]],
    [[0, 0, 0], [1, -2, 1], [0, 0, 0]], [[0, 1, 0], [0, -2, 0], [0, 1, 0]],
], dtype=np.float32)
STATISTICS_COUNT = 3 + len(STATISTICS_KERNELS)  # the numbers picture_statistics gives


def standardisation(held_out_scores: np.ndarray) -> tuple[float, float]:
    """(offset, scale): the median of the scores on held-out pictures, and its distance down to their TAIL quantile."""
    scores = np.asarray(held_out_scores, dtype=np.float64)
    median = float(np.median(scores))
    return median, float(median - np.quantile(scores, TAIL)) or 1.0


def picture_statistics(pictures: np.ndarray) -> np.ndarray:
    """[N, C, H, W] pictures -> [N, 7]: the means of x, x^2, x^4 and of |x * k| for each STATISTICS_KERNELS k (valid
    3x3 convolution), x being the mean over the channels. The graph computes the same (graph.py)."""
    x = np.asarray(pictures, dtype=np.float64).mean(axis=1)
    powers = [x.mean(axis=(1, 2)), (x**2).mean(axis=(1, 2)), (x**4).mean(axis=(1, 2))]
    h, w = x.shape[1] - 2, x.shape[2] - 2
    responses = [
        np.abs(sum(k[r, c] * x[:, r : r + h, c : c + w] for r in range(3) for c in range(3) if k[r, c])).mean(axis=(1, 2))
        for k in STATISTICS_KERNELS
    ]
    return np.stack(powers + responses, axis=1)


@dataclass(frozen=True)
class GaussianFit:
    """What the graph needs: features f -> g = f @ whitening; distances to the whitened class means."""

    whitening: np.ndarray  # [D, D] float64: L with L L^T = precision ([D, k]: k directions of it)
    whitened_means: np.ndarray  # [C, D]
    offset: float = 0.0  # mean and spread of `score` on held-out pictures, to standardise it
    scale: float = 1.0

    def score(self, features: np.ndarray) -> np.ndarray:
        """Minus the squared Mahalanobis distance to the nearest class mean (not standardised)."""
        g = np.asarray(features, dtype=np.float64) @ self.whitening
        distances = (g * g).sum(1)[:, None] - 2.0 * g @ self.whitened_means.T + (self.whitened_means**2).sum(1)[None, :]
        return -distances.min(axis=1)

    def standardised(self, features: np.ndarray) -> np.ndarray:
        return (self.score(features) - self.offset) / self.scale

    def calibrated(self, held_out_features: np.ndarray) -> GaussianFit:
        """The same fit, standardised by its scores on held-out pictures of the training distribution."""
        offset, scale = standardisation(self.score(held_out_features))
        return replace(self, offset=offset, scale=scale)


@dataclass(frozen=True)
class SubspaceFit:
    """The training pictures' principal subspace. Two scores: the residual, minus the squared distance of a picture
    from the subspace (what the first COMPONENTS principal components cannot reconstruct), and, with `variances`,
    the spread within it: minus the squared Mahalanobis distance of the picture's coordinates in the subspace
    (each over its component's variance; probabilistic PCA's in-subspace term). The residual misses a picture made
    of the training pictures' own broad shapes in amounts no training picture has (a digit model's framing turns a
    shirt into a solid blob: large coordinates, small residual); the within score catches it."""

    mean: np.ndarray  # [D]
    components: np.ndarray  # [D, k], orthonormal columns
    offset: float = 0.0
    scale: float = 1.0
    variances: np.ndarray | None = None  # [k]: the within score is left out when None
    within_offset: float = 0.0
    within_scale: float = 1.0

    def coordinates(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centred = np.asarray(features, dtype=np.float64) - self.mean
        return centred, centred @ self.components

    def score(self, features: np.ndarray) -> np.ndarray:
        centred, coords = self.coordinates(features)
        return -((centred * centred).sum(1) - (coords**2).sum(1))

    def within_score(self, features: np.ndarray) -> np.ndarray:
        return -((self.coordinates(features)[1] ** 2) / self.variances).sum(1)

    def standardised(self, features: np.ndarray) -> np.ndarray:
        return (self.score(features) - self.offset) / self.scale

    def standardised_within(self, features: np.ndarray) -> np.ndarray:
        return (self.within_score(features) - self.within_offset) / self.within_scale

    def calibrated(self, held_out_features: np.ndarray) -> SubspaceFit:
        offset, scale = standardisation(self.score(held_out_features))
        fitted = replace(self, offset=offset, scale=scale)
        if self.variances is None:
            return fitted
        within_offset, within_scale = standardisation(self.within_score(held_out_features))
        return replace(fitted, within_offset=within_offset, within_scale=within_scale)


def fit_subspace(features: np.ndarray, components: int = COMPONENTS, within: bool = False) -> SubspaceFit:
    """The principal subspace of `features`; with `within`, also the variances that score the spread inside it."""
    features = np.asarray(features, dtype=np.float64)
    mean = features.mean(axis=0)
    centred = features - mean
    # n centred pictures span at most n - 1 directions: more would be arbitrary directions of the null space.
    kept = max(1, min(components, features.shape[1] - 1, len(features) - 1))
    if len(features) < features.shape[1]:
        # Fewer pictures than values (an import's calibration pictures): the SVD of the pictures costs n^2 D,
        # the eigenvectors of the D x D covariance D^3 (minutes for a 224x224 colour picture's 3072 values).
        _, singular, rows = np.linalg.svd(centred, full_matrices=False)  # descending singular values
        values, vectors = (singular**2 / len(features))[::-1], rows[::-1].T  # as eigh gives them: ascending
    else:
        values, vectors = np.linalg.eigh(centred.T @ centred / len(features))  # ascending eigenvalues
    variances = None
    if within:  # floored, so a component the pictures barely use does not dominate the distance
        variances = np.maximum(values[::-1][:kept], 1e-3 * values[-1]).copy()
    return SubspaceFit(mean=mean, components=vectors[:, ::-1][:, :kept].copy(), variances=variances)


@dataclass(frozen=True)
class EnergyFit:
    """The energy score standardised by its mean and spread on held-out training-distribution pictures."""

    offset: float
    scale: float

    @classmethod
    def on(cls, held_out_logits: np.ndarray) -> EnergyFit:
        return cls(*standardisation(energy(held_out_logits)))

    def standardised(self, logits: np.ndarray) -> np.ndarray:
        return (energy(logits) - self.offset) / self.scale


def edge_bands(channels: int, height: int, width: int) -> np.ndarray:
    """[C*H*W, 2]: the flattened (NCHW) picture times it gives the mean ink of its top row plus that of its bottom row,
    and the same for its left and right columns (over every channel)."""
    bands = np.zeros((channels, height, width, 2))
    bands[:, [0, height - 1], :, 0] = 1.0 / (channels * width)
    bands[:, :, [0, width - 1], 1] = 1.0 / (channels * height)
    return bands.reshape(-1, 2)


def extent(views: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The extent score of flattened NCHW pictures of `shape` (C, H, W): log(EXTENT_FLOOR + the larger of the ink in
    the top and bottom rows and in the left and right columns)."""
    return np.log(EXTENT_FLOOR + (np.asarray(views, dtype=np.float64) @ edge_bands(*shape)).max(axis=1))


@dataclass(frozen=True)
class ExtentFit:
    """The extent score (`extent`), standardised on held-out pictures of the training distribution."""

    shape: tuple[int, int, int]  # (C, H, W) of the view it reads
    offset: float = 0.0
    scale: float = 1.0

    @classmethod
    def on(cls, held_out_views: np.ndarray, shape: tuple[int, int, int]) -> ExtentFit:
        return cls(tuple(shape), *standardisation(extent(held_out_views, shape)))

    def standardised(self, views: np.ndarray) -> np.ndarray:
        return (extent(views, self.shape) - self.offset) / self.scale


def fit_gaussians(features: np.ndarray, labels: np.ndarray, num_classes: int, directions: int | None = None) -> GaussianFit:
    """Class-conditional Gaussians sharing one covariance. With `directions`, only the `directions` directions in which
    the features vary least within their class count (the ones the full distance weighs most): a [D, directions]
    whitening instead of [D, D], so the graph's products are that much smaller."""
    features = np.asarray(features, dtype=np.float64)
    present = np.unique(labels)
    if len(present) < 2:
        raise ValueError("class-conditional Gaussians need training pictures of at least two classes")
    means = np.stack([features[labels == c].mean(axis=0) for c in present])
    centred = features - means[np.searchsorted(present, labels)]
    covariance = centred.T @ centred / len(features)
    dimension = covariance.shape[0]
    covariance += SHRINKAGE * (np.trace(covariance) / dimension + 1e-12) * np.eye(dimension)
    if directions is not None:
        values, vectors = np.linalg.eigh((covariance + covariance.T) / 2.0)  # ascending
        whitening = vectors[:, :directions] / np.sqrt(values[:directions])  # all of them: the full distance
        return GaussianFit(whitening=whitening, whitened_means=means @ whitening)
    precision = np.linalg.inv(covariance)
    precision = (precision + precision.T) / 2.0
    whitening = np.linalg.cholesky(precision)
    return GaussianFit(whitening=whitening, whitened_means=means @ whitening)


def energy(logits: np.ndarray) -> np.ndarray:
    """log-sum-exp of the logits (Liu et al. 2020, temperature 1)."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=1)
    return top + np.log(np.exp(z - top[:, None]).sum(axis=1))


def threshold_for(scores: np.ndarray, flag_rate: float) -> float:
    """The largest threshold that flags (score < threshold) at most `flag_rate` of `scores`."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    allowed = int(np.floor(flag_rate * len(ordered)))
    return float(ordered[min(allowed, len(ordered) - 1)])
