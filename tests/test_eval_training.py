"""Metrics during training: pix2pix and CycleGAN `--val`, logged as {"eval": {...}} records of log.jsonl."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from eval_oracles import calibrated_state_dict, write_fid_weights
from imgforge.cli import main
from imgforge.eval.pairwise import compare
from imgforge.train.api import train_cyclegan, train_pix2pix
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
