"""The typicality score: how much a picture and its features look like the training pictures'.

Members, each standardised by its mean and spread on held-out training-distribution pictures; typicality is the
lowest of them (in those standard units, higher = more typical):
- PCA residual, on the picture itself (pooled when large): minus its squared distance from the principal subspace
  of the training pictures. It catches pictures unlike the training pictures (noise, scribbles, another dataset's
  pictures).
- Mahalanobis (Lee et al. 2018), optionally, on the input of every linear layer (their feature ensemble): one
  Gaussian per class sharing one covariance; minus the squared Mahalanobis distance to the nearest class mean.
- the energy score (Liu et al. 2020), log-sum-exp of the logits: how much evidence the model finds for any class.
  It catches pictures that are framed like the training pictures but hold none of their classes.
numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

MAHALANOBIS, RESIDUAL, ENERGY = "mahalanobis", "pca-residual", "energy"
COMPONENTS = 64  # principal components of the training pictures kept by the residual member
# Shrinks the shared covariance towards its mean variance, so it stays invertible when features are
# fewer-valued than their dimension (dead ReLUs, few pictures).
SHRINKAGE = 1e-2


@dataclass(frozen=True)
class GaussianFit:
    """What the graph needs: features f -> g = f @ whitening; distances to the whitened class means."""

    whitening: np.ndarray  # [D, D] float64: L with L L^T = precision
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
        scores = self.score(held_out_features)
        return replace(self, offset=float(scores.mean()), scale=float(scores.std() or 1.0))


@dataclass(frozen=True)
class SubspaceFit:
    """The training pictures' principal subspace: the score is minus the squared distance of a picture from it
    (what the first COMPONENTS principal components cannot reconstruct)."""

    mean: np.ndarray  # [D]
    components: np.ndarray  # [D, k], orthonormal columns
    offset: float = 0.0
    scale: float = 1.0

    def score(self, features: np.ndarray) -> np.ndarray:
        centred = np.asarray(features, dtype=np.float64) - self.mean
        return -((centred * centred).sum(1) - ((centred @ self.components) ** 2).sum(1))

    def standardised(self, features: np.ndarray) -> np.ndarray:
        return (self.score(features) - self.offset) / self.scale

    def calibrated(self, held_out_features: np.ndarray) -> SubspaceFit:
        scores = self.score(held_out_features)
        return replace(self, offset=float(scores.mean()), scale=float(scores.std() or 1.0))


def fit_subspace(features: np.ndarray, components: int = COMPONENTS) -> SubspaceFit:
    features = np.asarray(features, dtype=np.float64)
    mean = features.mean(axis=0)
    centred = features - mean
    # n centred pictures span at most n - 1 directions: more would be arbitrary directions of the null space.
    kept = max(1, min(components, features.shape[1] - 1, len(features) - 1))
    if len(features) < features.shape[1]:
        # Fewer pictures than values (an import's calibration pictures): the SVD of the pictures costs n^2 D,
        # the eigenvectors of the D x D covariance D^3 (minutes for a 224x224 colour picture's 3072 values).
        _, _, rows = np.linalg.svd(centred, full_matrices=False)  # descending singular values
        return SubspaceFit(mean=mean, components=rows[:kept].T.copy())
    _, vectors = np.linalg.eigh(centred.T @ centred / len(features))  # ascending eigenvalues
    return SubspaceFit(mean=mean, components=vectors[:, ::-1][:, :kept].copy())


@dataclass(frozen=True)
class EnergyFit:
    """The energy score standardised by its mean and spread on held-out training-distribution pictures."""

    offset: float
    scale: float

    @classmethod
    def on(cls, held_out_logits: np.ndarray) -> EnergyFit:
        scores = energy(held_out_logits)
        return cls(offset=float(scores.mean()), scale=float(scores.std() or 1.0))

    def standardised(self, logits: np.ndarray) -> np.ndarray:
        return (energy(logits) - self.offset) / self.scale


def fit_gaussians(features: np.ndarray, labels: np.ndarray, num_classes: int) -> GaussianFit:
    features = np.asarray(features, dtype=np.float64)
    present = np.unique(labels)
    if len(present) < 2:
        raise ValueError("class-conditional Gaussians need training pictures of at least two classes")
    means = np.stack([features[labels == c].mean(axis=0) for c in present])
    centred = features - means[np.searchsorted(present, labels)]
    covariance = centred.T @ centred / len(features)
    dimension = covariance.shape[0]
    covariance += SHRINKAGE * (np.trace(covariance) / dimension + 1e-12) * np.eye(dimension)
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
