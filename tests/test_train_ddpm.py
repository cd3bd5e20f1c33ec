"""DDPM training (imgforge/train/ddpm.py): the recipe's pieces, the diffusers run folder, the CLI and the runs.

The step itself is pinned by the train.ddpm_step conformance fixtures (tests/test_conformance.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import imgforge
from imgforge.cli import main
from imgforge.errors import ImgforgeError
from imgforge.imageio import write_image
from imgforge.nets.ddpm_unet import DDPMUNet
from imgforge.pipelines.sample import load_model, save_model
from imgforge.train.api import train_ddpm
from imgforge.train.ddpm import (DDPM, DiffusionSamples, ExponentialMovingAverage, ForwardProcess,
                                 clip_by_global_norm, warmed_up_lr)
from imgforge.train.data import SquareImages

FIXTURE = Path(__file__).parent / "fixtures" / "conformance"
TINY_CONFIG = json.loads((FIXTURE / "train_ddpm_unet_tiny" / "config.json").read_text())[
    "unet_config"]


def tiny_unet(sample_size: int = 16, **changes) -> DDPMUNet:
    return DDPMUNet({**TINY_CONFIG, "sample_size": sample_size, **changes})


def test_warm_up_starts_at_zero_and_reaches_the_peak():
    assert warmed_up_lr(2e-4, 0, 5000) == 0.0
    assert warmed_up_lr(2e-4, 2500, 5000) == pytest.approx(1e-4)
    assert warmed_up_lr(2e-4, 5000, 5000) == warmed_up_lr(2e-4, 90000, 5000) == 2e-4
    assert warmed_up_lr(2e-4, 0, 0) == 2e-4


def test_global_norm_clipping_scales_every_gradient_alike():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
    params[0].grad, params[1].grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    norm = clip_by_global_norm(params, 1.0)
    assert norm.item() == pytest.approx(5.0)
    assert torch.allclose(params[0].grad, torch.tensor([0.6, 0.0])) and torch.allclose(params[1].grad,
                                                                                         torch.tensor([0.8]))
    params[0].grad, params[1].grad = torch.tensor([0.3, 0.0]), torch.tensor([0.4])
    clip_by_global_norm(params, 1.0)  # below the bound: untouched
    assert torch.allclose(params[1].grad, torch.tensor([0.4]))


def test_ema_copies_on_the_first_update_then_decays():
    net = torch.nn.Linear(1, 1, bias=False)
    ema = ExponentialMovingAverage(net, 0.9)
    with torch.no_grad():
        net.weight.fill_(2.0)
    ema.update(net, 0)
    assert ema.state_dict()["weight"].item() == pytest.approx(2.0)
    with torch.no_grad():
        net.weight.fill_(12.0)
    ema.update(net, 1)
    assert ema.state_dict()["weight"].item() == pytest.approx(3.0)


def test_forward_process_tables_are_the_float64_ones_in_float32():
    process = ForwardProcess()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    acp = torch.cumprod(1 - betas, 0)
    assert torch.equal(process.sqrt_alphas_cumprod, acp.sqrt().float())
    x0, noise = torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1)
    x_t = process.q_sample(x0, torch.tensor([0, 999]), noise)
    assert x_t[0].item() == pytest.approx(acp[0].sqrt().item()) and x_t[1].item() == pytest.approx(acp[-1].sqrt().item())


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    net = tiny_unet(dropout=0.5)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
    with torch.no_grad():
        net.train()
        assert not torch.equal(net(x, t), net(x, t))
        net.eval()
        assert torch.equal(net(x, t), net(x, t))


def test_saved_folder_loads_in_imgforge_and_in_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")  # test-only oracle
    torch.manual_seed(0)
    net = tiny_unet()
    save_model(tmp_path, net, ForwardProcess().scheduler_config())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors",
                                                          "model_index.json", "scheduler_config.json"]
    ours = load_model(str(tmp_path))
    pipeline = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    assert pipeline.scheduler.config.variance_type == "fixed_large"
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 900])
    with torch.no_grad():
        expected = net.eval()(x, t)
        assert torch.equal(ours.unet(x, t), expected)
        assert (pipeline.unet(x, t).sample - expected).abs().max() < 1e-5
    assert torch.equal(ours.schedule.alphas_cumprod, torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0))


# --- the data --------------------------------------------------------------------------------------------------

def write_images(folder: Path, count: int, size: tuple[int, int] = (16, 16), seed: int = 0) -> Path:
    """`count` random RGB images, half of them one folder down (the folder is read recursively)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        target = folder / ("nested" if i % 2 else "") / f"{i:03d}.png"
        write_image(target, rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return folder


def test_image_folder_squares_every_readable_image(tmp_path, capsys):
    write_image(tmp_path / "wide.png", np.tile(np.arange(40, dtype=np.uint8)[None, :, None], (20, 1, 3)))
    write_image(tmp_path / "sub" / "grey16.tif", np.full((30, 30, 1), 65535, np.uint16))
    write_image(tmp_path / "sub" / "alpha.png", np.zeros((10, 10, 3), np.uint8), alpha=np.zeros((10, 10), np.uint8))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    folder = SquareImages(tmp_path, 10)
    assert sorted(p.name for p in folder.paths) == ["alpha.png", "grey16.tif", "wide.png"]
    assert folder.pixels.shape == (3, 10, 10, 3) and folder.pixels.dtype == np.uint8
    assert "skipped 1 training image(s)" in capsys.readouterr().err
    by_name = dict(zip((p.name for p in folder.paths), folder.pixels))
    assert (by_name["grey16.tif"] == 255).all()
    wide = by_name["wide.png"][0, :, 0].astype(int)  # 40 wide -> 20, centre 10 columns: values ~10..29
    assert 8 <= wide[0] <= 12 and 26 <= wide[-1] <= 31


def test_empty_image_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ImgforgeError, match="no images under"):
        SquareImages(tmp_path, 16)


def test_each_sample_depends_on_the_seed_and_its_number_only(tmp_path):
    images = SquareImages(write_images(tmp_path, 4), 16)
    samples = DiffusionSamples(images, seed=3, flip=True, timesteps=1000)
    first, again = samples[(1, 7)], samples[(1, 7)]
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = samples[(1, 8)]
    assert not torch.equal(first["noise"], other["noise"])
    unflipped = DiffusionSamples(images, seed=3, flip=False, timesteps=1000)
    kept = set()
    for n in range(16):
        drawn, plain = samples[(2, n)]["x0"], unflipped[(2, n)]["x0"]
        assert torch.equal(drawn, plain) or torch.equal(drawn, plain.flip(-1))
        kept.add(torch.equal(drawn, plain))
    assert kept == {True, False}  # some samples flipped, some not
    assert first["x0"].min() >= -1 and first["x0"].max() <= 1 and 0 <= first["t"] < 1000


# --- runs -------------------------------------------------------------------------------------------------------

TOY = dict(steps=6, warmup=2, dropout=0.0, batch_size=8, log_every=2, quiet=True, loader_workers=0,
           preview_images=4, preview_steps=2)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy run of issue 18: 32 images of 16x16, the fixture's tiny U-Net, 6 steps."""
    root = tmp_path_factory.mktemp("ddpm_toy")
    images = write_images(root / "images", 32)
    config = root / "unet.json"
    config.write_text(json.dumps({**TINY_CONFIG, "sample_size": 16}))
    result = train_ddpm(images, root / "run", model_config=str(config), **TOY)
    return root, result


def test_toy_run_writes_a_folder_that_sample_and_diffusers_load(toy, tmp_path):
    diffusers = pytest.importorskip("diffusers")  # test-only oracle
    root, result = toy
    run = root / "run"
    assert result.step == 6 and not result.interrupted
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json",
                 "model_index.json", "options.json", "log.jsonl"):
        assert (run / name).is_file(), name
    assert list((run / "samples").glob("*.png"))
    state = torch.load(run / "train_state" / "latest.pt", weights_only=True)
    assert state["step"] == 6
    saved = load_file(str(run / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in state["modules"]["ema"].items())
    assert any(not torch.equal(saved[k], v) for k, v in state["modules"]["unet"].items())
    report = imgforge.sample(str(run), num=2, steps=2, sampler="ddim", output=tmp_path / "drawn", quiet=True)
    assert len(report.written) == 2
    pipeline = diffusers.DDPMPipeline.from_pretrained(run)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    ours = load_model(str(run)).unet
    with torch.no_grad():
        assert (pipeline.unet(x, t).sample - ours(x, t)).abs().max() < 1e-5


def interrupt_at(step: int):
    """A DDPM method that presses Ctrl-C during optimisation step `step` (counted from 1)."""

    class Interrupted(DDPM):
        def step(self, batch):
            values = super().step(batch)
            if self.updates == step:
                os.kill(os.getpid(), signal.SIGINT)
            return values

    return Interrupted


def test_resume_is_exact(toy, tmp_path, monkeypatch):
    root, _ = toy
    options = dict(TOY, preview_images=0, save_every=100)
    import imgforge.train.api as api

    monkeypatch.setattr("imgforge.train.ddpm.DDPM", interrupt_at(3))
    with pytest.raises(KeyboardInterrupt):
        api.train_ddpm(root / "images", tmp_path / "run", model_config=str(root / "unet.json"), **options)
    monkeypatch.undo()
    assert torch.load(tmp_path / "run" / "train_state" / "latest.pt", weights_only=True)["step"] == 3
    api.train_ddpm(root / "images", tmp_path / "run", model_config=str(root / "unet.json"), resume=True, **options)
    resumed = torch.load(tmp_path / "run" / "train_state" / "latest.pt", weights_only=True)
    whole = torch.load(root / "run" / "train_state" / "latest.pt", weights_only=True)
    assert resumed["step"] == whole["step"] == 6
    for part in ("unet", "ema"):
        for key, value in whole["modules"][part].items():
            assert torch.equal(resumed["modules"][part][key], value), f"{part}.{key}"


def test_fine_tuning_starts_from_the_given_folder(toy, tmp_path):
    root, _ = toy
    source = load_model(str(root / "run"))
    result = train_ddpm(root / "images", tmp_path / "tuned", from_model=str(root / "run"),
                        **dict(TOY, steps=1, preview_images=0))
    assert result.step == 1
    tuned = load_file(str(tmp_path / "tuned" / "diffusion_pytorch_model.safetensors"))
    # the first update has lr 0 (warm-up) and the first EMA update copies the weights: nothing moved
    assert all(torch.equal(tuned[k], v) for k, v in source.unet.state_dict().items())
    assert json.loads((tmp_path / "tuned" / "scheduler_config.json").read_text()) == source.scheduler_config


def test_cli_trains_and_sample_reads_the_run(toy, tmp_path, capsys):
    root, _ = toy
    run = tmp_path / "run"
    code = main(["train", "ddpm", str(root / "images"), "-o", str(run), "--model-config", str(root / "unet.json"),
                 "--steps", "2", "--batch-size", "4", "--warmup", "1", "--loader-workers", "0", "--json", "--quiet",
                 "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["summary"]["step"] == 2
    assert main(["sample", "--model", str(run), "-n", "1", "--steps", "2", "--sampler", "ddim", "-o",
                 str(tmp_path / "drawn"), "--quiet"]) == 0
    assert (tmp_path / "drawn" / "sample_00000.png").is_file()


def test_bad_options_are_one_line_errors(toy, tmp_path, capsys):
    root, _ = toy
    code = main(["train", "ddpm", str(root / "images"), "-o", str(tmp_path / "r"), "--model-config",
                 str(root / "unet.json"), "--from", str(root / "run")])
    error = capsys.readouterr().err
    assert code == 1 and "not both" in error and "Traceback" not in error
    code = main(["train", "ddpm", str(tmp_path / "missing"), "-o", str(tmp_path / "r"), "--model-config",
                 str(root / "unet.json")])
    error = capsys.readouterr().err
    assert code == 1 and "image folder not found" in error and len(error.strip().splitlines()) == 1


@pytest.mark.slow
def test_two_processes_under_torchrun_end_with_the_weights_of_one(toy, tmp_path):
    root, _ = toy
    options = ["--model-config", str(root / "unet.json"), "--steps", "3", "--warmup", "1", "--batch-size", "8",
               "--dropout", "0", "--loader-workers", "0", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    for processes, run in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={processes}", "-m", "imgforge", "train", "ddpm", str(root / "images"),
                        "-o", str(run), *options], env=env, check=True, timeout=600)
    assert_same_weights(tmp_path / "one", tmp_path / "two", steps=3)


def assert_same_weights(first: Path, second: Path, steps: int) -> None:
    states = [torch.load(run / "train_state" / "latest.pt", weights_only=True) for run in (first, second)]
    assert [state["step"] for state in states] == [steps, steps]
    one, two = (state["modules"]["unet"] for state in states)
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst <= 1e-5


@pytest.mark.slow
def test_ray_train_workers_end_with_the_weights_of_one_process(toy, tmp_path, ray_address):
    root, _ = toy
    options = dict(model_config=str(root / "unet.json"), steps=3, warmup=1, batch_size=8, dropout=0.0,
                   loader_workers=0, quiet=True, preview_images=0)
    train_ddpm(root / "images", tmp_path / "local", **options)
    train_ddpm(root / "images", tmp_path / "ray", engine="ray", workers=2, **options)
    assert_same_weights(tmp_path / "local", tmp_path / "ray", steps=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_on_gpu_keeps_float32_state(toy, tmp_path, precision):
    root, _ = toy
    result = train_ddpm(root / "images", tmp_path / "run", model_config=str(root / "unet.json"), device="cuda",
                        precision=precision, **dict(TOY, steps=3, preview_images=0))
    assert np.isfinite(result.losses["loss"])
    state = torch.load(tmp_path / "run" / "train_state" / "latest.pt", weights_only=True)
    assert {v.dtype for part in ("unet", "ema") for v in state["modules"][part].values()} == {torch.float32}
    assert {v.dtype for v in state["optimizers"]["adam"]["state"][0].values() if v.dim()} == {torch.float32}
