"""Every conformance fixture folder becomes one test, dispatched on its `kind`.

Folders: tests/fixtures/conformance/*/ and, when IMGFORGE_EXTRA_FIXTURES is set (os.pathsep-separated),
every folder directly inside each named folder. The checks for a family of kinds live in
tests/conformance_checks/<family>.py as CHECKS = {kind: check(folder, config)}.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "conformance"

# Every kind the fixtures README defines, and the family module that checks it.
KNOWN_KINDS = {
    "pix2pix.unet": "pix2pix",
    "pix2pix.resnet": "pix2pix",
    "pix2pix.tensor2im": "pix2pix",
    "ddpm.unet": "ddpm",
    "ddpm.ddpm_steps": "ddpm",
    "ddpm.ddim_steps": "ddpm",
    "oldphoto.scratch_unet": "oldphoto",
    "oldphoto.chain_quality": "oldphoto",
    "oldphoto.chain_scratch": "oldphoto",
    "face.spade_generator": "face",
    "face.align": "face",
    "face.blend": "face",
    "train.pix2pix_step": "train",
    "train.cyclegan_step": "train",
    "train.ddpm_step": "train_ddpm",
    "eval.fid_inception": "eval",
    "eval.lpips_alex": "eval",
}


# The kinds that involve a network, which run through ONNX Runtime as well (tests/conformance_checks/onnx.py).
ONNX_KINDS = {"pix2pix.unet", "pix2pix.resnet", "ddpm.unet", "ddpm.ddpm_steps", "ddpm.ddim_steps",
              "oldphoto.scratch_unet", "oldphoto.chain_quality", "oldphoto.chain_scratch", "face.spade_generator",
              "eval.fid_inception", "eval.lpips_alex"}


def fixture_folders() -> list[Path]:
    roots = [FIXTURES]
    extra = os.environ.get("IMGFORGE_EXTRA_FIXTURES", "")
    roots += [Path(p) for p in extra.split(os.pathsep) if p]
    folders = []
    for root in roots:
        folders += sorted(p for p in root.iterdir() if (p / "config.json").is_file())
    return folders


@pytest.mark.parametrize("folder", fixture_folders(), ids=lambda p: p.name)
def test_fixture(folder: Path):
    config = json.loads((folder / "config.json").read_text())
    kind = config.get("kind")
    if kind not in KNOWN_KINDS:
        pytest.fail(f"{folder.name}: unknown fixture kind {kind!r}")
    family = KNOWN_KINDS[kind]
    if not (Path(__file__).parent / "conformance_checks" / f"{family}.py").is_file():
        pytest.fail(f"{folder.name}: no checks for kind {kind!r} (tests/conformance_checks/{family}.py is missing)")
    checks = importlib.import_module(f"conformance_checks.{family}").CHECKS
    checks[kind](folder, config)


def _kind(folder: Path) -> str | None:
    return json.loads((folder / "config.json").read_text()).get("kind")


@pytest.mark.parametrize("folder", [f for f in fixture_folders() if _kind(f) in ONNX_KINDS],
                         ids=lambda p: f"{p.name}-onnx")
def test_fixture_onnx(folder: Path, tmp_path, monkeypatch):
    """Every fixture of a kind with a network, through ONNX Runtime (conformance_checks/onnx.py)."""
    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path))
    config = json.loads((folder / "config.json").read_text())
    importlib.import_module("conformance_checks.onnx").CHECKS[config["kind"]](folder, config)


def test_fixture_folders_found():
    assert len(fixture_folders()) >= 10
