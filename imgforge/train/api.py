"""The Python API of training: `train_pix2pix(dataroot, run_dir, ...)`, `train_cyclegan(...)`, and `run(...)`
for any Method (imgforge/train/trainer.py); keyword arguments are the method's options and the run's
settings (TrainSettings) together, under the same names as the CLI's options."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import ImgforgeError
from .trainer import TrainResult, TrainSettings, run_process


def run(method_class: type, options: Any, settings: TrainSettings) -> TrainResult:
    """`method_class` with its `options` under `settings`: in this process (each process under torchrun), or
    on Ray Train workers when `settings.engine` is "ray"."""
    if settings.engine == "ray":
        from .ray_train import run_on_ray

        return run_on_ray(method_class, options, settings)
    if settings.engine != "local":
        raise ImgforgeError(f"unknown engine {settings.engine!r}: use local or ray")
    return run_process(method_class, options, settings)


def split_options(options_class: type, run_dir, fields: dict) -> tuple[dict, TrainSettings]:
    """(the method's fields, the run's settings) of one flat set of keyword arguments; an unknown name is an
    error naming it."""
    method_fields = {f.name for f in dataclasses.fields(options_class)}
    setting_fields = {f.name for f in dataclasses.fields(TrainSettings)}
    unknown = sorted(set(fields) - method_fields - setting_fields)
    if unknown:
        raise ImgforgeError(f"unknown training option(s): {', '.join(unknown)}")
    settings = TrainSettings(run_dir=str(run_dir), **{k: v for k, v in fields.items() if k in setting_fields})
    return {k: v for k, v in fields.items() if k in method_fields}, settings


def train_pix2pix(dataroot, run_dir, **fields) -> TrainResult:
    """Train (or fine-tune, with start_from=) pix2pix on DATAROOT (aligned A|B images, or A/ and B/ paired by
    name) into `run_dir`, with the official defaults; see imgforge.train.pix2pix.Pix2PixOptions."""
    from .pix2pix import Pix2PixMethod, Pix2PixOptions

    options, settings = split_options(Pix2PixOptions, run_dir, fields)
    return run(Pix2PixMethod, Pix2PixOptions(dataroot=str(dataroot), **options), settings)


def train_cyclegan(dataroot, run_dir, **fields) -> TrainResult:
    """Train CycleGAN on DATAROOT/trainA and DATAROOT/trainB into `run_dir`, with the official defaults; see
    imgforge.train.cyclegan.CycleGANOptions."""
    from .cyclegan import CycleGANMethod, CycleGANOptions

    options, settings = split_options(CycleGANOptions, run_dir, fields)
    return run(CycleGANMethod, CycleGANOptions(dataroot=str(dataroot), **options), settings)


def train_ddpm(images, run_dir, **fields) -> TrainResult:
    """Train a DDPM (Algorithm 1, the paper's CIFAR-10 recipe) on the images under `images`, or fine-tune one
    (from_model=), into `run_dir`, a diffusers folder of the EMA weights; see imgforge.train.ddpm.DDPMOptions."""
    from .ddpm import DDPM, DDPMOptions

    options, settings = split_options(DDPMOptions, run_dir, fields)
    return run(DDPM, DDPMOptions(images=str(images), **options), settings)
