"""Time, peak memory and arithmetic rate of the restoration chains (VAE encode -> mapping -> VAE decode) at full
official size with random weights: imgforge's networks in each precision against the straightforward
formulation of the official code (the whole positions x positions affinity matrix, plain Sequential forwards,
float32), and the same networks as ONNX Runtime graphs (what `--backend onnx` runs, fp32; --no-onnx skips
them), each measurement in its own process.

    python benchmarks/bench_restore.py --sizes 512 --reference-sizes 512 --precisions fp32 bf16 --repeat 2
    python benchmarks/bench_restore.py --sizes 2048 --reference-sizes --precisions bf16
    python benchmarks/bench_restore.py --pipeline --sizes 512 --precisions fp32 bf16   # restore end to end

Sizes are N (N x N) or WxH. GFLOP/s is the chain's nominal work (counted on the official formulation:
convolutions and the attention's two matrix products) over its time; each measuring process also times a
4096² matrix product in its own precision right after the chain, and the rate is given as a share of that
measured peak. --pipeline times the whole restoration of the sample old photo resized to each size (scratch
detection in float32, global stage, output) through imgforge.pipelines.restore with random full-size weights.
The machine is shared: --repeat alternates the measurements and the best of each is compared. The reference
needs ~5 GB at 512² and ~22 GB at 768² (scratch chain); it runs only at --reference-sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from imgforge.device import DTYPES, on_device
from imgforge.nets.mapping import build_mapping
from imgforge.nets.nonlocal_attention import latent_validity
from imgforge.nets.oldphoto_blocks import ResnetBlock
from imgforge.nets.vae import build_vae

PEAK_SIZE = 4096
SAMPLE_PHOTO = Path(__file__).resolve().parent.parent / "docs" / "examples" / "old_photo.jpg"


def parse_size(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '4000x3000' (width x height) -> (3000, 4000) as (H, W)."""
    width, _, height = text.partition("x")
    return (int(height or width), int(width))


def make_inputs(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random photo in [-1, 1] with thin random strokes as scratches (painted white, as the official code)."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, height, width, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, height, width)
    for _ in range(max(4, (height * width) // 40000)):
        y0, x0 = int(torch.randint(height, (1,), generator=g)), int(torch.randint(width, (1,), generator=g))
        length = int(torch.randint(20, max(21, min(height, width) // 3), (1,), generator=g))
        if torch.rand(1, generator=g) < 0.5:
            mask[..., y0:y0 + 2, x0:x0 + length] = 1
        else:
            mask[..., y0:y0 + length, x0:x0 + 2] = 1
    return torch.where(mask > 0, torch.ones_like(image), image), mask


def reference_sequential(layers, x):
    for layer in layers:
        x = x + reference_sequential(layer.conv_block, x) if isinstance(layer, ResnetBlock) else layer(x)
    return x


def reference_nonlocal(block, x, mask):
    """The official NonLocalBlock2D_with_mask_Res forward, written out (full affinity matrix)."""
    n, c, h, w = x.shape
    g_x = block.g(x).view(n, c, -1).permute(0, 2, 1)
    theta_x = block.theta(x).view(n, c, -1).permute(0, 2, 1)
    phi_x = block.phi(x).view(n, c, -1)
    f_div_c = F.softmax(torch.matmul(theta_x, phi_x), dim=2)
    valid = latent_validity(mask, (h, w))
    f_div_c = valid.view(n, 1, -1).repeat(1, h * w, 1) * f_div_c
    f_div_c = F.normalize(f_div_c, p=1, dim=2)
    y = torch.matmul(f_div_c, g_x).permute(0, 2, 1).contiguous().view(n, c, h, w)
    w_y = reference_sequential(block.res_block, block.W(y))
    full_mask = valid.repeat(1, c, 1, 1)
    return full_mask * x + (1 - full_mask) * w_y


def run_chain(chain: str, impl: str, nets: tuple, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    vae_a, vae_b, mapping = nets
    if impl == "imgforge":
        latent = vae_a.encode(image)
        mapped = mapping(latent) if chain == "quality" else mapping(latent, mask)
        return vae_b.decode(mapped)
    latent = reference_sequential(vae_a.encoder, image)
    if chain == "quality":
        mapped = reference_sequential(mapping.model, latent)
    else:
        features = reference_sequential(mapping.before_NL, latent)
        mapped = reference_sequential(mapping.after_NL, reference_nonlocal(mapping.NL, features, mask))
    return reference_sequential(vae_b.decoder, mapped)


def chain_flops(chain: str, size: str) -> float:
    """Nominal work of one chain run: the official formulation's convolutions and matrix products, counted
    on meta tensors (nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    height, width = parse_size(size)
    with torch.device("meta"):
        nets = (build_vae(), build_vae(), build_mapping(chain))
        image, mask = torch.zeros(1, 3, height, width), torch.zeros(1, 1, height, width)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        run_chain(chain, "reference", nets, image, mask)
    return float(counter.get_total_flops())


def clock(kind: str) -> float:
    """Wall-clock seconds, or this process's CPU seconds per torch thread ("cpu": steadier on a loaded machine,
    where the process waits for a core; exact with --threads 1, where no thread spins waiting for another)."""
    if kind == "wall":
        return time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) / torch.get_num_threads()


def matmul_peak(dtype: torch.dtype, clock_kind: str, repeats: int = 3) -> float:
    """GFLOP/s of the best of a few 4096² matrix products in `dtype` (after one warm-up)."""
    a, b = (torch.randn(PEAK_SIZE, PEAK_SIZE).to(dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = clock(clock_kind)
        a @ b
        best = min(best, clock(clock_kind) - start)
    return 2 * PEAK_SIZE**3 / best / 1e9


def write_checkpoints(folder: Path, chain: str, detector: dict, vae_a: dict, mapping: dict, vae_b: dict) -> None:
    """State dicts in the official layout (folder = Global/, holding checkpoints/), as restore reads them."""
    mapping_folder = {"quality": "mapping_quality", "scratch": "mapping_scratch", "hr": "mapping_Patch_Attention"}
    files = {
        "detection/FT_Epoch_latest.pt": {"model_state": detector},
        "restoration/VAE_A_quality/latest_net_G.pth": vae_a,
        f"restoration/{'VAE_B_quality' if chain == 'quality' else 'VAE_B_scratch'}/latest_net_G.pth": vae_b,
        f"restoration/{mapping_folder[chain]}/latest_net_mapping_net.pth": mapping,
    }
    for relative, state in files.items():
        path = folder / "checkpoints" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)


def random_checkpoints(folder: Path, chain: str = "scratch") -> None:
    """Random full-size weights in the official layout."""
    from imgforge.nets.scratch_unet import build_scratch_detector

    write_checkpoints(folder, chain, build_scratch_detector().state_dict(), build_vae().state_dict(),
                      build_mapping(chain).state_dict(), build_vae().state_dict())


def onnx_chain(chain: str, nets: tuple):
    """The chain as ONNX Runtime graphs (exported into $IMGFORGE_CACHE on first use, as --backend onnx does)."""
    from imgforge.nets import registry
    from imgforge.onnx.cache import cached_runner

    vae_a, vae_b, mapping = nets
    cpu = torch.device("cpu")
    encoder = cached_runner(registry.get_family("oldphoto_vae").describe(vae_a).exports[0], cpu)
    decoder = cached_runner(registry.get_family("oldphoto_vae").describe(vae_b).exports[1], cpu)
    mapper = cached_runner(registry.get_family("oldphoto_mapping").describe(mapping).exports[0], cpu)

    def run(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        latent = encoder(image)
        return decoder(mapper(latent) if chain == "quality" else mapper(latent, mask))

    return run


def measure_pipeline(chain: str, size: str, precision: str, weights: str, clock_kind: str,
                     backend: str = "torch") -> dict:
    """The whole restoration of the sample photo (resized to `size`), networks loaded beforehand."""
    import numpy as np
    from PIL import Image

    from imgforge.imageio import Picture
    from imgforge.pipelines.restore import Restorer, Settings
    from imgforge.plan import RunPlan

    height, width = parse_size(size)
    photo = np.asarray(Image.open(SAMPLE_PHOTO).convert("RGB").resize((width, height), Image.BICUBIC))
    settings = Settings(scratches=chain != "quality", hr=chain == "hr", faces=False)
    plan = RunPlan.resolve(device="cpu", precision=precision, backend=backend, offline=True,
                           weights_dir=Path(weights), quiet=True)
    restorer = Restorer(settings, plan)
    before_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = clock(clock_kind)
    restorer.run(Picture.from_array(photo))
    return {"seconds": clock(clock_kind) - start, "before_gb": before_gb}


def measure_one(chain: str, impl: str, size: str, precision: str, save: str | None, weights: str | None,
                clock_kind: str) -> None:
    """Child process: one chain (or pipeline) run, then the matmul peak; prints JSON."""
    dtype = DTYPES[precision]
    if impl in ("pipeline", "pipeline-onnx"):
        result = measure_pipeline(chain, size, precision, weights, clock_kind,
                                  "onnx" if impl == "pipeline-onnx" else "torch")
    else:
        torch.manual_seed(0)
        image, mask = make_inputs(*parse_size(size))
        torch.manual_seed(1)  # the same random weights on both sides
        nets = (build_vae(), build_vae(), build_mapping(chain))
        if impl == "imgforge":
            nets = tuple(on_device(net, torch.device("cpu"), dtype, torch.channels_last) for net in nets)
        onnx_run = onnx_chain(chain, nets) if impl == "onnx" else None  # sessions (and graphs) before the clock
        before_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # torch, weights and inputs
        with torch.inference_mode():
            start = clock(clock_kind)
            if onnx_run:
                output = onnx_run(image, mask)
            else:
                output = run_chain(chain, impl, nets, image.to(dtype), mask).float()
            result = {"seconds": clock(clock_kind) - start, "before_gb": before_gb}
        if save:
            torch.save(output, save)
    result["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB
    with torch.inference_mode():
        result["matmul_gflops"] = matmul_peak(dtype, clock_kind)
    print(json.dumps(result))


def spawn(chain: str, impl: str, size: str, precision: str, save: Path | None, threads: int | None,
          weights: str | None, clock_kind: str) -> dict:
    cmd = [sys.executable, __file__, "--one", size, "--impl", impl, "--chain", chain, "--precisions", precision,
           "--clock", clock_kind]
    if threads:
        cmd += ["--threads", str(threads)]
    if save:
        cmd += ["--save", str(save)]
    if weights:
        cmd += ["--weights", weights]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["512"])
    parser.add_argument("--reference-sizes", nargs="*", default=["512"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--chain", choices=["scratch", "quality", "hr"], default="scratch")
    parser.add_argument("--pipeline", action="store_true", help="time the whole restoration instead of the chain")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of alternating measurements; best counts")
    parser.add_argument("--threads", type=int, help="torch threads in each measurement (default: torch's)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall-clock seconds, or CPU seconds per thread (steadier on a loaded machine)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime measurement")
    parser.add_argument("--impl", choices=["imgforge", "reference", "pipeline", "onnx", "pipeline-onnx"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        measure_one(args.chain, args.impl, args.one, args.precisions[0], args.save, args.weights, args.clock)
        return
    if (args.chain == "hr" or args.pipeline) and args.reference_sizes:
        parser.error("the hr chain and --pipeline have no reference here; pass --reference-sizes with no value")
    print(f"chain {args.chain}{' (whole pipeline)' if args.pipeline else ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.clock} clock")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("IMGFORGE_CACHE", tmp)  # the ONNX graphs, exported once for every size
        weights = None
        if args.pipeline:
            torch.manual_seed(1)
            random_checkpoints(Path(tmp), args.chain)
            weights = tmp
        for size in args.sizes:
            flops = chain_flops(args.chain, size)
            runs = [("reference", "fp32")] if size in args.reference_sizes else []
            runs += [("pipeline" if args.pipeline else "imgforge", p) for p in args.precisions]
            runs += [] if args.no_onnx else [("pipeline-onnx" if args.pipeline else "onnx", "fp32")]
            best: dict[tuple[str, str], dict] = {}
            for _ in range(args.repeat):
                for impl, precision in runs:
                    save = Path(tmp, f"{impl}-{precision}.pt") if not args.pipeline else None
                    result = spawn(args.chain, impl, size, precision, save, args.threads, weights, args.clock)
                    print(f"{size:>10}  {impl:9} {precision}  {_fmt(result, flops)}", flush=True)
                    if "error" not in result and result["seconds"] < best.get((impl, precision), {}).get(
                            "seconds", float("inf")):
                        best[(impl, precision)] = result
            _summary(size, best, tmp, args.pipeline)


def _fmt(result: dict, flops: float) -> str:
    if "error" in result:
        return f"failed ({result['error']})"
    rate = flops / result["seconds"] / 1e9
    return (f"{result['seconds']:7.1f} s {result['peak_gb']:6.2f} GB peak ({result['before_gb']:.2f} before)  "
            f"{rate:5.0f} GFLOP/s = {rate / result['matmul_gflops']:4.0%} of the matmul peak measured with it "
            f"({result['matmul_gflops']:.0f})")


def _summary(size: str, best: dict, tmp: str, pipeline: bool) -> None:
    """Ratios of the best times (and peak memory) against the reference and against imgforge fp32 (torch)."""
    impl = "pipeline" if pipeline else "imgforge"
    parts = []
    for base_name, base in (("reference", best.get(("reference", "fp32"))), ("fp32", best.get((impl, "fp32")))):
        if base is None:
            continue
        for (name, precision), result in best.items():
            if name == "reference" or (base_name == "fp32" and (name, precision) == (impl, "fp32")):
                continue
            label = precision if name == impl else f"{name} {precision}"
            part = f"{label} x{base['seconds'] / result['seconds']:.2f} faster than {base_name}"
            if base_name == "reference" or name != impl:
                part += f", x{base['peak_gb'] / result['peak_gb']:.2f} less memory"
                base_file = "reference-fp32.pt" if base_name == "reference" else f"{impl}-fp32.pt"
                ours, ref = Path(tmp, f"{name}-{precision}.pt"), Path(tmp, base_file)
                if ours.exists() and ref.exists():
                    part += f", max |diff| {(torch.load(ours) - torch.load(ref)).abs().max().item():.2g}"
            parts.append(part)
    if parts:
        print(f"{size:>10}  best of each: " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()
