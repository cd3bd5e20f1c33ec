"""imgforge eval pairs: PSNR and SSIM equal scikit-image's, LPIPS equals the lpips package's (built with a random
AlexNet whose weights imgforge is given as the torchvision file), pairing by name and by order, JSON rows."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgforge.cli import main
from imgforge.eval.pairwise import l1, pairs, psnr, ssim

ALEXNET_NAME = "alexnet-owt-7be5be79.pth"


def _image(rng, size=(40, 52), grey=False) -> np.ndarray:
    shape = (*size,) if grey else (*size, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _degraded(rng, image: np.ndarray, noise: float) -> np.ndarray:
    return np.clip(image.astype(np.float64) + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(40, 52), (11, 30), (64, 64)])
def test_psnr_and_ssim_equal_scikit_image(size):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(size[1])
    reference = _image(rng, size)
    prediction = _degraded(rng, reference, 25.0)
    expected_ssim = structural_similarity(reference, prediction, data_range=255, channel_axis=2, gaussian_weights=True,
                                          sigma=1.5, use_sample_covariance=False)
    assert abs(ssim(prediction, reference) - expected_ssim) <= 1e-4
    assert abs(psnr(prediction, reference) - peak_signal_noise_ratio(reference, prediction, data_range=255)) <= 1e-4
    assert l1(prediction, reference) == pytest.approx(np.abs(reference / 255.0 - prediction / 255.0).mean())
    assert psnr(reference, reference) == math.inf and ssim(reference, reference) == pytest.approx(1.0)


@pytest.fixture
def lpips_reference(tmp_path, monkeypatch):
    """The lpips package's LPIPS (v0.1, AlexNet) with a random backbone, and a weights folder holding that
    backbone under torchvision's file name with torchvision's keys."""
    import lpips

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    backbone = {f"features.{key.split('.', 2)[2]}": value
                for key, value in model.state_dict().items() if key.startswith("net.slice")}
    backbone["classifier.1.weight"] = torch.zeros(4096, 9216)  # torchvision's file has it; LPIPS does not use it
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(backbone, folder / ALEXNET_NAME)
    monkeypatch.delenv("IMGFORGE_MANIFEST", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return model, folder


def _write(folder: Path, name: str, pixels: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / name)
    return folder / name


def test_pairs_by_name_with_lpips_equal_to_the_lpips_package(lpips_reference, tmp_path, capsys):
    model, weights = lpips_reference
    rng = np.random.default_rng(5)
    references = {name: _image(rng, (48, 64)) for name in ("a", "b", "c")}
    for name, pixels in references.items():
        _write(tmp_path / "ref", f"{name}.png", pixels)
        _write(tmp_path / "pred", f"{name}.png", _degraded(rng, pixels, 10.0 + 20 * (name == "b")))
    code = main(["eval", "pairs", str(tmp_path / "pred"), str(tmp_path / "ref"), "--json", "-q",
                 "--weights-dir", str(weights), "--batch-size", "2"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and len(rows) == 4
    for row in rows[:3]:
        assert Path(row["prediction"]).name == Path(row["reference"]).name
        assert set(row) == {"prediction", "reference", "psnr", "ssim", "lpips", "l1"}
        prediction = np.array(Image.open(row["prediction"]))
        reference = np.array(Image.open(row["reference"]))
        as_tensor = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1  # noqa: E731
        with torch.no_grad():
            expected = float(model(as_tensor(prediction), as_tensor(reference)))
        assert row["lpips"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert row["psnr"] == pytest.approx(psnr(prediction, reference), abs=1e-9)
    mean = rows[3]
    assert mean["mean"] is True and mean["pairs"] == 3
    assert mean["ssim"] == pytest.approx(np.mean([row["ssim"] for row in rows[:3]]))


def test_pairs_by_order_and_failures(tmp_path, capsys):
    rng = np.random.default_rng(6)
    first, second = _image(rng), _image(rng)
    _write(tmp_path / "pred", "x_fake.png", first)
    _write(tmp_path / "pred", "y_fake.png", second)
    _write(tmp_path / "ref", "x_real.jpg.png", first)
    _write(tmp_path / "ref", "y_real.png", _degraded(rng, second, 5.0))
    result = pairs(tmp_path / "pred", tmp_path / "ref", metrics=["psnr", "l1"], by_order=True, quiet=True)
    assert [Path(row["reference"]).name for row in result.rows] == ["x_real.jpg.png", "y_real.png"]
    assert result.rows[0]["psnr"] == math.inf and result.rows[0]["l1"] == 0.0
    assert result.mean["psnr"] == pytest.approx(result.rows[1]["psnr"])  # the finite values only
    # by name, nothing pairs up: each prediction fails alone, with a one-line reason, and the run exits 3
    code = main(["eval", "pairs", str(tmp_path / "pred"), str(tmp_path / "ref"), "--metrics", "psnr", "-q"])
    captured = capsys.readouterr()
    assert code == 3 and "no reference image named like x_fake" in captured.err
    _write(tmp_path / "small", "x_fake.png", first[:20])
    code = main(["eval", "pairs", str(tmp_path / "small"), str(tmp_path / "pred"), "--metrics", "ssim", "--json"])
    captured = capsys.readouterr()
    assert code == 3 and "sizes differ" in captured.err
    assert main(["eval", "pairs", str(tmp_path / "pred"), str(tmp_path / "ref"), "--metrics", "fsim", "-q"]) == 1
    assert "unknown metric" in capsys.readouterr().err


def test_pairs_table(tmp_path, capsys):
    rng = np.random.default_rng(7)
    image = _image(rng)
    _write(tmp_path / "pred", "one.png", _degraded(rng, image, 8.0))
    _write(tmp_path / "ref", "one.jpg", image)  # paired by name whatever the extension
    assert main(["eval", "pairs", str(tmp_path / "pred"), str(tmp_path / "ref"), "--metrics", "psnr,ssim",
                 "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["prediction", "psnr", "ssim"] and lines[-1].startswith("mean")


def test_compare_in_memory_equals_pairs(tmp_path):
    from imgforge.eval.pairwise import compare

    rng = np.random.default_rng(8)
    references = [_image(rng) for _ in range(3)]
    predictions = [_degraded(rng, image, 12.0) for image in references]
    for index, (prediction, reference) in enumerate(zip(predictions, references)):
        _write(tmp_path / "pred", f"{index}.png", prediction)
        _write(tmp_path / "ref", f"{index}.png", reference)
    from_files = pairs(tmp_path / "pred", tmp_path / "ref", metrics=["psnr", "ssim", "l1"], quiet=True).mean
    assert compare(predictions, references) == pytest.approx(from_files, rel=1e-12)
