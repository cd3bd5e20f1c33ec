"""Training speed, imgforge's trainer step against a plain eager formulation of the same step, per method:

- pix2pix: one pix2pix step (unet_256 generator with dropout, 70x70 PatchGAN, both batch norm, 256²
images) through imgforge's trainer step against a plain eager formulation of the same step (the fixtures'
description written inline: G forward, D on fake and real, D step, G step against the updated D), timed
alternately in one run (shared, noisy machines: compare the ratios, not the absolute figures).

- ddpm: one DDPM step of the CIFAR-10 U-Net (google/ddpm-cifar10-32's configuration, 35.7 M parameters,
  32²): imgforge.train.ddpm's step (q_sample, L_simple, global-norm clip, warm-up Adam, EMA) against the same
  update written the obvious way (F.mse_loss, clip_grad_norm_, torch.optim.Adam, a Python loop for the EMA),
  with the fraction of the matmul peak (of the same precision, measured in the same run) each reaches; the
  step's FLOPs (forward and backward) are counted by torch's FlopCounterMode.

    python benchmarks/bench_train.py [--method pix2pix ddpm] [--device cpu|cuda] [--batch N ...]
                                     [--precision fp32 bf16] [--iterations 3]

(--batch defaults: pix2pix 1 8, ddpm 16 128.)

Prints iterations/s of both and their ratio, per batch size and precision. bf16 is autocast (weights and
optimizer state in float32); on a CPU without native bf16 it is slower than fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from imgforge.nets import registry
from imgforge.nets.patchgan import DiscriminatorOptions
from imgforge.nets.pix2pix import GeneratorOptions
from imgforge.train.ddpm import CIFAR10_UNET, DiffusionStep, Recipe
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


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_BATCHES = {"pix2pix": [1, 8], "ddpm": [16, 128]}


def alternate(runs: dict, device: torch.device, iterations: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each run, after one warm-up call each (allocator, autocast caches, cuDNN choices),
    timed in alternating rounds so that load on a shared machine hits every run alike."""
    seconds = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(iterations):
                run()
            synchronize(device)
            seconds[name].append((time.perf_counter() - start) / iterations)
    return seconds


def bench_pix2pix(device: torch.device, batches: list[int], precisions: list[str], iterations: int,
                  rounds: int) -> None:
    print(f"pix2pix unet_256 + PatchGAN, {SIZE}x{SIZE}")
    print(f"{'batch':>5} {'precision':>9} {'imgforge it/s':>14} {'plain it/s':>11} {'ratio':>6}")
    for batch in batches:
        for precision in precisions:
            dtype = DTYPES[precision]
            generator = torch.Generator().manual_seed(1)
            real_A = (torch.rand(batch, 3, SIZE, SIZE, generator=generator) * 2 - 1).to(device)
            real_B = (torch.rand(batch, 3, SIZE, SIZE, generator=generator) * 2 - 1).to(device)
            steps = {"imgforge": imgforge_step(device, dtype, batch), "plain": plain_step(device, dtype, batch)}
            seconds = alternate({name: (lambda run=run: run(real_A, real_B)) for name, run in steps.items()},
                                device, iterations, rounds)
            rate = {name: 1 / statistics.median(values) for name, values in seconds.items()}
            print(f"{batch:>5} {precision:>9} {rate['imgforge']:>14.3f} {rate['plain']:>11.3f} "
                  f"{rate['imgforge'] / rate['plain']:>6.2f}", flush=True)


# --- DDPM: the CIFAR-10 U-Net (35.7 M parameters), 32x32 -------------------------------------------------------

def ddpm_unet(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return registry.build("ddpm_unet", CIFAR10_UNET).to(device).train()


def ddpm_imgforge_step(device: torch.device, dtype: torch.dtype, batch: int):
    """imgforge.train.ddpm's step (q_sample, L_simple, global-norm clip, warm-up Adam, EMA) under the
    trainer's Context, as `imgforge train ddpm` runs it."""
    context = Context(device, dtype, Processes(), TrainSettings(run_dir="", batch_size=batch))
    unet = ddpm_unet(device)
    step = DiffusionStep(unet, Recipe(), autocast=context.autocast, scaler=context.scaler)
    count = iter(range(10**9))

    def run(x0, t, noise):
        step(x0, t, noise, next(count))
        context.scaler.update()

    return run, unet


def ddpm_plain_step(device: torch.device, dtype: torch.dtype, batch: int):
    """The same update written the obvious way: F.mse_loss, clip_grad_norm_, torch.optim.Adam with the warm-up,
    a Python loop over the parameters for the EMA."""
    unet = ddpm_unet(device)
    optimizer = torch.optim.Adam(unet.parameters(), lr=2e-4)
    ema = [p.detach().clone() for p in unet.parameters()]
    acp = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    sqrt_acp, sqrt_1m_acp = acp.sqrt().float().to(device), (1 - acp).sqrt().float().to(device)
    count = iter(range(10**9))

    def run(x0, t, noise):
        step = next(count)
        x_t = sqrt_acp[t].view(-1, 1, 1, 1) * x0 + sqrt_1m_acp[t].view(-1, 1, 1, 1) * noise
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            eps = unet(x_t, t)
        loss = F.mse_loss(eps.float(), noise)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = 2e-4 * min(step / 5000, 1.0)
        optimizer.step()
        with torch.no_grad():
            for shadow, p in zip(ema, unet.parameters()):
                shadow.mul_(0.9999).add_(p, alpha=1 - 0.9999)

    return run, unet


def ddpm_step_flops(unet: torch.nn.Module, batch: int, device: torch.device) -> int:
    """FLOPs of one training step: forward and backward of the U-Net counted by FlopCounterMode."""
    x, t = torch.randn(batch, 3, 32, 32, device=device), torch.randint(0, 1000, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        unet(x, t).square().mean().backward()
    unet.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """GFLOP/s of a 4096² matmul in `dtype`: the best of a few seconds."""
    a, b = (torch.randn(4096, 4096, device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = max(best, 2 * 4096**3 / (time.perf_counter() - start) / 1e9)
    return best


def bench_ddpm(device: torch.device, batches: list[int], precisions: list[str], iterations: int,
               rounds: int) -> list[dict]:
    """Steps/s of imgforge's DDPM step and the plain loop, per batch and precision, and the fraction of the
    matmul peak (of that precision) each reaches."""
    records = []
    for batch in batches:
        for precision in precisions:
            dtype = DTYPES[precision]
            generator = torch.Generator().manual_seed(0)
            x0 = (torch.rand(batch, 3, 32, 32, generator=generator) * 2 - 1).to(device)
            noise = torch.randn(batch, 3, 32, 32, generator=generator).to(device)
            t = torch.randint(0, 1000, (batch,), generator=generator).to(device)
            steps = {"imgforge": ddpm_imgforge_step(device, dtype, batch), "plain": ddpm_plain_step(device, dtype, batch)}
            flops = ddpm_step_flops(steps["plain"][1], batch, device)
            seconds = alternate({name: (lambda run=run: run(x0, t, noise)) for name, (run, _) in steps.items()},
                                device, iterations, rounds)
            peak = matmul_peak(device, dtype)
            rate = {name: 1 / statistics.median(values) for name, values in seconds.items()}
            records.append({"batch": batch, "precision": precision, "imgforge_steps_per_s": rate["imgforge"],
                            "plain_steps_per_s": rate["plain"], "ratio": rate["imgforge"] / rate["plain"],
                            "step_gflop": flops / 1e9, "matmul_peak_gflops": peak,
                            "imgforge_peak_fraction": rate["imgforge"] * flops / 1e9 / peak,
                            "plain_peak_fraction": rate["plain"] * flops / 1e9 / peak})
            r = records[-1]
            print(f"{batch:>5} {precision:>9} {r['imgforge_steps_per_s']:>14.3f} {r['plain_steps_per_s']:>11.3f} "
                  f"{r['ratio']:>6.2f} {r['imgforge_peak_fraction']:>8.1%} {r['plain_peak_fraction']:>8.1%} "
                  f"{r['step_gflop']:>9.0f} {peak:>9.0f}", flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", nargs="+", choices=sorted(DEFAULT_BATCHES), default=["pix2pix", "ddpm"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="+", help="default: pix2pix 1 8, ddpm 16 128")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--iterations", type=int, default=3, help="timed steps per formulation and round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads")
    for method in args.method:
        batches = args.batch or DEFAULT_BATCHES[method]
        if method == "pix2pix":
            bench_pix2pix(device, batches, args.precision, args.iterations, args.rounds)
        else:
            print("DDPM, the CIFAR-10 U-Net, 32x32")
            print(f"{'batch':>5} {'precision':>9} {'imgforge it/s':>14} {'plain it/s':>11} {'ratio':>6} "
                  f"{'imgforge':>8} {'plain':>8} {'GFLOP/it':>9} {'peak':>9}  (fractions of the matmul peak, GFLOP/s)")
            bench_ddpm(device, batches, args.precision, args.iterations, args.rounds)


if __name__ == "__main__":
    main()
