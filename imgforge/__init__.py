"""imgforge: pix2pix/CycleGAN translation, old-photo restoration and DDPM sampling from the official weights.

The public API, imported lazily so that `import imgforge` (and `imgforge --help`) stays fast:

    translate(inputs, output, model=..., ...)   -> BatchReport    imgforge.pipelines.translate
    restore(inputs, output, ...)                -> BatchReport    imgforge.pipelines.restore
    sample(model, num=..., steps=..., ...)      -> SampleReport   imgforge.pipelines.sample (a BatchReport)
    translate_image(image, ...), restore_image(picture_or_array, ...)   in-memory, one image
    load_model(name | folder | file, ...)       a zoo model, weights folder or file, loaded (imgforge.zoo)
    train_pix2pix(dataroot, run_dir, ...), train_cyclegan(...), train_ddpm(images, run_dir, ...)
                                                -> TrainResult    imgforge.train.api
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

__version__ = "0.1.0"

_API = {
    "translate": "translate",
    "translate_image": "translate",
    "load_generator": "translate",
    "Translator": "translate",
    "restore": "restore",
    "restore_image": "restore",
    "sample": "sample",
}

_TRAIN_API = ("train_pix2pix", "train_cyclegan", "train_ddpm")

__all__ = ["__version__", "load_model", *_API, *_TRAIN_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(f".pipelines.{_API[name]}", __name__), name)
    if name in _TRAIN_API:
        return getattr(import_module(".train.api", __name__), name)
    raise AttributeError(f"module 'imgforge' has no attribute {name!r}")


def load_model(source, **options):
    """A zoo model by name, a weights folder or a weights file, loaded through the registry of network families.
    A model its task's pipeline runs gives the pipeline's object: a DDPM `DiffusionModel` (also for a
    diffusers folder), a pix2pix/CycleGAN generator, an old-photo `Restorer`; `options` go to that loader
    (offline=, weights_dir=, quiet=, device=, and the task's own, e.g. netG=). Any other model (the face
    generators), folder or file gives its network in eval mode on the CPU (a {name: module} dict for
    several). See imgforge/zoo.py."""
    from . import zoo
    from .manifest import get_model

    if zoo.is_path(source):
        path = Path(source).expanduser()
        if zoo.is_diffusers_folder(path):
            return import_module(".pipelines.sample", __name__).load_model(str(path), **options)
        _only(options, (), f"{path} loads as its networks")
        return zoo.modules(zoo.path_networks(path))
    entry = get_model(str(source))
    task = zoo.pipeline_of(entry)
    if task is not None:
        return import_module(f".pipelines.{task}", __name__).load_model(entry.name, **options)
    _only(options, ("offline", "weights_dir", "quiet"), f"model '{entry.name}' loads as its networks")
    return zoo.modules(zoo.model_networks(entry, **options))


def _only(options: dict, allowed: tuple[str, ...], what: str) -> None:
    from .errors import ImgforgeError

    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = f"takes {'=, '.join(allowed)}= only" if allowed else "takes no options"
        raise ImgforgeError(f"{what}: load_model {takes}, not {'=, '.join(unknown)}=")
