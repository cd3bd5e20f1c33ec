"""Conformance checks for the DDPM U-Net and samplers (kinds ddpm.unet, ddpm.ddpm_steps, ddpm.ddim_steps)."""

from __future__ import annotations

from pathlib import Path

import torch

from imgforge.nets.ddpm_unet import load_unet
from imgforge.pipelines.samplers import NoiseSchedule, ddim_step, ddpm_step, make_sampler

from .common import assert_close, load_fixture

# The sampler update from the stored eps and z: the README asks for float32 in the reference's order, which
# reproduces diffusers to rounding; a float64 rewrite misses by 8.5e-5, so this bound tells the two apart.
STEP_TOLERANCE = 1e-5


def unet_of(folder: Path, config: dict):
    weights, io = load_fixture(folder)
    return load_unet(config["unet_config"], weights, where=folder.name), io


def check_unet(folder: Path, config: dict) -> None:
    unet, io = unet_of(folder, config)
    with torch.no_grad():
        eps = unet(io["sample"], io["timestep"])
    assert_close("eps", eps, io["eps"])


def check_ddpm_steps(folder: Path, config: dict) -> None:
    unet, io = unet_of(folder, config)
    schedule = NoiseSchedule.from_config(config["scheduler_config"])
    assert torch.equal(schedule.alphas_cumprod, io["alphas_cumprod"])
    for part in ("head", "tail"):
        timesteps = [int(t) for t in io[f"{part}.t"]]
        x = io[f"{part}.x_in"]
        for i, t in enumerate(timesteps):
            with torch.no_grad():
                eps = unet(x, torch.tensor(t))
            assert_close(f"{part}.eps[{i}]", eps, io[f"{part}.eps"][i])
            # the update alone, from the reference's own inputs
            x_ref_in = io[f"{part}.x_in"] if i == 0 else io[f"{part}.x_out"][i - 1]
            alone = ddpm_step(schedule, io[f"{part}.eps"][i], t, t - 1, x_ref_in, io[f"{part}.z"][i])
            assert_close(f"{part}.x_out[{i}] (step only)", alone, io[f"{part}.x_out"][i], STEP_TOLERANCE)
            # chained through our own U-Net
            x = ddpm_step(schedule, eps, t, t - 1, x, io[f"{part}.z"][i])
            assert_close(f"{part}.x_out[{i}]", x, io[f"{part}.x_out"][i])


def check_ddim_steps(folder: Path, config: dict) -> None:
    unet, io = unet_of(folder, config)
    schedule = NoiseSchedule.from_config(config["scheduler_config"])
    timesteps = [int(t) for t in io["timesteps"]]
    sampler = make_sampler("ddim", schedule, len(timesteps))
    assert sampler.timesteps == timesteps == config["timesteps_used"]
    assert make_sampler("ddim", schedule, len(timesteps), spacing="trailing").timesteps == config["trailing_would_be"]
    x = io["x_in"]
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        with torch.no_grad():
            eps = unet(x, torch.tensor(t))
        assert_close(f"eps[{i}]", eps, io["eps"][i])
        x_ref_in = io["x_in"] if i == 0 else io["x_out"][i - 1]
        assert_close(f"pred_x0[{i}]", schedule.predict_x0(x_ref_in, io["eps"][i], t), io["pred_x0"][i],
                     STEP_TOLERANCE)
        alone = ddim_step(schedule, io["eps"][i], t, t_prev, x_ref_in)
        assert_close(f"x_out[{i}] (step only)", alone, io["x_out"][i], STEP_TOLERANCE)
        x = ddim_step(schedule, eps, t, t_prev, x)
        assert_close(f"x_out[{i}]", x, io["x_out"][i])
    # the whole loop, as `imgforge sample --sampler ddim` runs it
    with torch.no_grad():
        final = sampler.run(lambda x, t: unet(x, torch.tensor(t)), io["x_in"], noise_fn=lambda: None)
    assert_close("x_out[-1] (sampler loop)", final, io["x_out"][-1])


CHECKS = {
    "ddpm.unet": check_unet,
    "ddpm.ddpm_steps": check_ddpm_steps,
    "ddpm.ddim_steps": check_ddim_steps,
}
