"""Training speed: one pix2pix step (unet_256 generator with dropout, 70x70 PatchGAN, both batch norm, 256²
images) through imgforge's trainer step against a plain eager formulation of the same step (the fixtures'
description written inline: G forward, D on fake and real, D step, G step against the updated D), timed
alternately in one run (shared, noisy machines: compare the ratios, not the absolute figures).

    python benchmarks/bench_train.py [--device cpu|cuda] [--batch 1 8] [--precision fp32 bf16] [--iterations 3]

Prints iterations/s of both and their ratio, per batch size and precision. bf16 is autocast (weights and
optimizer state in float32); on a CPU without native bf16 it is slower than fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from imgforge.nets.patchgan import DiscriminatorOptions
from imgforge.nets.pix2pix import GeneratorOptions
from imgforge.train.distributed import Processes
from imgforge.train.gan import adam, dropout_masks, new_discriminator, new_generator
from imgforge.train.pix2pix import Pix2PixStep
from imgforge.train.trainer import Context, TrainSettings

SIZE = 256


def networks(device: torch.device):
    torch.manual_seed(0)
    G = new_generator(GeneratorOptions("unet_256", "batch", 64, dropout=True)).to(device).train()
    D = new_discriminator(DiscriminatorOptions(6, 64, 3, "batch")).to(device).train()
    return G, D, adam(G.parameters(), 2e-4, 0.5), adam(D.parameters(), 2e-4, 0.5)


def imgforge_step(device: torch.device, dtype: torch.dtype, batch: int):
    G, D, optimizer_G, optimizer_D = networks(device)
    context = Context(device, dtype, Processes(), TrainSettings(run_dir="", batch_size=batch))
    step = Pix2PixStep(G, D, D, optimizer_G, optimizer_D, gan_mode="vanilla", lambda_l1=100.0, context=context,
                       generator=G)

    def run(real_A, real_B):
        losses = step(real_A, real_B)
        context.scaler.update()
        return losses

    return run


def plain_step(device: torch.device, dtype: torch.dtype, batch: int):
    G, D, optimizer_G, optimizer_D = networks(device)
    bce = torch.nn.BCEWithLogitsLoss()

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def run(real_A, real_B):
        with autocast():
            fake_B = G(real_A, *dropout_masks(G, real_A))
        for p in D.parameters():
            p.requires_grad_(True)
        optimizer_D.zero_grad()
        with autocast():
            pred_fake = D(torch.cat((real_A, fake_B.detach()), 1)).float()
            pred_real = D(torch.cat((real_A, real_B), 1)).float()
            loss_D = (bce(pred_fake, torch.zeros_like(pred_fake)) + bce(pred_real, torch.ones_like(pred_real))) * 0.5
        loss_D.backward()
        optimizer_D.step()
        for p in D.parameters():
            p.requires_grad_(False)
        optimizer_G.zero_grad()
        with autocast():
            pred_fake = D(torch.cat((real_A, fake_B), 1)).float()
            loss_G = bce(pred_fake, torch.ones_like(pred_fake)) + F.l1_loss(fake_B.float(), real_B) * 100.0
        loss_G.backward()
        optimizer_G.step()
        return {"G": loss_G.detach()}

    return run


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--iterations", type=int, default=3, help="timed steps per formulation and round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads; pix2pix unet_256 + PatchGAN, {SIZE}x{SIZE}")
    print(f"{'batch':>5} {'precision':>9} {'imgforge it/s':>14} {'plain it/s':>11} {'ratio':>6}")
    for batch in args.batch:
        for precision in args.precision:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
            generator = torch.Generator().manual_seed(1)
            real_A = (torch.rand(batch, 3, SIZE, SIZE, generator=generator) * 2 - 1).to(device)
            real_B = (torch.rand(batch, 3, SIZE, SIZE, generator=generator) * 2 - 1).to(device)
            steps = {"imgforge": imgforge_step(device, dtype, batch), "plain": plain_step(device, dtype, batch)}
            seconds = {name: [] for name in steps}
            for run in steps.values():  # warm-up: allocator, autocast caches, cuDNN choices
                run(real_A, real_B)
            for _ in range(args.rounds):  # alternate, so that load on a shared machine hits both alike
                for name, run in steps.items():
                    synchronize(device)
                    start = time.perf_counter()
                    for _ in range(args.iterations):
                        run(real_A, real_B)
                    synchronize(device)
                    seconds[name].append((time.perf_counter() - start) / args.iterations)
            rate = {name: 1 / statistics.median(values) for name, values in seconds.items()}
            print(f"{batch:>5} {precision:>9} {rate['imgforge']:>14.3f} {rate['plain']:>11.3f} "
                  f"{rate['imgforge'] / rate['plain']:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
