"""`imgforge translate` end to end: a tiny model served by the local download server, folders of odd sizes,
grey and RGBA images, grey models, aligned pairs, errors, bad inputs, and a run killed and resumed."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgforge.cli import main
from imgforge.nets.pix2pix import GeneratorOptions, build_generator
from helpers import kill_when_written, sizes_and_modes


def checkpoint_bytes(netG="unet_256", norm="batch", dropout=True, ngf=4, **channels) -> bytes:
    torch.manual_seed(0)
    net = build_generator(GeneratorOptions(netG=netG, norm=norm, ngf=ngf, dropout=dropout, **channels))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.getvalue()


def write_checkpoint(path: Path, **options) -> Path:
    path.write_bytes(checkpoint_bytes(**options))
    return path


def save_image(path: Path, shape, mode=None, seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return path


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    folder = tmp_path / "in"
    save_image(folder / "odd.png", (37, 53, 3))
    save_image(folder / "grey.png", (40, 30))
    save_image(folder / "rgba.png", (20, 24, 4))
    save_image(folder / "photo.jpg", (33, 65, 3))
    return folder


@pytest.fixture
def served_model(hub_server, write_manifest, tmp_path):
    data = checkpoint_bytes()
    url = hub_server.add_url_file("tiny_net_G.pth", data)
    write_manifest(tmp_path, f"""
        [models.tiny-pix2pix]
        task = "translate"
        arch = "pix2pix"
        description = "a tiny pix2pix generator"
        direction = "BtoA"
        config = {{ netG = "unet_256", norm = "batch", ngf = 4, dropout = true, input_nc = 3, output_nc = 3 }}
        files.generator = {{ urls = ["{url}"], sha256 = "{hashlib.sha256(data).hexdigest()}", size = {len(data)} }}
    """)
    return hub_server


def test_a_served_model_translates_a_folder_at_each_image_size(served_model, mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["translate", str(mixed_folder), "-o", str(out), "-m", "tiny-pix2pix", "--seed", "1",
                 "--batch-size", "3"]) == 0
    assert sizes_and_modes(out) == {
        "grey.png": ((30, 40), "RGB"),  # an RGB model's output is colour
        "odd.png": ((53, 37), "RGB"),
        "photo.jpg": ((65, 33), "RGB"),
        "rgba.png": ((24, 20), "RGBA"),
    }
    with Image.open(mixed_folder / "rgba.png") as source, Image.open(out / "rgba.png") as result:
        assert np.array_equal(np.asarray(result)[:, :, 3], np.asarray(source)[:, :, 3])
    assert "4 done, 0 skipped, 0 failed" in capsys.readouterr().err
    downloads = [r for r in served_model.requests if r == ("GET", "/files/tiny_net_G.pth")]
    assert len(downloads) == 1

    again = tmp_path / "again"
    assert main(["translate", str(mixed_folder), "-o", str(again), "-m", "tiny-pix2pix", "--seed", "1", "-q"]) == 0
    assert len([r for r in served_model.requests if r == ("GET", "/files/tiny_net_G.pth")]) == 1  # cached
    for name in ("odd.png", "grey.png", "rgba.png"):  # the same seed, another batch size: the same pixels
        assert np.array_equal(np.asarray(Image.open(again / name)), np.asarray(Image.open(out / name)))


def test_grey_checkpoint_at_native_size_writes_grey(mixed_folder, tmp_path):
    weights = write_checkpoint(tmp_path / "latest_net_G.pth", netG="resnet_6blocks", norm="instance",
                               dropout=False, input_nc=1, output_nc=1)
    out = tmp_path / "out"
    assert main(["translate", str(mixed_folder), "-o", str(out), "--checkpoint", str(weights), "--size", "native",
                 "-q"]) == 0
    assert sizes_and_modes(out) == {
        "grey.png": ((30, 40), "L"),
        "odd.png": ((53, 37), "L"),
        "photo.jpg": ((65, 33), "L"),
        "rgba.png": ((24, 20), "LA"),
    }


def test_aligned_pairs_and_compare_strips(tmp_path):
    weights = write_checkpoint(tmp_path / "latest_net_G.pth")
    pair = save_image(tmp_path / "in" / "pair.png", (32, 65, 3))
    assert main(["translate", str(pair), "-o", str(tmp_path / "out.png"), "--checkpoint", str(weights),
                 "--aligned", "--direction", "BtoA", "--eval", "-q"]) == 0
    assert Image.open(tmp_path / "out.png").size == (33, 32)  # the B half: 65 - int(65 / 2) columns
    assert main(["translate", str(pair), "-o", str(tmp_path / "a2b.png"), "--checkpoint", str(weights),
                 "--aligned", "--eval", "-q"]) == 0
    assert main(["translate", str(pair), "-o", str(tmp_path / "strip.png"), "--checkpoint", str(weights),
                 "--aligned", "--compare", "--eval", "-q"]) == 0
    with Image.open(tmp_path / "strip.png") as image:
        assert image.mode == "RGB"
        strip = np.asarray(image)
    assert strip.shape == (32, 96, 3)  # input | output | target, at the A half's size
    assert np.array_equal(strip[:, :32], np.asarray(Image.open(pair))[:, :32])
    assert np.array_equal(strip[:, 32:64], np.asarray(Image.open(tmp_path / "a2b.png")))


def test_compare_without_aligned_shows_input_and_output(tmp_path):
    weights = write_checkpoint(tmp_path / "latest_net_G.pth")
    source = save_image(tmp_path / "in" / "a.png", (20, 30, 3))
    assert main(["translate", str(source), "-o", str(tmp_path / "plain.png"), "--checkpoint", str(weights),
                 "--eval", "-q"]) == 0
    assert main(["translate", str(source), "-o", str(tmp_path / "strip.png"), "--checkpoint", str(weights),
                 "--eval", "--compare", "-q"]) == 0
    strip = np.asarray(Image.open(tmp_path / "strip.png"))
    assert strip.shape == (20, 60, 3)
    assert np.array_equal(strip[:, :30], np.asarray(Image.open(source)))
    assert np.array_equal(strip[:, 30:], np.asarray(Image.open(tmp_path / "plain.png")))


@pytest.mark.parametrize("arguments, message", [
    (["--netG", "resnet_9blocks"], "--netG (resnet_9blocks asked, unet_256 in the file)"),
    (["--ngf", "8"], "--ngf (8 asked, 4 in the file)"),
    (["--size", "300"], "--size 300 is not a multiple of 256"),
    (["--size", "native"], "--size native needs a resnet generator"),
    (["--direction", "up"], "unknown direction 'up'"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 is not supported on the CPU"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, arguments, message):
    weights = write_checkpoint(tmp_path / "latest_net_G.pth")
    source = save_image(tmp_path / "in" / "a.png", (20, 30, 3))
    usage = "--precision" in arguments  # options that cannot run together: found by the run plan, exit 2
    assert main(["translate", str(source), "-o", str(tmp_path / "out"), "--checkpoint", str(weights),
                 *arguments]) == (2 if usage else 1)
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unknown_model_and_no_model(tmp_path, capsys, write_manifest):
    write_manifest(tmp_path, "")
    source = save_image(tmp_path / "a.png", (8, 8, 3))
    assert main(["translate", str(source), "-m", "horse2zebra"]) == 1
    assert main(["translate", str(source)]) == 1
    err = capsys.readouterr().err
    assert "horse2zebra" in err and "--checkpoint" in err and "Traceback" not in err


def test_json_lines_and_default_names(tmp_path, capsys):
    weights = write_checkpoint(tmp_path / "latest_net_G.pth")
    source = save_image(tmp_path / "in" / "a.png", (20, 30, 3))
    assert main(["translate", str(source), "--checkpoint", str(weights), "--no-dropout", "--json", "-q"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == {"input": str(source), "output": str(tmp_path / "in" / "a_translated.png"), "status": "done",
                        "provider": "torch:cpu"}
    assert lines[-1] == {"summary": {"done": 1, "skipped": 0, "failed": 0, "engine": "local", "threads": torch.get_num_threads()}}


def test_onnx_backend_reports_the_provider_it_runs_on(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path / "cache"))
    weights = write_checkpoint(tmp_path / "latest_net_G.pth")
    source = save_image(tmp_path / "in" / "a.png", (20, 30, 3))
    assert main(["translate", str(source), "--checkpoint", str(weights), "--backend", "onnx", "--device", "cpu",
                 "--seed", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.splitlines()[0])["provider"] == "onnxruntime:CPUExecutionProvider"
    assert "running on onnxruntime:CPUExecutionProvider" in err


def test_bad_inputs_are_reported_one_line_each_and_exit_3(tmp_path, capsys):
    weights = write_checkpoint(tmp_path / "latest_net_G.pth")
    folder = tmp_path / "in"
    save_image(folder / "good.png", (24, 20, 3))
    (folder / "empty.png").write_bytes(b"")
    jpeg = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(jpeg, "JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (folder / "noise.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    (folder / "text.png").write_text("this is not an image\n")
    out = tmp_path / "out"

    assert main(["translate", str(folder), "-o", str(out), "--checkpoint", str(weights), "--seed", "0"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert sorted(Path(line.split(": ")[1]).name for line in failed) == ["empty.png", "noise.jpg", "text.png",
                                                                          "truncated.jpg"]
    assert "1 done, 0 skipped, 4 failed" in err
    assert "error: 4 of 5 inputs failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]  # no partial or hidden files
    assert Image.open(out / "good.png").size == (20, 24)


def test_a_killed_run_leaves_complete_outputs_and_resumes(tmp_path):
    weights = write_checkpoint(tmp_path / "latest_net_G.pth", netG="resnet_6blocks", norm="instance",
                               dropout=False, ngf=16)
    folder = tmp_path / "in"
    names = [f"img{index:02d}.png" for index in range(12)]
    for index, name in enumerate(names):
        save_image(folder / name, (128, 160, 3), seed=index)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "imgforge", "translate", str(folder), "-o", str(out), "--checkpoint",
               str(weights), "--size", "native", "--batch-size", "1", "--json", "-q"]

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_when_written(process, out, "img*.png", 2, timeout=120)
    first = sorted(p.name for p in out.glob("img*.png"))
    assert 2 <= len(first) < len(names)

    rerun = subprocess.run(command + ["--skip-existing"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    records = [json.loads(line) for line in rerun.stdout.splitlines()][:-1]
    assert {Path(r["input"]).name for r in records if r["status"] == "skipped"} == set(first)
    assert {Path(r["input"]).name for r in records if r["status"] == "done"} == set(names) - set(first)
    assert sorted(p.name for p in out.iterdir()) == names  # no temp files left
    for name in names:
        with Image.open(out / name) as image:
            image.load()  # decodes completely
            assert image.size == (160, 128) and image.mode == "RGB"
