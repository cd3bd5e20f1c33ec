"""`imgforge sample` end to end with a tiny DDPM: from a local Hub server, from local folders, per-image seeds,
resuming, Ctrl-C, the planned outputs, and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save

from helpers import make_image, stderr_lines
from imgforge.cli import main
from imgforge.imageio import partial_path
from imgforge.nets.ddpm_unet import DDPMUNet
from imgforge.pipelines.sample import generate, load_model, sample

TINY_UNET = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "sample_size": 8, "in_channels": 3,
    "out_channels": 3, "block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1, "norm_num_groups": 4,
    "norm_eps": 1e-6, "freq_shift": 1, "flip_sin_to_cos": False, "downsample_padding": 0,
    "attention_head_dim": None, "act_fn": "silu", "time_embedding_type": "positional",
}
SCHEDULER = {
    "_class_name": "DDPMScheduler", "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "num_train_timesteps": 1000, "variance_type": "fixed_large", "clip_sample": True, "trained_betas": None,
}
LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def tiny_weights(legacy_names: bool = False) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = DDPMUNet(TINY_UNET).state_dict()
    if legacy_names:  # as the 2022 Hub conversions store attention
        renamed = {}
        for key, value in state.items():
            for new, old in LEGACY.items():
                key = key.replace(f".{new}.", f".{old}.") if ".attentions." in key else key
            renamed[key] = value
        state = renamed
    return state


def write_folder(folder: Path, unet_config: dict = TINY_UNET, layout: str = "flat") -> Path:
    unet_dir = folder / "unet" if layout == "pipeline" else folder
    scheduler_dir = folder / "scheduler" if layout == "pipeline" else folder
    unet_dir.mkdir(parents=True, exist_ok=True)
    scheduler_dir.mkdir(parents=True, exist_ok=True)
    (unet_dir / "config.json").write_text(json.dumps(unet_config))
    (unet_dir / "diffusion_pytorch_model.safetensors").write_bytes(save(tiny_weights()))
    (scheduler_dir / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    return folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("tiny") / "ddpm")


def test_cli_end_to_end_from_the_hub(hub_server, write_manifest, tmp_path, capfd):
    repo = "org/tiny-ddpm"
    hub_server.add_file(repo, "config.json", json.dumps(TINY_UNET).encode())
    hub_server.add_file(repo, "scheduler_config.json", json.dumps(SCHEDULER).encode())
    hub_server.add_file(repo, "diffusion_pytorch_model.safetensors", save(tiny_weights(legacy_names=True)))
    write_manifest(tmp_path, f"""
        [models.tiny-ddpm]
        task = "sample"
        arch = "ddpm_unet"
        description = "a tiny DDPM"
        files.config = {hub_server.file_table(repo, "config.json")}
        files.scheduler = {hub_server.file_table(repo, "scheduler_config.json")}
        files.weights = {hub_server.file_table(repo, "diffusion_pytorch_model.safetensors")}
    """)
    out, grid = tmp_path / "out", tmp_path / "grid.png"
    rc = main(["sample", "--model", "tiny-ddpm", "-n", "5", "--steps", "4", "--batch-size", "2", "--device", "cpu",
               "-o", str(out), "--grid", str(grid), "--seed", "7"])
    assert rc == 0, capfd.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"sample_{i:05d}.png" for i in range(5)]
    files = [np.asarray(Image.open(out / n)) for n in names]
    assert all(f.shape == (8, 8, 3) and f.dtype == np.uint8 for f in files)
    assert len({f.tobytes() for f in files}) == 5  # every image has its own noise
    tiled = np.asarray(Image.open(grid))
    assert tiled.shape == (2 + 2 * 10, 2 + 3 * 10, 3)  # 3 columns x 2 rows of 8 px with 2 px padding
    np.testing.assert_array_equal(tiled[12:20, 2:10], files[3])
    # the API gives the same images in one batch of five
    report = sample("tiny-ddpm", num=5, steps=4, batch_size=5, seed=7, device="cpu", quiet=True)
    np.testing.assert_array_equal(report.images, np.stack(files))


def test_an_image_does_not_depend_on_batch_size_or_count(tiny_folder):
    model = load_model(str(tiny_folder))
    by_one = {i: img for batch, imgs in generate(model, range(4), steps=5, seed=3, batch_size=1, device="cpu")
              for i, img in zip(batch, imgs)}
    by_three = {i: img for batch, imgs in generate(model, [1, 3, 0], steps=5, seed=3, batch_size=3, device="cpu")
                for i, img in zip(batch, imgs)}
    for i in (0, 1, 3):
        np.testing.assert_array_equal(by_three[i], by_one[i])
    assert not np.array_equal(by_one[0], by_one[1])
    other_seed = next(generate(model, [0], steps=5, seed=4, device="cpu"))[1][0]
    assert not np.array_equal(other_seed, by_one[0])


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_fast_samplers_run_from_the_cli(tiny_folder, tmp_path, sampler):
    out = tmp_path / "out"
    assert main(["sample", "-m", str(tiny_folder), "-n", "2", "--steps", "3", "--sampler", sampler,
                 "--device", "cpu", "-q", "-o", str(out)]) == 0
    assert len(list(out.glob("sample_*.png"))) == 2


def test_skip_existing_resumes_and_rewrites_only_what_is_missing(tiny_folder, tmp_path):
    out = tmp_path / "out"
    first = sample(str(tiny_folder), num=4, steps=3, output=out, device="cpu", quiet=True)
    assert [p.name for p in first.written] == [f"sample_{i:05d}.png" for i in range(4)]
    (out / "sample_00002.png").unlink()
    again = sample(str(tiny_folder), num=4, steps=3, output=out, device="cpu", quiet=True, skip_existing=True,
                   grid=tmp_path / "g.png")
    assert [p.name for p in again.written] == ["sample_00002.png"] and again.skipped == 3
    np.testing.assert_array_equal(np.asarray(Image.open(out / "sample_00002.png")),
                                  sample(str(tiny_folder), num=3, steps=3, device="cpu", quiet=True).images[2])
    assert not list(out.glob(".*"))  # no partial files left behind


def test_a_diffusers_pipeline_folder_loads(tmp_path):
    folder = write_folder(tmp_path / "pipe", layout="pipeline")
    report = sample(str(folder), num=1, steps=2, device="cpu", quiet=True)
    assert report.images.shape == (1, 8, 8, 3)


def test_a_bad_config_is_a_one_line_error(tmp_path, capfd):
    folder = write_folder(tmp_path / "bad", dict(TINY_UNET, up_block_types=["AttnUpBlock2D", "SkipUpBlock2D"]))
    rc = main(["sample", "-m", str(folder), "-n", "1", "--steps", "2", "--device", "cpu", "-o", str(tmp_path / "o")])
    err = capfd.readouterr().err
    assert rc == 1
    assert "up block type 'SkipUpBlock2D' is not supported" in err and "Traceback" not in err


def test_a_folder_without_weights_is_a_clear_error(tmp_path, capfd):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_UNET))
    rc = main(["sample", "-m", str(folder), "-n", "1", "--device", "cpu", "-o", str(tmp_path / "o")])
    assert rc == 1
    assert "not a diffusers DDPM folder" in capfd.readouterr().err


def test_fp16_on_the_cpu_is_refused(tiny_folder, tmp_path, capfd):
    rc = main(["sample", "-m", str(tiny_folder), "-n", "1", "--device", "cpu", "--precision", "fp16",
               "-o", str(tmp_path / "o")])
    assert rc == 2 and "fp16 is not supported on the CPU" in capfd.readouterr().err  # a usage error


def test_bf16_stays_close_to_fp32(tiny_folder):
    fp32 = sample(str(tiny_folder), num=2, steps=3, device="cpu", quiet=True).images.astype(int)
    bf16 = sample(str(tiny_folder), num=2, steps=3, device="cpu", precision="bf16", quiet=True).images.astype(int)
    assert np.abs(fp32 - bf16).mean() < 4


def test_ctrl_c_leaves_complete_files_and_a_resume_finishes_the_run(tiny_folder, tmp_path, monkeypatch, capfd):
    import imgforge.pipelines.sample as pipeline

    out = tmp_path / "out"
    write = pipeline.write_image
    calls = []

    def interrupted_on_the_third(path, pixels, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        write(path, pixels, **kwargs)

    monkeypatch.setattr(pipeline, "write_image", interrupted_on_the_third)
    args = ["sample", "-m", str(tiny_folder), "-n", "4", "--steps", "3", "--batch-size", "2", "--device", "cpu",
            "-q", "-o", str(out)]
    assert main(args) == 130
    assert sorted(p.name for p in out.iterdir()) == ["sample_00000.png", "sample_00001.png"]
    monkeypatch.setattr(pipeline, "write_image", write)
    assert main(args + ["--skip-existing"]) == 0
    resumed = np.stack([np.asarray(Image.open(out / f"sample_{i:05d}.png")) for i in range(4)])
    np.testing.assert_array_equal(resumed, sample(str(tiny_folder), num=4, steps=3, device="cpu", quiet=True).images)


def test_the_sample_grid_never_replaces_a_sample(here, capfd):
    assert main(["sample", "-n", "4", "-o", "out", "--grid", "out/sample_00000.png", "--device", "cpu"]) == 1
    (line,) = stderr_lines(capfd)
    assert line == "error: sample 0 and the grid would both be written to out/sample_00000.png"
    assert not (here / "out").exists()


def test_sample_skip_existing_removes_the_temp_file_of_a_killed_run(tiny_folder, here, capfd):
    out = here / "out"
    make_image(out / "sample_00000.png", size=(8, 8))
    partial_path(out / "sample_00000.png").write_bytes(b"half a png")
    code = main(["sample", "-m", str(tiny_folder), "-n", "1", "--steps", "1", "-o", "out", "--skip-existing",
                 "--device", "cpu", "-q"])
    assert code == 0, capfd.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["sample_00000.png"]


def test_ctrl_c_in_sample_prints_one_interrupted_line(tiny_folder, here, capfd, monkeypatch):
    import imgforge.pipelines.sample as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.Drawer, "__call__", interrupted)
    assert main(["sample", "-m", str(tiny_folder), "-n", "2", "--steps", "1", "-o", "out", "--device", "cpu",
                 "-q"]) == 130
    assert stderr_lines(capfd) == ["interrupted: 0 done, 0 skipped, 0 failed, 2 not run; outputs written so far are "
                                   "complete"]


@pytest.mark.parametrize("size,problem", [
    (100000, "sample_size 100000 makes images of 10000000000 pixels, over the limit of 178956970"),
    (-4, "sample_size must be a positive whole number of pixels or a [height, width] pair, not -4"),
    ([8, 0], "sample_size must be a positive whole number of pixels or a [height, width] pair, not [8, 0]"),
])
def test_a_bad_ddpm_sample_size_is_named(here, capfd, size, problem):
    model = write_folder(here / "ddpm", {**TINY_UNET, "sample_size": size})
    assert main(["sample", "-m", str(model), "-n", "1", "--steps", "1", "-o", "out", "--device", "cpu", "-q"]) == 1
    (line,) = stderr_lines(capfd)
    assert line.startswith(f"error: {model / 'config.json'}: {problem}")


def test_sampling_in_bf16_leaves_the_callers_model_alone(tiny_folder):
    model = load_model(str(tiny_folder))
    before = {name: tensor.clone() for name, tensor in model.unet.state_dict().items()}
    list(generate(model, [0], steps=1, precision="bf16", device="cpu"))
    after = model.unet.state_dict()
    assert all(after[name].dtype == torch.float32 and torch.equal(after[name], before[name]) for name in before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_gpu_samples_stay_close_to_the_cpu(tiny_folder, precision):
    cpu = sample(str(tiny_folder), num=2, steps=3, device="cpu", quiet=True).images.astype(int)
    gpu = sample(str(tiny_folder), num=2, steps=3, device="cuda", precision=precision, quiet=True).images.astype(int)
    assert np.abs(cpu - gpu).mean() < (1 if precision == "fp32" else 4)


def test_the_onnx_backend_gives_the_torch_images(tiny_folder, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path / "cache"))
    torch_images = sample(str(tiny_folder), num=2, steps=3, device="cpu", quiet=True).images.astype(int)
    report = sample(str(tiny_folder), num=2, steps=3, device="cpu", backend="onnx", quiet=True)
    assert np.abs(torch_images - report.images).max() <= 1
    assert report.provider == "onnxruntime:CPUExecutionProvider"
    assert list((tmp_path / "cache" / "onnx").glob("*.onnx"))
