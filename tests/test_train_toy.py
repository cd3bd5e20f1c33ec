"""Issue 17's "Done when" toy task: 8 pairs of 128 x 128 images with B = 255 - A, pix2pix unet_128 with
ngf = ndf = 8, no flip, no dropout, 25 epochs at a constant rate, seed 0. The official loop brings the
translate L1 (mean absolute difference to B, in levels) from 67.7 for the identity to 11.7; imgforge must
reach 20 or better (measured: 10.4 levels, identity 56.9 on these images; ~18 min on the shared 2-core
machine, about 0.2-0.4 steps/s there)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgforge.imageio import read_image
from imgforge.pipelines.translate import translate
from imgforge.train.api import train_pix2pix

TOY_OPTIONS = dict(netG="unet_128", ngf=8, ndf=8, load_size=128, crop_size=128, flip=False, epochs=25,
                   epochs_decay=0, dropout=False, seed=0, quiet=True, loader_workers=0)


def toy_pairs(root, count: int = 8, size: int = 128):
    """`count` A|B images: A random colour fields (noise at a few scales), B = 255 - A."""
    rng = np.random.default_rng(1)
    (root / "train").mkdir(parents=True)
    for i in range(count):
        layers = [np.asarray(Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)).resize(
            (size, size), Image.BICUBIC), dtype=np.float32) for s in (4, 16, 64)]
        a = np.clip(sum(layers) / len(layers), 0, 255).astype(np.uint8)
        Image.fromarray(np.concatenate([a, 255 - a], 1)).save(root / "train" / f"{i}.png")
    return root


def translate_l1(run_dir, data_dir, out_dir) -> tuple[float, float]:
    """(L1 of translate's output to B, L1 of the identity A to B), in levels, over the training pairs."""
    translate(str(data_dir / "train"), str(out_dir), checkpoint=run_dir / "latest_net_G.pth", aligned=True, dropout=False,
              quiet=True)
    errors, identity = [], []
    for path in sorted((data_dir / "train").glob("*.png")):
        pair = read_image(path).pixels.astype(np.float32)
        a, b = pair[:, :128], pair[:, 128:]
        output = read_image(out_dir / path.name).pixels.astype(np.float32)
        errors.append(np.abs(output - b).mean())
        identity.append(np.abs(a - b).mean())
    return float(np.mean(errors)), float(np.mean(identity))


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 200 steps of a 128² U-Net: minutes on a busy 2-core machine
def test_toy_task_is_learnt_as_well_as_the_official_loop_learns_it(tmp_path):
    data = toy_pairs(tmp_path / "data")
    train_pix2pix(data, tmp_path / "run", **TOY_OPTIONS)
    l1, identity = translate_l1(tmp_path / "run", data, tmp_path / "out")
    assert identity > 40
    assert l1 <= 20, f"translate L1 {l1:.1f} levels after 25 epochs (identity {identity:.1f})"


def test_toy_pairs_are_the_issue_layout(tmp_path):
    data = toy_pairs(tmp_path / "data", count=2)
    pair = read_image(data / "train" / "0.png").pixels.astype(np.int32)
    assert pair.shape == (128, 256, 3) and np.array_equal(pair[:, 128:], 255 - pair[:, :128])
