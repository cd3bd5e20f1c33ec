"""Samplers against independent float64 computations written from the papers (and against diffusers when it is
installed). The toy noise predictor stands in for a U-Net: the update rules are what is checked here; the
conformance fixtures check them with a real U-Net."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imgforge.errors import ImgforgeError, ModelError
from imgforge.pipelines.samplers import NoiseSchedule, make_sampler, spaced_timesteps

CIFAR_SCHEDULER = {
    "_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02, "beta_schedule": "linear",
    "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000, "trained_betas": None,
    "variance_type": "fixed_large",
}
TOLERANCE = 1e-4


def toy_eps(x, t):
    """A smooth, timestep-dependent noise prediction (torch or numpy)."""
    lib = torch if torch.is_tensor(x) else np
    return 0.9 * lib.tanh(0.7 * x) + 0.05 * lib.sin(3 * x + t / 97.0)


def draws(count: int, shape, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]


def run_ours(sampler, x_T, noises):
    pending = iter(noises)
    out = sampler.run(lambda x, t: toy_eps(x, t), torch.from_numpy(x_T), lambda: torch.from_numpy(next(pending)))
    return out.numpy()


def abar64(schedule: NoiseSchedule, t: int) -> float:
    return 1.0 if t < 0 else float(schedule.alphas_cumprod[t])


def x0_from(x, eps, a, clip=True):
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    return np.clip(x0, -1, 1) if clip else x0


def reference_ddpm(schedule, timesteps, x, noises, variance_type):
    """Ho et al. 2020 eq. 6-7 (posterior q(x_prev | x_t, x0)), generalised to a respaced chain."""
    noises = iter(noises)
    for i, t in enumerate(timesteps):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a, a_prev = abar64(schedule, t), abar64(schedule, prev)
        beta = 1 - a / a_prev
        x0 = x0_from(x, toy_eps(x, t), a)
        mean = math.sqrt(a_prev) * beta / (1 - a) * x0 + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a) * x
        variance = beta if variance_type == "fixed_large" else (1 - a_prev) / (1 - a) * beta
        x = mean + (math.sqrt(variance) * next(noises) if t > 0 else 0)
    return x


def reference_ddim(schedule, timesteps, x, noises, eta):
    """Song et al. 2021 eq. 12 with sigma from eq. 16."""
    noises = iter(noises)
    for i, t in enumerate(timesteps):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a, a_prev = abar64(schedule, t), abar64(schedule, prev)
        eps = toy_eps(x, t)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
        x = math.sqrt(a_prev) * x0_from(x, eps, a) + math.sqrt(1 - a_prev - sigma**2) * eps
        if eta > 0:
            x = x + sigma * next(noises)
    return x


def reference_dpm_pp_2m(schedule, timesteps, x, clip=True):
    """Lu et al. 2022, DPM-Solver++(2M) (Algorithm 2), the last step to sigma = 0 returning x0."""
    x0_older, h_older = None, None
    for i, t in enumerate(timesteps):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a = abar64(schedule, t)
        x0 = x0_from(x, toy_eps(x, t), a, clip)
        if prev < 0:
            return x0
        a_prev = abar64(schedule, prev)
        lam = lambda ab: 0.5 * math.log(ab / (1 - ab))  # noqa: E731  (log alpha - log sigma)
        h = lam(a_prev) - lam(a)
        if x0_older is None:
            d = x0
        else:
            r = h_older / h
            d = (1 + 1 / (2 * r)) * x0 - x0_older / (2 * r)
        x = math.sqrt((1 - a_prev) / (1 - a)) * x - math.sqrt(a_prev) * (math.exp(-h) - 1) * d
        x0_older, h_older = x0, h
    return x


@pytest.fixture
def schedule():
    return NoiseSchedule.from_config(CIFAR_SCHEDULER)


@pytest.mark.parametrize("steps, variance", [(10, "fixed_large"), (7, "fixed_small"), (3, "fixed_large")])
def test_ddpm_matches_the_posterior_formula(steps, variance):
    schedule = NoiseSchedule.from_config({**CIFAR_SCHEDULER, "variance_type": variance})
    sampler = make_sampler("ddpm", schedule, steps)
    x_T, *noises = draws(steps + 1, (2, 3, 4, 4))
    expected = reference_ddpm(schedule, sampler.timesteps, x_T.astype(np.float64), noises, variance)
    np.testing.assert_allclose(run_ours(sampler, x_T, noises), expected, atol=TOLERANCE)


@pytest.mark.parametrize("steps, eta, spacing", [(10, 0.0, "leading"), (8, 0.5, "trailing"), (7, 1.0, "leading")])
def test_ddim_matches_the_paper(schedule, steps, eta, spacing):
    sampler = make_sampler("ddim", schedule, steps, eta=eta, spacing=spacing)
    x_T, *noises = draws(steps + 1, (2, 3, 4, 4), seed=1)
    expected = reference_ddim(schedule, sampler.timesteps, x_T.astype(np.float64), noises, eta)
    np.testing.assert_allclose(run_ours(sampler, x_T, noises), expected, atol=TOLERANCE)


@pytest.mark.parametrize("steps", [1, 2, 10, 25])
def test_dpm_solver_pp_2m_matches_the_paper(schedule, steps):
    sampler = make_sampler("dpm++2m", schedule, steps)
    (x_T,) = draws(1, (2, 3, 4, 4), seed=2)
    expected = reference_dpm_pp_2m(schedule, sampler.timesteps, x_T.astype(np.float64))
    np.testing.assert_allclose(run_ours(sampler, x_T, []), expected, atol=TOLERANCE)


def test_timestep_spacings():
    assert spaced_timesteps(1000, 4, "leading") == [750, 500, 250, 0]
    assert spaced_timesteps(1000, 4, "trailing") == [999, 749, 499, 249]
    assert spaced_timesteps(1000, 1000) == list(range(999, -1, -1))
    assert make_sampler("dpm++2m", NoiseSchedule.from_config(CIFAR_SCHEDULER), 10).timesteps == [
        999, 899, 799, 699, 599, 500, 400, 300, 200, 100
    ]
    with pytest.raises(ImgforgeError, match="--steps must be between 1 and 1000"):
        spaced_timesteps(1000, 1001)
    with pytest.raises(ImgforgeError, match="unknown sampler"):
        make_sampler("euler", NoiseSchedule.from_config(CIFAR_SCHEDULER), 10)


def test_schedule_config_errors_are_clear():
    with pytest.raises(ModelError, match="prediction_type 'v_prediction'"):
        NoiseSchedule.from_config({**CIFAR_SCHEDULER, "prediction_type": "v_prediction"})
    with pytest.raises(ModelError, match="variance_type 'learned_range'"):
        NoiseSchedule.from_config({**CIFAR_SCHEDULER, "variance_type": "learned_range"})
    with pytest.raises(ModelError, match="unknown scheduler config field"):
        NoiseSchedule.from_config({**CIFAR_SCHEDULER, "betas_typo": 1})


# diffusers, when installed (it is a benchmark/test-oracle dependency only)


def test_dpm_solver_agrees_with_diffusers(schedule):
    diffusers = pytest.importorskip("diffusers")
    config = {k: v for k, v in CIFAR_SCHEDULER.items() if not k.startswith("_")}
    scheduler = diffusers.DPMSolverMultistepScheduler.from_config(config)
    unclipped = NoiseSchedule.from_config({**CIFAR_SCHEDULER, "clip_sample": False})  # diffusers never clips here
    (x_T,) = draws(1, (2, 3, 4, 4), seed=3)
    ours = run_ours(make_sampler("dpm++2m", unclipped, 20), x_T, [])
    scheduler.set_timesteps(20)
    x = torch.from_numpy(x_T)
    for t in scheduler.timesteps:
        x = scheduler.step(toy_eps(x, int(t)), t, x).prev_sample
    # unclipped, this toy predictor drives x to a few hundred: compare relatively there
    np.testing.assert_allclose(ours, x.numpy(), rtol=1e-5, atol=TOLERANCE)
