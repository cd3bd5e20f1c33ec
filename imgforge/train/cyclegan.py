"""CycleGAN training (Zhu et al. 2017), step for step the official CycleGANModel.optimize_parameters:

    fake_B = G_A(A), rec_A = G_B(fake_B), fake_A = G_B(B), rec_B = G_A(fake_A)
    G step (D_A, D_B frozen), one optimizer over G_A and G_B:
        loss_G = GAN(D_A(fake_B), real) + GAN(D_B(fake_A), real)
               + lambda_A |rec_A - A|_1 + lambda_B |rec_B - B|_1                                  (cycle)
               + lambda_idt (lambda_B |G_A(B) - B|_1 + lambda_A |G_B(A) - A|_1)                   (identity)
    D step, one optimizer over D_A and D_B, each on a generated image from its pool of 50:
        loss_D_A = ( GAN(D_A(B), real) + GAN(D_A(pool_B(fake_B)), fake) ) / 2, loss_D_B likewise

G_A maps A to B (the paper's G), G_B maps B to A (F); D_A judges B images, D_B judges A images.
The run folder is the official layout: latest_net_G_A.pth, latest_net_G_B.pth, latest_net_D_A.pth, ...
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..nets.patchgan import DiscriminatorOptions
from ..nets.pix2pix import GeneratorOptions
from ..pipelines.translate import tensor_to_uint8
from . import data
from .gan import (GANLoss, GANMethod, GANOptions, ImagePool, dropout_masks, new_discriminator, new_generator,
                  set_requires_grad)
from .outputs import load_start_weights
from .pix2pix import PREVIEW_IMAGES, step_helpers, translate_for_preview, translate_in_chunks
from .trainer import Context, Length


@dataclass(frozen=True)
class CycleGANOptions(GANOptions):
    """The official CycleGAN options (train.py with --model cycle_gan), under imgforge's names."""

    netG: str = "resnet_9blocks"
    norm: str = "instance"
    dropout: bool = False
    gan_mode: str = "lsgan"
    lambda_a: float = 10.0
    lambda_b: float = 10.0
    lambda_identity: float = 0.5
    pool_size: int = 50


class CycleGANStep:
    """One official optimisation step of the four networks (the G/D arguments may be DDP wrappers; the
    `plain` dict holds the networks themselves: D_A and D_B for the frozen G step, G_A and G_B for dropout)."""

    def __init__(self, nets: dict, plain: dict, optimizer_G, optimizer_D, *, gan_mode: str, lambda_a: float,
                 lambda_b: float, lambda_identity: float, pools: tuple[ImagePool, ImagePool],
                 context: Context | None = None):
        self.nets, self.plain = nets, plain
        self.optimizer_G, self.optimizer_D = optimizer_G, optimizer_D
        self.gan = GANLoss(gan_mode)
        self.lambda_a, self.lambda_b, self.lambda_identity = lambda_a, lambda_b, lambda_identity
        self.pool_A, self.pool_B = pools  # fake A images for D_B, fake B images for D_A
        self.context = context

    def _g(self, name: str, images: torch.Tensor) -> torch.Tensor:
        return self.nets[name](images, *dropout_masks(self.plain[name], images))

    def __call__(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
        autocast, backward, step = step_helpers(self.context)
        D_A, D_B = self.plain["D_A"], self.plain["D_B"]
        with autocast():
            fake_B = self._g("G_A", real_A)
            rec_A = self._g("G_B", fake_B)
            fake_A = self._g("G_B", real_B)
            rec_B = self._g("G_A", fake_A)

        set_requires_grad([D_A, D_B], False)
        self.optimizer_G.zero_grad()
        with autocast():
            losses = {}
            if self.lambda_identity > 0:
                idt_A = self._g("G_A", real_B)
                losses["idt_A"] = F.l1_loss(idt_A.float(), real_B) * self.lambda_b * self.lambda_identity
                idt_B = self._g("G_B", real_A)
                losses["idt_B"] = F.l1_loss(idt_B.float(), real_A) * self.lambda_a * self.lambda_identity
            losses["G_A"] = self.gan(D_A(fake_B), True)
            losses["G_B"] = self.gan(D_B(fake_A), True)
            losses["cycle_A"] = F.l1_loss(rec_A.float(), real_A) * self.lambda_a
            losses["cycle_B"] = F.l1_loss(rec_B.float(), real_B) * self.lambda_b
            loss_G = sum(losses[k] for k in ("G_A", "G_B", "cycle_A", "cycle_B", "idt_A", "idt_B") if k in losses)
        backward(loss_G)
        step(self.optimizer_G)

        set_requires_grad([D_A, D_B], True)
        self.optimizer_D.zero_grad()
        for name, real, fake, pool in (("D_A", real_B, fake_B, self.pool_B), ("D_B", real_A, fake_A, self.pool_A)):
            pooled = pool.query(fake)
            with autocast():
                loss_real = self.gan(self.nets[name](real), True)
                loss_fake = self.gan(self.nets[name](pooled.detach()), False)
                losses[name] = (loss_real + loss_fake) * 0.5
            backward(losses[name])
        step(self.optimizer_D)
        self.fake_B, self.fake_A = fake_B.detach(), fake_A.detach()
        return {k: v.detach() for k, v in losses.items()}


class CycleGANMethod(GANMethod):
    name = "cyclegan"

    def __init__(self, options: CycleGANOptions, context: Context):
        self.options, self.context = options, context
        self.dataset = data.unpaired_dataset(options.dataroot, data.Preprocess.of(options), context.seed)
        self.val_sets = None  # --val: images and reference statistics, read at the first evaluation
        if options.direction == "BtoA":
            self.dataset.files_A, self.dataset.files_B = self.dataset.files_B, self.dataset.files_A
        self.length = Length(epochs=options.epochs + options.epochs_decay)
        generator = GeneratorOptions(options.netG, options.norm, options.ngf, options.dropout)
        discriminator = DiscriminatorOptions(3, options.ndf, options.n_layers_d, options.norm)
        self.nets = {"G_A": new_generator(generator), "G_B": new_generator(generator),
                     "D_A": new_discriminator(discriminator), "D_B": new_discriminator(discriminator)}
        if options.start_from:
            load_start_weights(options.start_from, self.nets)
        wrapped = {name: context.prepare(net) for name, net in self.nets.items()}
        self.start_optimizers(itertools.chain(self.nets["G_A"].parameters(), self.nets["G_B"].parameters()),
                              itertools.chain(self.nets["D_A"].parameters(), self.nets["D_B"].parameters()))
        rank = context.processes.rank
        self.pools = (ImagePool(options.pool_size, context.seed * 1000 + 2 * rank),
                      ImagePool(options.pool_size, context.seed * 1000 + 2 * rank + 1))
        self.train_step = CycleGANStep(wrapped, self.nets, self.optimizer_G, self.optimizer_D,
                                       gan_mode=options.gan_mode, lambda_a=options.lambda_a, lambda_b=options.lambda_b,
                                       lambda_identity=options.lambda_identity, pools=self.pools, context=context)

    def modules(self):
        return dict(self.nets)

    def extra_state(self) -> dict:
        return {"pool_A": self.pools[0].state_dict(), "pool_B": self.pools[1].state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.pools[0].load_state_dict(state["pool_A"], self.context.device)
        self.pools[1].load_state_dict(state["pool_B"], self.context.device)

    def evaluate(self, *, epoch: int | None, step: int) -> dict[str, float]:
        """--val: FID of G_A(val A) against the val B images, and of G_B(val B) against the val A images."""
        if not self.options.val:
            return {}
        from ..eval.validation import SetFID

        if self.val_sets is None:
            images_A, images_B = data.unpaired_validation(self.options.val, data.Preprocess.test_time(self.options))
            fid_to_B = SetFID([tensor_to_uint8(images_B)], device=str(self.context.device))
            fid_to_A = SetFID([tensor_to_uint8(images_A)], extractor=fid_to_B.extractor)
            self.val_sets = (images_A, images_B, fid_to_B, fid_to_A)
        images_A, images_B, fid_to_B, fid_to_A = self.val_sets
        device = self.context.device
        return {"val_fid_A2B": fid_to_B([tensor_to_uint8(translate_in_chunks(self.nets["G_A"], images_A, device))]),
                "val_fid_B2A": fid_to_A([tensor_to_uint8(translate_in_chunks(self.nets["G_B"], images_B, device))])}

    def preview(self) -> list[list[np.ndarray]]:
        """Rows of A | G_A(A) | B | G_B(B) for fixed training images."""
        rows = []
        for index in range(min(PREVIEW_IMAGES, len(self.dataset))):
            item = self.dataset.preview_item(index)
            a, b = item["A"].unsqueeze(0), item["B"].unsqueeze(0)
            fake_B = translate_for_preview(self.nets["G_A"], a.to(self.context.device))
            fake_A = translate_for_preview(self.nets["G_B"], b.to(self.context.device))
            rows.append([tensor_to_uint8(t)[0] for t in (a, fake_B, b, fake_A)])
        return rows
