"""Training data (imgforge/train/data.py): layouts, the official preprocessing, pairing and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imgforge.errors import ImgforgeError
from imgforge.train.data import Preprocess, paired_dataset, unpaired_dataset
from train_helpers import aligned_dataset, smooth_image, unpaired_dataset as make_unpaired


def test_both_halves_of_a_pair_get_the_same_crop_and_flip(tmp_path):
    data = aligned_dataset(tmp_path, count=2, size=32)  # B = 255 - A, so B = -A in [-1, 1] wherever both agree
    dataset = paired_dataset(data, Preprocess(load_size=32, crop_size=24, mode="crop", flip=True), "AtoB")
    draws = set()
    for sample in range(12):
        item = dataset[(sample % 2, sample)]
        assert item["A"].shape == (3, 24, 24)
        torch.testing.assert_close(item["B"], -item["A"], atol=1e-6, rtol=0)
        draws.add(tuple(item["A"][:, 0, 0].tolist()))
    assert len(draws) > 2  # the crops and flips do vary from sample to sample
    again = paired_dataset(data, Preprocess(32, 24, "crop", True), "AtoB")[(1, 7)]
    assert torch.equal(again["A"], dataset[(1, 7)]["A"])  # drawn from (seed, sample), not from a global RNG


def test_direction_BtoA_swaps_the_halves(tmp_path):
    data = aligned_dataset(tmp_path, count=1, size=32)
    forward = paired_dataset(data, Preprocess(32, 32, "resize_and_crop", False), "AtoB")[(0, 0)]
    backward = paired_dataset(data, Preprocess(32, 32, "resize_and_crop", False), "BtoA")[(0, 0)]
    assert torch.equal(forward["A"], backward["B"]) and torch.equal(forward["B"], backward["A"])


def test_official_resize_is_pil_bicubic_ignoring_the_aspect_ratio(tmp_path):
    (tmp_path / "train").mkdir()
    a = np.asarray(Image.fromarray(smooth_image(np.random.default_rng(0), 40)).resize((40, 20)))
    Image.fromarray(np.concatenate([a, a], 1)).save(tmp_path / "train" / "x.png")
    item = paired_dataset(tmp_path, Preprocess(32, 32, "resize_and_crop", False), "AtoB")[(0, 0)]
    expected = np.asarray(Image.fromarray(a).resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255 * 2 - 1
    torch.testing.assert_close(item["A"], torch.from_numpy(expected.transpose(2, 0, 1).copy()))


@pytest.mark.parametrize("mode, size, expected", [("none", (30, 22), (3, 24, 32)), ("scale_width", (40, 20), (3, 24, 48)),
                                                   ("crop", (40, 36), (3, 24, 24))])
def test_preprocess_modes(tmp_path, mode, size, expected):
    (tmp_path / "train").mkdir()
    a = np.asarray(Image.fromarray(smooth_image(np.random.default_rng(0), 64)).resize(size))
    Image.fromarray(np.concatenate([a, a], 1)).save(tmp_path / "train" / "x.png")
    item = paired_dataset(tmp_path, Preprocess(48, 24, mode, True), "AtoB")[(0, 3)]
    assert tuple(item["A"].shape) == expected


def test_folders_A_and_B_are_paired_by_name_whatever_the_format(tmp_path):
    rng = np.random.default_rng(0)
    for side in ("A", "B"):
        (tmp_path / side).mkdir()
    for name in ("one", "two"):
        Image.fromarray(smooth_image(rng, 16)).save(tmp_path / "A" / f"{name}.png")
        Image.fromarray(smooth_image(rng, 16)).save(tmp_path / "B" / f"{name}.tif")
    dataset = paired_dataset(tmp_path, Preprocess(16, 16, "resize_and_crop", False), "AtoB")
    assert [(a.name, b.name) for a, b in dataset.pairs] == [("one.png", "one.tif"), ("two.png", "two.tif")]
    Image.fromarray(smooth_image(rng, 16)).save(tmp_path / "A" / "three.png")
    with pytest.raises(ImgforgeError, match="no partner.*A/three"):
        paired_dataset(tmp_path, Preprocess(), "AtoB")


def test_undecodable_images_are_skipped_and_reported(tmp_path, capsys):
    data = aligned_dataset(tmp_path, count=2, size=16)
    (data / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    dataset = paired_dataset(data, Preprocess(16, 16), "AtoB")
    assert len(dataset) == 2
    err = capsys.readouterr().err
    assert "skipped 1 training image(s) that cannot be read" in err and "broken.png" in err


def test_empty_and_missing_datasets_are_clear_errors(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(ImgforgeError, match="no training images"):
        paired_dataset(tmp_path, Preprocess(), "AtoB")
    with pytest.raises(ImgforgeError, match="not found"):
        paired_dataset(tmp_path / "nowhere", Preprocess(), "AtoB")
    with pytest.raises(ImgforgeError, match="trainA/ and trainB/"):
        unpaired_dataset(tmp_path, Preprocess())
    with pytest.raises(ImgforgeError, match="--preprocess"):
        Preprocess(mode="zoom")


def test_unpaired_data_takes_A_in_order_and_B_at_random(tmp_path):
    data = make_unpaired(tmp_path, count_a=3, count_b=5, size=16)
    dataset = unpaired_dataset(data, Preprocess(16, 16, "resize_and_crop", False))
    assert len(dataset) == 5  # the longer side, A wrapping around
    partners = {tuple(dataset[(0, sample)]["B"][:, 0, 0].tolist()) for sample in range(10)}
    assert len(partners) > 1
    assert torch.equal(dataset[(4, 0)]["A"], dataset[(1, 0)]["A"])
