"""Images per second of `imgforge translate` on the local engine and on Ray with 1 and 2 actors, over the same
folder, and the per-image overhead of the Ray path.

Two workloads (weights random, perturbed, saved as an official latest_net_G.pth):
  published   unet_256, ngf 64 (the pix2pix configuration): what a real run costs per image;
  tiny        unet_256, ngf 4: almost no compute, so the time left is the engine's own.
The per-image overhead is the slope of wall time against the number of images on the tiny workload (two
folder sizes), Ray minus local; the fixed cost (actor start, networks loaded once per actor, dataset plan) is
the intercept. Ray is started once (its start-up is reported apart), as `ray.init` in a long-lived driver or a
cluster would be. Rounds are interleaved; the best of the rounds is reported (the least disturbed by other
work on the machine). On a machine of C cores, the local engine
already uses them all through torch's threads; each Ray actor gets one CPU (and one thread) by default.

    python benchmarks/bench_engine.py [--images 24] [--rounds 2] [--cpus 2]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgforge.engine import EngineOptions
from imgforge.nets.pix2pix import GeneratorOptions, build_generator
from imgforge.pipelines.translate import translate

ENGINES = {"local": EngineOptions("local"), "ray x1": EngineOptions("ray", {"workers": 1}),
           "ray x2": EngineOptions("ray", {"workers": 2})}


def make_weights(path: Path, ngf: int) -> Path:
    torch.manual_seed(0)
    net = build_generator(GeneratorOptions("unet_256", "batch", ngf, True))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    torch.save(net.state_dict(), path)
    return path


def make_images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        base = rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)
        image = Image.fromarray(base).resize((256, 256), Image.BICUBIC)
        image.save(folder / f"img{index:04d}.png")
    return folder


def timed(folder: Path, output: Path, weights: Path, engine: EngineOptions) -> float:
    start = time.perf_counter()
    report = translate([str(folder)], str(output), checkpoint=weights, seed=0, batch_size=4, device="cpu",
                       quiet=True, engine=engine)
    elapsed = time.perf_counter() - start
    assert not report.failed and report.done == len(list(folder.iterdir())), report.failed
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="images in the folder (published workload)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray")
    args = parser.parse_args()
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    print(f"ray.init (local, {args.cpus} CPUs): {time.perf_counter() - start:.1f} s (paid once per driver)")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        published = make_weights(root / "published.pth", 64)
        tiny = make_weights(root / "tiny.pth", 4)
        folders = {n: make_images(root / f"in{n}", n) for n in sorted({args.images, 16, 64})}
        runs = 0

        def measure(folder: Path, weights: Path) -> dict[str, float]:
            nonlocal runs
            times: dict[str, list[float]] = {name: [] for name in ENGINES}
            for _ in range(args.rounds):
                for name, engine in ENGINES.items():
                    runs += 1
                    times[name].append(timed(folder, root / f"out{runs}", weights, engine))
            return {name: min(values) for name, values in times.items()}

        published_times = measure(folders[args.images], published)
        print(f"\npublished unet_256 ngf 64, {args.images} images 256x256, batch 4 (best of {args.rounds}):")
        for name, seconds in published_times.items():
            ratio = published_times["local"] / seconds
            print(f"  {name:7s} {args.images / seconds:6.2f} images/s  ({seconds:.1f} s, {ratio:.2f}x local)")

        small, large = folders[16], folders[64]
        tiny_small, tiny_large = measure(small, tiny), measure(large, tiny)
        print(f"\ntiny unet_256 ngf 4 (engine cost): wall time for 16 and 64 images (best of {args.rounds}):")
        slopes = {}
        for name in ENGINES:
            slopes[name] = (tiny_large[name] - tiny_small[name]) / 48
            fixed = tiny_small[name] - 16 * slopes[name]
            print(f"  {name:7s} {tiny_small[name]:.2f} s / {tiny_large[name]:.2f} s -> {1000 * slopes[name]:.1f} ms "
                  f"per image + {fixed:.2f} s fixed")
        for name in ("ray x1", "ray x2"):
            print(f"  per-image overhead of {name} over local: {1000 * (slopes[name] - slopes['local']):+.1f} ms")
    ray.shutdown()


if __name__ == "__main__":
    main()
