"""imgforge: pix2pix/CycleGAN translation, old-photo restoration and DDPM sampling from the official weights.

The public API, imported lazily so that `import imgforge` (and `imgforge --help`) stays fast:

    translate(inputs, output, model=..., ...)   -> BatchReport    imgforge.pipelines.translate
    restore(inputs, output, ...)                -> BatchReport    imgforge.pipelines.restore
    sample(model, num=..., steps=..., ...)      -> SampleReport   imgforge.pipelines.sample (a BatchReport)
    translate_image(image, ...), restore_image(picture_or_array, ...)   in-memory, one image
    load_model(name, ...)                       the loaded network(s) of a model in the zoo
    train_pix2pix(dataroot, run_dir, ...), train_cyclegan(...), train_ddpm(images, run_dir, ...)
                                                -> TrainResult    imgforge.train.api
"""

from __future__ import annotations

from importlib import import_module

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


def load_model(name: str, **options):
    """The network(s) of a zoo model, ready to run, loaded through the registry of network families: a DDPM
    `DiffusionModel` (sample), a pix2pix/CycleGAN generator (translate) or an old-photo `Restorer` (restore).
    `options` go to the task's loader (offline=, weights_dir=, quiet=, and the task's own, e.g. netG=)."""
    from .manifest import get_model

    return import_module(f".pipelines.{get_model(name).task}", __name__).load_model(name, **options)
