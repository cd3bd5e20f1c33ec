"""Inception features of image sets, on the job engine (batched, on the GPU when there is one, a progress bar,
`--engine ray` for many machines).

Preprocessing is pytorch-fid's: RGB in [0, 1] (uint8 / 255), bilinear resize to 299x299 with align_corners
False and no antialiasing, scaled to [-1, 1]. `clean=True` resizes instead as clean-fid does (Pillow's
antialiased bicubic on each channel as float, clipped to [0, 255]): better behaved, but its FIDs are not
comparable with published ones.

Each job's features come back in its record (float32 bytes, base64), so the driver sums them into the
statistics whichever worker computed them; nothing holds every feature unless `keep` asks for it (KID).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import device as devices
from .. import hub, zoo
from ..batch import Job, expand_inputs
from ..engine import BatchReport, EngineOptions, execute
from ..imageio import read_image
from ..nets.fid_inception import FIDInception
from .statistics import FeatureStatistics

INCEPTION_MODEL = "fid-inception"  # the manifest entry of pt_inception-2015-12-05-6726825d.pth
SIZE = 299


@dataclass(frozen=True)
class FeatureOptions:
    """What features to compute and where. dims: 64, 192, 768 or 2048 (pool3); logits: also the 1008 class
    logits (for the Inception Score; needs dims 2048)."""

    dims: int = 2048
    clean: bool = False
    logits: bool = False
    device: str = "auto"
    batch_size: int = 50
    offline: bool | None = None
    weights_dir: tuple[str, ...] | None = None
    quiet: bool = False


def weights_folders(weights_dir) -> list[Path]:
    """The weights folders given (or IMGFORGE_WEIGHTS_DIR), then torch's hub cache, where pytorch-fid and
    torchvision keep the same files, so that a machine that ran them needs no new download."""
    folders = hub.weights_folders(weights_dir)
    torch_cache = Path(torch.hub.get_dir()) / "checkpoints"
    return folders + [torch_cache] if torch_cache.is_dir() else folders


def portable_folders(weights_dir) -> tuple[str, ...] | None:
    """The weights folders given, as a task carries them to its workers (strings; None when none are given, so
    that IMGFORGE_WEIGHTS_DIR decides where each worker runs)."""
    if weights_dir is None:
        return None
    return tuple(str(folder) for folder in hub.weights_folders(weights_dir)) or None


def load_inception(dims: int = 2048, *, offline: bool | None = None, weights_dir=None,
                   quiet: bool = False) -> FIDInception:
    """The FID Inception network of the zoo, its weights fetched through the manifest (cached and verified)."""
    [network] = zoo.model_networks(INCEPTION_MODEL, offline=offline, weights_dir=weights_folders(weights_dir),
                                   quiet=quiet, options={"inception": {"dims": dims}})
    return network.module


def to_model_input(pixels: np.ndarray, clean: bool) -> torch.Tensor:
    """H x W x C (grey or RGB, uint8 or uint16) -> 3 x H x W float32 in [0, 1]; with `clean`, already
    resized to 299x299 as clean-fid does."""
    scale = 65535.0 if pixels.dtype == np.uint16 else 255.0
    rgb = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[:, :, :3]
    if clean:
        channels = [np.asarray(Image.fromarray(rgb[:, :, c].astype(np.float32) * np.float32(255.0 / scale), mode="F")
                               .resize((SIZE, SIZE), resample=Image.BICUBIC)).clip(0, 255) for c in range(3)]
        return torch.from_numpy(np.stack(channels) / np.float32(255.0))
    return torch.from_numpy(rgb.astype(np.float32) / np.float32(scale)).permute(2, 0, 1).contiguous()


def to_network_input(images: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W images in [0, 1] -> what the network (and its ONNX graph) takes: resized to 299x299
    bilinearly (align_corners False, no antialiasing) and scaled to [-1, 1]."""
    return 2 * F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False) - 1


@torch.no_grad()
def compute_features(net: FIDInception, images: torch.Tensor, *, logits: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(features, logits or None) of N x 3 x H x W images in [0, 1] on the network's device, in float32
    (TF32 off: the same numbers on every GPU)."""
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            features = net(to_network_input(images))
            return features, (net.logits(features) if logits else None)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous


class InceptionFeatures:
    """The network loaded once, for images held in memory (a training run's samples): `statistics(batches)`."""

    def __init__(self, options: FeatureOptions = FeatureOptions()):
        self.options = options
        self.device = devices.select_device(options.device)
        self.net = load_inception(options.dims, offline=options.offline, weights_dir=options.weights_dir,
                                  quiet=options.quiet).to(self.device)

    def features(self, images: np.ndarray) -> np.ndarray:
        """N x dims float32 features of N x H x W x C uint8 (or uint16) images."""
        batch = torch.stack([to_model_input(image, self.options.clean) for image in images]).to(self.device)
        return compute_features(self.net, batch)[0].float().cpu().numpy()

    def statistics(self, batches) -> FeatureStatistics:
        """The statistics of an iterable of image batches (each N x H x W x C), computed batch by batch."""
        statistics = FeatureStatistics.empty(self.options.dims)
        for images in batches:
            for start in range(0, len(images), self.options.batch_size):
                statistics.add(self.features(images[start:start + self.options.batch_size]))
        return statistics


def encode(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


@dataclass(frozen=True)
class FeatureTask:
    """The engine task: one job per image, no output file; its record carries the features."""

    options: FeatureOptions
    label: str = "inception features"

    @property
    def batch_size(self) -> int:
        return self.options.batch_size

    def setup(self) -> FeatureWorker:
        options = self.options
        device = devices.select_device(options.device)
        net = load_inception(options.dims, offline=options.offline, weights_dir=options.weights_dir,
                             quiet=options.quiet)
        return FeatureWorker(net.to(device), device, options)


class FeatureWorker:
    def __init__(self, net: FIDInception, device: torch.device, options: FeatureOptions):
        self.net, self.device, self.options = net, device, options

    def load(self, job: Job) -> torch.Tensor:
        return to_model_input(read_image(job.source).pixels, self.options.clean)

    def group_key(self, item: torch.Tensor):
        return tuple(item.shape)

    def compute(self, items: list[torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        features, logits = compute_features(self.net, torch.stack(items).to(self.device), logits=self.options.logits)
        features = features.float().cpu().numpy()
        logits = None if logits is None else logits.float().cpu().numpy()
        return [(features[i], None if logits is None else logits[i]) for i in range(len(items))]

    def save(self, job: Job, item, result) -> dict:
        features, logits = result
        record = {"features": encode(features)}
        if logits is not None:
            record["logits"] = encode(logits)
        return record


class FeatureSink:
    """Stands for BatchReport.records: each record is summed into the statistics as it arrives (kept whole
    only with `keep`); `on_record(name)` runs after each counted image (resumable runs checkpoint there)."""

    def __init__(self, dims: int, *, keep: bool = False, statistics: FeatureStatistics | None = None,
                 on_record: Callable[[str], None] | None = None):
        self.statistics = statistics if statistics is not None else FeatureStatistics.empty(dims)
        self.kept: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []
        self.names: list[str] = []
        self.keep, self.on_record, self.seen = keep, on_record, 0

    def append(self, record: dict) -> None:
        self.seen += 1
        if record.get("status") != "done":
            return
        features = decode(record["features"])
        self.statistics.add(features)
        if self.keep:
            self.kept.append(features)
        if "logits" in record:
            self.logits.append(decode(record["logits"]))
        self.names.append(record["input"])
        if self.on_record is not None:
            self.on_record(record["input"])

    def __len__(self) -> int:
        return self.seen

    def __iter__(self):
        return iter(())  # consumed, not kept: no record is left to list (none has an output file)


def as_list(inputs) -> list[str]:
    """One input (a str or path) or several, as a list of str."""
    return [str(inputs)] if isinstance(inputs, (str, Path)) else [str(each) for each in inputs]


def image_jobs(inputs: Sequence[str], *, recursive: bool = False, exclude: set[str] | frozenset = frozenset()
               ) -> list[Job]:
    """One job per image of the inputs (files, folders, globs, s3://), none for the names in `exclude`."""
    return [Job(source, None) for source, _ in expand_inputs(inputs, recursive) if str(source) not in exclude]


def extract(jobs: Sequence[Job], options: FeatureOptions, *, engine: EngineOptions | str | None = None,
            sink: FeatureSink | None = None) -> tuple[BatchReport, FeatureSink]:
    """Run the Inception network over the jobs' images: (the batch report, whose `failed` lists the images
    that could not be read; the sink, holding the statistics, and the features when it keeps them)."""
    sink = sink if sink is not None else FeatureSink(options.dims)
    report = BatchReport()
    report.records = sink  # type: ignore[assignment]  (records are summed as they come, not kept)
    execute(FeatureTask(options), jobs, engine=engine, quiet=options.quiet, report=report)
    return report, sink
