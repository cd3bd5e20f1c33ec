"""How far --precision bf16 moves restore's output from fp32: the whole pipeline (scratch detection, global
stage, the official stretch) on the sample old photo and scikit-image's photos, in levels of the 8-bit
output, with two sets of weights: the conformance fixtures' small networks, and random full-size networks.
Neither is the real checkpoints: with those the figures may differ.

    python benchmarks/restore_fidelity.py [--weights conformance random] [--max-side 512] [--threads 2]

Prints, per photo: whether bf16 detects the same scratch mask (the detector runs in float32 in both; random
detectors mark all or nothing, so the restoration itself is given the same thin random strokes, about 2% of
the pixels, in both precisions), then the mean and the largest difference of the restored photos in levels,
and the share of values more than 8 levels apart.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from bench_restore import SAMPLE_PHOTO, make_inputs, random_checkpoints, write_checkpoints
from imgforge.imageio import Picture
from imgforge.pipelines.restore import Restorer, Settings, Work
from imgforge.plan import RunPlan

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "conformance"
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket")


def photos(max_side: int) -> dict[str, np.ndarray]:
    from skimage import data

    found = {"old_photo.jpg": np.asarray(Image.open(SAMPLE_PHOTO).convert("RGB"))}
    for name in SKIMAGE_PHOTOS:
        found[name] = getattr(data, name)()
    for name, pixels in found.items():
        image = Image.fromarray(pixels).convert("RGB")
        scale = max_side / max(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        found[name] = np.asarray(image)
    return found


def conformance_checkpoints(folder: Path) -> None:
    """The scratch-chain fixture's VAEs and mapping and the detector fixture's U-Net, in the official layout."""
    chain = load_file(FIXTURES / "oldphoto_scratch_chain" / "weights.safetensors")
    part = lambda prefix: {k[len(prefix):]: v for k, v in chain.items() if k.startswith(prefix)}  # noqa: E731
    detector = load_file(FIXTURES / "oldphoto_scratch_unet" / "weights.safetensors")
    write_checkpoints(folder, "scratch", detector, part("vae_a."), part("mapping."), part("vae_b."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", choices=["conformance", "random"], default=["conformance", "random"])
    parser.add_argument("--max-side", type=int, default=512, help="photos are scaled down to at most this side")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{'weights':12} {'photo':14} {'size':>9}  {'same mask':>9}  {'mean':>6} {'max':>4} {'>8 lv':>7}")
    for weights in args.weights:
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(1)
            (conformance_checkpoints if weights == "conformance" else random_checkpoints)(Path(tmp))
            restorers = {p: Restorer(Settings(faces=False), RunPlan.resolve(device="cpu", precision=p, offline=True,
                                                                            weights_dir=Path(tmp), quiet=True))
                         for p in ("fp32", "bf16")}
            for name, pixels in photos(args.max_side).items():
                masks = [r.detect_scratches(r.prepare_scratch(Work(pixels))).mask for r in restorers.values()]
                strokes = make_inputs(*pixels.shape[:2])[1][0, 0].numpy() > 0
                out = {p: r.run(Picture.from_array(pixels), strokes) for p, r in restorers.items()}
                levels = np.abs(out["bf16"].pixels.astype(int) - out["fp32"].pixels.astype(int))
                same = "yes" if np.array_equal(*masks) else "NO"
                print(f"{weights:12} {name:14} {pixels.shape[1]:>4}x{pixels.shape[0]:<4}  {same:>9}  "
                      f"{levels.mean():6.2f} {levels.max():4d} {(levels > 8).mean():7.2%}", flush=True)

if __name__ == "__main__":
    main()
