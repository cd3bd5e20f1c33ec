"""The exported graphs used as a deployer would use them: tests/deployer.py (onnxruntime, numpy, Pillow and the
sidecar JSON, no imgforge, no torch) reproduces `imgforge translate` in its three test-time modes (the official
one with seeded dropout masks) and a short `imgforge sample` run."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deployer
from imgforge.cli import main
from imgforge.nets.pix2pix import GeneratorOptions, build_generator
from test_sample_cli import tiny_folder  # noqa: F401  (a tiny diffusers-format DDPM folder)

MODES = {"official": [], "no-dropout": ["--no-dropout"], "eval": ["--eval"]}
# truncation to 8 bits turns ONNX Runtime's float rounding (~1e-6 from torch) into one level where a value
# sits on a boundary (measured: 1 level at most, in every mode)
TRANSLATE_LEVELS = 1


def test_the_deployer_imports_neither_imgforge_nor_torch():
    tree = ast.parse(Path(deployer.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module}
    assert imported <= {"__future__", "hashlib", "json", "pathlib", "numpy", "onnxruntime", "PIL"}


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory) -> Path:
    """A tiny pix2pix U-Net (BatchNorm, dropout) with weights nudged away from their initial values."""
    torch.manual_seed(0)
    net = build_generator(GeneratorOptions("unet_256", "batch", 4, True))
    for parameter in net.parameters():
        parameter.data += 0.1 * torch.randn_like(parameter)
    path = tmp_path_factory.mktemp("g") / "latest_net_G.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for name, (height, width) in {"wide.png": (70, 113), "square.png": (256, 256)}.items():
        base = np.linspace(0, 255, width)[None, :, None] + np.linspace(0, 120, height)[:, None, None]
        pixels = np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name)
        paths.append(folder / name)
    return paths


@pytest.mark.parametrize("mode", list(MODES))
def test_deployer_reproduces_translate(generator_file, photos, tmp_path, mode, capsys):
    graphs = tmp_path / "graphs"
    assert main(["export", "--checkpoint", str(generator_file), "-o", str(graphs), "--mode", mode, "-q"]) == 0
    sidecar = json.loads((graphs / "generator.json").read_text())
    seed = 7
    assert main(["translate", *map(str, photos), "--checkpoint", str(generator_file), *MODES[mode],
                 "--seed", str(seed), "-o", str(tmp_path / "out"), "-q"]) == 0
    worst = 0
    for photo in photos:
        expected = np.asarray(Image.open(tmp_path / "out" / photo.name))
        got = deployer.translate(graphs / "generator.json", Image.open(photo), seed=seed)
        assert got.shape[:2] == expected.shape[:2]
        worst = max(worst, int(np.abs(got.astype(int) - expected.reshape(got.shape)).max()))
    print(f"translate {mode}: max abs difference {worst} levels")
    assert worst <= TRANSLATE_LEVELS
    if mode == "official":  # the shapes a deployer needs, stated (not found by trial)
        masks = sidecar["deploy"]["dropout"]["masks"]
        assert [(m["channels"], m["reduction"]) for m in masks] == [(32, 64), (32, 32), (32, 16)]
        assert "N x 32 x ceil(H/64) x ceil(W/64)" in sidecar["inputs"][1]["meaning"]
        # another seed draws other masks: the seed really reaches the masks
        other = deployer.translate(graphs / "generator.json", Image.open(photos[1]), seed=seed + 1)
        assert not np.array_equal(other, np.asarray(Image.open(tmp_path / "out" / photos[1].name)).reshape(other.shape))
    else:
        assert sidecar["deploy"]["dropout"] is None


def test_deployer_reproduces_a_short_ddpm_run(tiny_folder, tmp_path):  # noqa: F811
    from imgforge.pipelines.sample import load_model, sample

    graphs = tmp_path / "graphs"
    assert main(["export", "--checkpoint", str(tiny_folder / "diffusion_pytorch_model.safetensors"), "-o",
                 str(graphs), "-q"]) == 0
    sidecar_path = graphs / "unet.json"  # the name docs/onnx.md gives, as for a zoo model
    assert json.loads(sidecar_path.read_text())["graph"] == "unet.onnx" and (graphs / "unet.onnx").is_file()
    steps, seed, count = 4, 11, 2
    expected = sample(str(tiny_folder), num=count, steps=steps, seed=seed, device="cpu", quiet=True).images
    # the noise imgforge draws for image i (torch's generator, which numpy cannot replay), handed over
    shape = load_model(str(tiny_folder)).image_shape
    generators = [torch.Generator().manual_seed(seed + i) for i in range(count)]
    noises = [torch.stack([torch.randn(shape, generator=g) for g in generators]).numpy() for _ in range(steps)]
    got = deployer.sample(sidecar_path, steps, noises)
    difference = int(np.abs(got.astype(int) - expected).max())
    print(f"sample ddpm, {steps} steps: max abs difference {difference} levels")
    assert got.shape == expected.shape and difference <= 1
