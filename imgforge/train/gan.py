"""What pix2pix and CycleGAN training share, as in the official models/networks.py and util/image_pool.py:
fresh networks (the registry's families build them with the official init_weights(normal, 0.02)), the base
options, the GAN objective, dropout masks, the pool of generated images, the learning-rate policy, and the
Method members both have (two Adam optimizers on that policy, the official checkpoint layout)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ImgforgeError
from ..nets import registry
from ..nets.patchgan import DiscriminatorOptions, PatchDiscriminator
from ..nets.pix2pix import DROPOUT_P, NETGS, Generator, GeneratorOptions
from .outputs import write_networks
from .trainer import Method

GAN_MODES = ("vanilla", "lsgan")


@dataclass(frozen=True)
class GANOptions:
    """The options pix2pix and CycleGAN training share (the official base and train options), under imgforge's
    names; each method's subclass gives netG, norm, dropout and gan_mode its official defaults and adds its own
    loss weights."""

    dataroot: str
    netG: str = "unet_256"
    ngf: int = 64
    ndf: int = 64
    n_layers_d: int = 3
    norm: str = "batch"
    dropout: bool = True
    gan_mode: str = "vanilla"
    load_size: int = 286
    crop_size: int = 256
    preprocess: str = "resize_and_crop"
    flip: bool = True
    direction: str = "AtoB"
    epochs: int = 100
    epochs_decay: int = 100
    lr: float = 0.0002
    beta1: float = 0.5
    start_from: str | None = None  # --from: a generator file, a run folder or a zoo model
    save_epoch_every: int = 5
    val: str | None = None  # --val: the validation set evaluated at each epoch end


def new_generator(options: GeneratorOptions) -> Generator:
    """A fresh generator with the official initialisation, through the registry's pix2pix families."""
    family = "pix2pix_unet" if options.netG.startswith("unet") else "pix2pix_resnet"
    if options.netG not in NETGS:
        raise ImgforgeError(f"unknown --netG {options.netG!r}: use one of {', '.join(NETGS)}")
    return registry.build(family, asdict(options))


def new_discriminator(options: DiscriminatorOptions) -> PatchDiscriminator:
    """A fresh PatchGAN with the official initialisation, through the registry."""
    return registry.build("patchgan", asdict(options))


class GANLoss:
    """The official GANLoss: the discriminator's map of logits against a target of 1 (real) or 0 (fake),
    binary cross-entropy with logits (`vanilla`) or mean squared error (`lsgan`), averaged over the map."""

    def __init__(self, mode: str):
        if mode not in GAN_MODES:
            raise ImgforgeError(f"unknown --gan-mode {mode!r}: use one of {', '.join(GAN_MODES)}")
        self.mode = mode

    def __call__(self, prediction: torch.Tensor, real: bool) -> torch.Tensor:
        prediction = prediction.float()
        target = torch.full_like(prediction, 1.0 if real else 0.0)
        if self.mode == "vanilla":
            return F.binary_cross_entropy_with_logits(prediction, target)
        return F.mse_loss(prediction, target)


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for parameter in net.parameters():
            parameter.requires_grad_(flag)


def dropout_masks(generator: Generator, images: torch.Tensor) -> list[torch.Tensor]:
    """Fresh masks of the official nn.Dropout(0.5) for every dropout layer of `generator` (none without
    dropout): each element kept with probability 1 - p and scaled by 1 / (1 - p), drawn from torch's RNG."""
    n, _, height, width = images.shape
    keep = 1.0 - DROPOUT_P
    return [torch.bernoulli(torch.full((n, *layer.mask_shape(height, width)), keep, device=images.device)) / keep
            for layer in generator.dropout_layers()]


class ImagePool:
    """The official ImagePool: a buffer of up to `size` generated images that the discriminators see instead of
    the newest ones half of the time, once it is full. Draws from its own generator (saved for resume)."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        chosen = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image)
                chosen.append(image)
            elif torch.rand((), generator=self.generator).item() > 0.5:
                index = int(torch.randint(0, self.size, (), generator=self.generator))
                chosen.append(self.images[index].clone())
                self.images[index] = image
            else:
                chosen.append(image)
        return torch.cat(chosen, 0)

    def state_dict(self) -> dict:
        stored = torch.cat(self.images) if self.images else torch.empty(0)
        return {"images": stored.cpu(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.images = [image.unsqueeze(0).to(device) for image in state["images"]]
        self.generator.set_state(state["generator"])


@dataclass(frozen=True)
class Schedule:
    """The official `lr_policy linear`: `epochs` epochs at the initial rate, then `epochs_decay` epochs
    decaying linearly towards 0 (the rate of epoch e is lr * (1 - max(0, e - epochs) / (epochs_decay + 1)),
    epochs counted from 1), the scheduler stepped once at the end of every epoch."""

    epochs: int
    epochs_decay: int

    def factor(self, completed_epochs: int) -> float:
        return 1.0 - max(0, completed_epochs + 1 - self.epochs) / float(self.epochs_decay + 1)

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor)


def adam(parameters, lr: float, beta1: float) -> torch.optim.Adam:
    """The official optimizer: Adam(lr, betas=(beta1, 0.999)), eps 1e-8."""
    return torch.optim.Adam(parameters, lr=lr, betas=(beta1, 0.999))


class GANMethod(Method):
    """The Method members pix2pix and CycleGAN share: an Adam optimizer for the generators and one for the
    discriminators, each on the linear schedule stepped at every epoch's end, a `train_step(A, B)` per batch,
    and the official checkpoint layout with {epoch}_net_*.pth snapshots every `save_epoch_every` epochs."""

    options: GANOptions

    def start_optimizers(self, generator_parameters, discriminator_parameters) -> None:
        options = self.options
        self.optimizer_G = adam(generator_parameters, options.lr, options.beta1)
        self.optimizer_D = adam(discriminator_parameters, options.lr, options.beta1)
        schedule = Schedule(options.epochs, options.epochs_decay)
        self.scheduler_G, self.scheduler_D = schedule.scheduler(self.optimizer_G), schedule.scheduler(self.optimizer_D)

    def optimizers(self):
        return {"G": self.optimizer_G, "D": self.optimizer_D}

    def schedulers(self):
        return {"G": self.scheduler_G, "D": self.scheduler_D}

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.train_step(batch["A"], batch["B"])

    def end_epoch(self, epoch: int) -> dict:
        self.scheduler_G.step()
        self.scheduler_D.step()
        return {"lr": self.optimizer_G.param_groups[0]["lr"]}

    def write_outputs(self, run_dir: Path, *, epoch: int | None, step: int, final: bool) -> None:
        snapshot = epoch is not None and (final or epoch % self.options.save_epoch_every == 0)
        write_networks(run_dir, self.modules(), epoch if snapshot else None)
