"""pix2pix training (Isola et al. 2017), step for step the official Pix2PixModel.optimize_parameters:

    fake_B = G(A)                                            (train mode; dropout 0.5 as the noise z)
    D step:  loss_D = ( GAN(D(A, fake_B.detach()), fake) + GAN(D(A, B), real) ) / 2
    G step:  loss_G = GAN(D(A, fake_B), real) + lambda_L1 * |fake_B - B|_1      (against the updated D)

D is a conditional PatchGAN: it sees the input and an output side by side (6 channels). Runs through the
shared trainer (imgforge/train/trainer.py); the run folder is the official checkpoint layout
(`latest_net_G.pth`, `latest_net_D.pth`, `{epoch}_net_G.pth`, ...) that `imgforge translate --checkpoint` and
the official test.py load.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..nets.patchgan import DiscriminatorOptions
from ..nets.pix2pix import Generator, GeneratorOptions, load_generator_weights
from ..pipelines.translate import tensor_to_uint8
from . import data
from .gan import GANLoss, GANMethod, GANOptions, dropout_masks, new_discriminator, new_generator, set_requires_grad
from .outputs import load_start_weights
from .state import cpu_state
from .trainer import Context, Length

PREVIEW_IMAGES = 4  # fixed training pairs shown in each epoch's sample grid


@dataclass(frozen=True)
class Pix2PixOptions(GANOptions):
    """The official pix2pix options (train.py with --model pix2pix), under imgforge's names."""

    netG: str = "unet_256"
    norm: str = "batch"
    dropout: bool = True
    gan_mode: str = "vanilla"
    lambda_l1: float = 100.0


class Pix2PixStep:
    """One official optimisation step of a generator G and a conditional discriminator D (either may be
    wrapped for DistributedDataParallel; `D_plain` is D itself, used for G's loss while D is frozen)."""

    def __init__(self, G, D, D_plain, optimizer_G, optimizer_D, *, gan_mode: str, lambda_l1: float,
                 context: Context | None = None, generator: Generator | None = None):
        self.G, self.D, self.D_plain = G, D, D_plain
        self.optimizer_G, self.optimizer_D = optimizer_G, optimizer_D
        self.gan = GANLoss(gan_mode)
        self.lambda_l1 = lambda_l1
        self.context = context
        self.generator = generator  # the plain generator, whose dropout layers get masks

    def __call__(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
        autocast, backward, step = step_helpers(self.context)
        masks = dropout_masks(self.generator, real_A) if self.generator is not None else []
        with autocast():
            fake_B = self.G(real_A, *masks)

        set_requires_grad([self.D_plain], True)
        self.optimizer_D.zero_grad()
        with autocast():
            loss_D_fake = self.gan(self.D(torch.cat((real_A, fake_B.detach()), 1)), False)
            loss_D_real = self.gan(self.D(torch.cat((real_A, real_B), 1)), True)
            loss_D = (loss_D_fake + loss_D_real) * 0.5
        backward(loss_D)
        step(self.optimizer_D)

        set_requires_grad([self.D_plain], False)
        self.optimizer_G.zero_grad()
        with autocast():
            loss_G_GAN = self.gan(self.D_plain(torch.cat((real_A, fake_B), 1)), True)
            loss_G_L1 = F.l1_loss(fake_B.float(), real_B) * self.lambda_l1
            loss_G = loss_G_GAN + loss_G_L1
        backward(loss_G)
        step(self.optimizer_G)
        self.fake_B = fake_B.detach()
        return {"G_GAN": loss_G_GAN.detach(), "G_L1": loss_G_L1.detach(), "D_real": loss_D_real.detach(),
                "D_fake": loss_D_fake.detach()}


def step_helpers(context: Context | None):
    """(autocast, backward, optimizer step): the run's (precision, fp16 scaling), or plain ones."""
    if context is None:
        return contextlib.nullcontext, lambda loss: loss.backward(), lambda optimizer: optimizer.step()
    return context.autocast, context.backward, context.step


class Pix2PixMethod(GANMethod):
    name = "pix2pix"

    def __init__(self, options: Pix2PixOptions, context: Context):
        self.options, self.context = options, context
        self.dataset = data.paired_dataset(options.dataroot, data.Preprocess.of(options), options.direction,
                                           context.seed)
        self.length = Length(epochs=options.epochs + options.epochs_decay)
        self.G = new_generator(GeneratorOptions(options.netG, options.norm, options.ngf, options.dropout))
        self.D = new_discriminator(DiscriminatorOptions(6, options.ndf, options.n_layers_d, options.norm))
        if options.start_from:
            load_start_weights(options.start_from, {"G": self.G, "D": self.D})
        G, D = context.prepare(self.G), context.prepare(self.D)
        self.start_optimizers(self.G.parameters(), self.D.parameters())
        self.val_pairs = None  # (inputs, targets) of --val, read at the first evaluation
        self.train_step = Pix2PixStep(G, D, self.D, self.optimizer_G, self.optimizer_D, gan_mode=options.gan_mode,
                                      lambda_l1=options.lambda_l1, context=context, generator=self.G)

    def modules(self):
        return {"G": self.G, "D": self.D}

    def preview(self) -> list[list[np.ndarray]]:
        rows = []
        for index in range(min(PREVIEW_IMAGES, len(self.dataset))):
            item = self.dataset.preview_item(index)
            fake = translate_for_preview(self.G, item["A"].unsqueeze(0).to(self.context.device))
            rows.append([tensor_to_uint8(t)[0] for t in (item["A"].unsqueeze(0), fake, item["B"].unsqueeze(0))])
        return rows

    def evaluate(self, *, epoch: int | None, step: int) -> dict[str, float]:
        """--val: PSNR, SSIM and L1 of the validation inputs translated as `imgforge translate` does."""
        if not self.options.val:
            return {}
        from ..eval.validation import paired_metrics

        if self.val_pairs is None:
            dataset = data.paired_dataset(data.validation_root(self.options.val, "val"),
                                          data.Preprocess.test_time(self.options), self.options.direction)
            items = [dataset.preview_item(index) for index in range(len(dataset))]
            self.val_pairs = (torch.stack([i["A"] for i in items]), tensor_to_uint8(torch.stack([i["B"] for i in items])))
        outputs = translate_in_chunks(self.G, self.val_pairs[0], self.context.device)
        return paired_metrics(list(tensor_to_uint8(outputs)), list(self.val_pairs[1]))


@torch.no_grad()
def translate_in_chunks(generator: Generator, images: torch.Tensor, device, chunk: int = 16) -> torch.Tensor:
    """translate_for_preview over a stack of images, `chunk` at a time."""
    return torch.cat([translate_for_preview(generator, images[start:start + chunk].to(device))
                      for start in range(0, len(images), chunk)])


@torch.no_grad()
def translate_for_preview(generator: Generator, images: torch.Tensor) -> torch.Tensor:
    """G(images) as `imgforge translate` computes it by default (each image's own BatchNorm statistics, no
    dropout), by a plain copy of the generator: the training one keeps its running statistics, and its
    synchronised BatchNorm (several processes) is not called by one process alone."""
    copy = load_generator_weights(cpu_state(generator.state_dict()), dropout=generator.options.dropout)
    copy.use_image_statistics(True)
    return copy.to(images.device)(images).cpu()
