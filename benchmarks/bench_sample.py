"""One denoising step (U-Net + DDPM update) of imgforge against diffusers' UNet2DModel + DDPMScheduler, with the
same random weights in the full google/ddpm-cifar10-32 configuration, timed in one run (this machine is shared
and noisy: compare the ratios, not the absolute times).

    python benchmarks/bench_sample.py [--batch 1 16] [--repeats 5] [--no-onnx]

Prints, per batch size: median ms per step for diffusers fp32, imgforge fp32 (torch), imgforge bf16 (torch),
imgforge fp32 via ONNX Runtime; the speed-up against diffusers; the achieved GFLOP/s (FLOPs counted with
torch's FlopCounterMode on one forward) against a measured float32 matmul peak. diffusers is a benchmark-only
dependency (pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from imgforge.nets.ddpm_unet import load_unet
from imgforge.pipelines.sample import make_eps_function
from imgforge.pipelines.samplers import NoiseSchedule, ddpm_step

# google/ddpm-cifar10-32 (shared/notes/ddpm.md)
UNET_CONFIG = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "block_out_channels": [128, 256, 256, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 2,
    "time_embedding_type": "positional", "flip_sin_to_cos": False, "freq_shift": 1, "norm_num_groups": 32,
    "norm_eps": 1e-6, "downsample_padding": 0, "attention_head_dim": None, "act_fn": "silu",
    "center_input_sample": False, "mid_block_scale_factor": 1,
}
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "variance_type": "fixed_large", "clip_sample": True,
}
T = 500  # a middle timestep: the step costs the same at every t


def matmul_peak(seconds: float = 2.0) -> float:
    """float32 GFLOP/s of a large square matmul on all threads torch uses."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * 2048**3 / (time.perf_counter() - start) / 1e9)
    return best


def forward_gflop(unet: torch.nn.Module, batch: int) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(torch.randn(batch, 3, 32, 32), torch.tensor(T))
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice); on a loaded "
                        "machine 1 thread gives steadier ratios")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    reference = UNet2DModel(**UNET_CONFIG).eval()
    scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    scheduler.set_timesteps(1000)
    cpu = torch.device("cpu")
    # exactly what `imgforge sample` runs: the U-Net as its pipeline prepares it
    ours = make_eps_function(load_unet(UNET_CONFIG, reference.state_dict()), cpu)
    ours_bf16 = make_eps_function(load_unet(UNET_CONFIG, reference.state_dict()), cpu, torch.bfloat16)
    ours_onnx = None if args.no_onnx else make_eps_function(load_unet(UNET_CONFIG, reference.state_dict()), cpu,
                                                            backend="onnx")
    schedule = NoiseSchedule.from_config(SCHEDULER_CONFIG)

    peak = matmul_peak()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 matmul peak {peak:.0f} GFLOP/s")
    for batch in args.batch:
        x = torch.randn(batch, 3, 32, 32)
        z = torch.randn_like(x)
        gflop = forward_gflop(load_unet(UNET_CONFIG, reference.state_dict()), batch)
        generator = torch.Generator().manual_seed(0)
        t = torch.tensor(T)

        def diffusers_step():
            with torch.no_grad():
                eps = reference(x, t).sample
                return scheduler.step(eps, T, x, generator=generator).prev_sample

        def imgforge_step(eps_fn):
            def step():
                with torch.inference_mode():
                    return ddpm_step(schedule, eps_fn(x, T), T, T - 1, x, z)

            return step

        rows = {"diffusers fp32": diffusers_step, "imgforge fp32": imgforge_step(ours),
                "imgforge bf16": imgforge_step(ours_bf16)}
        if ours_onnx is not None:
            rows["imgforge fp32 onnx"] = imgforge_step(ours_onnx)
        # interleave the candidates round by round so that load from other processes hits them alike
        samples = {name: [] for name in rows}
        for name, step in rows.items():
            step()  # warm-up: allocations, oneDNN primitive creation
        for _ in range(args.repeats):
            for name, step in rows.items():
                start = time.perf_counter()
                step()
                samples[name].append((time.perf_counter() - start) * 1000)
        base = statistics.median(samples["diffusers fp32"])
        print(f"\nbatch {batch}: one forward = {gflop:.2f} GFLOP")
        for name, values in samples.items():
            ms = statistics.median(values)
            rate = gflop / (ms / 1000)
            print(f"  {name:20s} {ms:8.1f} ms  x{base / ms:4.2f} vs diffusers  {rate:6.0f} GFLOP/s "
                  f"({100 * rate / peak:3.0f}% of fp32 matmul peak)")


if __name__ == "__main__":
    main()
