"""Noise schedules and samplers for epsilon-predicting diffusion models: DDPM ancestral sampling (Ho et al.
2020, Algorithm 2, also respaced to fewer steps), DDIM (Song et al. 2021) and DPM-Solver++(2M) (Lu et al.
2022).

Every update is computed in float32 from the float32 alphas_cumprod table with 0-d tensor coefficients, in
diffusers' order of operations, so that results match its DDPMScheduler/DDIMScheduler to float32 rounding
(a float64 rewrite drifts by ~1e-4 near t = 0).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import ImgforgeError, ModelError

SAMPLERS = ("ddpm", "ddim", "dpm++2m")
SPACINGS = ("leading", "trailing")

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]  # (x, t) -> predicted noise, float32
NoiseFn = Callable[[], torch.Tensor]  # a fresh standard normal tensor shaped like x

_SCHEDULE_FIELDS = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "variance_type",
    "clip_sample", "clip_sample_range", "prediction_type", "thresholding", "rescale_betas_zero_snr",
}
# Bookkeeping, and options of diffusers' other schedulers that describe sampling (imgforge's own options
# decide those), not the trained noise schedule.
_IGNORED_FIELDS = {
    "_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "tensor_format",
    "timestep_values", "timestep_spacing", "steps_offset", "set_alpha_to_one", "dynamic_thresholding_ratio",
    "sample_max_value",
}


@dataclass(frozen=True)
class NoiseSchedule:
    """The trained forward process: alphas_cumprod (float32, one per training step) and how x0 is bounded."""

    alphas_cumprod: torch.Tensor
    variance_type: str = "fixed_small"
    clip_sample: bool = True
    clip_range: float = 1.0

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @classmethod
    def from_config(cls, raw: dict, where: str = "scheduler_config.json") -> "NoiseSchedule":
        """From a diffusers scheduler config (DDPMScheduler's defaults); ModelError for what cannot be honoured."""
        if not isinstance(raw, dict):
            raise ModelError(f"{where}: a scheduler config must be a JSON object")
        unknown = sorted(set(raw) - _SCHEDULE_FIELDS - _IGNORED_FIELDS)
        if unknown:
            raise ModelError(f"{where}: unknown scheduler config field(s) {', '.join(unknown)}")
        steps = int(raw.get("num_train_timesteps", 1000))
        start, end = float(raw.get("beta_start", 0.0001)), float(raw.get("beta_end", 0.02))
        kind = raw.get("beta_schedule", "linear")
        if raw.get("trained_betas") is not None:
            betas = torch.tensor(raw["trained_betas"], dtype=torch.float32)
        elif kind == "linear":
            betas = torch.linspace(start, end, steps, dtype=torch.float32)
        elif kind == "scaled_linear":
            betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float32) ** 2
        else:
            raise ModelError(f"{where}: beta_schedule {kind!r} is not supported (use linear or scaled_linear)")
        variance = raw.get("variance_type", "fixed_small")
        if variance not in ("fixed_small", "fixed_large"):
            raise ModelError(f"{where}: variance_type {variance!r} is not supported (fixed_small or fixed_large)")
        if raw.get("prediction_type", "epsilon") != "epsilon":
            raise ModelError(f"{where}: prediction_type {raw['prediction_type']!r} is not supported (epsilon only)")
        if raw.get("thresholding") or raw.get("rescale_betas_zero_snr"):
            raise ModelError(f"{where}: thresholding / rescale_betas_zero_snr are not supported")
        return cls(
            alphas_cumprod=torch.cumprod(1.0 - betas, dim=0),
            variance_type=variance,
            clip_sample=bool(raw.get("clip_sample", True)),
            clip_range=float(raw.get("clip_sample_range", 1.0)),
        )

    def alpha_bar(self, t: int) -> torch.Tensor:
        """ᾱ_t as a 0-d float32 tensor; 1 for t < 0 (the clean image)."""
        return self.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)

    def predict_x0(self, x: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        a_t = self.alpha_bar(t)
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        return x0.clamp(-self.clip_range, self.clip_range) if self.clip_sample else x0


def spaced_timesteps(num_train: int, steps: int, spacing: str = "leading") -> list[int]:
    """Descending timesteps, as diffusers spaces them: leading [750, 500, 250, 0], trailing [999, 749, 499, 249]
    (1000 training steps, 4 steps)."""
    if not 1 <= steps <= num_train:
        raise ImgforgeError(f"--steps must be between 1 and {num_train}, not {steps}")
    if spacing == "leading":
        return [int(t) for t in (np.arange(steps) * (num_train // steps))[::-1]]
    if spacing == "trailing":
        return [int(t) for t in np.round(np.arange(num_train, 0, -num_train / steps)).astype(np.int64) - 1]
    raise ImgforgeError(f"unknown timestep spacing {spacing!r}: use {' or '.join(SPACINGS)}")


def ddpm_step(schedule: NoiseSchedule, eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor,
              noise: torch.Tensor | None) -> torch.Tensor:
    """One ancestral step x_t -> x_{t_prev} (t_prev = t - 1 at full length, the next spaced step otherwise)."""
    a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
    beta_prod_t, beta_prod_prev = 1 - a_t, 1 - a_prev
    alpha_t = a_t / a_prev
    beta_t = 1 - alpha_t
    x0 = schedule.predict_x0(x, eps, t)
    coef_x0 = (a_prev**0.5 * beta_t) / beta_prod_t
    coef_xt = alpha_t**0.5 * beta_prod_prev / beta_prod_t
    x_prev = coef_x0 * x0 + coef_xt * x
    if t > 0:
        if schedule.variance_type == "fixed_large":
            variance = beta_t
        else:
            variance = torch.clamp(beta_prod_prev / beta_prod_t * beta_t, min=1e-20)
        x_prev = x_prev + variance**0.5 * noise
    return x_prev


def ddim_step(schedule: NoiseSchedule, eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor,
              eta: float = 0.0, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM step; eta = 0 is deterministic, eta = 1 has DDPM's posterior variance. ε is used as predicted,
    not re-derived from the clipped x0 (diffusers' default)."""
    a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
    x0 = schedule.predict_x0(x, eps, t)
    std = eta * (((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)) ** 0.5
    x_prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
    if eta > 0:
        x_prev = x_prev + std * noise
    return x_prev


class Sampler(ABC):
    """A sampler over a fixed list of timesteps: `run(eps_fn, x_T, noise_fn)` returns x_0 (float32)."""

    name = ""

    def __init__(self, schedule: NoiseSchedule, timesteps: list[int]):
        self.schedule = schedule
        self.timesteps = timesteps

    def run(self, eps_fn: EpsFn, x: torch.Tensor, noise_fn: NoiseFn,
            on_step: Callable[[], None] | None = None) -> torch.Tensor:
        state: dict = {}
        for i, t in enumerate(self.timesteps):
            t_prev = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1
            x = self.step(i, t, t_prev, eps_fn(x, t), x, noise_fn, state)
            if on_step is not None:
                on_step()
        return x

    @abstractmethod
    def step(self, i: int, t: int, t_prev: int, eps: torch.Tensor, x: torch.Tensor, noise_fn: NoiseFn,
             state: dict) -> torch.Tensor:
        """x_t -> x_{t_prev}; `state` carries what a multistep method keeps between steps."""


class DDPMSampler(Sampler):
    name = "ddpm"

    def step(self, i, t, t_prev, eps, x, noise_fn, state):
        return ddpm_step(self.schedule, eps, t, t_prev, x, noise_fn() if t > 0 else None)


class DDIMSampler(Sampler):
    name = "ddim"

    def __init__(self, schedule: NoiseSchedule, timesteps: list[int], eta: float = 0.0):
        super().__init__(schedule, timesteps)
        self.eta = eta

    def step(self, i, t, t_prev, eps, x, noise_fn, state):
        return ddim_step(self.schedule, eps, t, t_prev, x, self.eta, noise_fn() if self.eta > 0 else None)


class DPMSolverPP2M(Sampler):
    """DPM-Solver++(2M), midpoint form, data prediction; first order on the first step and on the last, which
    goes to σ = 0 and so returns the predicted x0 (diffusers' DPMSolverMultistepScheduler defaults). x0 is
    clipped like DDPM's when the schedule says clip_sample."""

    name = "dpm++2m"

    def _alpha_sigma_lambda(self, t: int) -> tuple[float, float, float]:
        if t < 0:
            return 1.0, 0.0, math.inf
        a = float(self.schedule.alphas_cumprod[t])
        alpha, sigma = math.sqrt(a), math.sqrt(1 - a)
        return alpha, sigma, math.log(alpha) - math.log(sigma)

    def step(self, i, t, t_prev, eps, x, noise_fn, state):
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(t)
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(t_prev)
        x0 = self.schedule.predict_x0(x, eps, t)
        previous = state.get("previous")
        state["previous"] = (x0, lambda_s)
        if t_prev < 0:
            return x0
        h = lambda_t - lambda_s
        decay = -alpha_t * math.expm1(-h)  # = alpha_t * (1 - e^{-h})
        if previous is None:
            return (sigma_t / sigma_s) * x + decay * x0
        x0_before, lambda_before = previous
        r = (lambda_s - lambda_before) / h
        return (sigma_t / sigma_s) * x + decay * (x0 + (x0 - x0_before) * (0.5 / r))


def make_sampler(name: str, schedule: NoiseSchedule, steps: int, *, eta: float = 0.0,
                 spacing: str | None = None) -> Sampler:
    """The sampler `name` over `steps` steps. Default spacing: leading for ddpm/ddim (diffusers' default for
    these checkpoints), diffusers' linspace spacing for dpm++2m."""
    num_train = schedule.num_train_timesteps
    if name == "ddpm":
        return DDPMSampler(schedule, spaced_timesteps(num_train, steps, spacing or "leading"))
    if name == "ddim":
        if eta < 0:
            raise ImgforgeError(f"--eta must be >= 0, not {eta}")
        return DDIMSampler(schedule, spaced_timesteps(num_train, steps, spacing or "leading"), eta)
    if name == "dpm++2m":
        if spacing is not None and spacing != "linspace":
            timesteps = spaced_timesteps(num_train, steps, spacing)
        else:
            if not 1 <= steps <= num_train:
                raise ImgforgeError(f"--steps must be between 1 and {num_train}, not {steps}")
            timesteps = [int(t) for t in np.linspace(0, num_train - 1, steps + 1).round()[::-1][:-1]]
        return DPMSolverPP2M(schedule, timesteps)
    raise ImgforgeError(f"unknown sampler {name!r}: use {', '.join(SAMPLERS)}")
