"""Tiny training datasets and settings shared by the training tests (CPU, a few seconds per run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# a generator and discriminator small enough that a step takes milliseconds at 32 x 32
TINY_GAN = dict(netG="resnet_6blocks", ngf=4, ndf=4, load_size=32, crop_size=32, flip=False, epochs=1,
                epochs_decay=0, loader_workers=0, quiet=True, log_every=1)


def smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random RGB image (a few colours upscaled), size x size uint8."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def aligned_dataset(root: Path, count: int = 4, size: int = 32, seed: int = 0) -> Path:
    """The official aligned layout: root/train/<i>.png holding A | B side by side, B = 255 - A."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        a = smooth_image(rng, size)
        Image.fromarray(np.concatenate([a, 255 - a], 1)).save(root / "train" / f"{i}.png")
    return root


def unpaired_dataset(root: Path, count_a: int = 3, count_b: int = 2, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for side, count in (("trainA", count_a), ("trainB", count_b)):
        (root / side).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(smooth_image(rng, size)).save(root / side / f"{side}_{i}.png")
    return root
