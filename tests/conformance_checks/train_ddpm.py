"""Conformance check for DDPM training (kind train.ddpm_step): every step of the official training loop, from
the fixture's initial U-Net and its stored x0, t and noise, through imgforge.train.ddpm's step."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from imgforge.nets.ddpm_unet import load_unet
from imgforge.train.ddpm import DiffusionStep, Recipe

from .common import assert_close, load_fixture


def _prefixed(io: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in io.items() if key.startswith(prefix)}


def _assert_relative(name: str, actual: float, expected: float, tolerance: float) -> None:
    error = abs(actual - expected) / max(abs(expected), 1e-12)
    assert error <= tolerance, f"{name}: {actual!r} vs {expected!r} (relative error {error:.3g} > {tolerance})"


def recipe_of(config: dict) -> Recipe:
    """The fixture's recipe: structured fields where it has them, else the numbers its step description
    states ("max lr 0.0002, warmup 2", "clip_by_global_norm(1.0)", "else 0.9999"), else the official ones."""
    step, defaults = config.get("step", {}), Recipe()

    def number(field: str, text_key: str, pattern: str, default: float) -> float:
        if field in config:
            return float(config[field])
        found = re.search(pattern, str(step.get(text_key, "")))
        return float(found.group(1)) if found else default

    return Recipe(
        lr=number("lr", "lr", r"max lr ([0-9.e+-]+)", defaults.lr),
        warmup=int(number("warmup", "lr", r"warmup (\d+)", defaults.warmup)),
        grad_clip=number("grad_clip", "clip", r"clip_by_global_norm\(([0-9.e+-]+)\)", defaults.grad_clip),
        ema_decay=number("ema_decay", "ema", r"else ([0-9.e+-]+)", defaults.ema_decay),
    )


def check_ddpm_step(folder: Path, config: dict) -> None:
    _, io = load_fixture(folder)
    tolerance = config["tolerance"]
    unet = load_unet(config["unet_config"], _prefixed(io, "initial.unet."), where=folder.name).train()
    train = DiffusionStep(unet, recipe_of(config))
    for k in range(config["steps"]):
        result = train(io[f"step{k}.x0"], io[f"step{k}.t"], io[f"step{k}.noise"], global_step=k)
        assert_close(f"step{k}.x_t", result["x_t"], io[f"step{k}.x_t"], 1e-6)
        _assert_relative(f"step{k}.loss", result["loss"].item(), io[f"step{k}.loss"].item(), tolerance["loss_rel"])
        _assert_relative(f"step{k}.grad_norm", result["grad_norm"].item(), io[f"step{k}.grad_norm"].item(),
                         tolerance["grad_norm_rel"])
        assert abs(result["lr"] - io[f"step{k}.lr"].item()) <= 1e-12, f"step{k}.lr: {result['lr']}"
        for name, tensor in unet.state_dict().items():
            assert_close(f"after{k}.unet.{name}", tensor, io[f"after{k}.unet.{name}"], tolerance["weights_abs"])
        ema = train.ema.state_dict()
        expected_ema = _prefixed(io, f"after{k}.ema.")
        assert set(ema) == set(expected_ema), f"after{k}.ema: keys differ"
        for name, tensor in ema.items():
            assert_close(f"after{k}.ema.{name}", tensor, expected_ema[name], tolerance["ema_abs"])


CHECKS = {"train.ddpm_step": check_ddpm_step}
