"""Metrics during training (the trainers' `evaluate` hook): the functions of imgforge.eval on images held in
memory, with the networks and reference statistics loaded once per run.

- `PairedValidation`: pix2pix `--val DATAROOT`: each validation input translated by the current generator and
  compared with its target (PSNR, SSIM, L1).
- `SetFID`: CycleGAN `--val DATAROOT` (translated validation images against the other domain's); DDPM
  `--fid-every N --fid-ref STATS.npz` (EMA samples, made batch by batch with `in_batches`, against a
  statistics file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .features import FeatureOptions, InceptionFeatures
from .pairwise import compare
from .statistics import GaussianStatistics, frechet_distance

PAIR_METRICS = ("psnr", "ssim", "l1")


def paired_metrics(outputs: Sequence[np.ndarray], targets: Sequence[np.ndarray], device: str = "cpu") -> dict:
    """Mean PSNR, SSIM and L1 of uint8 H x W x 3 outputs against their targets, named val_psnr, ..."""
    means = compare(outputs, targets, metrics=PAIR_METRICS, device=device)
    return {f"val_{name}": value for name, value in means.items()}


def in_batches(make: Callable[[int, int], np.ndarray], total: int, batch: int) -> Iterable[np.ndarray]:
    """make(first, count) -> images first .. first + count - 1 (e.g. a sampler's seeds), `batch` at a time, until
    `total` images were made: what SetFID scores without holding them all."""
    for first in range(0, total, batch):
        yield make(first, min(batch, total - first))


class SetFID:
    """The FID of image batches against a reference: a statistics .npz (read now, so that a bad file fails
    before training; its size sets the Inception features' dims), or images (statistics computed once, 2048
    dims). The Inception network is loaded on first use and kept."""

    def __init__(self, reference: str | Path | Iterable[np.ndarray], *, device: str = "auto", batch_size: int = 50,
                 offline: bool | None = None, weights_dir=None, extractor: InceptionFeatures | None = None):
        self.reference, self.statistics = reference, None
        if isinstance(reference, (str, Path)):
            self.statistics = GaussianStatistics.load(reference)
        dims = 2048 if self.statistics is None else self.statistics.mu.shape[0]
        self.options = FeatureOptions(dims=dims, device=device, batch_size=batch_size, offline=offline, quiet=True,
                                      weights_dir=None if weights_dir is None else tuple(map(str, weights_dir)))
        self._extractor = extractor  # shared between SetFIDs of one run: one network loaded

    @property
    def extractor(self) -> InceptionFeatures:
        if self._extractor is None:
            self._extractor = InceptionFeatures(self.options)
        return self._extractor

    def reference_statistics(self) -> GaussianStatistics:
        if self.statistics is None:
            self.statistics = GaussianStatistics.of(self.extractor.statistics(self.reference))
        return self.statistics

    def __call__(self, batches: Iterable[np.ndarray]) -> float:
        reference = self.reference_statistics()
        return frechet_distance(GaussianStatistics.of(self.extractor.statistics(batches)), reference)

