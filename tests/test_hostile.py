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


def test_a_saved_mask_never_overwrites_another_input(here, capfd):
    first, second = image(here / "photo.png", 10), image(here / "photo_restored_mask.png", 20)
    before = digest(first), digest(second)
    assert main(["restore", "photo.png", "photo_restored_mask.png", "--save-mask"]) == 1
    (line,) = stderr_lines(capfd)
    assert line == ("error: the mask output for photo.png would overwrite the input photo_restored_mask.png; "
                    "choose another -o folder or a --suffix")
    assert (digest(first), digest(second)) == before
    assert sorted(p.name for p in here.iterdir()) == ["none.toml", "photo.png", "photo_restored_mask.png"]


def test_a_saved_mask_never_overwrites_a_given_mask(here, capfd):
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
