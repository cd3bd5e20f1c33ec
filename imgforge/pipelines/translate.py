"""pix2pix / CycleGAN translation: the official test.py's pre- and post-processing and test-time semantics
(docs/translate.md), around the generators of imgforge.nets.pix2pix.

    prepare   RGB (or grey, input_nc 1) 8-bit image; aligned A|B files split as the official loader does;
              bicubic resize to size x size ignoring the aspect ratio (official: 256), or, --size native,
              padded to a multiple of the generator's stride; ToTensor + Normalize(0.5, 0.5) -> [-1, 1]
    run       the generator in one test-time mode: "official" (test.py without --eval: BatchNorm on each
              image's own statistics, Dropout(0.5) active, masks seeded per image), "no-dropout" (the same
              without dropout) or "eval" (running statistics, no dropout), as one batch of same-size images
    finish    tensor2im's truncation to uint8; back to the input's size (bicubic, or the padding cropped);
              the input's alpha carried; --compare puts input | output | target side by side
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import hub, manifest, runtime, zoo
from ..batch import Job, plan_jobs
from ..engine import BatchReport, EngineOptions, engine_options, execute
from ..errors import ImgforgeError, InputError
from ..imageio import Picture, read_image, write_image
from ..nets import registry
from ..nets.pix2pix import DROPOUT_P, TEST_MODES, Generator, GeneratorOptions, TestTimeGenerator, describe_generator
from ..plan import RunPlan
from ..progress import console

MODES = TEST_MODES
DIRECTIONS = manifest.DIRECTIONS
OFFICIAL_SIZE = 256  # test.py: load_size = crop_size = 256, resized ignoring the aspect ratio
NATIVE = "native"


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """N x C x H x W in [-1, 1] -> N x H x W x C uint8, as the official tensor2im: (x + 1) / 2 * 255 in
    float32, then truncated (not rounded). Grey stays one channel (tensor2im tiles it to three)."""
    array = images.detach().cpu().float().numpy().transpose(0, 2, 3, 1)
    return ((array + 1) / 2.0 * 255.0).astype(np.uint8)


def load_generator(model: str | None = None, checkpoint: str | os.PathLike | None = None, *,
                   netG: str | None = None, norm: str | None = None, ngf: int | None = None,
                   dropout: bool | None = None, offline: bool | None = None, weights_dir: hub.WeightsDirs = None,
                   quiet: bool = False) -> Generator:
    """A zoo model (`model`, a name from `imgforge models list --task translate`) or a user's own
    checkpoint (an official latest_net_G.pth) as a generator on the CPU, eval(), weights loaded strictly
    through imgforge.zoo. Its options are read from the weights; the manifest's config and the arguments
    override them, and a mismatch is a ModelError naming the option."""
    options = {"netG": netG, "norm": norm, "ngf": ngf, "dropout": dropout}
    if model is not None and checkpoint is not None:
        raise ImgforgeError("give a model name (--model) or your own weights (--checkpoint), not both")
    if checkpoint is not None:
        return zoo.file_network(Path(checkpoint), "pix2pix", **options).module
    if model is None:
        raise ImgforgeError("give a model name (--model; see `imgforge models list --task translate`) or your own "
                            "generator weights (--checkpoint latest_net_G.pth)")
    entry = manifest.get_model(model)
    if entry.task != "translate":
        raise ImgforgeError(f"model '{entry.name}' is a {entry.task} model; translate needs a translate model "
                            "(see `imgforge models list --task translate`)")
    (generator,) = zoo.model_networks(entry, names=["generator"], offline=offline, weights_dir=weights_dir,
                                      quiet=quiet, options={"generator": options})
    return generator.module


load_model = load_generator  # imgforge.load_model(name) for translate models


def check_plan(plan: RunPlan) -> None:
    """UsageError, before anything is fetched, when a generator cannot run in `plan` (both pix2pix families
    share one policy; the weights tell which one a file is only once it is read)."""
    plan.check_networks(registry.families_of("pix2pix"))


@dataclass
class Prepared:
    """A network input and how to bring its output back to the image it came from."""

    tensor: torch.Tensor  # 1 x C x h x w in [-1, 1]
    width: int  # the image's size, which the output is brought back to
    height: int
    padded: bool  # --size native: the input was padded, and the output is cropped


class Translator:
    """A loaded generator in one test-time mode, on one device: prepares images, runs batches, finishes
    outputs. `translator(image)` does all three for one image in memory. `plan`: device, precision, backend."""

    def __init__(self, generator: Generator, *, mode: str = "official", size: int | str | None = None,
                 seed: int | None = None, plan: RunPlan = RunPlan()):
        if mode not in MODES:
            raise ImgforgeError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        self.generator = generator
        self.options: GeneratorOptions = generator.options
        self.mode = mode
        self.size = _check_size(size, generator)
        # image i's dropout masks come from (seed, image i's input) alone: batching changes nothing
        self.seed = seed if seed is not None else secrets.randbits(63)
        self.seeded = seed is not None
        self.device = plan.torch_device()
        self.dtype = plan.dtype(self.device)
        self.backend = backend = plan.backend
        self._module = TestTimeGenerator(generator, mode)
        self.dropout_layers = self._module.dropout_layers
        # oneDNN and cuDNN run these convolutions faster on channels-last tensors (~15% on a CPU, measured)
        self.channels_last = backend == "torch" and self.device.type in ("cpu", "cuda")
        # under --backend onnx one graph serves every size and batch (cached by the weights and the mode)
        facts = describe_generator(generator, mode)
        self._runner = runtime.make_runner(
            self._module, backend=backend, device=self.device, dtype=self.dtype, export=facts.exports[0],
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format,
            policy=registry.get_family(facts.family).policy)

    @property
    def provider(self) -> str:
        return self._runner.provider

    @property
    def uses_dropout(self) -> bool:
        return bool(self.dropout_layers)

    def image_mode(self, channels: int) -> str:
        return "L" if channels == 1 else "RGB"

    def prepare(self, image: Image.Image) -> Prepared:
        """An 8-bit PIL image (any mode) -> the network input, as the official transform builds it."""
        image = image.convert(self.image_mode(self.options.input_nc))
        width, height = image.size
        if self.size == NATIVE:
            pixels = _to_tensor(np.asarray(image))
            stride = self.generator.stride
            pad_w, pad_h = -width % stride, -height % stride
            tensor = F.pad(pixels, (0, pad_w, 0, pad_h), mode="replicate") if pad_w or pad_h else pixels
            return Prepared(tensor, width, height, padded=True)
        side = self.size or OFFICIAL_SIZE
        resized = image.resize((side, side), Image.BICUBIC) if image.size != (side, side) else image
        return Prepared(_to_tensor(np.asarray(resized)), width, height, padded=False)

    def run(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Same-size inputs (1 x C x h x w each) -> outputs, as one batch; the result of each does not depend
        on the others (per-image statistics, per-image dropout masks)."""
        batch = torch.cat(list(tensors))
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        inputs = [batch, *self._dropout_masks(tensors)]
        output = self._runner(*inputs)
        return list(output.split(1))

    def finish(self, output: torch.Tensor, prepared: Prepared) -> np.ndarray:
        """A 1 x C x h x w output -> H x W x C uint8 at the input image's size."""
        pixels = tensor_to_uint8(output)[0]
        if prepared.padded:
            return pixels[:prepared.height, :prepared.width]
        if pixels.shape[:2] == (prepared.height, prepared.width):
            return pixels
        return _resize(pixels, prepared.width, prepared.height)

    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """One image (PIL, or an H x W [x C] uint8 array, or float in [0, 1]) -> its translation, H x W x C
        uint8 at the same size (C = the generator's output channels)."""
        prepared = self.prepare(_as_pil(image))
        (output,) = self.run([prepared.tensor])
        return self.finish(output, prepared)

    def _dropout_masks(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if not self.dropout_layers:
            return []
        height, width = tensors[0].shape[-2:]
        shapes = [layer.mask_shape(height, width) for layer in self.dropout_layers]
        per_image = [dropout_masks(_image_seed(self.seed, tensor), shapes) for tensor in tensors]
        return [torch.from_numpy(np.stack(masks)) for masks in zip(*per_image)]


def dropout_masks(image_seed: int, shapes: Sequence[tuple[int, int, int]]) -> list[np.ndarray]:
    """One image's Dropout(p) masks, C x h x w float32 each (0 or 1 / (1 - p)), in the generator's layer order:
    drawn with numpy's PCG64 so that a deployer without torch draws the same (docs/onnx.md)."""
    rng = np.random.Generator(np.random.PCG64(image_seed))
    keep = np.float32(1 / (1 - DROPOUT_P))
    return [(rng.random(shape, dtype=np.float32) >= DROPOUT_P).astype(np.float32) * keep for shape in shapes]


def deploy_recipe(network: registry.Network) -> dict:
    """What the generator's sidecar tells a deployer (onnxruntime, numpy and Pillow, no imgforge) to do to
    reproduce `imgforge translate` with the default --size: exactly what Translator does, as data."""
    mode = network.settings.get("mode", "official")
    module = TestTimeGenerator(network.module, mode)
    options = network.module.options
    recipe = {
        "pipeline": "imgforge translate (default --size)",
        "image_mode": {"input": "L" if options.input_nc == 1 else "RGB",
                       "output": "L" if options.output_nc == 1 else "RGB"},
        "resize": {"width": OFFICIAL_SIZE, "height": OFFICIAL_SIZE, "filter": "bicubic", "library": "Pillow",
                   "rule": f"the whole image to {OFFICIAL_SIZE}x{OFFICIAL_SIZE} with PIL.Image.BICUBIC, ignoring "
                           "its aspect ratio (not at all if it already is that size); after the 8-bit "
                           "conversion the output goes back to the input's size, PIL.Image.BICUBIC again"},
        "to_input": "float32 array 1 x C x H x W: ((uint8 / 255) - 0.5) / 0.5, each operation in float32",
        "to_uint8": "numpy: ((output + 1) / 2 * 255).astype(uint8) in float32, truncated (not rounded), then "
                    "H x W x C",
        "dropout": None,
    }
    if module.dropout_layers:
        names = [f"dropout{i}" for i in range(len(module.dropout_layers))]
        recipe["dropout"] = {
            "p": DROPOUT_P, "kept_value": 1 / (1 - DROPOUT_P),
            "masks": [{"input": name, "channels": layer.channels, "reduction": layer.reduction}
                      for name, layer in zip(names, module.dropout_layers)],
            "shape": "N x channels x ceil(H / reduction) x ceil(W / reduction), H x W the network input's size",
            "image_seed": "int.from_bytes(hashlib.blake2b(str(seed).encode() + b':' + x.tobytes(), "
                          "digest_size=8).digest(), 'little') >> 1, where seed is translate --seed and x the "
                          "image's float32 1 x C x H x W input (C order)",
            "draw": "rng = numpy.random.Generator(numpy.random.PCG64(image_seed)); for each mask in order: "
                    "(rng.random((channels, h, w), dtype=numpy.float32) >= p).astype(numpy.float32) * "
                    "float32(kept_value), then a batch axis in front",
        }
    return recipe


def translate_image(image: Image.Image | np.ndarray, *, model: str | None = None,
                    checkpoint: str | os.PathLike | None = None, netG: str | None = None, norm: str | None = None,
                    ngf: int | None = None, dropout: bool | None = None, mode: str = "official",
                    size: int | str | None = None, seed: int | None = None, device: str = "auto",
                    precision: str = "fp32", backend: str = "torch", threads: int | None = None,
                    offline: bool | None = None, weights_dir: hub.WeightsDirs = None) -> np.ndarray:
    """One image in memory -> its translation (H x W x C uint8, the input's size). Loads the model on every
    call: for many images build a `Translator(load_generator(...))` once."""
    plan = RunPlan.resolve(device=device, precision=precision, backend=backend, threads=threads, offline=offline,
                           weights_dir=weights_dir, quiet=True)
    check_plan(plan)
    generator = load_generator(model, checkpoint, netG=netG, norm=norm, ngf=ngf, dropout=dropout,
                               offline=plan.offline, weights_dir=plan.weights_dir, quiet=True)
    return Translator(generator, mode=mode, size=size, seed=seed, plan=plan)(image)


@dataclass
class _Item:
    picture: Picture
    source: Image.Image  # what the network translates (the A or B half for aligned files)
    target: Image.Image | None  # the other half of an aligned file
    prepared: Prepared


def translate(inputs: str | os.PathLike | Sequence[str | os.PathLike], output: str | os.PathLike | None = None, *,
              model: str | None = None, checkpoint: str | os.PathLike | None = None, netG: str | None = None,
              norm: str | None = None, ngf: int | None = None, dropout: bool | None = None,
              mode: str = "official", direction: str | None = None, size: int | str | None = None,
              aligned: bool = False, compare: bool = False, seed: int | None = None, batch_size: int = 4,
              device: str = "auto", precision: str = "fp32", backend: str = "torch", recursive: bool = False,
              suffix: str = "", output_format: str | None = None, skip_existing: bool = False, quiet: bool = False,
              json: bool = False, offline: bool | None = None, weights_dir: hub.WeightsDirs = None,
              engine: EngineOptions | str | None = None, threads: int | None = None) -> BatchReport:
    """Translate images, folders or globs (local or s3://) with a zoo model or a user's checkpoint; each output
    is written at its input's size (next to it with the suffix `_translated`, or under `output`). Files that
    fail are reported and skipped; the report lists them. `engine`: local (default) or ray, and `threads`:
    torch's intra-op threads in every worker, see imgforge.engine."""
    if mode not in MODES:
        raise ImgforgeError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if direction is not None and direction not in DIRECTIONS:
        raise ImgforgeError(f"unknown direction {direction!r}: use AtoB or BtoA")
    if batch_size < 1:
        raise ImgforgeError("--batch-size must be at least 1")
    plan = RunPlan.resolve(device=device, precision=precision, backend=backend, threads=threads, offline=offline,
                           weights_dir=weights_dir, quiet=quiet)
    check_plan(plan)
    engine = engine_options(engine)
    sources = [os.fspath(inputs)] if isinstance(inputs, (str, os.PathLike)) else [os.fspath(p) for p in inputs]
    jobs = plan_jobs(sources, None if output is None else os.fspath(output), recursive=recursive, suffix=suffix,
                     extension=output_format, default_suffix="_translated")
    # one seed for the run, chosen here so that every worker draws the same dropout masks for an image
    run_seed = seed if seed is not None else secrets.randbits(63)
    task = TranslateTask(
        plan=plan,
        generator=dict(model=model, checkpoint=None if checkpoint is None else os.fspath(checkpoint), netG=netG,
                       norm=norm, ngf=ngf, dropout=dropout),
        translator=dict(mode=mode, size=size, seed=run_seed),
        seeded=seed is not None, direction=direction, aligned=aligned, compare=compare, batch_size=batch_size,
    )
    jobs = [replace(job, seed=seed) for job in jobs]  # in each record when the user chose it
    return execute(task, jobs, engine=engine, threads=plan.threads, skip_existing=skip_existing, quiet=quiet,
                   json_lines=json)


@dataclass(frozen=True)
class TranslateTask:
    """translate's options for imgforge.engine; setup() loads the generator, once per worker."""

    plan: RunPlan
    generator: dict  # load_generator's arguments besides the plan's
    translator: dict  # Translator's arguments besides the plan
    seeded: bool  # the user chose the seed
    direction: str | None  # None: the one the zoo model was trained for, else the official AtoB
    aligned: bool
    compare: bool
    batch_size: int
    label: str = "translating"

    def setup(self) -> TranslateWorker:
        plan = self.plan
        generator = load_generator(**self.generator, offline=plan.offline, weights_dir=plan.weights_dir,
                                   quiet=plan.quiet)
        translator = Translator(generator, **self.translator, plan=plan)
        if translator.uses_dropout and not self.seeded and not plan.quiet:
            console.print("note: dropout is active at test time, as in the official test.py, so results vary from "
                          "run to run; --seed N makes them reproducible, --eval or --no-dropout switches dropout off",
                          markup=False, highlight=False, soft_wrap=True)
        model = self.generator["model"]
        direction = self.direction or (manifest.get_model(model).direction if model is not None else None) or "AtoB"
        runtime.announce(plan, translator.device, translator.provider)
        return TranslateWorker(self, translator, direction)


class TranslateWorker:
    """A loaded translator and the per-file steps around it."""

    def __init__(self, task: TranslateTask, translator: Translator, direction: str):
        self.task, self.translator, self.direction = task, translator, direction
        self.input_mode = translator.image_mode(translator.options.input_nc)
        self.output_mode = translator.image_mode(translator.options.output_nc)

    def load(self, job: Job) -> _Item:
        picture = read_image(job.source)
        source = picture.to_pil(self.input_mode)
        target = None
        if self.task.aligned:
            source, target = split_aligned(source, self.direction, job.source)
        return _Item(picture, source, target, self.translator.prepare(source))

    def group_key(self, item: _Item) -> tuple:
        return tuple(item.prepared.tensor.shape)

    def compute(self, items: list[_Item]) -> list[torch.Tensor]:
        return self.translator.run([item.prepared.tensor for item in items])

    def save(self, job: Job, item: _Item, result: torch.Tensor) -> dict:
        pixels = self.translator.finish(result, item.prepared)
        alpha = item.picture.alpha if not (self.task.aligned or self.task.compare) else None
        if self.task.compare:
            panels = [item.source] + ([item.target] if item.target is not None else [])
            shown = [_panel(panel, self.output_mode, pixels.shape[1], pixels.shape[0]) for panel in panels]
            pixels = np.concatenate([shown[0], pixels, *shown[1:]], axis=1)
        write_image(job.target, pixels, alpha=alpha, like=item.picture)
        return {"provider": self.translator.provider}


def split_aligned(image: Image.Image, direction: str, path: Path | None = None) -> tuple[Image.Image, Image.Image]:
    """An aligned A|B image -> (network input, target), as the official AlignedDataset cuts it: A is the left
    int(w / 2) columns, B the rest; BtoA feeds B."""
    width, height = image.size
    if width < 2:
        raise InputError(f"{path or 'the image'} is {width} pixel wide: too narrow to be an aligned A|B pair")
    half = width // 2
    a, b = image.crop((0, 0, half, height)), image.crop((half, 0, width, height))
    return (a, b) if direction == "AtoB" else (b, a)


def _check_size(size: int | str | None, generator: Generator) -> int | str | None:
    netG, stride = generator.options.netG, generator.stride
    if size is None:
        return None
    if isinstance(size, str):
        if size.strip().lower() == NATIVE:
            if stride > 4:
                raise ImgforgeError(f"--size native needs a resnet generator; {netG} needs sides that are multiples "
                                    f"of {stride}: use --size {stride} or another multiple")
            return NATIVE
        try:
            size = int(size)
        except ValueError:
            raise ImgforgeError(f"--size must be a number of pixels or 'native', not {size!r}") from None
    if size < stride or size % stride:
        lower = max(stride, size // stride * stride)
        raise ImgforgeError(f"--size {size} is not a multiple of {stride}, which {netG} needs; try {lower} or "
                            f"{lower + stride}")
    return size


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """H x W [x C] uint8 -> 1 x C x H x W, ToTensor then Normalize(0.5, 0.5), in the official order."""
    array = pixels[:, :, None] if pixels.ndim == 2 else pixels
    tensor = torch.from_numpy(np.array(array.transpose(2, 0, 1))).float().div(255)  # a writable copy
    return tensor.sub(0.5).div(0.5)[None]


def _image_seed(seed: int, tensor: torch.Tensor) -> int:
    """The run's seed and the image's network input (its float32 bytes), hashed: an image's masks do not depend
    on the batch it is in or the order images come in."""
    digest = hashlib.blake2b(str(seed).encode() + b":" + tensor.numpy().tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bicubic, on the 8-bit image, as the official save_image does for its aspect-ratio option."""
    grey = pixels.shape[2] == 1
    image = Image.fromarray(pixels[:, :, 0] if grey else pixels).resize((width, height), Image.BICUBIC)
    array = np.asarray(image)
    return array[:, :, None] if grey else array


def _panel(image: Image.Image, mode: str, width: int, height: int) -> np.ndarray:
    image = image.convert(mode)
    if image.size != (width, height):
        image = image.resize((width, height), Image.BICUBIC)
    array = np.asarray(image)
    return array[:, :, None] if array.ndim == 2 else array


def _as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if np.issubdtype(array.dtype, np.floating):
        array = np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    if array.dtype != np.uint8:
        raise InputError(f"images in memory must be uint8, or float in [0, 1], not {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InputError(f"an image must be H x W, H x W x 1, 3 or 4, not {array.shape}")
    return Image.fromarray(array)
