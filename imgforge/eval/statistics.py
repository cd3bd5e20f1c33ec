"""Feature statistics and the distances between them: FID, KID, Inception Score.

`FeatureStatistics` keeps a count, the sum of the features and the sum of their outer products (float64), so
that statistics gathered by several workers, or by an interrupted run and its resumption, merge exactly by
addition; the mean and covariance are derived only at the end. Averaging per-worker covariances would not
give the covariance of the whole set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError


@dataclass
class FeatureStatistics:
    count: int
    total: np.ndarray  # sum of the features, (d,)
    outer: np.ndarray  # sum of x xᵀ, (d, d)

    @classmethod
    def empty(cls, dims: int) -> FeatureStatistics:
        return cls(0, np.zeros(dims), np.zeros((dims, dims)))

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStatistics:
        features = np.asarray(features, dtype=np.float64)
        return cls(len(features), features.sum(axis=0), features.T @ features)

    def add(self, features: np.ndarray) -> None:
        """Count a batch (N x d) of features in."""
        features = np.asarray(features, dtype=np.float64).reshape(-1, self.total.shape[0])
        self.count += len(features)
        self.total += features.sum(axis=0)
        self.outer += features.T @ features

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        return FeatureStatistics(self.count + other.count, self.total + other.total, self.outer + other.outer)

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    @property
    def covariance(self) -> np.ndarray:
        """The unbiased covariance (N - 1 in the denominator), as np.cov computes it."""
        if self.count < 2:
            raise InputError(f"a covariance needs at least 2 images, not {self.count}")
        mean = self.mean
        return (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)

    def save_partial(self, path: Path, done: list[str]) -> None:
        """The running sums and the names counted so far, for resuming (written atomically)."""
        _save_npz(path, count=np.array(self.count), total=self.total, outer=self.outer, done=np.array(done, dtype=str))

    @classmethod
    def load_partial(cls, path: Path) -> tuple[FeatureStatistics, list[str]]:
        with np.load(path) as data:
            return cls(int(data["count"]), data["total"], data["outer"]), [str(name) for name in data["done"]]


@dataclass(frozen=True)
class GaussianStatistics:
    """A mean and a covariance, as pytorch-fid's .npz files hold them (`mu`, `sigma`)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None = None

    @classmethod
    def of(cls, statistics: FeatureStatistics) -> GaussianStatistics:
        return cls(statistics.mean, statistics.covariance, statistics.count)

    def save(self, path: str | os.PathLike) -> None:
        """mu and sigma under pytorch-fid's names (its --stats reads the file too), and the image count."""
        extra = {} if self.count is None else {"count": np.array(self.count)}
        _save_npz(Path(path), mu=self.mu, sigma=self.sigma, **extra)

    @classmethod
    def load(cls, path: str | os.PathLike) -> GaussianStatistics:
        try:
            with np.load(path) as data:
                mu, sigma = data["mu"], data["sigma"]
                count = int(data["count"]) if "count" in data else None
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read statistics {path}: {' '.join(str(exc).split())}") from None
        except KeyError:
            raise InputError(f"{path} holds no FID statistics (arrays mu and sigma)") from None
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise InputError(f"{path}: mu must be a vector and sigma a square matrix of its size")
        return cls(mu.astype(np.float64), sigma.astype(np.float64), count)


def _save_npz(path: Path, **arrays) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(temporary, path)


def frechet_distance(first: GaussianStatistics, second: GaussianStatistics) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1) + Tr(Σ2) − 2 Tr((Σ1 Σ2)^½).

    Tr((Σ1 Σ2)^½) is the sum of the square roots of the eigenvalues of Σ1 Σ2, which equal those of the
    symmetric Σ1^½ Σ2 Σ1^½ (real, non-negative): two symmetric eigendecompositions, no general matrix square
    root, and no NaN when the covariances are rank-deficient (fewer images than features). Eigenvalues that
    rounding makes slightly negative count as zero."""
    if first.mu.shape != second.mu.shape:
        raise InputError(f"the two statistics have different widths ({first.mu.shape[0]} and {second.mu.shape[0]})")
    values, vectors = np.linalg.eigh(first.sigma)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    product = root @ second.sigma @ root
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    difference = first.mu - second.mu
    return float(difference @ difference + np.trace(first.sigma) + np.trace(second.sigma) - 2 * trace_root)


def kernel_inception_distance(first: np.ndarray, second: np.ndarray, *, subsets: int = 100, subset_size: int = 1000,
                              degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
                              seed: int = 0) -> tuple[float, float, int]:
    """KID as torch-fidelity computes it: the unbiased MMD² with the polynomial kernel (γ xᵀy + coef0)^degree
    (γ = 1/d by default) over `subsets` random subsets of `subset_size` features drawn without replacement
    from each set; (mean, standard deviation, the subset size used). A set smaller than subset_size is used
    whole (torch-fidelity refuses it)."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    size = min(subset_size, len(first), len(second))
    if size < 2:
        raise InputError("KID needs at least 2 images in each set")
    gamma = 1.0 / first.shape[1] if gamma is None else gamma
    rng = np.random.RandomState(seed)
    estimates = np.empty(subsets)
    for index in range(subsets):
        x = first[rng.choice(len(first), size, replace=False)]
        y = second[rng.choice(len(second), size, replace=False)]
        kxx, kyy = (gamma * x @ x.T + coef0) ** degree, (gamma * y @ y.T + coef0) ** degree
        kxy = (gamma * x @ y.T + coef0) ** degree
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (size * (size - 1))
        estimates[index] = within - 2 * kxy.sum() / (size * size)
    return float(estimates.mean()), float(estimates.std()), size


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(mean, standard deviation) over `splits` consecutive parts (not shuffled) of exp(E_x KL(p(y|x) ‖ p(y))), p(y|x) the
    softmax of each image's 1008 logits, p(y) its mean over the part (Salimans et al. 2016)."""
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) < splits:
        raise InputError(f"the Inception Score with {splits} splits needs at least {splits} images, not {len(logits)}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    scores = []
    for index in range(splits):  # the parts of the original code: [i N / splits, (i + 1) N / splits)
        part = slice(index * len(p) // splits, (index + 1) * len(p) // splits)
        log_marginal = np.log(p[part].mean(axis=0))
        scores.append(np.exp((p[part] * (log_p[part] - log_marginal)).sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))
