"""Metrics during training: pix2pix and CycleGAN `--val`, DDPM `--fid-every`, logged as {"eval": {...}} records
of log.jsonl."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval_oracles import calibrated_state_dict, write_fid_weights
from imgforge.cli import main
from imgforge.eval.pairwise import compare
from imgforge.eval.set_metrics import fid_stats
from imgforge.imageio import write_image
from imgforge.train.api import train_cyclegan, train_ddpm, train_pix2pix
from train_helpers import TINY_GAN, aligned_dataset, unpaired_dataset


def _eval_records(run) -> list[dict]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [record["eval"] for record in records if "eval" in record]


def test_pix2pix_val_logs_pairwise_metrics_of_the_translations(tmp_path):
    data = aligned_dataset(tmp_path / "data", count=2)
    val = aligned_dataset(tmp_path / "valroot", count=3, seed=1)
    shutil.move(str(val / "train"), str(val / "val"))
    run = tmp_path / "run"
    train_pix2pix(data, run, val=str(val), **TINY_GAN)
    (metrics,) = _eval_records(run)
    assert set(metrics) == {"val_psnr", "val_ssim", "val_l1"}
    # the numbers are those of `imgforge translate` with the trained generator against the targets
    assert main(["translate", str(val / "val"), "-o", str(tmp_path / "out"), "--checkpoint",
                 str(run / "latest_net_G.pth"), "--aligned", "--no-dropout", "--size", "native", "-q"]) == 0
    outputs, targets = [], []
    for path in sorted((val / "val").iterdir()):
        pair = np.asarray(Image.open(path))
        targets.append(pair[:, 32:])
        outputs.append(np.asarray(Image.open(tmp_path / "out" / path.name).convert("RGB")))
    expected = compare(outputs, targets)
    assert metrics["val_psnr"] == pytest.approx(expected["psnr"], abs=0.05)
    assert metrics["val_l1"] == pytest.approx(expected["l1"], abs=2e-3)


@pytest.mark.slow
def test_cyclegan_val_logs_fid_both_ways(tmp_path, monkeypatch):
    torch_home = tmp_path / "torch-home"
    write_fid_weights(torch_home, calibrated_state_dict())
    monkeypatch.setenv("TORCH_HOME", str(torch_home))  # imgforge looks in torch's hub cache too
    data = unpaired_dataset(tmp_path / "data")
    val = unpaired_dataset(tmp_path / "valroot", count_a=3, count_b=3, seed=2)
    for side in ("A", "B"):
        (val / f"train{side}").rename(val / f"test{side}")
    run = tmp_path / "run"
    train_cyclegan(data, run, val=str(val), **TINY_GAN)
    (metrics,) = _eval_records(run)
    assert set(metrics) == {"val_fid_A2B", "val_fid_B2A"} and all(np.isfinite(v) and v > 0 for v in metrics.values())


def test_val_without_its_folders_is_a_one_line_error(tmp_path, capsys):
    data = unpaired_dataset(tmp_path / "data")
    code = main(["train", "cyclegan", str(data), "-o", str(tmp_path / "run"), "--val", str(tmp_path), "--netG",
                 "resnet_6blocks", "--ngf", "4", "--ndf", "4", "--load-size", "32", "--crop-size", "32",
                 "--epochs", "1", "--epochs-decay", "0", "--loader-workers", "0", "-q"])
    assert code == 1 and "valA/ and valB/" in capsys.readouterr().err


def _ddpm_toy(root):
    """16 random 16x16 images and the conformance fixture's tiny U-Net config at that size."""
    rng = np.random.default_rng(3)
    for index in range(16):
        write_image(root / "images" / f"{index}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    fixture = Path(__file__).parent / "fixtures" / "conformance" / "train_ddpm_unet_tiny" / "config.json"
    config = json.loads(fixture.read_text())["unet_config"]
    (root / "unet.json").write_text(json.dumps({**config, "sample_size": 16}))
    return root / "images", root / "unet.json"


@pytest.mark.slow  # over 10 s: the stand-in Inception weights are made, then a run with two FIDs
def test_ddpm_fid_every_logs_the_fid_of_ema_samples(tmp_path, monkeypatch):
    torch_home = tmp_path / "torch-home"
    write_fid_weights(torch_home, calibrated_state_dict())
    monkeypatch.setenv("TORCH_HOME", str(torch_home))  # the stand-in Inception, found in torch's hub cache
    images, config = _ddpm_toy(tmp_path)
    # 64-dim statistics (the first Inception block): the hook scores at the reference's size, cheaply
    fid_stats(images, tmp_path / "ref.npz", dims=64, quiet=True, weights_dir=torch_home)
    run = tmp_path / "run"
    train_ddpm(images, run, model_config=str(config), steps=5, warmup=1, dropout=0.0, batch_size=4, quiet=True,
               loader_workers=0, preview_images=0, preview_steps=2, sample_every=1, fid_every=2,
               fid_ref=str(tmp_path / "ref.npz"), fid_samples=3)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    scored = [(record["step"], record["eval"]) for record in records if "eval" in record]
    # evaluated at every grid (sample_every 1), scored once 2 more steps are done
    assert [step for step, _ in scored] == [2, 4]
    assert all(set(metrics) == {"fid"} and np.isfinite(metrics["fid"]) and metrics["fid"] > 0
               for _, metrics in scored)


def test_ddpm_fid_every_without_fid_ref_is_a_one_line_error(tmp_path, capsys):
    images, config = _ddpm_toy(tmp_path)
    common = ["train", "ddpm", str(images), "-o", str(tmp_path / "run"), "--model-config", str(config),
              "--steps", "2", "--batch-size", "4", "--loader-workers", "0", "-q", "--fid-every", "1"]
    code = main(common)
    error = capsys.readouterr().err
    assert code == 1 and "--fid-every needs --fid-ref" in error and len(error.strip().splitlines()) == 1
    assert "Traceback" not in error
    code = main(common + ["--fid-ref", str(tmp_path / "missing.npz")])
    error = capsys.readouterr().err
    assert code == 1 and "missing.npz" in error and len(error.strip().splitlines()) == 1
