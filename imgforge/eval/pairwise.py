"""Pairwise metrics of predictions against references: PSNR, SSIM, L1 and LPIPS (docs/eval.md).

Both images of a pair are read as 8-bit RGB (grey repeated, alpha dropped, 16-bit rounded to 8 bits) and must
have the same size. PSNR and SSIM are scikit-image's with data_range 255 (SSIM as Wang et al. 2004: Gaussian
window σ 1.5 truncated at 3.5σ, K1 0.01, K2 0.03, population covariances, mirror-reflected borders, the mean
over the image less a 5-pixel border, averaged over R, G and B); L1 is the mean absolute difference on the
[0, 1] scale; LPIPS is v0.1 with AlexNet (the `lpips` extra). Pairs run on the job engine; LPIPS is batched
on the GPU when there is one.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import torch

from .. import device as devices
from .. import storage, zoo
from ..batch import Job, expand_inputs
from ..engine import BatchReport, EngineOptions, execute
from ..errors import InputError, RunWideError
from ..imageio import read_image
from ..nets.lpips_alex import LPIPSAlex
from .features import as_list, portable_folders, weights_folders

METRICS = ("psnr", "ssim", "lpips", "l1")
LPIPS_MODEL = "lpips-alex"
_SIGMA, _TRUNCATE, _K1, _K2, _RANGE = 1.5, 3.5, 0.01, 0.03, 255.0


def psnr(prediction: np.ndarray, reference: np.ndarray) -> float:
    """10 log10(255² / MSE), in dB; infinite for identical images."""
    error = np.mean((reference.astype(np.float64) - prediction.astype(np.float64)) ** 2)
    return math.inf if error == 0 else float(10 * np.log10(_RANGE ** 2 / error))


def l1(prediction: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean(np.abs(reference.astype(np.float64) - prediction.astype(np.float64))) / _RANGE)


def _gaussian_taps() -> np.ndarray:
    radius = int(_TRUNCATE * _SIGMA + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * x * x / _SIGMA ** 2)
    return taps / taps.sum()


def _blur(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable Gaussian of an H x W x C image; borders mirrored with the edge pixel repeated
    (scipy.ndimage's "reflect")."""
    radius = len(taps) // 2
    for axis in (0, 1):
        widths = [(0, 0)] * image.ndim
        widths[axis] = (radius, radius)
        padded = np.pad(image, widths, mode="symmetric")
        length = image.shape[axis]
        image = sum(weight * np.take(padded, np.arange(offset, offset + length), axis=axis)
                    for offset, weight in enumerate(taps))
    return image


def ssim(prediction: np.ndarray, reference: np.ndarray) -> float:
    """The mean structural similarity of two H x W x C uint8 images, averaged over channels."""
    taps = _gaussian_taps()
    if min(prediction.shape[:2]) < len(taps):
        raise InputError(f"SSIM needs images of at least {len(taps)}x{len(taps)} pixels")
    x, y = prediction.astype(np.float64), reference.astype(np.float64)
    ux, uy = _blur(x, taps), _blur(y, taps)
    vx = _blur(x * x, taps) - ux * ux
    vy = _blur(y * y, taps) - uy * uy
    vxy = _blur(x * y, taps) - ux * uy
    c1, c2 = (_K1 * _RANGE) ** 2, (_K2 * _RANGE) ** 2
    index = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    border = len(taps) // 2
    return float(index[border:-border, border:-border].mean(axis=(0, 1)).mean())


def load_lpips(*, offline: bool | None = None, weights_dir=None, quiet: bool = False) -> LPIPSAlex:
    """The zoo's LPIPS: torchvision's AlexNet fetched through the manifest, the lpips package's linear layers."""
    if importlib.util.find_spec("lpips") is None:  # the hint names the extra that brings it
        raise RunWideError("--metrics lpips needs the lpips package's weights: pip install 'imgforge[lpips]'")
    [network] = zoo.model_networks(LPIPS_MODEL, offline=offline, weights_dir=weights_folders(weights_dir),
                                   quiet=quiet)
    return network.module


def pair_up(predictions: Sequence[str], references: Sequence[str], *, by_order: bool = False,
            recursive: bool = False) -> list[tuple[Path, Path | None]]:
    """(prediction, reference) pairs: by name (the path inside the input folder, without the extension, so
    that a.png pairs with a.jpg), or by sorted position with `by_order`. A prediction without a reference
    gets None (it is reported as failed)."""
    found = expand_inputs(predictions, recursive)
    known = expand_inputs(references, recursive)
    if by_order:
        if len(found) != len(known):
            raise InputError(f"--by-order needs as many references as predictions ({len(known)} and {len(found)})")
        return [(prediction, reference) for (prediction, _), (reference, _) in zip(found, known)]
    by_name: dict[str, Path] = {}
    for reference, name in known:
        key = _key(name)
        if key in by_name:
            raise InputError(f"two references are named {key}: {by_name[key]} and {reference}; use --by-order")
        by_name[key] = reference
    return [(prediction, by_name.get(_key(name))) for prediction, name in found]


def _key(name: Path) -> str:
    return str(PurePosixPath(*name.parts).with_suffix(""))


@dataclass(frozen=True)
class PairTask:
    """The engine task of `pairs`: one job per prediction (its reference in the job's options); the record
    carries the metrics."""

    metrics: tuple[str, ...]
    device: str = "auto"
    batch_size: int = 8
    offline: bool | None = None
    weights_dir: tuple[str, ...] | None = None
    quiet: bool = False
    label: str = "comparing"

    def setup(self) -> PairWorker:
        device = devices.select_device(self.device)
        net = None
        if "lpips" in self.metrics:
            net = load_lpips(offline=self.offline, weights_dir=self.weights_dir, quiet=self.quiet).to(device)
        return PairWorker(self.metrics, net, device)


class PairWorker:
    def __init__(self, metrics: tuple[str, ...], net: LPIPSAlex | None, device: torch.device):
        self.metrics, self.net, self.device = metrics, net, device

    def load(self, job: Job) -> tuple[np.ndarray, np.ndarray]:
        reference = job.options.get("reference")
        if reference is None:
            raise InputError(f"no reference image named like {Path(str(job.source)).stem}")
        prediction, truth = _rgb8(job.source), _rgb8(reference)
        if prediction.shape != truth.shape:
            raise InputError(f"sizes differ: {prediction.shape[1]}x{prediction.shape[0]} and reference "
                             f"{truth.shape[1]}x{truth.shape[0]}")
        return prediction, truth

    def group_key(self, item):
        return item[0].shape

    def compute(self, items: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
        results: list[dict] = [{} for _ in items]
        for result, (prediction, truth) in zip(results, items):
            for name, metric in (("psnr", psnr), ("ssim", ssim), ("l1", l1)):
                if name in self.metrics:
                    result[name] = metric(prediction, truth)
        if self.net is not None:
            def scaled(index: int) -> torch.Tensor:
                stacked = np.stack([item[index] for item in items]).astype(np.float32)
                return torch.from_numpy(stacked).permute(0, 3, 1, 2).to(self.device) / 127.5 - 1

            with torch.no_grad():
                distances = self.net(scaled(0), scaled(1)).double().cpu().numpy()
            for result, distance in zip(results, distances):
                result["lpips"] = float(distance)
        return results

    def save(self, job: Job, item, result: dict) -> dict:
        return {"reference": job.options["reference"], **result}


def compare(predictions: Sequence[np.ndarray], references: Sequence[np.ndarray], *,
            metrics: Sequence[str] = ("psnr", "ssim", "l1"), device: str = "auto", offline: bool | None = None,
            weights_dir=None) -> dict[str, float]:
    """The mean of each metric over in-memory pairs of H x W x 3 uint8 images (a training run's validation
    outputs); PSNR over its finite values."""
    chosen = _chosen(metrics)
    task = PairTask(chosen, device, offline=offline, quiet=True,
                    weights_dir=portable_folders(weights_dir))
    worker = task.setup()
    rows = [row for pair in zip(predictions, references) for row in worker.compute([pair])]
    return {name: _mean([row[name] for row in rows]) for name in chosen}


def _chosen(metrics: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(m.strip().lower() for m in metrics if m.strip()))
    unknown = [m for m in chosen if m not in METRICS]
    if unknown or not chosen:
        raise InputError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; use {', '.join(METRICS)}")
    return chosen


def _mean(values: list[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return float(np.mean(finite)) if finite else math.nan


def _rgb8(path) -> np.ndarray:
    return np.asarray(read_image(path).to_pil("RGB"))


@dataclass
class PairsResult:
    """One row per pair that was compared (prediction, reference and the metrics), their mean, the failures."""

    rows: list[dict] = field(default_factory=list)
    mean: dict = field(default_factory=dict)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def pairs(predictions: str | Sequence[str], references: str | Sequence[str], *,
          metrics: Sequence[str] = ("psnr", "ssim", "lpips", "l1"), by_order: bool = False, recursive: bool = False,
          device: str = "auto", batch_size: int = 8, engine: EngineOptions | str | None = None,
          offline: bool | None = None, weights_dir=None, quiet: bool = False) -> PairsResult:
    """Compare each prediction with its reference. Rows hold `prediction`, `reference` and one field per
    metric; `mean` the mean of each metric over the rows (PSNR over the finite values: identical pairs have
    an infinite PSNR)."""
    chosen = _chosen(metrics)
    paired = pair_up(as_list(predictions), as_list(references), by_order=by_order, recursive=recursive)
    jobs = [Job(prediction, None, options={} if reference is None else {"reference": _portable(reference)})
            for prediction, reference in paired]
    task = PairTask(chosen, device, batch_size, offline, portable_folders(weights_dir), quiet)
    report = execute(task, jobs, engine=engine, quiet=quiet, report=BatchReport())
    given = {str(prediction): str(reference) for prediction, reference in paired}
    rows = []
    for record in sorted((r for r in report.records if r["status"] == "done"), key=lambda r: r["input"]):
        rows.append({"prediction": record["input"], "reference": given.get(record["input"], record["reference"]),
                     **{name: record[name] for name in chosen}})
    return PairsResult(rows, {name: _mean([row[name] for row in rows]) for name in chosen}, report.failed)


def _portable(path) -> str:
    """A path a worker elsewhere can open: URLs as they are, local files absolute."""
    return str(path) if storage.is_url(path) else os.path.abspath(path)
