"""Old-photo restoration ("Bringing Old Photos Back to Life", global stage), in one process.

The official code runs detection.py and test.py as separate processes that pass image folders; here the same
computation runs as a sequence of stages over one in-memory `Work` item (docs/restore.md has the details):

    prepare    resize to the processing size: with scratches, each side rounded to a multiple of 16 (bicubic,
               detection.py `full_size`; `scale`: shorter side 256 first); without, to a multiple of 4
               (bilinear, test.py `Full`; `scale`: test.py `Scale`)
    mask       detect scratches (grey, Normalize(0.5, 0.5), bilinear resize to a short side of 256 in
               multiples of 16, U-Net, sigmoid, nearest resize back, P >= 0.4) or take the given mask; dilate
    global     paint the scratches white, Normalize(0.5, 0.5), VAE_A encode, mapping, VAE_B decode, then the
               official save_image(normalize=True) min-max stretch and rounding to 8 bits
    finish     back to the input's size (bicubic), grey out for grey in, the input's alpha

    faces      detect, align, enhance and blend back the faces of the global result (the official stages 2-4,
               imgforge/pipelines/faces.py); with faces_only the only stage before finish
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import hub, imageio, manifest, runtime
from ..batch import IMAGE_EXTENSIONS, Job, plan_jobs
from ..engine import BatchReport, EngineOptions, engine_options, execute
from ..checkpoint import load_state_dict
from ..errors import ImgforgeError, InputError, RunWideError
from ..imageio import Picture
from ..nets import registry
from ..nets.mapping import mapping_kind
from ..progress import console, report_within_item
from ..storage import location
from .faces import FaceCrop, FaceEnhancer

MODELS = {"quality": "oldphoto-quality", "scratch": "oldphoto-scratch", "hr": "oldphoto-hr"}
MODES = ("full", "scale")
MASK_THRESHOLD = 0.4  # detection.py: scratch where sigmoid(logit) >= 0.4
DETECTION_SHORT_SIDE = 256  # detection.py scale_tensor: the U-Net always sees a short side of 256
SCALE_SHORT_SIDE = 256  # test.py `Scale` / detection.py `scale_256`
HR_MASK_DILATION = 3  # test.py parameter_set with --HR
MIN_SIDE = 16  # the VAE's reflection paddings need a latent of a few pixels
MASK_OUTPUT = "_mask.png"  # --save-mask: <output stem>_mask.png beside each output
# --save-faces: the aligned and the enhanced faces, side by side in detection order, beside each output
FACE_OUTPUTS = ("_faces_aligned.png", "_faces_enhanced.png")
# Nominal work (FLOP) of the official networks, which weighs each step in a photo's progress: per detector
# input pixel, per image pixel of one VAE pass, per latent position of the mapping's convolutions (and of
# those before its attention), per pair of latent positions of the scratch attention.
DETECTOR_WORK = 2.2e6
VAE_WORK = 9.7e4
MAPPING_WORK = {"quality": 7.2e7, "scratch": 1.03e8, "hr": 1.5e8}
BEFORE_ATTENTION_WORK = {"scratch": 7.8e6, "hr": 2.7e7}
ATTENTION_WORK = 4 * 512


@dataclass
class Work:
    """What flows through the stages: the image (uint8 H x W x 3) at the current stage's size, the scratch mask
    (bool H x W, True = scratch) at the same size, or None on the quality path, and how far the photo has got."""

    image: np.ndarray
    mask: np.ndarray | None = None
    faces: list[FaceCrop] = field(default_factory=list)
    progress: PhotoProgress | None = None


class PhotoProgress:
    """How far one photo has got, for the batch's bar (progress.report_within_item): each step's share is
    its nominal work at the photo's size, so that the ETA holds from the first step on; the mapping moves
    with the attention's chunks, which are nearly all of the work on large photos."""

    def __init__(self, settings: Settings, width: int, height: int):
        latent = width * height / 16
        detector = DETECTOR_WORK * DETECTION_SHORT_SIDE**2 * max(width, height) / min(width, height)
        self.kind = settings.kind
        attention = ATTENTION_WORK * latent**2 if self.kind == "scratch" else 0.0
        self.steps = {"detecting scratches": detector if settings.scratches else 0.0,
                      "encoding": VAE_WORK * width * height, "mapping": MAPPING_WORK[self.kind] * latent + attention,
                      "decoding": VAE_WORK * width * height}
        self.before_attention = BEFORE_ATTENTION_WORK.get(self.kind, 0.0) * latent
        self.attention = attention if self.kind == "scratch" else self.steps["mapping"] - self.before_attention
        self.done, self.current = 0.0, None

    def begin(self, step: str) -> None:
        if self.current is not None:
            self.done += self.steps[self.current]
        self.current = step
        report_within_item(self.done / sum(self.steps.values()), step)

    def chunk_done(self, done: int, total: int) -> None:
        """`done` of `total` chunks of the mapping's attention (or scales of the HR model's) are done."""
        within = self.before_attention + self.attention * done / total
        report_within_item((self.done + within) / sum(self.steps.values()), f"{self.current} {done}/{total}")


@dataclass
class RestoreResult:
    pixels: np.ndarray  # uint8 H x W x 3 (H x W x 1 for a grey input), the input's size
    alpha: np.ndarray | None  # the input's alpha, unchanged
    mask: np.ndarray | None  # bool H x W at the input's size: the scratches restored (after dilation)
    faces: list[FaceCrop] = field(default_factory=list)  # the faces enhanced, in detection order


@dataclass(frozen=True)
class Settings:
    scratches: bool = True
    mode: str = "full"
    hr: bool = False
    mask_dilation: int | None = None  # None: 3 with hr, else 0
    stretch: bool = True
    faces: bool = True
    faces_only: bool = False
    face_detector: str = "yunet"

    @property
    def kind(self) -> str:
        return "hr" if self.hr else ("scratch" if self.scratches else "quality")

    @property
    def dilation(self) -> int:
        if self.mask_dilation is not None:
            return self.mask_dilation
        return HR_MASK_DILATION if self.hr else 0

    def check(self, *, has_mask: bool = False, save_mask: bool = False) -> None:
        if self.faces_only:
            if not self.faces:
                raise ImgforgeError("--faces-only and --no-faces contradict each other")
            for used, option in ((has_mask, "--mask"), (save_mask, "--save-mask"),
                                 (self.mask_dilation is not None, "--mask-dilation")):
                if used:
                    raise ImgforgeError(f"{option} works on scratches; it cannot be combined with --faces-only")
            return
        if self.mode not in MODES:
            raise ImgforgeError(f"unknown mode {self.mode!r}: use full or scale")
        if self.mask_dilation is not None and self.mask_dilation < 0:
            raise ImgforgeError("--mask-dilation must be 0 or more iterations")
        if not self.scratches:
            for used, option in ((self.hr, "--hr"), (has_mask, "--mask"), (save_mask, "--save-mask"),
                                 (self.mask_dilation is not None, "--mask-dilation")):
                if used:
                    raise ImgforgeError(f"{option} works on scratches; it cannot be combined with --no-scratches")


# Each weights file of a restore model: the family it must be, its `config` table in the manifest, and the
# part of it the restoration runs (None: the whole network).
ROLES = {"detector": ("oldphoto_detector", "detector", None), "vae_a": ("oldphoto_vae", "vae", ("encoder",)),
         "mapping": ("oldphoto_mapping", "mapping", None), "vae_b": ("oldphoto_vae", "vae", ("decoder",))}


class Restorer:
    """The networks of one restoration model, loaded once through the registry, and the stages that use them.
    `model` (a zoo name) defaults to the official model of `settings.kind`; given, the settings' kind follows
    the model's networks (its mapping's kind, a detector or not)."""

    def __init__(self, settings: Settings, *, model: str | None = None, device: str = "auto",
                 precision: str = "fp32", backend: str = "torch", offline: bool | None = None,
                 weights_dir: hub.WeightsDirs = None, quiet: bool = False):
        runtime.check_backend(backend)
        self.device = runtime.select_device(device)
        self.dtype = runtime.select_dtype(precision, self.device)
        self.faces = None
        if settings.faces_only:
            self.settings = settings
            self.faces = _face_enhancer(settings, self.device, self.dtype, backend, offline, weights_dir, quiet)
            self.entry = self.faces.entry
            return
        self.entry = manifest.get_model(model or MODELS[settings.kind])
        if self.entry.task != "restore":
            raise ImgforgeError(f"model '{self.entry.name}' is a {self.entry.task} model, not a restore model")
        paths = _fetch(self.entry, offline, weights_dir, quiet)
        unknown = sorted(set(paths) - set(ROLES))
        if unknown or not {"vae_a", "mapping", "vae_b"} <= set(paths):
            raise ImgforgeError(f"model '{self.entry.name}': a restore model has the files "
                                f"{', '.join(ROLES)} (detector optional), not {', '.join(paths)}")
        self.networks = [self._load(role, path) for role, path in paths.items()]
        place = (functools.partial(runtime.place, device=self.device, dtype=self.dtype) if backend == "torch"
                 else lambda module: module)  # ONNX Runtime runs the graphs; the modules stay for export
        nets = {network.role: place(network.module) for network in self.networks}
        self.vae_a, self.mapping, self.vae_b = (nets[role] for role in ("vae_a", "mapping", "vae_b"))
        self.detector = nets.get("detector")
        kind = mapping_kind(self.mapping.state_dict())
        if model is not None:
            settings = replace(settings, scratches=kind != "quality", hr=kind == "hr")
        if kind != settings.kind or (self.detector is None) == settings.scratches:
            raise ImgforgeError(f"model '{self.entry.name}' has a {kind} mapping"
                                f"{'' if self.detector else ' and no detector'}; it cannot restore {settings.kind}")
        self.settings = settings
        if settings.faces:
            self.faces = _face_enhancer(settings, self.device, self.dtype, backend, offline, weights_dir, quiet)
        self.backend = backend
        self.run_network = self._torch_calls() if backend == "torch" else self._onnx_calls()

    def _load(self, role: str, path: Path) -> registry.Network:
        family, config_key, parts = ROLES[role]
        net, found = registry.load(load_state_dict(path), self.entry.arch, **self.entry.config.get(config_key, {}))
        if found.name != family:
            raise ImgforgeError(f"model '{self.entry.name}': its {role} file is a {found.name} network, not "
                                f"{family}")
        return registry.Network(role, net, found, source=path, parts=parts)

    def _torch_calls(self) -> dict[str, Callable]:
        """Each network called on inputs cast to the precision it was placed in (runtime.place)."""
        def cast(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
            return x.to(runtime.dtype_of(net))

        return {"detector": lambda x: self.detector(cast(self.detector, x)),
                "vae_a": lambda x: self.vae_a.encode(cast(self.vae_a, x)),
                "mapping": lambda latent, *mask, **chunks: self.mapping(cast(self.mapping, latent), *mask, **chunks),
                "vae_b": lambda z: self.vae_b.decode(cast(self.vae_b, z))}

    def _onnx_calls(self) -> dict[str, Callable]:
        """One ONNX Runtime graph per network part (exported on first use, cached by weights)."""
        calls = {}
        for network in self.networks:
            exports = network.exports()
            if not exports:
                raise RunWideError(f"the {network.describe().hyperparameters.get('kind', network.role)} "
                                   f"{network.role} has no ONNX graph yet; use --backend torch")
            calls[network.role] = runtime.make_runner(network.module, backend="onnx", device=self.device,
                                                      dtype=self.dtype, export=exports[0])
        return calls

    @property
    def provider(self) -> str:
        """Where the global networks run: onnxruntime's provider in use, or torch's device."""
        runner = getattr(self, "run_network", {}).get("vae_a")
        return getattr(runner, "provider", f"torch:{self.device}")

    def stages(self, given_mask: np.ndarray | None) -> list[Callable[[Work], Work]]:
        face_stage = [self.enhance_faces] if self.faces else []
        if self.settings.faces_only:
            return face_stage
        if not self.settings.scratches:
            return [self.prepare_quality, self.restore_global, *face_stage]
        find_mask = self.detect_scratches if given_mask is None else _mask_stage(given_mask)
        return [self.prepare_scratch, find_mask, self.dilate, self.restore_global, *face_stage]

    def run(self, picture: Picture, given_mask: np.ndarray | None = None) -> RestoreResult:
        if min(picture.width, picture.height) < MIN_SIDE:
            raise InputError(f"the image is {picture.width}x{picture.height}; restore needs at least "
                             f"{MIN_SIDE} pixels on each side")
        if given_mask is not None and given_mask.shape != (picture.height, picture.width):
            raise InputError(f"the mask is {given_mask.shape[1]}x{given_mask.shape[0]}, the image "
                             f"{picture.width}x{picture.height}; they must have the same size")
        size = _rounded_size(picture.width, picture.height, 16 if self.settings.scratches else 4,
                             self.settings.mode == "scale")
        work = Work(np.asarray(picture.to_pil("RGB")), progress=PhotoProgress(self.settings, *size))
        for stage in self.stages(given_mask):
            work = stage(work)
        return _finish(work, picture)

    # -- stages ------------------------------------------------------------------------------------------

    def prepare_quality(self, work: Work) -> Work:
        """test.py data_transforms: each side rounded to a multiple of 4 (after scaling the short side to 256
        in `scale` mode), PIL bilinear."""
        size = _rounded_size(work.image.shape[1], work.image.shape[0], 4, self.settings.mode == "scale")
        return replace(work, image=_pil_resize(work.image, size, Image.BILINEAR))

    def prepare_scratch(self, work: Work) -> Work:
        """detection.py data_transforms (`full_size` / `scale_256`): multiples of 16, PIL bicubic. The
        restoration reads this resized image too, as run.py passes detection's `input` folder to test.py."""
        size = _rounded_size(work.image.shape[1], work.image.shape[0], 16, self.settings.mode == "scale")
        return replace(work, image=_pil_resize(work.image, size, Image.BICUBIC))

    def detect_scratches(self, work: Work) -> Work:
        _begin(work, "detecting scratches")
        grey = np.array(Image.fromarray(work.image).convert("L"))
        x = _normalised(torch.from_numpy(grey)[None, None])
        height, width = grey.shape
        with torch.inference_mode():
            scaled = F.interpolate(x.to(self.device), _detection_size(height, width), mode="bilinear")
            probability = torch.sigmoid(self.run_network["detector"](scaled).float())
        probability = F.interpolate(probability, [height, width], mode="nearest")
        return replace(work, mask=(probability >= MASK_THRESHOLD)[0, 0].cpu().numpy())

    def dilate(self, work: Work) -> Work:
        """test.py: cv2.dilate, 3x3 kernel, `mask_dilation` iterations."""
        if self.settings.dilation == 0:
            return work
        grown = cv2.dilate(work.mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=self.settings.dilation)
        return replace(work, mask=grown.astype(bool))

    def restore_global(self, work: Work) -> Work:
        image = work.image
        if work.mask is not None:  # irregular_hole_synthesize: scratch pixels become white
            image = np.where(work.mask[:, :, None], np.uint8(255), image)
        x = _normalised(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]).to(self.device)
        with torch.inference_mode():
            _begin(work, "encoding")
            latent = self.run_network["vae_a"](x)
            _begin(work, "mapping")
            if work.mask is None:
                mapped = self.run_network["mapping"](latent)
            else:
                mask = torch.from_numpy(work.mask)[None, None].to(self.device, torch.float32)
                chunks = {"on_chunk": work.progress.chunk_done} if work.progress and self.backend == "torch" else {}
                mapped = self.run_network["mapping"](latent, mask, **chunks)
            _begin(work, "decoding")
            generated = self.run_network["vae_b"](mapped).float()
        return replace(work, image=_to_uint8((generated.cpu() + 1.0) / 2.0, stretch=self.settings.stretch))

    def enhance_faces(self, work: Work) -> Work:
        image, faces = self.faces(work.image)
        return replace(work, image=image, faces=faces)


def load_model(name: str, **options) -> Restorer:
    """A restore model of the zoo by name (its global networks; the face stage's models are zoo entries of their
    own), its kind (quality, scratch, HR) read from its networks; options go to Restorer (device=, precision=,
    backend=, offline=, weights_dir=, quiet=)."""
    return Restorer(Settings(faces=False), model=name, **options)


def load_networks(name: str, **options) -> list[registry.Network]:
    """The networks of a restore model, each with the part the restoration runs (for `imgforge export`)."""
    return load_model(name, device="cpu", **options).networks


def restore_image(picture_or_array: Picture | np.ndarray, *, scratches: bool = True, mode: str = "full",
                  hr: bool = False, mask: Picture | np.ndarray | None = None, mask_dilation: int | None = None,
                  stretch: bool = True, faces: bool = True, faces_only: bool = False, face_detector: str = "yunet",
                  device: str = "auto", precision: str = "fp32", backend: str = "torch", offline: bool | None = None,
                  weights_dir: hub.WeightsDirs = None, quiet: bool = True) -> RestoreResult:
    """Restore one image in memory: a Picture or an array (H x W [x 1|3|4], uint8, uint16 or float in [0, 1]).
    `mask`: a Picture or array of the image's size, scratches white/True. `faces`: enhance the faces after the
    global stage (`faces_only`: instead of it). Loads the networks on each call; restore() loads them once
    for many files."""
    settings = Settings(scratches, mode, hr, mask_dilation, stretch, faces, faces_only, face_detector)
    settings.check(has_mask=mask is not None)
    picture = picture_or_array if isinstance(picture_or_array, Picture) else _picture_from_array(picture_or_array)
    restorer = Restorer(settings, device=device, precision=precision, backend=backend, offline=offline,
                        weights_dir=weights_dir, quiet=quiet)
    return restorer.run(picture, None if mask is None else mask_array(mask))


def restore(inputs: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike | None = None, *,
            scratches: bool = True, mode: str = "full", hr: bool = False, mask: str | os.PathLike | None = None,
            mask_dilation: int | None = None, save_mask: bool = False, stretch: bool = True, faces: bool = True,
            faces_only: bool = False, face_detector: str = "yunet", save_faces: bool = False, device: str = "auto",
            backend: str = "torch",
            precision: str = "fp32", recursive: bool = False, suffix: str = "", output_format: str | None = None,
            skip_existing: bool = False, quiet: bool = False, json: bool = False, offline: bool | None = None,
            weights_dir: hub.WeightsDirs = None, batch_size: int = 1,
            engine: EngineOptions | str | None = None, threads: int | None = None) -> BatchReport:
    """Restore image files (files, folders, globs; local or s3://) into `output` (a file for one input, else a
    folder; default: beside each input with the suffix `_restored`). `mask`: one mask file (one input) or a
    folder of masks named like the inputs. With save_mask, the scratch mask is written beside each output as
    <name>_mask.png; with save_faces, the faces as found and as enhanced as <name>_faces_aligned.png and
    <name>_faces_enhanced.png (side by side in detection order; not written for a photo without faces).
    `engine`: local (default) or ray, `threads`: torch's threads per worker, see imgforge.engine; batch_size:
    images handed to a worker at a time (they are restored one by one)."""
    settings = Settings(scratches, mode, hr, mask_dilation, stretch, faces, faces_only, face_detector)
    if save_faces and not faces:
        raise ImgforgeError("--save-faces needs the face stage; it cannot be combined with --no-faces")
    settings.check(has_mask=mask is not None, save_mask=save_mask)
    if batch_size < 1:
        raise ImgforgeError("--batch-size must be at least 1")
    engine = engine_options(engine)
    sources = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(item) for item in inputs]
    given_masks = _mask_files(location(mask)) if mask is not None else []
    jobs = plan_jobs(sources, None if output is None else str(output), recursive=recursive, suffix=suffix,
                     extension=output_format, default_suffix="_restored",
                     side_suffixes=[MASK_OUTPUT] * save_mask + [*FACE_OUTPUTS] * save_faces, also_read=given_masks)
    if mask is not None:
        find_mask = _mask_finder(location(mask), len(jobs))
        jobs = [replace(job, options=_mask_option(find_mask, job.source)) for job in jobs]
    task = RestoreTask(settings, device=device, precision=precision, offline=offline,
                       weights_dir=weights_dir, quiet=quiet,
                       save_mask=save_mask, save_faces=save_faces, backend=backend,
                       batch_size=batch_size)
    return execute(task, jobs, engine=engine, threads=threads, skip_existing=skip_existing, quiet=quiet,
                   json_lines=json)


@dataclass(frozen=True)
class RestoreTask:
    """restore's options for imgforge.engine; setup() loads the networks, once per worker."""

    settings: Settings
    device: str
    precision: str
    offline: bool | None
    weights_dir: hub.WeightsDirs
    quiet: bool
    save_mask: bool
    save_faces: bool
    backend: str = "torch"
    batch_size: int = 1
    label: str = "restoring"

    def setup(self) -> RestoreWorker:
        restorer = Restorer(self.settings, device=self.device, precision=self.precision, backend=self.backend,
                            offline=self.offline, weights_dir=self.weights_dir, quiet=self.quiet)
        if self.backend == "onnx" and not self.quiet:
            console.print(f"running on {restorer.provider}", markup=False, highlight=False)
        return RestoreWorker(self, restorer)


class RestoreWorker:
    """A loaded Restorer and the per-file steps around it."""

    def __init__(self, task: RestoreTask, restorer: Restorer):
        self.task, self.restorer = task, restorer

    def load(self, job: Job) -> tuple[Picture, np.ndarray | None]:
        if "mask_error" in job.options:
            raise InputError(job.options["mask_error"])
        given = job.options.get("mask")
        return imageio.read_image(job.source), mask_array(imageio.read_image(given)) if given else None

    def group_key(self, item) -> None:
        return None

    def compute(self, items: list[tuple[Picture, np.ndarray | None]]) -> list[RestoreResult]:
        return [self.restorer.run(picture, given) for picture, given in items]

    def save(self, job: Job, item: tuple[Picture, np.ndarray | None], result: RestoreResult) -> dict:
        record = {"model": self.restorer.entry.name, "mode": self.task.settings.mode,
                  "provider": self.restorer.provider}
        if self.restorer.faces is not None:
            record["faces"] = len(result.faces)
        if self.task.save_faces and result.faces:  # before the output, as the mask
            for suffix, crops in zip(FACE_OUTPUTS, zip(*((face.aligned, face.enhanced) for face in result.faces))):
                imageio.write_image(job.side_output(suffix), np.concatenate(crops, axis=1))
            record["face_files"] = [str(job.side_output(suffix)) for suffix in FACE_OUTPUTS]
        if result.mask is not None:
            record["scratch_fraction"] = round(float(result.mask.mean()), 6)
        if self.task.save_mask and result.mask is not None:  # before the output: an existing output implies its mask
            mask_path = job.side_output(MASK_OUTPUT)
            imageio.write_image(mask_path, result.mask.astype(np.uint8) * 255)
            record["mask"] = str(mask_path)
        imageio.write_image(job.target, result.pixels, alpha=result.alpha, like=item[0])
        return record


def mask_array(mask: Picture | np.ndarray) -> np.ndarray:
    """A user's mask -> bool H x W, True = scratch: a picture or uint8 array where its grey value is >= 128
    (white marks scratches), a bool array as it is, a float array where >= 0.5."""
    if isinstance(mask, Picture):
        mask = np.asarray(mask.to_pil("L"))
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    elif mask.ndim == 3:
        mask = np.asarray(Image.fromarray(_as_uint8(mask[:, :, :3])).convert("L"))
    if mask.ndim != 2:
        raise InputError(f"a mask must be H x W (or an image), not {mask.shape}")
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.floating):
        return mask >= 0.5
    return _as_uint8(mask) >= 128


# -- helpers -----------------------------------------------------------------------------------------------


def _fetch(entry: manifest.ModelEntry, offline: bool | None, weights_dir: hub.WeightsDirs,
           quiet: bool) -> dict[str, Path]:
    if not quiet:
        console.print(f"loading {entry.name}", markup=False, highlight=False)
    return hub.fetch_model(entry, offline=offline, weights_dir=weights_dir, quiet=quiet)


def _face_enhancer(settings: Settings, device: torch.device, dtype: torch.dtype, backend: str, offline: bool | None,
                   weights_dir: hub.WeightsDirs, quiet: bool) -> FaceEnhancer:
    """The face stage: 512 px faces (FaceSR_512, the _HR scripts) with --hr, else 256 px."""
    return FaceEnhancer(size=512 if settings.hr else 256, detector=settings.face_detector, device=device,
                        dtype=dtype, backend=backend, offline=offline, weights_dir=weights_dir, quiet=quiet)


def _mask_files(mask: Path) -> list[Path]:
    """The given mask file, or the images of a mask folder: inputs too, which no output may replace."""
    if mask.is_dir():
        return [path for path in mask.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS]
    return [mask]


def _mask_finder(mask: Path, job_count: int) -> Callable[[Path], Path]:
    """Which mask file goes with an input, decided at plan time (a job carries its mask's path)."""
    if mask.is_dir():
        def in_folder(source: Path) -> Path:
            for extension in sorted(IMAGE_EXTENSIONS):
                for candidate in (mask / (source.stem + extension), mask / (source.stem + extension.upper())):
                    if candidate.is_file():
                        return candidate
            raise InputError(f"no mask named {source.stem}.* in {mask}")

        return in_folder
    if not mask.is_file():
        raise InputError(f"cannot read mask {mask}: no such file or folder")
    if job_count > 1:
        raise InputError(f"--mask {mask} is one file but there are {job_count} inputs; give a folder of masks "
                         "named like the inputs")
    return lambda source: mask


def _mask_option(find_mask: Callable[[Path], Path], source: Path) -> dict:
    """A job's mask, or why it has none (that file fails, the others go on)."""
    try:
        return {"mask": str(find_mask(source))}
    except InputError as exc:
        return {"mask_error": str(exc)}


def _begin(work: Work, step: str) -> None:
    if work.progress is not None:
        work.progress.begin(step)


def _mask_stage(mask: np.ndarray) -> Callable[[Work], Work]:
    def given_mask(work: Work) -> Work:
        """The user's mask, resized (nearest) to the processing size."""
        height, width = work.image.shape[:2]
        resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        return replace(work, mask=resized.astype(bool))

    return given_mask


def _rounded_size(width: int, height: int, multiple: int, scale: bool) -> tuple[int, int]:
    """The official size rule (detection.py / test.py data_transforms): optionally scale the shorter side to
    256, then round each side to a multiple with Python's round() (halves to even, as the originals do)."""
    if scale:
        if width < height:
            width, height = SCALE_SHORT_SIDE, height / width * SCALE_SHORT_SIDE
        else:
            width, height = width / height * SCALE_SHORT_SIDE, SCALE_SHORT_SIDE
    size = int(round(width / multiple) * multiple), int(round(height / multiple) * multiple)
    if min(size) < MIN_SIDE:
        raise InputError(f"the image is too narrow to restore ({width:.0f}x{height:.0f} rounds to "
                         f"{size[0]}x{size[1]})")
    return size


def _detection_size(height: int, width: int) -> list[int]:
    """detection.py scale_tensor: the shorter side to 256, both sides rounded to multiples of 16."""
    if height < width:
        height, width = DETECTION_SHORT_SIDE, width / height * DETECTION_SHORT_SIDE
    else:
        height, width = height / width * DETECTION_SHORT_SIDE, DETECTION_SHORT_SIDE
    return [int(round(height / 16) * 16), int(round(width / 16) * 16)]


def _pil_resize(image: np.ndarray, size: tuple[int, int], method: int) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == size:
        return image
    return np.asarray(Image.fromarray(image).resize(size, method))


def _normalised(pixels: torch.Tensor) -> torch.Tensor:
    """ToTensor then Normalize(0.5, 0.5), in torchvision's order of float32 operations."""
    return pixels.float().div(255).sub_(0.5).div_(0.5)


def _to_uint8(images: torch.Tensor, *, stretch: bool) -> np.ndarray:
    """torchvision save_image of a (1, 3, H, W) batch in [0, 1]: with normalize=True (stretch) a min-max
    stretch over the whole batch, then v * 255 + 0.5 clamped to [0, 255] and truncated."""
    x = images.clone()
    if stretch:
        low, high = float(x.min()), float(x.max())
        x.clamp_(min=low, max=high).sub_(low).div_(max(high - low, 1e-5))
    return x[0].mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()


def _finish(work: Work, picture: Picture) -> RestoreResult:
    """Back to the input's size (PIL bicubic for the image, nearest for the mask); grey out for grey in."""
    size = (picture.width, picture.height)
    image = Image.fromarray(work.image)
    if image.size != size:
        image = image.resize(size, Image.BICUBIC)
    pixels = np.asarray(image.convert("L"))[:, :, None] if picture.is_grey else np.asarray(image)
    mask = None
    if work.mask is not None:
        mask = cv2.resize(work.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return RestoreResult(pixels=pixels, alpha=picture.alpha, mask=mask, faces=work.faces)


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    raise InputError(f"image arrays must be uint8, uint16 or float in [0, 1], not {array.dtype}")


def _picture_from_array(array: np.ndarray) -> Picture:
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(f"an image array must be H x W, H x W x 1, 3 or 4, not {array.shape}")
    if array.dtype not in (np.uint8, np.uint16):
        array = _as_uint8(array)
    alpha = array[:, :, 3] if array.shape[2] == 4 else None
    return Picture(pixels=np.ascontiguousarray(array[:, :, :3]), alpha=alpha, icc_profile=None, exif=None,
                   format="", path=None)
