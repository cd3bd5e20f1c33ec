"""One prepared GPU run: the GPU-only tests, then sample, translate and restore figures, as one table.

    PYTHONPATH=$PWD python3 benchmarks/gpu_report.py            # from the repository root, ~3-6 minutes
    PYTHONPATH=$PWD python3 benchmarks/gpu_report.py --smoke    # the same code on the CPU at toy sizes

Needs torch, numpy, pillow, opencv, safetensors, typer, rich, huggingface_hub, pytest and scikit-image (for
the tests' photo); no network, no weights: every network has random full-size weights. Each section runs on
its own and prints its error instead of stopping the others.

- tests: tests/test_gpu.py (CUDA graphs, fp16/bf16 for sample, translate and restore)
- sample: 16 images x 1000 ancestral DDPM steps of the cifar10-size U-Net (35.7 M parameters), eager fp32,
  eager bf16, CUDA graphs fp32/bf16/fp16; seconds and the ratio to ~0.2 s, the bf16 arithmetic floor on an H200
- translate: pix2pix unet_256 (official test mode: per-image statistics and dropout), batches of 16 images of
  256², images/s in fp32, bf16, fp16
- train: one pix2pix training step (unet_256 with dropout + 70x70 PatchGAN, 256²), iterations/s at batch 1
  and 8 in fp32, bf16 and fp16 autocast, imgforge's step and the plain eager step (benchmarks/bench_train.py)
- train ddpm: one DDPM training step of the cifar10-size U-Net (batch 16 and 128), it/s in fp32, bf16 and
  fp16 autocast, imgforge's step against the plain eager step, with the fraction of the matmul peak
  (benchmarks/bench_train.py --method ddpm)
- restore: the scratch chain (VAE encode, mapping with the partial non-local attention over 750,000 latent
  positions, VAE decode) on a 4000x3000 photo: seconds and peak GPU memory in fp32, bf16, fp16
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CIFAR10_32 = {  # google/ddpm-cifar10-32 config.json (shared/notes/ddpm.md)
    "act_fn": "silu", "attention_head_dim": None, "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
SAMPLE_FLOOR_SECONDS = 0.2
# what each section runs: the real sizes on the GPU, toy ones for --smoke on the CPU
FULL = {"device": "cuda", "images": 16, "steps": 1000, "translate_batches": 4, "photo": (3000, 4000),
        "train_batches": (1, 8), "train_iterations": 20, "ddpm_batches": (16, 128), "ddpm_iterations": 20}
SMOKE = {"device": "cpu", "images": 2, "steps": 3, "translate_batches": 1, "photo": (48, 64),
         "train_batches": (1,), "train_iterations": 1, "ddpm_batches": (2,), "ddpm_iterations": 1}
setup = dict(FULL)
rows: list[tuple[str, str, str]] = []  # (what, precision, result): the table printed at the end
sections = []


def section(function):
    sections.append(function)
    return function


def synchronize() -> None:
    if setup["device"] == "cuda":
        torch.cuda.synchronize()


def timed(function) -> float:
    synchronize()
    start = time.perf_counter()
    function()
    synchronize()
    return time.perf_counter() - start


@section
def gpu_tests():
    if setup["device"] != "cuda":
        return
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(done.stdout[-3000:], done.stderr[-2000:])
    rows.append(("tests/test_gpu.py", "", done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "?"))


@section
def sample_figures():
    from imgforge.nets.ddpm_unet import DDPMUNet
    from imgforge.pipelines.sample import DiffusionModel, generate
    from imgforge.pipelines.samplers import NoiseSchedule

    torch.manual_seed(0)
    betas = torch.linspace(1e-4, 0.02, 1000)
    model = DiffusionModel("cifar10-size", DDPMUNet(CIFAR10_32).eval(), NoiseSchedule((1 - betas).cumprod(0)))
    images, steps, device = setup["images"], setup["steps"], setup["device"]
    for label, precision, graphs in (("eager", "fp32", False), ("eager", "bf16", False), ("CUDA graphs", "fp32", True),
                                     ("CUDA graphs", "bf16", True), ("CUDA graphs", "fp16", True)):
        if precision == "fp16" and device == "cpu":
            continue

        def run(count: int) -> None:
            list(generate(model, range(images), steps=count, device=device, precision=precision, cuda_graphs=graphs))

        run(3)  # warm-up (and the graph capture)
        seconds = timed(lambda: run(steps))
        rows.append((f"sample {images} x {steps} steps, {label}", precision,
                     f"{seconds:.2f} s = x{seconds / SAMPLE_FLOOR_SECONDS:.1f} the ~0.2 s bf16 floor"))
        print(rows[-1], flush=True)


@section
def translate_figures():
    from imgforge.nets.pix2pix import GeneratorOptions, build_generator
    from imgforge.pipelines.translate import Translator

    torch.manual_seed(0)
    images = [torch.rand(1, 3, 256, 256) * 2 - 1 for _ in range(16)]
    batches = setup["translate_batches"]
    for precision in ("fp32", "bf16", "fp16"):
        if precision == "fp16" and setup["device"] == "cpu":
            continue
        translator = Translator(build_generator(GeneratorOptions(netG="unet_256", norm="batch", ngf=64)).eval(),
                                mode="official", device=setup["device"], precision=precision, seed=0)
        translator.run(images)
        seconds = min(timed(lambda: [translator.run(images) for _ in range(batches)]) for _ in range(2))
        rows.append(("translate unet_256, batches of 16 at 256²", precision,
                     f"{16 * batches / seconds:.1f} images/s"))
        print(rows[-1], flush=True)


@section
def train_figures():
    from bench_train import SIZE, imgforge_step, plain_step

    device = torch.device(setup["device"])
    for batch in setup["train_batches"]:
        real = torch.rand(2, batch, 3, SIZE, SIZE, device=device) * 2 - 1
        for precision in ("fp32", "bf16", "fp16"):
            if precision == "fp16" and device.type == "cpu":
                continue
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
            rates = []
            for make in (imgforge_step, plain_step):
                step = make(device, dtype, batch)
                step(real[0], real[1])
                seconds = timed(lambda: [step(real[0], real[1]) for _ in range(setup["train_iterations"])])
                rates.append(setup["train_iterations"] / seconds)
            rows.append((f"train pix2pix unet_256 256², batch {batch}", precision,
                         f"{rates[0]:.2f} it/s ({rates[0] / rates[1]:.2f}x the plain step)"))
            print(rows[-1], flush=True)


@section
def train_ddpm_figures():
    from bench_train import bench_ddpm

    device = torch.device(setup["device"])
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    for record in bench_ddpm(device, list(setup["ddpm_batches"]), precisions, setup["ddpm_iterations"], 2):
        rows.append((f"train ddpm cifar10 U-Net 32², batch {record['batch']}", record["precision"],
                     f"{record['imgforge_steps_per_s']:.2f} it/s ({record['ratio']:.2f}x the plain step, "
                     f"{record['imgforge_peak_fraction']:.0%} of the matmul peak)"))


@section
def restore_figures():
    from bench_restore import make_inputs
    from imgforge.device import DTYPES, on_device
    from imgforge.nets.mapping import build_mapping
    from imgforge.nets.vae import build_vae

    height, width = setup["photo"]
    image, mask = make_inputs(height, width)
    device = torch.device(setup["device"])
    for precision in ("bf16", "fp16", "fp32"):
        if precision == "fp16" and device.type == "cpu":
            continue
        torch.manual_seed(1)
        nets = [on_device(net, device, DTYPES[precision], torch.channels_last)
                for net in (build_vae(), build_mapping("scratch"), build_vae())]
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            x, m = image.to(device, DTYPES[precision]), mask.to(device)
            out = []
            seconds = timed(lambda: out.append(nets[2].decode(nets[1](nets[0].encode(x), m)).float()))
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        finite = bool(torch.isfinite(out[0]).all())
        rows.append((f"restore scratch chain {width}x{height}", precision,
                     f"{seconds:.1f} s, peak {peak:.1f} GiB{'' if finite else ', NOT FINITE'}"))
        print(rows[-1], flush=True)
        del nets, out, x
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="run every section on the CPU at toy sizes")
    if parser.parse_args().smoke:
        setup.update(SMOKE)
    elif not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible to torch (--smoke runs the sections on the CPU)")
    print(f"torch {torch.__version__}, "
          f"{torch.cuda.get_device_name() if setup['device'] == 'cuda' else 'CPU (smoke run)'}", flush=True)
    for function in sections:
        print(f"== {function.__name__}", flush=True)
        start = time.perf_counter()
        try:
            function()
        except Exception:  # a section that fails is reported; the others still run
            traceback.print_exc()
            rows.append((function.__name__, "", "failed: " + traceback.format_exc().strip().splitlines()[-1][:100]))
        print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    width = max(len(row[0]) for row in rows)
    print("\n" + "\n".join(f"{what:{width}}  {precision:5}  {result}" for what, precision, result in rows))


if __name__ == "__main__":
    main()
