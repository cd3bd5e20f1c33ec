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

import contextlib
import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ImgforgeError, ModelError
from ..nets import registry
from ..nets.ddpm_unet import DDPMUNet
from ..pipelines.sample import DiffusionModel, Drawer, load_model, save_model
from ..pipelines.samplers import NoiseSchedule
from ..plan import RunPlan
from .data import SquareImages
from .plan import sample_rng
from .trainer import Context, Length, Method

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
        self.timesteps, self.beta_start, self.beta_end = timesteps, beta_start, beta_end
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt().float()

    @classmethod
    def from_scheduler_config(cls, raw: dict) -> "ForwardProcess":
        """The process of a diffusers scheduler config (a model to fine-tune): linear betas only."""
        if raw.get("trained_betas") is not None or raw.get("beta_schedule", "linear") != "linear":
            raise ModelError("training supports the linear beta schedule of DDPM only, not "
                             f"{raw.get('beta_schedule')!r} or trained_betas")
        return cls(int(raw.get("num_train_timesteps", TIMESTEPS)), float(raw.get("beta_start", BETA_START)),
                   float(raw.get("beta_end", BETA_END)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(acp_t) x0 + sqrt(1 - acp_t) eps, per sample."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        a = self.sqrt_alphas_cumprod.to(x0.device)[t].view(shape)
        s = self.sqrt_one_minus_alphas_cumprod.to(x0.device)[t].view(shape)
        return a * x0 + s * noise

    def scheduler_config(self) -> dict:
        """The diffusers DDPMScheduler config that samples what this process trains (the CIFAR-10 setting of
        google/ddpm-cifar10-32: fixed_large variance, x0 clipped to [-1, 1])."""
        return {"_class_name": "DDPMScheduler", "num_train_timesteps": self.timesteps,
                "beta_start": self.beta_start, "beta_end": self.beta_end, "beta_schedule": "linear", "variance_type": "fixed_large",
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
    forward (the U-Net, or its DistributedDataParallel wrapper); `unet` is the U-Net itself. `autocast` (a
    context-manager factory) and `scaler` (a GradScaler, for fp16) come from the trainer's Context; the loss,
    the EMA and the optimizer state stay float32. The caller updates the scaler after the step."""

    def __init__(self, unet: nn.Module, recipe: Recipe, *, model: nn.Module | None = None,
                 process: ForwardProcess | None = None, autocast=contextlib.nullcontext,
                 scaler: torch.amp.GradScaler | None = None):
        self.unet, self.model, self.recipe = unet, model or unet, recipe
        self.process = process or ForwardProcess()
        self.parameters = list(unet.parameters())
        self.optimizer = make_optimizer(self.parameters, recipe.lr)
        self.ema = ExponentialMovingAverage(unet, recipe.ema_decay)
        self.autocast = autocast
        self.scaler = scaler or torch.amp.GradScaler(enabled=False)

    def __call__(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, global_step: int) -> dict:
        """Updates the U-Net and the EMA; returns x_t, the loss and grad_norm (before clipping) as detached
        tensors, lr and ema_decay."""
        x_t = self.process.q_sample(x0, t, noise)
        with self.autocast():
            eps = self.model(x_t, t)
        loss = torch.mean((noise - eps.float()) ** 2)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # clip the true gradient (a no-op without fp16)
        grad_norm = clip_by_global_norm(self.parameters, self.recipe.grad_clip)
        lr = warmed_up_lr(self.recipe.lr, global_step, self.recipe.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.step(self.optimizer)
        decay = self.ema.update(self.unet, global_step)
        return {"x_t": x_t, "loss": loss.detach(), "grad_norm": grad_norm.detach(), "lr": lr, "ema_decay": decay}


# --- the method, for imgforge/train/trainer.py -------------------------------------------------------------

# google/ddpm-cifar10-32's U-Net (the paper's CIFAR-10 model: ch 128, ch_mult 1,2,2,2, 2 blocks, attention at
# 16x16), the network a run without --model-config or --from trains.
CIFAR10_UNET = {
    "_class_name": "UNet2DModel", "sample_size": 32, "in_channels": 3, "out_channels": 3,
    "block_out_channels": [128, 256, 256, 256], "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "time_embedding_type": "positional", "flip_sin_to_cos": False, "freq_shift": 1, "norm_num_groups": 32,
    "norm_eps": 1e-6, "downsample_padding": 0, "attention_head_dim": None, "act_fn": "silu",
    "mid_block_scale_factor": 1, "center_input_sample": False, "dropout": 0.1,
}


@dataclass(frozen=True)
class DDPMOptions:
    """What `imgforge train ddpm` trains (saved in options.json; --resume needs the same). The run's seed,
    global batch, device, precision and save/sample intervals are the trainer's TrainSettings."""

    images: str
    model_config: str | None = None  # a diffusers UNet2DModel config.json
    from_model: str | None = None  # fine-tune: a zoo model name or a diffusers folder
    resolution: int | None = None  # None: the model's sample_size (32 for the default U-Net)
    steps: int = 800_000
    lr: float = Recipe.lr
    warmup: int = Recipe.warmup
    grad_clip: float = Recipe.grad_clip
    ema_decay: float = Recipe.ema_decay
    dropout: float = 0.1
    flip: bool = True
    preview_images: int = 16  # the sample grid, drawn from the EMA weights
    preview_steps: int = 50  # DDIM steps of the sample grid
    fid_every: int | None = None  # --fid-every: steps between FIDs of EMA samples (at the sample grids) ...
    fid_ref: str | None = None  # ... against these reference statistics (.npz, `imgforge eval fid-stats`) ...
    fid_samples: int = 1000  # ... of this many samples (DDIM, preview_steps; seeds 0, 1, ...)


class DiffusionSamples(torch.utils.data.Dataset):
    """Item (index, sample) of the trainer's plan: image `index` as x0 in [-1, 1], randomly flipped, with its
    timestep and noise, all drawn from sample_rng(seed, sample) (flip, then t, then noise), so that a sample
    is the same whichever process or loader worker draws it."""

    def __init__(self, images: SquareImages, seed: int, flip: bool, timesteps: int):
        self.images, self.seed, self.flip, self.timesteps = images, seed, flip, timesteps

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, sample = item
        rng = sample_rng(self.seed, sample)
        pixels = self.images.pixels[index]
        if rng.random() < 0.5 and self.flip:
            pixels = pixels[:, ::-1]
        x0 = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 127.5 - 1.0
        t = int(rng.integers(self.timesteps))
        noise = torch.from_numpy(rng.standard_normal(x0.shape, dtype=np.float32))
        return {"x0": x0, "t": torch.tensor(t), "noise": noise}


class DDPM(Method):
    """Algorithm 1 as a method of imgforge's trainer (imgforge/train/trainer.py): the U-Net (fresh through the
    registry, or a model to fine-tune), its Adam and EMA; the run folder is a diffusers folder of the EMA
    weights. Metrics of the EMA model (FID every N steps) plug into the trainer's evaluate(epoch, step) hook:
    ema_samples() draws the images to score, ema_model() gives the network itself."""

    name = "ddpm"

    def __init__(self, options: DDPMOptions, context: Context):
        self.options, self.context = options, context
        self.fid, self.fid_step = None, 0  # --fid-every: the scorer (reference read now), the last step scored
        if options.fid_every:
            if not options.fid_ref:
                raise ImgforgeError("--fid-every needs --fid-ref STATS.npz (`imgforge eval fid-stats` of the "
                                    "training images)")
            if options.fid_samples < 2:
                raise ImgforgeError(f"--fid-samples must be at least 2 (an FID needs a covariance), not "
                                    f"{options.fid_samples}")
            from ..eval.validation import SetFID

            self.fid = SetFID(options.fid_ref, device=str(context.device))
        unet, self.scheduler_config = initial_unet(options)
        self.process = ForwardProcess.from_scheduler_config(self.scheduler_config)
        images = SquareImages(options.images, image_side(unet), unet.config.in_channels)
        self.dataset = DiffusionSamples(images, context.seed, options.flip, self.process.timesteps)
        self.length = Length(steps=options.steps)
        self.unet = unet
        model = context.prepare(unet)
        self.recipe = Recipe(options.lr, options.warmup, options.grad_clip, options.ema_decay)
        self.train_step = DiffusionStep(unet, self.recipe, model=model, process=self.process,
                                        autocast=context.autocast, scaler=context.scaler)
        self.updates = 0  # optimizer steps taken: the official global_step of the warm-up and the EMA

    def modules(self) -> dict:
        return {"unet": self.unet, "ema": self.train_step.ema}

    def optimizers(self) -> dict:
        return {"adam": self.train_step.optimizer}

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        result = self.train_step(batch["x0"], batch["t"], batch["noise"], self.updates)
        self.updates += 1
        return {"loss": result["loss"], "grad_norm": result["grad_norm"]}

    def extra_state(self) -> dict:
        return {"updates": self.updates}

    def load_extra_state(self, state: dict) -> None:
        self.updates = int(state["updates"])

    def write_outputs(self, run_dir: Path, *, epoch: int | None, step: int, final: bool) -> None:
        save_model(run_dir, self.unet, self.scheduler_config, state=self.train_step.ema.state_dict())

    def ema_model(self) -> DiffusionModel:
        """A copy of the U-Net holding the EMA weights (eval mode), with the noise schedule it trains."""
        ema = copy.deepcopy(self.unet).eval()
        ema.load_state_dict(self.train_step.ema.state_dict())
        schedule = NoiseSchedule.from_config(self.scheduler_config)
        return DiffusionModel(self.name, ema, schedule)

    def ema_samples(self, count: int, steps: int, first_seed: int = 0) -> np.ndarray:
        """`count` uint8 images (N x H x W x C) drawn from the EMA weights with DDIM in `steps` steps, image i
        from seed first_seed + i: the preview grid, and what a metric hook (FID every N steps) scores."""
        draw = Drawer(self.ema_model(), RunPlan(device=str(self.context.device)), steps=steps, sampler="ddim",
                      eta=0.0, spacing=None, cuda_graphs=False)  # one batch now and then: graphs would not pay
        return draw(list(range(first_seed, first_seed + count)))

    def evaluate(self, *, epoch: int | None, step: int) -> dict[str, float]:
        """--fid-every N: at the first sample grid after N more steps, the FID of fid_samples EMA samples
        against --fid-ref."""
        every = self.options.fid_every
        if not every or step // every == self.fid_step // every:
            return {}
        from ..eval.validation import in_batches

        self.fid_step = step
        steps = self.options.preview_steps
        samples = in_batches(lambda first, count: self.ema_samples(count, steps, first), self.options.fid_samples, 50)
        return {"fid": self.fid(samples)}

    def preview(self) -> list[list[np.ndarray]]:
        """A grid of preview_images samples from the EMA weights (DDIM, preview_steps; seeds 0, 1, ...)."""
        count = self.options.preview_images
        if count < 1:
            return []
        images = self.ema_samples(count, self.options.preview_steps)
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        columns = math.ceil(math.sqrt(count))
        return [list(images[i:i + columns]) for i in range(0, count, columns)]


def image_side(unet: DDPMUNet) -> int:
    """The side of the square training images: the U-Net's sample_size (after --resolution)."""
    size = unet.config.sample_size
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ImgforgeError(f"the U-Net's sample_size is {list(size)}: training images are square, give "
                                "--resolution")
        size = size[0]
    return int(size)


def initial_unet(options: DDPMOptions) -> tuple[DDPMUNet, dict]:
    """The U-Net to train (train mode, CPU) and the scheduler config of the folder it is saved as: fresh from
    --model-config (or the CIFAR-10 U-Net) through the registry, or the weights of --from to fine-tune."""
    if options.dropout < 0 or options.dropout >= 1:
        raise ImgforgeError(f"--dropout must be in [0, 1), not {options.dropout}")
    if options.model_config and options.from_model:
        raise ImgforgeError("give --model-config (a fresh U-Net) or --from (a model to fine-tune), not both")
    changes = {"dropout": options.dropout}
    if options.resolution is not None:
        changes["sample_size"] = options.resolution
    if options.from_model:
        source = load_model(options.from_model)
        config = {**asdict(source.unet.config), **changes}
        unet = registry.get_family("ddpm_unet").load(source.unet.state_dict(), config=config)
        return unet.train(), source.scheduler_config
    config = dict(CIFAR10_UNET)
    if options.model_config:
        path = Path(options.model_config).expanduser()
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ImgforgeError(f"cannot read --model-config {path}: {' '.join(str(exc).split())}") from None
        config.setdefault("sample_size", 32)
    unet = registry.build("ddpm_unet", {**config, **changes})
    return unet.train(), ForwardProcess().scheduler_config()
