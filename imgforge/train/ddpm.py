"""DDPM training (Ho et al. 2020), Algorithm 1 with the official CIFAR-10 recipe (hojonathanho/diffusion):

    repeat
        x0 ~ q(x0);  t ~ Uniform({0, ..., T-1});  eps ~ N(0, I)
        take a gradient step on  || eps - eps_theta(sqrt(acp_t) x0 + sqrt(1 - acp_t) eps, t) ||^2
    until converged

around it, as the official training loop does: the gradient clipped to global norm 1, Adam with a linear
warm-up from lr 0 on the very first update, and an exponential moving average of the parameters, which is what
gets sampled and saved.

Adam is PyTorch's (epsilon added to the bias-corrected sqrt(v)), as the train.ddpm_step fixtures were made.
TF1's AdamOptimizer, which the official run used, adds epsilon to the uncorrected sqrt(v); that moves weights
whose gradients are near 1e-8 by up to 6.5e-5 after the fixture's second step, over its 1e-5 tolerance, so the
fixtures decide (docs/train.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

BETA_START, BETA_END, TIMESTEPS = 1e-4, 0.02, 1000
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
FIRST_EMA_DECAY = 1e-10  # official make_ema: the first update copies the parameters


@dataclass(frozen=True)
class Recipe:
    """The optimisation hyperparameters (defaults: the paper's CIFAR-10 run, scripts/run_cifar.py)."""

    lr: float = 2e-4
    warmup: int = 5000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999


class ForwardProcess:
    """q(x_t | x0) for the linear beta schedule: the tables are computed in float64 and used in float32, as the
    official code gathers them from a float32 copy."""

    def __init__(self, timesteps: int = TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END):
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.timesteps = timesteps
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt().float()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(acp_t) x0 + sqrt(1 - acp_t) eps, per sample."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        a = self.sqrt_alphas_cumprod.to(x0.device)[t].view(shape)
        s = self.sqrt_one_minus_alphas_cumprod.to(x0.device)[t].view(shape)
        return a * x0 + s * noise

    def scheduler_config(self) -> dict:
        """The diffusers DDPMScheduler config that samples what this process trains (the CIFAR-10 setting of
        google/ddpm-cifar10-32: fixed_large variance, x0 clipped to [-1, 1])."""
        return {"_class_name": "DDPMScheduler", "num_train_timesteps": self.timesteps, "beta_start": BETA_START,
                "beta_end": BETA_END, "beta_schedule": "linear", "variance_type": "fixed_large",
                "clip_sample": True, "prediction_type": "epsilon"}


def warmed_up_lr(max_lr: float, global_step: int, warmup: int) -> float:
    """Official get_warmed_up_lr: lr * min(step / warmup, 1), step counted before the update (first lr: 0)."""
    if warmup <= 0:
        return max_lr
    return max_lr * min(global_step / warmup, 1.0)


def clip_by_global_norm(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale every gradient by max_norm / max(norm, max_norm) (TF's clip_by_global_norm, no epsilon); returns
    the norm before clipping."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    if max_norm > 0:
        scale = max_norm / torch.clamp(norm, min=max_norm)
        torch._foreach_mul_(grads, scale)
    return norm


def make_optimizer(parameters, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(parameters, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)


class ExponentialMovingAverage:
    """ema <- d ema + (1 - d) param after every update, d = 1e-10 on the first (global_step 0), then `decay`.
    Parameters only (the DDPM U-Net has no buffers); starts as a copy of the initial parameters."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.names = [name for name, _ in module.named_parameters()]
        self.shadow = [p.detach().float().clone() for p in module.parameters()]

    @torch.no_grad()
    def update(self, module: nn.Module, global_step: int) -> float:
        decay = FIRST_EMA_DECAY if global_step < 1 else self.decay
        params = [p.detach().float() for p in module.parameters()]
        torch._foreach_lerp_(self.shadow, params, 1.0 - decay)
        return decay

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for tensor, name in zip(self.shadow, self.names):
            tensor.copy_(state[name])


class DiffusionStep:
    """One training update of Algorithm 1 on a batch (x0, t, noise) the caller drew. `model` is what runs the
    forward (the U-Net, or its DistributedDataParallel wrapper); `unet` is the U-Net itself. `autocast`: a
    dtype for the forward on GPU (bf16/fp16) or None; the loss, the EMA and the optimizer state stay
    float32."""

    def __init__(self, unet: nn.Module, recipe: Recipe, *, model: nn.Module | None = None,
                 process: ForwardProcess | None = None, autocast: torch.dtype | None = None):
        self.unet, self.model, self.recipe = unet, model or unet, recipe
        self.process = process or ForwardProcess()
        self.parameters = list(unet.parameters())
        self.optimizer = make_optimizer(self.parameters, recipe.lr)
        self.ema = ExponentialMovingAverage(unet, recipe.ema_decay)
        self.autocast = autocast
        # fp16 gradients underflow without loss scaling; the scaler is a no-op otherwise
        self.scaler = torch.amp.GradScaler(enabled=autocast == torch.float16)

    def __call__(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, global_step: int) -> dict:
        """Updates the U-Net and the EMA; returns loss, grad_norm (before clipping), lr and ema_decay."""
        x_t = self.process.q_sample(x0, t, noise)
        device = x0.device.type
        with torch.autocast(device, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            eps = self.model(x_t, t)
        loss = torch.mean((noise - eps.float()) ** 2)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = clip_by_global_norm(self.parameters, self.recipe.grad_clip)
        lr = warmed_up_lr(self.recipe.lr, global_step, self.recipe.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        decay = self.ema.update(self.unet, global_step)
        return {"loss": loss.item(), "grad_norm": grad_norm.item(), "lr": lr, "ema_decay": decay, "x_t": x_t}
