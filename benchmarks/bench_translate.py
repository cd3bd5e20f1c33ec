"""Images per second of `imgforge translate` over a folder of 256x256 images, end to end (read, run, write),
against the official way of running a pix2pix generator, with the same weights (unet_256, ngf 64, BatchNorm,
dropout: the published pix2pix configuration, randomly initialised and perturbed).

The official way, written here after test.py / models/test_model.py (not their code): one image at a time,
PIL open -> RGB -> bicubic resize to 256x256 -> ToTensor + Normalize(0.5, 0.5), the generator in train mode
(BatchNorm on the image's own statistics, Dropout(0.5) active, as test.py without --eval) inside
torch.no_grad() as BaseModel.test() does, tensor2im, PIL save of the output PNG (test.py also writes the input,
which is not counted here). Both sides include building the generator and loading the weights, as a run of
test.py or of `imgforge translate` does. Both sides run in this process, interleaved round by round; medians are reported.

    python benchmarks/bench_translate.py [--images 16] [--rounds 3] [--variants fp32 bf16 onnx]

Deviation: our fp32 outputs against the reference with dropout off on both sides (the same computation;
official dropout masks are random), and each variant against our fp32 with the same --seed (the same masks).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from imgforge.nets.pix2pix import GeneratorOptions, ImageBatchNorm, MaskedDropout, build_generator
from imgforge.pipelines.translate import translate

OPTIONS = GeneratorOptions("unet_256", "batch", 64, True)
VARIANTS = {"fp32": {}, "bf16": {"precision": "bf16"}, "onnx": {"backend": "onnx"}}


def make_weights(path: Path) -> None:
    torch.manual_seed(0)
    net = build_generator(OPTIONS)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    torch.save(net.state_dict(), path)


def make_images(folder: Path, count: int) -> None:
    """Smooth colour fields with noise: compress like photos, unlike pure noise."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 256, dtype=np.float32)
    for index in range(count):
        base = rng.random(3) * 0.6 + np.outer(ramp, rng.random(3))[:, None, :] * 0.4
        pixels = base + rng.normal(0, 0.05, (256, 256, 3))
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(folder / f"img{index:03d}.png")


def official_generator(weights: Path, dropout: bool) -> nn.Module:
    """The same layers with torch's own BatchNorm2d and Dropout, in train mode, as test.py runs them."""
    net = build_generator(OPTIONS)
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, ImageBatchNorm):
                setattr(module, name, nn.BatchNorm2d(child.num_features))
            elif isinstance(child, MaskedDropout):
                setattr(module, name, nn.Dropout(0.5) if dropout else nn.Identity())
    net.load_state_dict(torch.load(weights, weights_only=True))
    return net.train()


def run_official(weights: Path, folder: Path, out: Path, dropout: bool = True) -> None:
    """test.py end to end: build the generator (with its random initialisation), load, then image by image."""
    net = official_generator(weights, dropout)
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.glob("*.png")):
        image = Image.open(path).convert("RGB").resize((256, 256), Image.BICUBIC)
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1).copy()) / 255
        tensor = ((tensor - 0.5) / 0.5)[None]
        with torch.no_grad():
            fake = net(tensor)
        pixels = (fake[0].cpu().float().numpy().transpose(1, 2, 0) + 1) / 2.0 * 255.0
        Image.fromarray(pixels.astype(np.uint8)).save(out / path.name)


def run_ours(weights: Path, folder: Path, out: Path, seed: int, batch_size: int, mode: str = "official",
             **variant) -> None:
    report = translate(folder, out, checkpoint=weights, mode=mode, seed=seed, batch_size=batch_size,
                       device="cpu", quiet=True, **variant)
    assert report.done == len(list(folder.glob("*.png"))), report.failed


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def difference(a: Path, b: Path) -> tuple[int, float]:
    """Max and mean absolute difference in 8-bit levels over all images of two folders."""
    diffs = [np.abs(np.asarray(Image.open(p), dtype=np.int16) - np.asarray(Image.open(b / p.name), dtype=np.int16))
             for p in sorted(a.glob("*.png"))]
    return int(max(d.max() for d in diffs)), float(np.mean([d.mean() for d in diffs]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["IMGFORGE_CACHE"] = str(root / "cache")  # the ONNX export lands here, not in the user's cache
        weights = root / "latest_net_G.pth"
        make_weights(weights)
        make_images(root / "in", args.images)
        warm = root / "warm"
        for name in args.variants:  # first calls: ONNX export, oneDNN kernel choice
            run_ours(weights, root / "in", warm / name, 0, args.batch_size, **VARIANTS[name])
        run_official(weights, root / "in", warm / "official")

        times: dict[str, list[float]] = {name: [] for name in ["official", *args.variants]}
        for round_index in range(args.rounds):
            out = root / f"round{round_index}"
            times["official"].append(timed(lambda: run_official(weights, root / "in", out / "official")))
            for name in args.variants:
                times[name].append(timed(lambda: run_ours(weights, root / "in", out / name, 0, args.batch_size,
                                                          **VARIANTS[name])))

        reference = statistics.median(times["official"])
        print(f"{args.images} images 256x256, unet_256 ngf 64 batch norm + dropout, official test mode, "
              f"{torch.get_num_threads()} threads, batch size {args.batch_size}, {args.rounds} rounds (median)")
        print(f"official way : {args.images / reference:6.2f} images/s")
        for name in args.variants:
            median = statistics.median(times[name])
            print(f"imgforge {name:4s}: {args.images / median:6.2f} images/s  x{reference / median:.2f}")

        # deviation, with dropout off on both sides, then each variant against fp32 with the same seed
        run_official(weights, root / "in", root / "dev" / "official", dropout=False)
        run_ours(weights, root / "in", root / "dev" / "ours", 0, args.batch_size, mode="no-dropout")
        largest, mean = difference(root / "dev" / "ours", root / "dev" / "official")
        print(f"fp32 vs official (dropout off): max {largest} levels, mean {mean:.4f}")
        for name in args.variants:
            if name != "fp32" and "fp32" in args.variants:
                largest, mean = difference(root / "round0" / name, root / "round0" / "fp32")
                print(f"{name} vs fp32 (same seed): max {largest} levels, mean {mean:.4f}")


if __name__ == "__main__":
    main()
