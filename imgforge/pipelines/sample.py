"""Unconditional image generation with DDPM checkpoints in diffusers format (google/ddpm-cifar10-32, the
256px google/ddpm-* models, or a user's own folder), see docs/sample.md.

Image i starts from its own generator seeded with seed + i, which draws x_T and then every step's noise for
that image only: an image does not depend on -n, --batch-size or which images were skipped.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .. import hub, manifest, runtime, zoo
from ..batch import Job, claim_outputs, output_exists
from ..device import on_device
from ..engine import BatchReport, EngineOptions, engine_options, execute
from ..errors import ImgforgeError, ModelError, OutputError
from ..imageio import read_image, write_bytes_atomically, write_image
from ..nets import registry
from ..nets.ddpm_unet import DDPMUNet, describe_unet
from ..plan import RunPlan
from ..storage import location
from .samplers import SAMPLERS, NoiseSchedule, make_sampler

DEFAULT_MODEL = "ddpm-cifar10-32"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
FILE_PATTERN = "sample_{:05d}.png"
GRID_PADDING = 2


@dataclass
class DiffusionModel:
    """A loaded U-Net and the noise schedule it was trained with."""

    name: str
    unet: DDPMUNet
    schedule: NoiseSchedule
    source: Path | None = None  # the weights file
    scheduler_config: dict = field(default_factory=dict)  # as read, for a fine-tuned copy's folder

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return _image_shape(self.unet.config.sample_size, self.unet.config.in_channels)


@dataclass
class SampleReport(BatchReport):
    """What `sample` did: the records of imgforge.engine, the files written (in index order), the grid, and
    the images themselves (N x H x W x C uint8) when nothing was written to disk."""

    written: list[Path] = field(default_factory=list)
    grid: Path | None = None
    images: np.ndarray | None = None
    provider: str = ""  # where the U-Net ran: torch:<device> or onnxruntime:<execution provider>


def load_model(model: str = DEFAULT_MODEL, *, offline: bool | None = None, weights_dir: hub.WeightsDirs = None,
               quiet: bool = False) -> DiffusionModel:
    """A manifest model name (downloaded on first use) or a local diffusers-format folder: config.json +
    scheduler_config.json + diffusion_pytorch_model.{safetensors,bin}, or a pipeline folder with unet/ and
    scheduler/ sub-folders."""
    name, (config_path, scheduler_path, weights_path) = _model_files(model, offline, weights_dir, quiet)
    unet_config = _read_json(config_path)
    _check_sample_size(unet_config.get("sample_size"), config_path)
    scheduler_config = _read_json(scheduler_path)
    schedule = NoiseSchedule.from_config(scheduler_config, where=str(scheduler_path))
    unet = zoo.file_network(weights_path, "ddpm_unet", config=unet_config).module
    return DiffusionModel(name, unet, schedule, weights_path, scheduler_config)


def deploy_recipe(network: registry.Network) -> dict:
    """What the U-Net's sidecar tells a deployer (onnxruntime and numpy, no imgforge) to do to reproduce
    `imgforge sample` (the ddpm sampler): the trained schedule as a float32 table and the update, as data. The
    schedule comes from scheduler_config.json beside the weights file (a zoo model's Hub snapshot, a diffusers
    folder), or in ../scheduler/; None when there is none."""
    schedule = _schedule_beside(network.source)
    if schedule is None:
        return {}
    config = network.module.config
    return {
        "pipeline": "imgforge sample --sampler ddpm --steps S (DDPM ancestral sampling, Ho et al. 2020)",
        "image": {"channels": config.in_channels, "height": config.sample_size, "width": config.sample_size},
        "schedule": {"num_train_timesteps": schedule.num_train_timesteps,
                     "alphas_cumprod": [float(a) for a in schedule.alphas_cumprod.tolist()],
                     "alphas_cumprod_dtype": "float32 (read each value as numpy.float32)",
                     "variance_type": schedule.variance_type, "clip_sample": schedule.clip_sample,
                     "clip_sample_range": schedule.clip_range},
        "timesteps": "leading spacing: t_k = (S - 1 - k) * (num_train_timesteps // S) for k = 0 .. S-1; the step "
                     "after the last goes to t_prev = -1, whose alpha_bar is 1",
        "unet_call": "eps = graph(sample=x (N x C x H x W float32), timestep=float32 array of N copies of t)",
        "step": ["all in float32, a = alpha_bar: a_t = a[t]; a_p = a[t_prev] (1 at -1); alpha = a_t / a_p; "
                 "beta = 1 - alpha",
                 "x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5, clipped to [-range, range] if clip_sample",
                 "x = (a_p ** 0.5 * beta) / (1 - a_t) * x0 + alpha ** 0.5 * (1 - a_p) / (1 - a_t) * x",
                 "if t > 0: x += variance ** 0.5 * z, z ~ N(0, I) of x's shape; variance = max((1 - a_p) / "
                 "(1 - a_t) * beta, 1e-20) for fixed_small, beta for fixed_large"],
        "noise": "x_T ~ N(0, I), then one z per step with t > 0, per image; imgforge draws image i's from "
                 "torch.Generator().manual_seed(seed + i) with torch.randn (x_T first), which numpy cannot "
                 "replay: another generator gives other, equally valid samples",
        "to_uint8": "round(clip(x / 2 + 0.5, 0, 1) * 255) in float32 (round half to even), then H x W x C",
    }


def _schedule_beside(weights: Path | None) -> NoiseSchedule | None:
    """The noise schedule of a diffusers weights file: scheduler_config.json beside it, or in ../scheduler/."""
    if weights is None:
        return None
    for candidate in (weights.with_name("scheduler_config.json"),
                      weights.parent.parent / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            return NoiseSchedule.from_config(_read_json(candidate), where=str(candidate))
    return None


def _model_files(model: str, offline: bool | None, weights_dir: hub.WeightsDirs,
                 quiet: bool) -> tuple[str, tuple[Path, Path, Path]]:
    """The model's name and its (config, scheduler config, weights) files, downloaded if needed."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder.name, _folder_files(folder)
    if any(sep in model for sep in ("/", "\\")) or model.startswith("."):
        raise ImgforgeError(f"model folder not found: {model}")
    entry = manifest.get_model(model)
    if entry.task != "sample" or entry.arch != "ddpm_unet":
        raise ImgforgeError(f"model '{model}' is a {entry.task} model, not a sampling (DDPM) model")
    paths = hub.fetch_model(entry, offline=offline, weights_dir=weights_dir, quiet=quiet)
    return entry.name, (paths["config"], paths["scheduler"], paths["weights"])


def generate(model: DiffusionModel, indices: Sequence[int], *, steps: int = 1000, sampler: str = "ddpm",
             seed: int = 0, batch_size: int = 16, device: str = "auto", precision: str = "fp32",
             eta: float = 0.0, spacing: str | None = None, backend: str = "torch",
             on_step: Callable[[], None] | None = None,
             on_ready: Callable[[str], None] | None = None,
             cuda_graphs: bool = True) -> Iterator[tuple[list[int], np.ndarray]]:
    """Yields (indices, uint8 images N x H x W x C) batch by batch; image i (drawn with seed + i) is the same
    whatever else is drawn. The U-Net runs on `device` in `precision` as a copy where needed: `model` itself is
    left as it was. On CUDA its forward is replayed from CUDA graphs (one per batch shape) unless `cuda_graphs`
    is False."""
    if batch_size < 1:
        raise ImgforgeError(f"--batch-size must be at least 1, not {batch_size}")
    plan = RunPlan.resolve(device=device, precision=precision, backend=backend)
    plan.check_networks([registry.get_family("ddpm_unet")])
    draw = Drawer(model, plan, steps=steps, sampler=sampler, eta=eta, spacing=spacing, cuda_graphs=cuda_graphs)
    if on_ready is not None:
        on_ready(draw.eps_fn.provider)
    for start in range(0, len(indices), batch_size):
        batch = list(indices[start:start + batch_size])
        yield batch, draw([seed + i for i in batch], on_step)


class Drawer:
    """A U-Net on its device with its sampler, set up once: `draw(seeds)` gives one uint8 image
    (N x H x W x C) per seed, each from its own generator, which draws x_T and every step's noise."""

    def __init__(self, model: DiffusionModel, plan: RunPlan, *, steps: int, sampler: str, eta: float,
                 spacing: str | None, cuda_graphs: bool = True):
        self.shape = model.image_shape
        self.sampler = make_sampler(sampler, model.schedule, steps, eta=eta, spacing=spacing)
        self.device = plan.torch_device()
        self.eps_fn = make_eps_function(model.unet, self.device, plan.dtype(self.device), plan.backend, cuda_graphs)

    def __call__(self, seeds: Sequence[int], on_step: Callable[[], None] | None = None) -> np.ndarray:
        generators = [torch.Generator().manual_seed(s) for s in seeds]

        def noise() -> torch.Tensor:
            draws = [torch.randn(self.shape, generator=g) for g in generators]
            return torch.stack(draws).to(self.device)

        with torch.inference_mode():
            x = self.sampler.run(self.eps_fn, noise(), noise, on_step)
            pixels = ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).cpu().numpy()


def sample(model: str = DEFAULT_MODEL, *, num: int = 16, steps: int = 1000, sampler: str = "ddpm",
           seed: int = 0, batch_size: int = 16, device: str = "auto", precision: str = "fp32",
           eta: float = 0.0, spacing: str | None = None, backend: str = "torch",
           output: str | Path | None = None, grid: str | Path | None = None, skip_existing: bool = False,
           quiet: bool = False, json: bool = False, offline: bool | None = None, weights_dir: hub.WeightsDirs = None,
           engine: EngineOptions | str | None = None, threads: int | None = None) -> SampleReport:
    """Draw `num` images. With `output` (a folder or s3:// URL), image i is written as sample_{i:05d}.png as
    soon as its batch is done (an interrupted run leaves only complete files, and skip_existing resumes it);
    `grid` writes one tiled picture of all of them. Without either, the images are returned. Each image is a
    job of imgforge.engine with its own seed (seed + i); `engine`: local (default) or ray, `threads`: torch's
    threads per worker."""
    if num < 1:
        raise ImgforgeError(f"-n/--num must be at least 1, not {num}")
    if sampler not in SAMPLERS:
        raise ImgforgeError(f"unknown sampler {sampler!r}: use {', '.join(SAMPLERS)}")
    if steps < 1 or batch_size < 1:
        raise ImgforgeError(f"--steps and --batch-size must be at least 1, not {steps} and {batch_size}")
    plan = RunPlan.resolve(device=device, precision=precision, backend=backend, threads=threads, offline=offline,
                           weights_dir=weights_dir, quiet=quiet)
    plan.check_networks([registry.get_family("ddpm_unet")])
    engine = engine_options(engine)
    folder = location(output) if output is not None else None
    grid_path = location(grid) if grid is not None else None
    files = [folder / FILE_PATTERN.format(i) for i in range(num)] if folder is not None else [None] * num
    claim_outputs([*((path, f"sample {i}") for i, path in enumerate(files) if path is not None),
                   *([(grid_path, "the grid")] if grid_path is not None else [])])
    if isinstance(grid_path, Path):
        output_exists(grid_path)  # a folder in the way fails now, not after the run
    if folder is None:
        engine.require_in_process("without -o the samples stay in memory; give -o (a folder or s3:// URL)")
    # the files now, so that a missing model fails before any worker starts; the grid needs the image size
    _, (config_path, _, _) = _model_files(model, plan.offline, plan.weights_dir, quiet)
    config = _read_json(config_path)
    _check_sample_size(config.get("sample_size"), config_path)
    shape = _image_shape(config.get("sample_size"), config.get("in_channels", 3))
    keep: dict[int, np.ndarray] | None = {} if folder is None else None
    task = SampleTask(plan=plan, model=model, steps=steps, sampler=sampler, eta=eta, spacing=spacing,
                      batch_size=batch_size, keep=keep)
    jobs = [Job(source=None, target=path, seed=seed + i, options={"index": i}) for i, path in enumerate(files)]
    report = SampleReport(grid=grid_path)
    execute(task, jobs, engine=engine, threads=plan.threads, skip_existing=skip_existing, quiet=quiet,
            json_lines=json, report=report)
    done = sorted((record["index"], record["output"]) for record in report.records if record["status"] == "done")
    if folder is not None:
        report.written = [location(path) for _, path in done]
    report.provider = next((r["provider"] for r in report.records if "provider" in r), "")
    if report.grid is not None:
        write_image(report.grid, _grid(report.records, keep, num, shape))
    elif keep is not None and len(keep) == num:
        report.images = np.stack([keep[i] for i in range(num)])
    return report


@dataclass(frozen=True)
class SampleTask:
    """sample's options for imgforge.engine; setup() loads the U-Net, once per worker. `keep`: where images
    go when no file is written (the local engine only: the worker runs in this process)."""

    plan: RunPlan
    model: str
    steps: int
    sampler: str
    eta: float
    spacing: str | None
    batch_size: int
    keep: dict | None = None
    label: str = "sampling"

    def setup(self) -> SampleWorker:
        worker = SampleWorker(self, load_model(self.model, offline=self.plan.offline,
                                               weights_dir=self.plan.weights_dir, quiet=True))
        runtime.announce(self.plan, worker.draw.device, worker.draw.eps_fn.provider)
        return worker


class SampleWorker:
    """A loaded U-Net with its sampler: a job's item is its seed, a group of seeds is one batch of noise."""

    def __init__(self, task: SampleTask, model: DiffusionModel):
        self.task, self.model = task, model
        self.draw = Drawer(model, task.plan, steps=task.steps, sampler=task.sampler, eta=task.eta,
                           spacing=task.spacing)

    def load(self, job: Job) -> int:
        return job.seed

    def group_key(self, seed: int) -> None:
        return None

    def compute(self, seeds: list[int]) -> list[np.ndarray]:
        return list(self.draw(seeds))

    def save(self, job: Job, seed: int, image: np.ndarray) -> dict:
        if job.target is None:
            self.task.keep[job.options["index"]] = image
        else:
            write_image(job.target, image)
        return {"index": job.options["index"], "provider": self.draw.eps_fn.provider}


def _grid(records: list[dict], keep: dict | None, num: int, shape: tuple[int, int, int]) -> np.ndarray:
    """The tiled picture of every image drawn now or found on disk (a failed image leaves its cell empty)."""
    channels, height, width = shape
    canvas = _GridCanvas(num, height, width, channels)
    for record in records:
        index = record["index"] if "index" in record else None
        if record["status"] == "failed":
            continue
        if index is None:  # skipped: read back the file that was there
            path = location(record["output"])
            index = int(path.stem.rsplit("_", 1)[1])
            canvas.put(index, _as_sample(read_image(path).pixels, (height, width, channels), path))
        elif keep is not None:
            canvas.put(index, keep[index])
        else:
            path = location(record["output"])
            canvas.put(index, _as_sample(read_image(path).pixels, (height, width, channels), path))
    return canvas.pixels


class _GridCanvas:
    """The tiled picture, filled in as images arrive (so that the images themselves need not be kept)."""

    def __init__(self, count: int, height: int, width: int, channels: int):
        self.columns = math.ceil(math.sqrt(count))
        rows = math.ceil(count / self.columns)
        self.height, self.width = height, width
        self.pixels = np.zeros(
            (rows * (height + GRID_PADDING) + GRID_PADDING, self.columns * (width + GRID_PADDING) + GRID_PADDING,
             channels), np.uint8,
        )

    def put(self, index: int, image: np.ndarray) -> None:
        row, column = divmod(index, self.columns)
        top = GRID_PADDING + row * (self.height + GRID_PADDING)
        left = GRID_PADDING + column * (self.width + GRID_PADDING)
        self.pixels[top:top + self.height, left:left + self.width] = image


def make_eps_function(unet: DDPMUNet, device: torch.device, dtype: torch.dtype = torch.float32,
                      backend: str = "torch", cuda_graphs: bool = True):
    """(x, t) -> eps in float32 on `device`, through torch (fp32, or the U-Net cast to bf16/fp16; on CUDA
    replayed from CUDA graphs unless `cuda_graphs` is False) or ONNX (one graph for any batch and size, cached)."""
    runtime.check_backend(backend)
    policy = registry.get_family("ddpm_unet").policy
    if backend == "onnx":
        (export,) = describe_unet(unet).exports  # any batch and size; timesteps as float32, one per image
        runner = runtime.make_runner(unet, backend=backend, device=device, dtype=dtype, export=export, policy=policy)

        def eps_onnx(x: torch.Tensor, t: int) -> torch.Tensor:
            return runner(x, torch.full((x.shape[0],), float(t))).to(device)

        eps_onnx.provider = runner.provider
        return eps_onnx
    # A reduced precision casts the whole U-Net (faster than autocast on CPU, which re-casts the weights on
    # every call); the sampler's arithmetic stays float32. channels_last saves oneDNN's layout conversions
    # around every convolution (measured 1.1-1.25x on CPU, docs/sample.md). The caller's U-Net is not touched.
    net = on_device(unet, device, policy.dtype(dtype), torch.channels_last).eval()

    def eps_torch(x: torch.Tensor, t: int) -> torch.Tensor:
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        return net(x, torch.tensor(t, device=device)).float().contiguous()

    eps_torch.provider = f"torch:{device}"
    if device.type == "cuda" and cuda_graphs:
        return GraphedForward(net, device, dtype, eps_torch)
    return eps_torch


class GraphedForward:
    """The U-Net's forward on CUDA replayed from a CUDA graph, captured once per batch shape: the step loop of a
    small model is bound by kernel launches, not arithmetic. Inputs are copied into static buffers (cast and
    channels-last on the way), the timestep is filled into a static tensor, and the output is copied out
    before the next replay overwrites it. The first call per shape warms up on a side stream (cuDNN and
    cuBLAS pick their kernels outside the capture), then captures; if capture fails, that shape runs eagerly."""

    def __init__(self, net: DDPMUNet, device: torch.device, dtype: torch.dtype, eager: Callable):
        self.net, self.device, self.dtype, self.eager = net, device, dtype, eager
        self.graphs: dict[tuple[int, ...], tuple | None] = {}
        self.provider = f"torch:{device}, CUDA graphs"

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape not in self.graphs:
            self.graphs[shape] = self._capture(x)
        captured = self.graphs[shape]
        if captured is None:
            return self.eager(x, t)
        graph, x_static, t_static, out_static = captured
        x_static.copy_(x)
        t_static.fill_(t)
        graph.replay()
        # a copy: the next replay overwrites the static output, and multistep samplers keep earlier eps
        return out_static.to(torch.float32, memory_format=torch.contiguous_format, copy=True)

    def _capture(self, x: torch.Tensor) -> tuple | None:
        try:
            x_static = torch.empty(x.shape, dtype=self.dtype, device=self.device, memory_format=torch.channels_last)
            x_static.copy_(x)
            t_static = torch.zeros((), dtype=torch.long, device=self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.net(x_static, t_static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out_static = self.net(x_static, t_static)
            return graph, x_static, t_static, out_static
        except RuntimeError as exc:
            warnings.warn(f"CUDA graph capture failed ({' '.join(str(exc).split())[:200]}); running eagerly")
            return None


def _folder_files(folder: Path) -> tuple[Path, Path, Path]:
    unet_folder = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    scheduler_folder = folder / "scheduler" if (folder / "scheduler").is_dir() else folder
    config = unet_folder / "config.json"
    scheduler = scheduler_folder / "scheduler_config.json"
    weights = next((unet_folder / n for n in WEIGHT_FILES if (unet_folder / n).is_file()), None)
    missing = [p.name for p in (config, scheduler) if not p.is_file()] + ([] if weights else [WEIGHT_FILES[0]])
    if missing:
        raise ModelError(
            f"{folder} is not a diffusers DDPM folder: {', '.join(missing)} missing "
            "(expected config.json, scheduler_config.json and diffusion_pytorch_model.safetensors or .bin, "
            "or unet/ and scheduler/ sub-folders)"
        )
    return config, scheduler, weights


# The Hub layout of google/ddpm-cifar10-32, which both _folder_files and diffusers' DDPMPipeline read.
MODEL_INDEX = {"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"],
               "unet": ["diffusers", "UNet2DModel"]}


def save_model(folder: str | Path, unet: DDPMUNet, scheduler_config: dict,
               state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a diffusers DDPM folder that load_model and DDPMPipeline.from_pretrained read: config.json (the
    U-Net's config), diffusion_pytorch_model.safetensors (`state`, by default the U-Net's own weights, under
    the current diffusers key names, which are the module's), scheduler_config.json and model_index.json.
    Each file is written atomically; the weights first, so a reader never pairs new configs with old weights
    of another shape."""
    from safetensors.torch import save as safetensors_bytes

    folder = Path(folder)
    state = unet.state_dict() if state is None else state
    tensors = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in state.items()}
    config = {"_class_name": "UNet2DModel", **asdict(unet.config)}
    files = {
        WEIGHT_FILES[0]: safetensors_bytes(tensors, metadata={"format": "pt"}),
        "config.json": _json_bytes(config),
        "scheduler_config.json": _json_bytes(scheduler_config),
        "model_index.json": _json_bytes(MODEL_INDEX),
    }
    for name, data in files.items():
        write_bytes_atomically(folder / name, data)
    return folder


def _json_bytes(value: dict) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode("utf-8")


def _image_shape(sample_size: int | Sequence[int] | None, in_channels: int) -> tuple[int, int, int]:
    """(channels, height, width) of the images a U-Net draws."""
    size = sample_size or 32
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return in_channels, height, width


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path} as JSON: {' '.join(str(exc).split())}") from None


def _check_sample_size(size: object, config_path: Path) -> None:
    """sample_size, the side (or [height, width]) of the images drawn: positive, and within the pixel limit
    every image imgforge handles obeys (IMGFORGE_MAX_PIXELS)."""
    from ..imageio import max_pixels

    if size is None:
        return
    sides = size if isinstance(size, list) and len(size) == 2 else [size, size]
    if not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in sides):
        raise ModelError(f"{config_path}: sample_size must be a positive whole number of pixels or a [height, width] "
                         f"pair, not {json.dumps(size)}")
    if sides[0] * sides[1] > max_pixels():
        raise ModelError(f"{config_path}: sample_size {json.dumps(size)} makes images of {sides[0] * sides[1]} "
                         f"pixels, over the limit of {max_pixels()} (IMGFORGE_MAX_PIXELS)")


def _as_sample(pixels: np.ndarray, shape: tuple[int, int, int], path: Path) -> np.ndarray:
    """An existing sample file as the grid needs it, or a clear error if it is not one of this model's."""
    height, width, channels = shape
    if pixels.dtype == np.uint8 and pixels.shape[:2] == (height, width):
        if pixels.shape[2] == channels:
            return pixels
        if pixels.shape[2] == 1:
            return np.repeat(pixels, channels, axis=2)
    raise OutputError(f"{path} is not a {width}x{height} 8-bit sample of this model; delete it or use another -o")
