"""FID, KID and the Inception Score of image sets, and reference statistics files (docs/eval.md).

An image set is a list of inputs (files, folders, globs, s3:// URLs) or a statistics .npz (pytorch-fid's
format: `mu`, `sigma`). Images that cannot be read are reported and left out; the result says how many were
used, and `failed` lists the others (the CLI then exits with 3).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..engine import EngineOptions
from ..errors import InputError, OutputError
from .features import (FeatureOptions, FeatureSink, InceptionFeatures, as_list, extract, image_jobs,
                       portable_folders)
from .statistics import (FeatureStatistics, GaussianStatistics, frechet_distance, inception_score,
                         kernel_inception_distance)

Inputs = str | Sequence[str]
CHECKPOINT_SECONDS = 60.0  # how often a resumable run saves its partial sums


@dataclass
class SetResult:
    """What one image set gave: its statistics (or the features too), how many images, which failed."""

    statistics: GaussianStatistics
    count: int
    failed: list[tuple[Path, str]] = field(default_factory=list)
    features: np.ndarray | None = None
    logits: np.ndarray | None = None


@dataclass
class MetricResult:
    """A metric's value (`value`, with `std` for KID and IS), the image counts, the images that failed."""

    metric: str
    value: float
    std: float | None = None
    counts: tuple[int, ...] = ()
    failed: list[tuple[Path, str]] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        result = {self.metric: self.value}
        if self.std is not None:
            result[f"{self.metric}_std"] = self.std
        return {**result, "images": list(self.counts), **self.details, "failed": len(self.failed)}


def is_statistics_file(inputs: Inputs) -> bool:
    listed = as_list(inputs)
    return len(listed) == 1 and str(listed[0]).lower().endswith(".npz")


def image_set(inputs: Inputs, options: FeatureOptions, *, engine: EngineOptions | str | None = None,
              recursive: bool = False, keep: bool = False) -> SetResult:
    """The Inception statistics of a set (read from a .npz, or computed from its images)."""
    if is_statistics_file(inputs):
        if keep:
            raise InputError("KID needs the images themselves, not a statistics file")
        statistics = GaussianStatistics.load(as_list(inputs)[0])
        return SetResult(statistics, statistics.count or 0)
    report, sink = extract(image_jobs(as_list(inputs), recursive=recursive), options, engine=engine,
                           sink=FeatureSink(options.dims, keep=keep))
    if sink.statistics.count < 2:
        raise InputError(f"{' '.join(as_list(inputs))}: {sink.statistics.count} image(s) could be read; "
                         "statistics need at least 2")
    return SetResult(GaussianStatistics.of(sink.statistics), sink.statistics.count, report.failed,
                     np.stack(sink.kept) if keep else None, np.stack(sink.logits) if sink.logits else None)


def fid(real: Inputs, fake: Inputs, *, dims: int = 2048, clean: bool = False, batch_size: int = 50,
        device: str = "auto", engine: EngineOptions | str | None = None, recursive: bool = False,
        offline: bool | None = None, weights_dir=None, quiet: bool = False) -> MetricResult:
    """The Fréchet Inception Distance between two sets (each inputs or a statistics .npz), as pytorch-fid's
    `calculate_fid_given_paths` computes it with the same weights."""
    options = FeatureOptions(dims=dims, clean=clean, batch_size=batch_size, device=device, offline=offline,
                             weights_dir=portable_folders(weights_dir), quiet=quiet)
    first = image_set(real, options, engine=engine, recursive=recursive)
    second = image_set(fake, options, engine=engine, recursive=recursive)
    value = frechet_distance(first.statistics, second.statistics)
    return MetricResult("fid", value, counts=(first.count, second.count), failed=first.failed + second.failed,
                        details={"dims": first.statistics.mu.shape[0], "clean": clean})


def kid(real: Inputs, fake: Inputs, *, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef0: float = 1.0, seed: int = 0, dims: int = 2048, clean: bool = False,
        batch_size: int = 50, device: str = "auto", engine: EngineOptions | str | None = None,
        recursive: bool = False, offline: bool | None = None, weights_dir=None, quiet: bool = False
        ) -> MetricResult:
    """The Kernel Inception Distance (torch-fidelity's defaults), mean and standard deviation over subsets."""
    options = FeatureOptions(dims=dims, clean=clean, batch_size=batch_size, device=device, offline=offline,
                             weights_dir=portable_folders(weights_dir), quiet=quiet)
    first = image_set(real, options, engine=engine, recursive=recursive, keep=True)
    second = image_set(fake, options, engine=engine, recursive=recursive, keep=True)
    mean, std, size = kernel_inception_distance(first.features, second.features, subsets=subsets,
                                                subset_size=subset_size, degree=degree, gamma=gamma, coef0=coef0,
                                                seed=seed)
    return MetricResult("kid", mean, std, (first.count, second.count), first.failed + second.failed,
                        {"subsets": subsets, "subset_size": size, "clean": clean})


def inception_score_of(inputs: Inputs, *, splits: int = 10, clean: bool = False, batch_size: int = 50,
                       device: str = "auto", engine: EngineOptions | str | None = None, recursive: bool = False,
                       offline: bool | None = None, weights_dir=None, quiet: bool = False) -> MetricResult:
    """The Inception Score: softmax of the 1008 logits, `splits` parts."""
    options = FeatureOptions(dims=2048, clean=clean, logits=True, batch_size=batch_size, device=device,
                             offline=offline, weights_dir=portable_folders(weights_dir), quiet=quiet)
    result = image_set(inputs, options, engine=engine, recursive=recursive)
    mean, std = inception_score(result.logits, splits)
    return MetricResult("is", mean, std, (result.count,), result.failed, {"splits": splits, "clean": clean})


def fid_stats(inputs: Inputs, output: str | Path, *, dims: int = 2048, clean: bool = False, batch_size: int = 50,
              device: str = "auto", engine: EngineOptions | str | None = None, recursive: bool = False,
              offline: bool | None = None, weights_dir=None, quiet: bool = False, resume: bool = True
              ) -> SetResult:
    """Write the set's statistics to `output` (.npz: mu, sigma, count). A large set is resumable: the running
    sums and the names counted so far are saved beside the output (`<output>.partial.npz`) every minute and
    when interrupted; running the same command again continues from them. The partial file is removed once
    the statistics are written."""
    output = Path(output)
    if output.suffix.lower() != ".npz":
        raise OutputError(f"the statistics file must end in .npz: {output}")
    if output.is_dir():
        raise OutputError(f"cannot write {output}: a folder is in the way")
    partial = output.with_name(output.name[:-4] + ".partial.npz")
    statistics, done = FeatureStatistics.empty(dims), []
    if resume and partial.is_file():
        statistics, done = FeatureStatistics.load_partial(partial)
        if statistics.total.shape[0] != dims:
            raise InputError(f"{partial} holds {statistics.total.shape[0]}-wide sums, not {dims}; remove it to start over")
    options = FeatureOptions(dims=dims, clean=clean, batch_size=batch_size, device=device, offline=offline,
                             weights_dir=portable_folders(weights_dir), quiet=quiet)
    jobs = image_jobs(as_list(inputs), recursive=recursive, exclude=set(done))
    last_save = [time.monotonic()]

    def checkpoint(name: str) -> None:
        done.append(name)
        if time.monotonic() - last_save[0] >= CHECKPOINT_SECONDS:
            sink.statistics.save_partial(partial, done)
            last_save[0] = time.monotonic()

    sink = FeatureSink(dims, statistics=statistics, on_record=checkpoint)
    try:
        report, _ = extract(jobs, options, engine=engine, sink=sink)
    except KeyboardInterrupt:
        if sink.statistics.count:
            sink.statistics.save_partial(partial, done)
        raise
    if sink.statistics.count < 2:
        raise InputError(f"{sink.statistics.count} image(s) could be read; statistics need at least 2")
    result = SetResult(GaussianStatistics.of(sink.statistics), sink.statistics.count, report.failed)
    output.parent.mkdir(parents=True, exist_ok=True)
    result.statistics.save(output)
    partial.unlink(missing_ok=True)
    return result


def fid_of_images(batches, reference: str | Path | GaussianStatistics, *, extractor: InceptionFeatures | None = None,
                  **options) -> float:
    """The FID of images held in memory (an iterable of N x H x W x C uint8 batches, e.g. a training run's
    samples) against reference statistics (a .npz or GaussianStatistics). Pass an `extractor` to keep the
    network loaded between calls; `options` are FeatureOptions fields otherwise."""
    if not isinstance(reference, GaussianStatistics):
        reference = GaussianStatistics.load(reference)
    if extractor is None:
        options.setdefault("dims", reference.mu.shape[0])
        extractor = InceptionFeatures(FeatureOptions(**options))
    statistics = extractor.statistics(batches)
    if statistics.count < 2:
        raise InputError(f"the FID of {statistics.count} image(s) is not defined; it needs at least 2")
    return frechet_distance(GaussianStatistics.of(statistics), reference)
