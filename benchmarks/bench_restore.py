"""Time and peak memory of the restoration chains (VAE encode -> mapping -> VAE decode) at full official size
with random weights: imgforge's networks (torch, and the same networks through ONNX Runtime: the graphs
`--backend onnx` runs) against the straightforward formulation of the official code (the whole positions x
positions affinity matrix, plain Sequential forwards), each measurement in its own process.

    python benchmarks/bench_restore.py --sizes 512 768 1024 --reference-sizes 512 768 [--chain scratch] [--no-onnx]

Sizes are N (N x N) or WxH. On a shared machine, --threads 1 keeps both sides from fighting other jobs
for cores (time ratios stay meaningful; absolute times do not). The reference needs ~5 GB at 512² and ~22 GB at 768² (scratch chain); it runs
only at --reference-sizes. Prints one line per measurement and the imgforge/reference ratios.
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

from imgforge.nets.mapping import build_mapping
from imgforge.nets.nonlocal_attention import latent_validity
from imgforge.nets.vae import ResnetBlock, build_vae


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


def onnx_chain(chain: str, nets: tuple):
    """The chain as ONNX Runtime graphs (exported into $IMGFORGE_CACHE on first use, as --backend onnx does)."""
    from imgforge import runtime
    from imgforge.nets import registry

    vae_a, vae_b, mapping = nets
    cpu = torch.device("cpu")
    encoder = runtime.onnx_runner(registry.get_family("oldphoto_vae").describe(vae_a).exports[0], cpu)
    decoder = runtime.onnx_runner(registry.get_family("oldphoto_vae").describe(vae_b).exports[1], cpu)
    mapper = runtime.onnx_runner(registry.get_family("oldphoto_mapping").describe(mapping).exports[0], cpu)

    def run(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        latent = encoder(image)
        return decoder(mapper(latent) if chain == "quality" else mapper(latent, mask))

    return run


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


def measure_one(chain: str, impl: str, size: str, save: str | None) -> None:
    """Child process: one chain run; prints JSON with seconds and peak RSS."""
    torch.manual_seed(0)
    image, mask = make_inputs(*parse_size(size))
    torch.manual_seed(1)  # the same random weights on both sides
    nets = (build_vae(), build_vae(), build_mapping(chain))
    onnx_run = onnx_chain(chain, nets) if impl == "onnx" else None  # sessions (and graphs) before the clock
    before_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # torch, weights and inputs
    with torch.inference_mode():
        start = time.perf_counter()
        output = onnx_run(image, mask) if onnx_run else run_chain(chain, impl, nets, image, mask)
        seconds = time.perf_counter() - start
    if save:
        torch.save(output, save)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_gb": peak_gb, "before_gb": before_gb}))


def spawn(chain: str, impl: str, size: str, save: Path | None, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--one", size, "--impl", impl, "--chain", chain]
    if threads:
        cmd += ["--threads", str(threads)]
    if save:
        cmd += ["--save", str(save)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["512", "768", "1024", "2048", "4000x3000"])
    parser.add_argument("--reference-sizes", nargs="*", default=["512", "768"])
    parser.add_argument("--chain", choices=["scratch", "quality", "hr"], default="scratch")
    parser.add_argument("--threads", type=int, help="torch threads in each measurement (default: torch's)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime column")
    parser.add_argument("--impl", choices=["imgforge", "onnx", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        measure_one(args.chain, args.impl, args.one, args.save)
        return
    if args.chain == "hr" and args.reference_sizes:
        parser.error("the hr chain has no straightforward reference here; pass --reference-sizes with no value")
    if args.chain == "hr" and not args.no_onnx:
        parser.error("the hr mapping has no ONNX graph (docs/onnx.md); pass --no-onnx")
    print(f"chain {args.chain}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("IMGFORGE_CACHE", tmp)  # the graphs, exported once for every size
        for size in args.sizes:
            compare = size in args.reference_sizes
            ours = spawn(args.chain, "imgforge", size, Path(tmp, "ours.pt"), args.threads)
            line = f"{size:>10}  imgforge {_fmt(ours)}"
            if not args.no_onnx:
                onnx = spawn(args.chain, "onnx", size, Path(tmp, "onnx.pt"), args.threads)
                line += f" | onnx {_fmt(onnx)}"
                if "error" not in ours and "error" not in onnx:
                    diff = (torch.load(Path(tmp, "ours.pt")) - torch.load(Path(tmp, "onnx.pt"))).abs().max().item()
                    line += (f" | onnx/torch time x{onnx['seconds'] / ours['seconds']:.2f}, memory"
                             f" x{onnx['peak_gb'] / ours['peak_gb']:.2f}, max |diff| {diff:.2g}")
            if compare:
                ref = spawn(args.chain, "reference", size, Path(tmp, "ref.pt"), args.threads)
                line += f" | reference {_fmt(ref)}"
                if "error" not in ours and "error" not in ref:
                    diff = (torch.load(Path(tmp, "ours.pt")) - torch.load(Path(tmp, "ref.pt"))).abs().max().item()
                    line += (f" | speed-up x{ref['seconds'] / ours['seconds']:.2f}, memory"
                             f" x{ref['peak_gb'] / ours['peak_gb']:.2f} less, max |diff| {diff:.2g}")
            print(line, flush=True)


def _fmt(result: dict) -> str:
    if "error" in result:
        return f"failed ({result['error']})"
    return f"{result['seconds']:7.1f} s {result['peak_gb']:6.2f} GB peak ({result['before_gb']:.2f} before the run)"


if __name__ == "__main__":
    main()
