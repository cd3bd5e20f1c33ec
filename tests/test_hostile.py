"""Hostile names, options and side outputs (issue 8): each test reproduces one way a batch used to break.

Most of them stop before any model is loaded, so they need no weights: the plan is refused first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine_tasks import run
from imgforge.batch import Job, plan_jobs
from imgforge.cli import main
from imgforge.errors import InputError, OutputError
from imgforge.imageio import partial_path

REPO = Path(__file__).resolve().parents[1]


def image(path: Path, value: int = 0, size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def digest(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMGFORGE_MANIFEST", str(tmp_path / "none.toml"))  # no model can load by accident
    (tmp_path / "none.toml").write_text("")
    return tmp_path


def stderr_lines(capfd) -> list[str]:
    return capfd.readouterr().err.strip().splitlines()


# ---- 1. side outputs are planned with the main outputs ----------------------------------------------------


@pytest.fixture
def offline_zoo(here, monkeypatch):
    """The real manifest (a restore run checks its model's networks before planning outputs), offline with an
    empty cache: an output error must come before any weights file is looked for (that would exit 4)."""
    monkeypatch.delenv("IMGFORGE_MANIFEST")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(here / "hf"))
    return here


def test_a_saved_mask_never_overwrites_another_input(offline_zoo, capfd):
    here = offline_zoo
    first, second = image(here / "photo.png", 10), image(here / "photo_restored_mask.png", 20)
    before = digest(first), digest(second)
    assert main(["restore", "photo.png", "photo_restored_mask.png", "--save-mask"]) == 1
    (line,) = stderr_lines(capfd)
    assert line == ("error: the mask output for photo.png would overwrite the input photo_restored_mask.png; "
                    "choose another -o folder or a --suffix")
    assert (digest(first), digest(second)) == before
    assert sorted(p.name for p in here.iterdir()) == ["none.toml", "photo.png", "photo_restored_mask.png"]


def test_a_saved_mask_never_overwrites_a_given_mask(offline_zoo, capfd):
    here = offline_zoo
    image(here / "in" / "photo.png")
    image(here / "masks" / "photo.png")  # --mask folder: masks named like the inputs
    image(here / "masks" / "photo_mask.png")
    code = main(["restore", "in/photo.png", "-o", "masks/photo.png", "--mask", "masks", "--save-mask"])
    assert code == 1
    assert "would overwrite the input masks/photo" in capfd.readouterr().err


def test_a_job_is_plain_data_that_pickles():
    import pickle

    job = Job(Path("a.png"), Path("out/a.png"), (("_mask.png", Path("out/a_mask.png")),))
    assert pickle.loads(pickle.dumps(job)) == job
    assert job.side_output("_mask.png") == Path("out/a_mask.png")
    assert job.outputs == (Path("out/a.png"), Path("out/a_mask.png"))


def test_a_side_output_of_one_job_is_never_the_output_of_another(here):
    image(here / "in" / "a.png")
    image(here / "in" / "a_mask.png")
    with pytest.raises(InputError, match="the mask output for in/a.png and the output for in/a_mask.png would "
                                         "both be written to out/a_mask.png"):
        plan_jobs(["in"], "out", side_suffixes=["_mask.png"])
    jobs = plan_jobs(["in/a.png"], "out", side_suffixes=["_mask.png", "_faces.png"])
    assert jobs[0].outputs == (Path("out/a.png"), Path("out/a_mask.png"), Path("out/a_faces.png"))


def test_the_sample_grid_never_replaces_a_sample(here, capfd):
    assert main(["sample", "-n", "4", "-o", "out", "--grid", "out/sample_00000.png", "--device", "cpu"]) == 1
    (line,) = stderr_lines(capfd)
    assert line == "error: sample 0 and the grid would both be written to out/sample_00000.png"
    assert not (here / "out").exists()


# ---- 4. every output stays inside -o ----------------------------------------------------------------------


@pytest.mark.parametrize("option", [["--suffix", "/../../esc/x"], ["--suffix", "..\\x"], ["--format", "png/../x"]])
def test_suffix_and_format_cannot_leave_the_output_folder(here, capfd, option):
    image(here / "deep" / "er" / "in.png")
    assert main(["translate", "deep/er/in.png", "-o", "deep/er/out", *option]) == 1
    assert "error: " in capfd.readouterr().err
    assert sorted(str(p.relative_to(here)) for p in here.rglob("*")) == [
        "deep", "deep/er", "deep/er/in.png", "none.toml"]


def test_outputs_through_a_symlink_out_of_the_folder_are_refused(here):
    image(here / "in" / "sub" / "a.png")
    (here / "elsewhere").mkdir()
    (here / "out").mkdir()
    (here / "out" / "sub").symlink_to(here / "elsewhere")
    with pytest.raises(OutputError, match="would be written to out/sub/a.png, outside the output folder out"):
        plan_jobs(["in"], "out", recursive=True)


def test_a_trailing_slash_makes_the_output_a_folder(here):
    image(here / "a.png")
    assert [job.target for job in plan_jobs(["a.png"], "res.png/")] == [Path("res.png/a.png")]
    assert [job.target for job in plan_jobs(["a.png"], "res.png")] == [Path("res.png")]


def test_the_output_folder_appears_only_when_something_is_written(here, capfd):
    image(here / "a.png")
    assert main(["translate", "a.png", "-o", "new/out", "--model", "no-such-model"]) == 1
    assert "no-such-model" in capfd.readouterr().err
    assert not (here / "new").exists()


def test_a_file_in_the_way_of_the_output_folder_is_named(here):
    image(here / "a.png")
    (here / "taken").write_text("a file")
    with pytest.raises(OutputError, match="^cannot create output folder taken/out: taken is a file$"):
        plan_jobs(["a.png"], "taken/out")


# ---- 6. a folder where an output should be ---------------------------------------------------------------


@pytest.mark.parametrize("skip_existing", [False, True])
def test_a_folder_in_place_of_an_output_fails_that_input(here, skip_existing):
    jobs = [Job(image(here / name), here / "out" / name, (("_mask.png", here / "out" / (name[0] + "_mask.png")),))
            for name in ("a.png", "b.png", "c.png")]
    (here / "out" / "a.png").mkdir(parents=True)
    (here / "out" / "c_mask.png").mkdir()
    saved = []
    report = run(jobs, load=lambda job: job, compute=lambda items: items,
                 save=lambda job, item, result: saved.append(job.source.name), skip_existing=skip_existing,
                 quiet=True)
    assert saved == ["b.png"] and report.skipped == 0
    assert [(path.name, reason) for path, reason in report.failed] == [
        ("a.png", f"cannot write {here / 'out' / 'a.png'}: a folder is in the way"),
        ("c.png", f"cannot write {here / 'out' / 'c_mask.png'}: a folder is in the way")]


# ---- 7. `**` and symlinked folders --------------------------------------------------------------------------


def test_double_star_does_not_follow_symlink_loops(here):
    image(here / "scans" / "a.png")
    image(here / "scans" / "deep" / "b.png")
    (here / "scans" / "up").symlink_to("..")
    (here / "scans" / "deep" / "up").symlink_to("../..")
    script = ("from imgforge.batch import plan_jobs\n"
              "print([str(job.source) for job in plan_jobs(['scans/**/*.png'], 'out')])")
    done = subprocess.run([sys.executable, "-c", script], cwd=here, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['scans/a.png', 'scans/deep/b.png']"


# ---- 2. user text is never Rich markup ------------------------------------------------------------------


def test_a_glob_with_markup_is_printed_as_it_is(here, capfd):
    assert main(["translate", "nomatch[/b].png", "-o", "out", "--model", "x"]) == 1
    assert stderr_lines(capfd) == ["error: no images match nomatch[/b].png"]
    assert main(["translate", "scans/[a-z].png", "-o", "out", "--model", "x"]) == 1
    assert stderr_lines(capfd) == ["error: no images match scans/[a-z].png"]


def test_a_name_with_a_newline_stays_on_its_failed_line(here, capfd):
    bad = here / "two\nlines.png"
    bad.write_bytes(b"not an image")
    jobs = plan_jobs([str(bad)], "out")
    run(jobs, load=lambda job: Image.open(job.source), compute=lambda items: items, save=lambda *_: None)
    lines = [line for line in stderr_lines(capfd) if line.startswith("failed:")]
    assert len(lines) == 1 and "two\\nlines.png" in lines[0]


# ---- 9. resuming and Ctrl-C ----------------------------------------------------------------------------------


def test_sample_skip_existing_removes_the_temp_file_of_a_killed_run(here, capfd):
    from test_sample_cli import write_folder

    model = write_folder(here / "ddpm")
    out = here / "out"
    image(out / "sample_00000.png", size=(8, 8))
    partial_path(out / "sample_00000.png").write_bytes(b"half a png")
    code = main(["sample", "-m", str(model), "-n", "1", "--steps", "1", "-o", "out", "--skip-existing",
                 "--device", "cpu", "-q"])
    assert code == 0, capfd.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["sample_00000.png"]


def test_ctrl_c_in_sample_prints_one_interrupted_line(here, capfd, monkeypatch):
    from test_sample_cli import write_folder
    import imgforge.pipelines.sample as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.Drawer, "__call__", interrupted)
    model = write_folder(here / "ddpm")
    assert main(["sample", "-m", str(model), "-n", "2", "--steps", "1", "-o", "out", "--device", "cpu", "-q"]) == 130
    assert stderr_lines(capfd) == ["interrupted: 0 done, 0 skipped, 0 failed, 2 not run; outputs written so far are "
                                   "complete"]


def test_ctrl_c_in_a_batch_prints_one_interrupted_line(here, capfd, monkeypatch):
    import imgforge.pipelines.translate as pipeline

    image(here / "a.png")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "load_generator", interrupted)
    assert main(["translate", "a.png", "-o", "out", "--model", "x", "-q"]) == 130
    assert stderr_lines(capfd) == ["interrupted"]


# ---- 5. faults that would fail every image stop the run first ---------------------------------------------


def test_missing_onnxruntime_stops_the_run_before_the_first_image(here, capfd, monkeypatch):
    image(here / "a.png")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert main(["translate", "a.png", "-o", "out", "--model", "x", "--backend", "onnx"]) == 1
    assert stderr_lines(capfd) == ["error: --backend onnx needs the onnxruntime package: pip install "
                                   "'imgforge[onnx]' (GPU) or 'imgforge[onnx-cpu]'"]


@pytest.mark.parametrize("value", ["lots", "-4", "0"])
def test_a_bad_pixel_limit_stops_the_run_before_the_first_image(here, capfd, monkeypatch, value):
    image(here / "a.png")
    monkeypatch.setenv("IMGFORGE_MAX_PIXELS", value)
    assert main(["translate", "a.png", "-o", "out", "--model", "x"]) == 1
    assert stderr_lines(capfd) == [f"error: IMGFORGE_MAX_PIXELS must be a whole number of pixels, not '{value}'"]


def test_a_run_wide_error_inside_the_batch_stops_it(here):
    from imgforge.errors import RunWideError

    def compute(items):
        raise RunWideError("the backend is gone")

    jobs = [Job(here / "a", here / "out" / "a"), Job(here / "b", here / "out" / "b")]
    with pytest.raises(RunWideError):
        run(jobs, load=lambda job: job, compute=compute, save=lambda *_: None, quiet=True)


def _conv():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1))


def _conv_export():
    import torch
    from imgforge.nets.registry import Export

    return Export("conv", _conv(), lambda h, w: (torch.randn(1, 3, h, w),), ("input",), ("output",),
                  {"input": {0: "batch", 2: "height", 3: "width"}})


def test_a_damaged_cached_onnx_graph_is_exported_again(tmp_path, monkeypatch):
    import torch
    from imgforge import runtime

    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path))
    example = torch.randn(1, 3, 8, 8)
    runtime.make_runner(_conv(), backend="onnx", device=torch.device("cpu"), export=_conv_export())
    (graph,) = (tmp_path / "onnx").glob("*.onnx")
    graph.write_bytes(b"half a graph")  # a full disk, a killed copy
    runner = runtime.make_runner(_conv(), backend="onnx", device=torch.device("cpu"), export=_conv_export())
    assert (runner(example) - _conv()(example)).abs().max() < 1e-5
    assert graph.stat().st_size > 100


def test_an_onnx_cache_that_is_a_file_is_named(tmp_path, monkeypatch):
    import torch
    from imgforge import runtime
    from imgforge.errors import RunWideError

    (tmp_path / "cache").write_text("a file")
    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RunWideError, match=r"cannot create the ONNX graph cache .*cache/onnx \(set IMGFORGE_CACHE"):
        runtime.make_runner(_conv(), backend="onnx", device=torch.device("cpu"), export=_conv_export())


# ---- from reading the code ------------------------------------------------------------------------------


def test_sampling_in_bf16_leaves_the_callers_model_alone(tmp_path):
    import torch
    from test_sample_cli import write_folder
    from imgforge.pipelines.sample import generate, load_model

    model = load_model(str(write_folder(tmp_path / "ddpm")))
    before = {name: tensor.clone() for name, tensor in model.unet.state_dict().items()}
    list(generate(model, [0], steps=1, precision="bf16", device="cpu"))
    after = model.unet.state_dict()
    assert all(after[name].dtype == torch.float32 and torch.equal(after[name], before[name]) for name in before)


def test_a_runner_never_moves_the_module_it_is_given():
    import torch
    from imgforge import runtime

    module = _conv()
    runner = runtime.make_runner(module, device=torch.device("meta"))
    assert {p.device.type for p in module.parameters()} == {"cpu"}
    assert {p.device.type for p in runner.module.parameters()} == {"meta"}
    same = runtime.make_runner(module, device=torch.device("cpu"))
    assert same.module is module  # nothing to change: no copy


def test_load_model_of_a_restore_model_from_a_user_manifest(tmp_path, monkeypatch, write_manifest):
    import imgforge
    from imgforge.errors import WeightsUnavailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    write_manifest(tmp_path, """
        [models.my-restore]
        task = "restore"
        arch = "oldphoto"
        description = "a restore model of my own"
        files.vae_a = { hub = "me/mine", path = "restoration/VAE_A_quality/latest_net_G.pth" }
        files.vae_b = { hub = "me/mine", path = "restoration/VAE_B_quality/latest_net_G.pth" }
        files.mapping = { hub = "me/mine", path = "restoration/mapping_quality/latest_net_mapping.pth" }
    """)
    with pytest.raises(WeightsUnavailable, match="of model 'my-restore' is not cached"):
        imgforge.load_model("my-restore")


# ---- 8. size checks before the body is read -------------------------------------------------------------


def test_a_huge_sparse_file_costs_its_pixels_not_its_size(tmp_path):
    import tracemalloc

    from imgforge.imageio import read_image

    path = image(tmp_path / "sparse.png", 7, size=(8, 8))
    os.truncate(path, 300 << 20)  # 300 MB of zeros after the image (sparse: no disk space)
    tracemalloc.start()
    try:
        picture = read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert picture.pixels.shape == (8, 8, 3) and int(picture.pixels.max()) == 7
    assert peak < 20 << 20


def test_a_16_bit_file_larger_than_its_pixels_can_be_is_refused_unread(tmp_path):
    import cv2

    from imgforge.imageio import read_image

    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), np.full((8, 8, 3), 4000, np.uint16))
    assert read_image(path).pixels.dtype == np.uint16
    os.truncate(path, 100 << 20)
    with pytest.raises(InputError, match=r"deep.png: the file is 104857600 bytes, more than a 8x8 image can hold"):
        read_image(path)


# ---- 10. no "internal error" for a bad file: the file and the field are named ---------------------------


def test_a_binary_manifest_is_named(here, capfd, monkeypatch):
    (here / "binary.toml").write_bytes(bytes(range(256)) * 4)
    monkeypatch.setenv("IMGFORGE_MANIFEST", str(here / "binary.toml"))
    assert main(["models", "list"]) == 1
    assert stderr_lines(capfd) == [f"error: {here / 'binary.toml'}: not a model manifest (TOML is UTF-8 text; "
                                   "this file is not)"]


@pytest.mark.parametrize("size,problem", [
    (100000, "sample_size 100000 makes images of 10000000000 pixels, over the limit of 178956970"),
    (-4, "sample_size must be a positive whole number of pixels or a [height, width] pair, not -4"),
    ([8, 0], "sample_size must be a positive whole number of pixels or a [height, width] pair, not [8, 0]"),
])
def test_a_bad_ddpm_sample_size_is_named(here, capfd, size, problem):
    from test_sample_cli import TINY_UNET, write_folder

    model = write_folder(here / "ddpm", {**TINY_UNET, "sample_size": size})
    assert main(["sample", "-m", str(model), "-n", "1", "--steps", "1", "-o", "out", "--device", "cpu", "-q"]) == 1
    (line,) = stderr_lines(capfd)
    assert line.startswith(f"error: {model / 'config.json'}: {problem}")


# ---- 11. smaller messages --------------------------------------------------------------------------------


def test_non_finite_weights_are_refused_naming_the_tensor(here, capfd):
    import torch
    from safetensors.torch import save_file

    from imgforge.checkpoint import load_state_dict
    from imgforge.errors import ModelError

    weights = {"model.0.weight": torch.ones(2, 2), "model.1.bias": torch.tensor([0.0, float("nan")])}
    save_file(weights, str(here / "nan.safetensors"))
    torch.save({"state": {"w": torch.tensor([float("inf")])}}, here / "inf.pth")
    with pytest.raises(ModelError, match=r"nan.safetensors: tensor 'model.1.bias' holds NaN or infinite values"):
        load_state_dict(here / "nan.safetensors")
    with pytest.raises(ModelError, match=r"inf.pth: tensor 'state.w' holds NaN or infinite values"):
        load_state_dict(here / "inf.pth")
    image(here / "a.png")
    assert main(["translate", "a.png", "-o", "out", "--checkpoint", "nan.safetensors"]) == 1
    assert stderr_lines(capfd) == ["error: nan.safetensors: tensor 'model.1.bias' holds NaN or infinite values; "
                                   "the weights are damaged"]


def test_a_checkpoint_that_is_a_folder_is_called_one(here, capfd):
    image(here / "a.png")
    (here / "run" / "latest").mkdir(parents=True)
    assert main(["translate", "a.png", "-o", "out", "--checkpoint", "run/latest"]) == 1
    assert stderr_lines(capfd) == ["error: run/latest is a folder, not a weights file (give the .pth or "
                                   ".safetensors file inside it)"]


def test_manifest_errors_keep_the_table_name(here, capfd, monkeypatch):
    (here / "unknownkey.toml").write_text('[models.t1]\ntask = "sample"\nfoo = 1\n')
    monkeypatch.setenv("IMGFORGE_MANIFEST", str(here / "unknownkey.toml"))
    assert main(["models", "list"]) == 1
    (line,) = stderr_lines(capfd)
    assert line.startswith(f"error: {here / 'unknownkey.toml'}: [models.t1]: unknown key(s) foo; allowed: ")


# ---- 12. --help reads well at 80 and 120 columns ------------------------------------------------------------

COMMANDS = [[], ["translate"], ["restore"], ["sample"], ["export"], ["models"], ["models", "list"],
            ["models", "pull"], ["models", "verify"], ["models", "path"], ["models", "inspect"], ["models", "lock"]]


def help_text(command: list[str], columns: int, capsys, monkeypatch) -> list[str]:
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main([*command, "--help"]) == 0
    return capsys.readouterr().out.splitlines()


def paragraphs(lines: list[str]) -> list[list[str]]:
    """The description paragraphs: the lines between the usage line and the first section heading."""
    found, current = [], []
    for line in lines[1:]:
        if line.endswith(":") and not line.startswith(" "):
            break
        if line.strip():
            current.append(line)
        elif current:
            found.append(current)
            current = []
    return found + ([current] if current else [])


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "imgforge")
def test_help_is_wrapped_to_the_terminal_without_placeholders(command, columns, capsys, monkeypatch):
    lines = help_text(command, columns, capsys, monkeypatch)
    width = min(columns, 120) - 2  # Click's margin
    assert all(len(line) <= width for line in lines)
    for paragraph in paragraphs(lines):  # a line ends early only where the next word would not fit
        for line, following in zip(paragraph, paragraph[1:]):
            assert len(line) + 1 + len(following.split()[0]) > width, (line, following)
    options = [line for line in lines if line.lstrip().startswith("-")]
    assert options and not any(placeholder in line for line in options
                               for placeholder in ("<bool>", "<str>", "<int", "<path>", "<float"))


def test_the_command_list_gives_whole_first_sentences(capsys, monkeypatch):
    lines = help_text([], 120, capsys, monkeypatch)
    commands = {line.split()[0]: line.split(None, 1)[1] for line in lines[lines.index("Commands:") + 1:] if line}
    assert {"restore", "sample", "translate", "models"} <= set(commands)
    for command, summary in commands.items():  # a whole sentence, not cut at "et al." nor shortened with "..."
        assert summary.endswith(".") and not summary.endswith("..."), (command, summary)
    assert commands["sample"] == "Generate images with DDPM, from the official checkpoints or your own diffusers model."


# ---- 13. a CPU-only install ---------------------------------------------------------------------------------


def test_the_cpu_build_of_torch_meets_the_requirement_and_the_readme_says_how():
    import tomllib

    import torch
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    (torch_requirement,) = [r for r in requirements if r.name == "torch"]
    # pip keeps an installed CPU build (a +cpu local version) only if the requirement accepts it
    for version in ("2.4.0+cpu", "2.6.0+cpu", torch.__version__):
        assert torch_requirement.specifier.contains(version), version
    assert not [r.name for r in requirements if r.name.startswith(("nvidia", "triton", "cuda"))]
    readme = (REPO / "README.md").read_text()
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in readme
