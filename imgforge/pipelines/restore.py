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

import itertools
import os
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import hub, imageio, manifest, runtime, zoo
from ..batch import Job, pair_inputs, paired_files, plan_jobs
from ..engine import BatchReport, EngineOptions, engine_options, execute
from ..errors import ImgforgeError, InputError, RunWideError
from ..imageio import Picture
from ..nets import registry
from ..nets.mapping import mapping_kind
from ..plan import RunPlan
from ..progress import StagedProgress
from ..storage import location
from .faces import GENERATORS, FaceCrop, FaceEnhancer

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
# Seconds each stage took on a 512 x 512 photo (fp32, official networks with random weights, 2 threads on a
# shared AVX-512 machine; benchmarks/restore_stages.py, docs/restore.md): the stages' shares of a photo's
# progress, so that the bar moves at a steady rate. They scale with the photo as the work does: the detector
# sees a short side of 256 whatever the photo, the VAEs and the convolutions grow with the area, the scratch
# attention with the square of the area; the face stage counts one face (each takes about as long).
STAGE_SECONDS = {"detecting scratches": 2.1, "encoding": 2.5, "decoding": 2.0, "enhancing faces": 4.7}
MAPPING_SECONDS = {"quality": {"convolutions": 17.5},
                   "scratch": {"before attention": 2.7, "attention": 4.4, "after attention": 22.8},
                   "hr": {"before attention": 4.7, "attention": 27.8}}
MEASURED_PIXELS = 512 * 512


@dataclass
class Work:
    """What flows through the stages: the image (uint8 H x W x 3) at the current stage's size, the scratch mask
    (bool H x W, True = scratch) at the same size, or None on the quality path, and how far the photo has got."""

    image: np.ndarray
    mask: np.ndarray | None = None
    faces: list[FaceCrop] = field(default_factory=list)
    progress: StagedProgress = field(default_factory=lambda: StagedProgress({}))


def photo_progress(settings: Settings, width: int, height: int) -> StagedProgress:
    """A photo's stages (at its processing size) weighted by their measured seconds, scaled to its size."""
    if settings.faces_only:
        return StagedProgress({"enhancing faces": STAGE_SECONDS["enhancing faces"]})
    area = width * height / MEASURED_PIXELS
    costs = {"detecting scratches": STAGE_SECONDS["detecting scratches"] * max(width, height) / min(width, height)
             } if settings.scratches else {}
    costs.update({"encoding": STAGE_SECONDS["encoding"] * area,
                  "mapping": sum(_mapping_seconds(settings.kind, area).values()),
                  "decoding": STAGE_SECONDS["decoding"] * area})
    if settings.faces:
        costs["enhancing faces"] = STAGE_SECONDS["enhancing faces"]
    return StagedProgress(costs)


def _mapping_seconds(kind: str, area: float) -> dict[str, float]:
    """The mapping's parts at a photo `area` times the measured one's (the scratch attention grows with the
    area squared, everything else with the area)."""
    return {part: seconds * (area**2 if (kind, part) == ("scratch", "attention") else area)
            for part, seconds in MAPPING_SECONDS[kind].items()}


def mapping_progress(progress: StagedProgress, kind: str, area: float) -> Callable[[str, float, str], None]:
    """The mapping network's on_progress(part, done, detail) as progress within the mapping stage."""
    seconds = _mapping_seconds(kind, area)
    total = sum(seconds.values())
    starts = dict(zip(seconds, itertools.accumulate([0.0, *seconds.values()])))

    def report(part: str, done: float, detail: str) -> None:
        progress.within((starts[part] + seconds[part] * done) / total, detail)

    return report


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
    def face_size(self) -> int:
        """The side of the aligned faces: FaceSR_512's with hr, as the official _HR scripts."""
        return 512 if self.hr else 256

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


def restore_model(name: str) -> manifest.ModelEntry:
    """A zoo restore model's entry, its networks (as the manifest names them) checked against those the
    restoration composes: nothing is fetched."""
    entry = manifest.get_model(name)
    if entry.task != "restore":
        raise ImgforgeError(f"model '{entry.name}' is a {entry.task} model, not a restore model")
    needed, has = zoo.PIPELINE_NETWORKS["restore"], set(zoo.network_specs(entry))
    if not needed <= has <= needed | {"detector"}:
        raise ImgforgeError(f"model '{entry.name}': a restore model has the networks {', '.join(sorted(needed))} "
                            f"(and optionally detector), not {', '.join(sorted(has)) or 'none'}")
    return entry


def check_plan(plan: RunPlan, settings: Settings, model: str | None = None) -> None:
    """UsageError, before anything is fetched, when a network of this restoration cannot run in `plan` (the
    families come from the manifest's networks of the restore model and of the face generator)."""
    models = [] if settings.faces_only else [restore_model(model or MODELS[settings.kind])]
    if settings.faces:
        models.append(manifest.get_model(GENERATORS[settings.face_size]))
    plan.check_networks(family for entry in models for family in zoo.model_families(entry))


class Restorer:
    """The networks of one restoration model, loaded once through imgforge.zoo, and the stages that use them.
    `model` (a zoo name) defaults to the official model of `settings.kind`; given, the settings' kind follows
    the model's networks (its mapping's kind, a detector or not). `plan`: device, precision, backend, weights
    folders (imgforge.plan)."""

    def __init__(self, settings: Settings, plan: RunPlan, *, model: str | None = None):
        self.plan = plan
        self.device = plan.torch_device()
        self.dtype = plan.dtype(self.device)
        self.entry: manifest.ModelEntry | None = None
        self.networks: list[registry.Network] = []
        self.run_network: dict[str, Callable] = {}
        self.faces: FaceEnhancer | None = None
        if not settings.faces_only:
            self.entry = restore_model(model or MODELS[settings.kind])
            self.networks = zoo.model_networks(self.entry, offline=plan.offline, weights_dir=plan.weights_dir,
                                               quiet=plan.quiet)
            settings = self._fitted(settings, given_model=model is not None)
            self.run_network = {network.role: self._runner(network) for network in self.networks}
        self.settings = settings
        if settings.faces:
            self.faces = FaceEnhancer(size=settings.face_size, detector=settings.face_detector, plan=plan)
            self.entry = self.entry or self.faces.entry

    def _fitted(self, settings: Settings, given_model: bool) -> Settings:
        """The settings the loaded networks can restore: a model given by name decides the kind."""
        modules = {network.role: network.module for network in self.networks}
        kind = mapping_kind(modules["mapping"].state_dict())
        has_detector = "detector" in modules
        if given_model:
            settings = replace(settings, scratches=kind != "quality", hr=kind == "hr")
        if kind != settings.kind or has_detector != settings.scratches:
            raise ImgforgeError(f"model '{self.entry.name}' has a {kind} mapping"
                                f"{'' if has_detector else ' and no detector'}; it cannot restore {settings.kind}")
        return settings

    def _runner(self, network: registry.Network) -> Callable:
        """One network's runner, for the one part of it the manifest says the restoration runs: torch (its
        method for that part, on channels-last copies in the precision its family's policy gives) or the
        part's ONNX graph (exported on first use, cached by weights)."""
        exports = network.exports()
        if len(exports) > 1:
            raise ImgforgeError(f"model '{self.entry.name}': its {network.role} network has the parts "
                                f"{', '.join(e.name for e in exports)}; its manifest table networks.{network.role} "
                                "must name the one a restoration runs (parts = [...])")
        export = exports[0] if exports else None
        if self.plan.backend == "onnx" and export is None:
            raise RunWideError(f"the {network.describe().hyperparameters.get('kind', network.role)} "
                               f"{network.role} has no ONNX graph yet; use --backend torch")
        return runtime.make_runner(network.module, device=self.device, backend=self.plan.backend, dtype=self.dtype,
                                   memory_format=torch.channels_last, export=export, policy=network.family.policy,
                                   method=export.method if export else None)

    @property
    def provider(self) -> str:
        """Where the networks run: onnxruntime's provider in use, or torch's device."""
        runner = self.run_network.get("vae_a") or (self.faces.generator if self.faces else None)
        return runner.provider

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
        work = Work(np.asarray(picture.to_pil("RGB")), progress=photo_progress(self.settings, *size))
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
        work.progress.begin("detecting scratches")
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
        torch_backend = self.plan.backend == "torch"  # ONNX graphs run whole: no progress inside them
        with torch.inference_mode():
            work.progress.begin("encoding")
            latent = self.run_network["vae_a"](x, **({"on_progress": work.progress.within} if torch_backend else {}))
            work.progress.begin("mapping")
            area = work.image.shape[0] * work.image.shape[1] / MEASURED_PIXELS
            parts = {"on_progress": mapping_progress(work.progress, self.settings.kind, area)} if torch_backend else {}
            if work.mask is None:
                mapped = self.run_network["mapping"](latent, **parts)
            else:
                mask = torch.from_numpy(work.mask)[None, None].to(self.device, torch.float32)
                mapped = self.run_network["mapping"](latent, mask, **parts)
            work.progress.begin("decoding")
            generated = self.run_network["vae_b"](mapped, **({"on_progress": work.progress.within} if torch_backend
                                                              else {})).float()
        return replace(work, image=_to_uint8((generated.cpu() + 1.0) / 2.0, stretch=self.settings.stretch))

    def enhance_faces(self, work: Work) -> Work:
        work.progress.begin("enhancing faces")
        image, faces = self.faces(work.image, work.progress.within)
        return replace(work, image=image, faces=faces)


def load_model(name: str, **options) -> Restorer:
    """A restore model of the zoo by name (its global networks; the face stage's models are zoo entries of their
    own), its kind (quality, scratch, HR) read from its networks; options make its RunPlan (device=,
    precision=, backend=, offline=, weights_dir=, quiet=)."""
    settings = Settings(faces=False)
    plan = RunPlan.resolve(**options)
    check_plan(plan, settings, name)
    return Restorer(settings, plan, model=name)


def restore_image(picture_or_array: Picture | np.ndarray, *, scratches: bool = True, mode: str = "full",
                  hr: bool = False, mask: Picture | np.ndarray | None = None, mask_dilation: int | None = None,
                  stretch: bool = True, faces: bool = True, faces_only: bool = False, face_detector: str = "yunet",
                  device: str = "auto", precision: str = "fp32", backend: str = "torch", threads: int | None = None,
                  offline: bool | None = None, weights_dir: hub.WeightsDirs = None,
                  quiet: bool = True) -> RestoreResult:
    """Restore one image in memory: a Picture or an array (H x W [x 1|3|4], uint8, uint16 or float in [0, 1]).
    `mask`: a Picture or array of the image's size, scratches white/True. `faces`: enhance the faces after the
    global stage (`faces_only`: instead of it). Loads the networks on each call; restore() loads them once
    for many files."""
    settings = Settings(scratches, mode, hr, mask_dilation, stretch, faces, faces_only, face_detector)
    settings.check(has_mask=mask is not None)
    plan = RunPlan.resolve(device=device, precision=precision, backend=backend, threads=threads, offline=offline,
                           weights_dir=weights_dir, quiet=quiet)
    check_plan(plan, settings)
    picture = picture_or_array if isinstance(picture_or_array, Picture) else Picture.from_array(picture_or_array)
    return Restorer(settings, plan).run(picture, None if mask is None else imageio.binary_mask(mask))


def restore(inputs: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike | None = None, *,
            scratches: bool = True, mode: str = "full", hr: bool = False, mask: str | os.PathLike | None = None,
            mask_dilation: int | None = None, save_mask: bool = False, stretch: bool = True, faces: bool = True,
            faces_only: bool = False, face_detector: str = "yunet", save_faces: bool = False, device: str = "auto",
            backend: str = "torch", precision: str = "fp32", recursive: bool = False,
            suffix: str = "", output_format: str | None = None,
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
    plan = RunPlan.resolve(device=device, precision=precision, backend=backend, threads=threads, offline=offline,
                           weights_dir=weights_dir, quiet=quiet)
    check_plan(plan, settings)
    engine = engine_options(engine)
    sources = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(item) for item in inputs]
    given_masks = paired_files(location(mask)) if mask is not None else []
    jobs = plan_jobs(sources, None if output is None else str(output), recursive=recursive, suffix=suffix,
                     extension=output_format, default_suffix="_restored",
                     side_suffixes=[MASK_OUTPUT] * save_mask + [*FACE_OUTPUTS] * save_faces, also_read=given_masks)
    if mask is not None:
        jobs = pair_inputs(jobs, location(mask), "mask")
    task = RestoreTask(settings, plan, save_mask=save_mask, save_faces=save_faces, batch_size=batch_size)
    return execute(task, jobs, engine=engine, threads=plan.threads, skip_existing=skip_existing, quiet=quiet,
                   json_lines=json)


@dataclass(frozen=True)
class RestoreTask:
    """restore's options for imgforge.engine; setup() loads the networks, once per worker."""

    settings: Settings
    plan: RunPlan
    save_mask: bool = False
    save_faces: bool = False
    batch_size: int = 1
    label: str = "restoring"

    def setup(self) -> RestoreWorker:
        restorer = Restorer(self.settings, self.plan)
        runtime.announce(self.plan, restorer.device, restorer.provider)
        return RestoreWorker(self, restorer)


class RestoreWorker:
    """A loaded Restorer and the per-file steps around it."""

    def __init__(self, task: RestoreTask, restorer: Restorer):
        self.task, self.restorer = task, restorer

    def load(self, job: Job) -> tuple[Picture, np.ndarray | None]:
        if "mask_error" in job.options:
            raise InputError(job.options["mask_error"])
        given = job.options.get("mask")
        return imageio.read_image(job.source), imageio.binary_mask(imageio.read_image(given)) if given else None

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


# -- helpers -----------------------------------------------------------------------------------------------


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
