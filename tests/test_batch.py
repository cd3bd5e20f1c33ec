"""plan_jobs naming, side outputs planned with the main outputs, every output inside -o, the local engine's
failure handling / skipping / grouping, finish_batch, and a batch killed with SIGKILL that leaves only complete
outputs and resumes with --skip-existing."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgforge.batch import Job, plan_jobs
from imgforge.cli import main
from imgforge.cli.options import finish_batch
from imgforge.errors import ImgforgeError, InputError, OutputError, PartialFailure, RunWideError
from imgforge.imageio import read_image, write_image
from engine_tasks import run
from helpers import REPO_ROOT, kill_when_written, make_image, stderr_lines

DRIVER = Path(__file__).with_name("batch_driver.py")


@pytest.fixture
def photos(tmp_path, monkeypatch):
    """photos/{b.png, a.jpg, notes.txt, .hidden.png, sub/c.png, sub/deeper/d.webp}; cwd = tmp_path."""
    monkeypatch.chdir(tmp_path)
    for name in ["b.png", "a.jpg", ".hidden.png", "sub/c.png", "sub/deeper/d.webp"]:
        make_image(tmp_path / "photos" / name)
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    return Path("photos")


def pairs(jobs):
    return [(str(job.source), str(job.target)) for job in jobs]


# ---- plan_jobs --------------------------------------------------------------------------------------------


def test_folder_lists_its_images_sorted_into_the_output_folder(photos):
    jobs = plan_jobs(["photos"], "out")
    assert pairs(jobs) == [("photos/a.jpg", "out/a.jpg"), ("photos/b.png", "out/b.png")]
    assert not Path("out").exists()  # made by the first write: a run that fails to start leaves nothing


def test_recursive_folder_keeps_relative_paths(photos):
    jobs = plan_jobs(["photos"], "out", recursive=True, suffix="_x")
    assert pairs(jobs) == [
        ("photos/a.jpg", "out/a_x.jpg"),
        ("photos/b.png", "out/b_x.png"),
        ("photos/sub/c.png", "out/sub/c_x.png"),
        ("photos/sub/deeper/d.webp", "out/sub/deeper/d_x.webp"),
    ]


def test_extension_replaced(photos):
    jobs = plan_jobs(["photos"], "out", extension="PNG")
    assert [str(job.target) for job in jobs] == ["out/a.png", "out/b.png"]
    with pytest.raises(OutputError, match="unknown output format 'gif'"):
        plan_jobs(["photos"], "out", extension=".gif")


def test_without_output_next_to_the_input(photos):
    assert pairs(plan_jobs(["photos/a.jpg"], None, default_suffix="_restored")) == [
        ("photos/a.jpg", "photos/a_restored.jpg")]
    assert pairs(plan_jobs(["photos/a.jpg"], None, suffix="_mine", default_suffix="_restored")) == [
        ("photos/a.jpg", "photos/a_mine.jpg")]


def test_one_input_and_an_image_output_names_the_file(photos):
    assert pairs(plan_jobs(["photos/a.jpg"], "result.webp")) == [("photos/a.jpg", "result.webp")]
    with pytest.raises(InputError, match="names one file but there are 2 inputs"):
        plan_jobs(["photos"], "result.png")
    assert not Path("result.png").exists()


def test_globs_including_double_star(photos):
    assert pairs(plan_jobs(["photos/*.png"], "out")) == [("photos/b.png", "out/b.png")]
    jobs = plan_jobs(["photos/**/*.png"], "out")
    assert [str(job.source) for job in jobs] == ["photos/b.png", "photos/sub/c.png"]
    with pytest.raises(InputError, match=r"no images match photos/\*\.tif"):
        plan_jobs(["photos/*.tif"], "out")


def test_a_named_file_is_always_attempted(photos):
    jobs = plan_jobs(["photos/notes.txt", "photos/.hidden.png"], "out")
    # a format imgforge does not write gets a .png output
    assert pairs(jobs) == [("photos/notes.txt", "out/notes.png"), ("photos/.hidden.png", "out/.hidden.png")]


def test_inputs_that_match_nothing(photos):
    Path("empty").mkdir()
    with pytest.raises(InputError, match="no such file or folder"):
        plan_jobs(["photos/missing.png"], "out")
    with pytest.raises(InputError, match="no images in folder empty"):
        plan_jobs(["empty"], "out")
    make_image(Path("nested/inner/x.png"))
    with pytest.raises(InputError, match="no images in folder nested .*--recursive"):
        plan_jobs(["nested"], "out")
    assert pairs(plan_jobs(["nested"], "out", recursive=True)) == [("nested/inner/x.png", "out/inner/x.png")]


def test_duplicates_are_dropped(photos):
    assert pairs(plan_jobs(["photos/b.png", "photos", "./photos/b.png"], "out")) == [
        ("photos/b.png", "out/b.png"), ("photos/a.jpg", "out/a.jpg")]


def test_two_inputs_sharing_an_output_are_refused(photos):
    make_image(Path("photos/a.png"))
    with pytest.raises(InputError, match="the output for photos/a.jpg and the output for photos/a.png would both be written to out/a.png"):
        plan_jobs(["photos"], "out", extension="png")
    assert not Path("out").exists()  # nothing created for a plan that cannot run


@pytest.mark.parametrize("inputs,output", [(["photos/a.jpg"], "photos"), (["photos/a.jpg"], "photos/a.jpg"),
                                           (["photos"], "./photos/../photos")])
def test_never_overwrites_an_input(photos, inputs, output):
    with pytest.raises(InputError, match="would overwrite the input photos/a.jpg"):
        plan_jobs(inputs, output)


def test_overwriting_an_input_is_avoided_by_a_suffix(photos):
    assert pairs(plan_jobs(["photos/a.jpg"], "photos", suffix="_new")) == [("photos/a.jpg", "photos/a_new.jpg")]


def test_unwritable_output_folder(photos):
    with pytest.raises(OutputError, match="^cannot create output folder photos/notes.txt/out: photos/notes.txt is "
                                          "a file$"):
        plan_jobs(["photos"], "photos/notes.txt/out")


def test_a_trailing_slash_makes_the_output_a_folder(here):
    make_image(here / "a.png")
    assert [job.target for job in plan_jobs(["a.png"], "res.png/")] == [Path("res.png/a.png")]
    assert [job.target for job in plan_jobs(["a.png"], "res.png")] == [Path("res.png")]


def test_double_star_does_not_follow_symlink_loops(here):
    make_image(here / "scans" / "a.png")
    make_image(here / "scans" / "deep" / "b.png")
    (here / "scans" / "up").symlink_to("..")
    (here / "scans" / "deep" / "up").symlink_to("../..")
    # in a subprocess with a timeout: a glob that follows the loops never ends
    script = ("from imgforge.batch import plan_jobs\n"
              "print([str(job.source) for job in plan_jobs(['scans/**/*.png'], 'out')])")
    done = subprocess.run([sys.executable, "-c", script], cwd=here, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['scans/a.png', 'scans/deep/b.png']"


# ---- side outputs are planned with the main outputs -------------------------------------------------------


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
    first, second = make_image(here / "photo.png", 10), make_image(here / "photo_restored_mask.png", 20)
    before = first.read_bytes(), second.read_bytes()
    assert main(["restore", "photo.png", "photo_restored_mask.png", "--save-mask"]) == 1
    (line,) = stderr_lines(capfd)
    assert line == ("error: the mask output for photo.png would overwrite the input photo_restored_mask.png; "
                    "choose another -o folder or a --suffix")
    assert (first.read_bytes(), second.read_bytes()) == before
    assert sorted(p.name for p in here.iterdir()) == ["none.toml", "photo.png", "photo_restored_mask.png"]


def test_a_saved_mask_never_overwrites_a_given_mask(offline_zoo, capfd):
    here = offline_zoo
    make_image(here / "in" / "photo.png")
    make_image(here / "masks" / "photo.png")  # --mask folder: masks named like the inputs
    make_image(here / "masks" / "photo_mask.png")
    code = main(["restore", "in/photo.png", "-o", "masks/photo.png", "--mask", "masks", "--save-mask"])
    assert code == 1
    assert "would overwrite the input masks/photo" in capfd.readouterr().err


def test_a_job_is_plain_data_that_pickles():
    job = Job(Path("a.png"), Path("out/a.png"), (("_mask.png", Path("out/a_mask.png")),))
    assert pickle.loads(pickle.dumps(job)) == job
    assert job.side_output("_mask.png") == Path("out/a_mask.png")
    assert job.outputs == (Path("out/a.png"), Path("out/a_mask.png"))


def test_a_side_output_of_one_job_is_never_the_output_of_another(here):
    make_image(here / "in" / "a.png")
    make_image(here / "in" / "a_mask.png")
    with pytest.raises(InputError, match="the mask output for in/a.png and the output for in/a_mask.png would "
                                         "both be written to out/a_mask.png"):
        plan_jobs(["in"], "out", side_suffixes=["_mask.png"])
    jobs = plan_jobs(["in/a.png"], "out", side_suffixes=["_mask.png", "_faces.png"])
    assert jobs[0].outputs == (Path("out/a.png"), Path("out/a_mask.png"), Path("out/a_faces.png"))


# ---- every output stays inside -o -------------------------------------------------------------------------


@pytest.mark.parametrize("option", [["--suffix", "/../../esc/x"], ["--suffix", "..\\x"], ["--format", "png/../x"]])
def test_suffix_and_format_cannot_leave_the_output_folder(here, capfd, option):
    make_image(here / "deep" / "er" / "in.png")
    assert main(["translate", "deep/er/in.png", "-o", "deep/er/out", *option]) == 1
    assert "error: " in capfd.readouterr().err
    assert sorted(str(p.relative_to(here)) for p in here.rglob("*")) == [
        "deep", "deep/er", "deep/er/in.png", "none.toml"]


def test_outputs_through_a_symlink_out_of_the_folder_are_refused(here):
    make_image(here / "in" / "sub" / "a.png")
    (here / "elsewhere").mkdir()
    (here / "out").mkdir()
    (here / "out" / "sub").symlink_to(here / "elsewhere")
    with pytest.raises(OutputError, match="would be written to out/sub/a.png, outside the output folder out"):
        plan_jobs(["in"], "out", recursive=True)


def test_the_output_folder_appears_only_when_something_is_written(here, capfd):
    make_image(here / "a.png")
    assert main(["translate", "a.png", "-o", "new/out", "--model", "no-such-model"]) == 1
    assert "no-such-model" in capfd.readouterr().err
    assert not (here / "new").exists()


# ---- the local engine -------------------------------------------------------------------------------------


def jobs_for(tmp_path, names):
    return [Job(source=tmp_path / name, target=tmp_path / "out" / name) for name in names]


def test_failures_are_counted_reported_and_the_batch_goes_on(tmp_path, capsys):
    jobs = jobs_for(tmp_path, ["ok1", "bad-load", "bad-compute", "bad-save", "ok2"])

    def load(job):
        if job.source.name == "bad-load":
            raise InputError(f"cannot read {job.source}: truncated")
        return job.source.name

    def compute(items):
        if "bad-compute" in items:
            raise ValueError("shapes do not match")
        return [item.upper() for item in items]

    saved = []

    def save(job, item, result):
        if item == "bad-save":
            raise OutputError("disk full")
        saved.append(result)
        return {"model": "test"}

    report = run(jobs, load=load, compute=compute, save=save, quiet=True, json_lines=True)
    assert (report.done, report.skipped) == (2, 0) and saved == ["OK1", "OK2"]
    assert [(path.name, reason) for path, reason in report.failed] == [
        ("bad-load", f"cannot read {tmp_path / 'bad-load'}: truncated"),
        ("bad-compute", "ValueError: shapes do not match"),
        ("bad-save", "disk full"),
    ]
    out, err = capsys.readouterr()
    assert f"failed: {tmp_path / 'bad-save'}: disk full" in err.splitlines()
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines == report.records
    assert [line["status"] for line in lines] == ["done", "failed", "failed", "failed", "done"]
    assert lines[0] == {"input": str(tmp_path / "ok1"), "output": str(tmp_path / "out" / "ok1"), "status": "done",
                        "model": "test"}
    assert lines[2]["error"] == "ValueError: shapes do not match"


def test_a_failing_compute_fails_its_whole_group(tmp_path):
    jobs = jobs_for(tmp_path, ["a", "b", "c"])

    def compute(items):
        if "a" in items:
            raise ImgforgeError("out of memory")
        return items

    report = run(jobs, load=lambda job: job.source.name, compute=compute, save=lambda *_: None,
                       batch_size=2, quiet=True)
    assert [path.name for path, _ in report.failed] == ["a", "b"] and report.done == 1


def test_groups_follow_the_key_and_batch_size(tmp_path):
    names = ["a1", "a2", "a3", "b1", "a4", "b2", "b3"]
    calls = []

    def compute(items):
        calls.append(items)
        return items

    report = run(jobs_for(tmp_path, names), load=lambda job: job.source.name, compute=compute,
                       save=lambda *_: None, batch_size=2, group_key=lambda item: item[0], quiet=True)
    assert calls == [["a1", "a2"], ["a3"], ["b1"], ["a4"], ["b2", "b3"]]
    assert report.done == 7


def test_skip_existing(tmp_path):
    jobs = jobs_for(tmp_path, ["a", "b"])
    jobs[0].target.parent.mkdir()
    jobs[0].target.write_text("done before")
    stale = jobs[0].target.parent / ".a.partial"
    stale.write_text("left by a killed run")
    loaded = []
    report = run(jobs, load=lambda job: loaded.append(job.source.name), compute=lambda items: items,
                       save=lambda *_: None, skip_existing=True, quiet=True)
    assert (report.done, report.skipped, loaded) == (1, 1, ["b"])
    assert report.records[0]["status"] == "skipped" and not stale.exists()
    report = run(jobs, load=lambda job: loaded.append(job.source.name), compute=lambda items: items,
                       save=lambda *_: None, quiet=True)
    assert report.done == 2


def test_ctrl_c_stops_with_a_summary_and_reraises(tmp_path, capsys):
    def load(job):
        if job.source.name == "c":
            raise KeyboardInterrupt
        return job.source.name

    saved = []
    with pytest.raises(KeyboardInterrupt, match="^2 done, 0 skipped, 0 failed, 2 not run"):
        run(jobs_for(tmp_path, ["a", "b", "c", "d"]), load=load, compute=lambda items: items,
                  save=lambda job, item, result: saved.append(item), quiet=True)
    assert saved == ["a", "b"]
    assert capsys.readouterr().err == ""  # the CLI prints the one "interrupted" line


@pytest.mark.parametrize("skip_existing", [False, True])
def test_a_folder_in_place_of_an_output_fails_that_input(here, skip_existing):
    jobs = [Job(make_image(here / name), here / "out" / name,
                (("_mask.png", here / "out" / (name[0] + "_mask.png")),))
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


def test_a_run_wide_error_inside_the_batch_stops_it(tmp_path):
    def compute(items):
        raise RunWideError("the backend is gone")

    jobs = [Job(tmp_path / "a", tmp_path / "out" / "a"), Job(tmp_path / "b", tmp_path / "out" / "b")]
    with pytest.raises(RunWideError):
        run(jobs, load=lambda job: job, compute=compute, save=lambda *_: None, quiet=True)


def test_unexpected_errors_are_reraised_in_debug_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGFORGE_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        run(jobs_for(tmp_path, ["a"]), load=lambda job: 1 / 0, compute=list, save=lambda *_: None, quiet=True)


# ---- finish_batch -----------------------------------------------------------------------------------------


def test_finish_batch_summary_and_exit_code(tmp_path, capsys):
    report = run(jobs_for(tmp_path, ["a", "b"]), load=lambda job: job.source.name, compute=list,
                       save=lambda *_: None, quiet=True)
    finish_batch(report, json=True, quiet=False)
    out, err = capsys.readouterr()
    assert "2 done, 0 skipped, 0 failed" in err
    assert json.loads(out.splitlines()[-1]) == {"summary": {"done": 2, "skipped": 0, "failed": 0, "engine": "local",
                                                            "threads": torch.get_num_threads()}}

    report.failed.append((tmp_path / "c", "broken"))
    with pytest.raises(PartialFailure, match="1 of 3 inputs failed") as error:
        finish_batch(report, json=False, quiet=True)
    assert error.value.exit_code == 3
    out, err = capsys.readouterr()
    assert out == "" and err == ""


# ---- a real batch, killed and resumed ---------------------------------------------------------------------


def test_sigkill_leaves_only_complete_outputs_and_skip_existing_resumes(tmp_path):
    source = tmp_path / "in"
    expected = {}
    for index in range(20):
        path = make_image(source / f"img{index:02d}.png", value=index * 11, size=(16, 12))
        expected[f"img{index:02d}.png"] = 255 - np.asarray(Image.open(path))
    output = tmp_path / "out"
    command = [sys.executable, str(DRIVER), str(source), str(output)]

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_when_written(process, output, "img*.png", 4, timeout=60)

    finished = sorted(p.name for p in output.glob("img*.png"))
    assert 4 <= len(finished) < 20
    for name in finished:  # whatever carries a final name decodes completely to the right pixels
        assert np.array_equal(read_image(output / name).pixels, expected[name])
    # a kill during a write can leave a temp file; fake one for a done and a pending image
    (output / f".{finished[0]}.partial").write_bytes(b"half")
    (output / ".img19.png.partial").write_bytes(b"half")

    rerun = subprocess.run(command + ["--skip-existing"], capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    statuses = {Path(line["input"]).name: line["status"] for line in map(json.loads, rerun.stdout.splitlines())}
    assert {name for name, status in statuses.items() if status == "skipped"} == set(finished)
    assert {name for name, status in statuses.items() if status == "done"} == set(expected) - set(finished)
    for name, pixels in expected.items():
        assert np.array_equal(read_image(output / name).pixels, pixels)
    assert sorted(p.name for p in output.iterdir()) == sorted(expected)


def test_driver_reports_a_bad_image_and_exits_3(tmp_path):
    make_image(tmp_path / "in" / "good.png")
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = subprocess.run([sys.executable, str(DRIVER), str(tmp_path / "in"), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3
    assert result.stderr.startswith(f"failed: {tmp_path / 'in' / 'bad.png'}: not a valid image")
    assert len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]
    write_image(tmp_path / "out" / "check.png", np.zeros((2, 2), np.uint8))  # the folder stays usable


def test_progress_reported_within_an_item_moves_the_bar_and_names_the_stage(monkeypatch):
    from imgforge import engine
    from imgforge.progress import make_progress, report_within_item

    bars = []
    monkeypatch.setattr(engine, "make_progress", lambda **kw: bars.append(make_progress(quiet=True)) or bars[-1])
    seen = []

    def compute(items):
        for step in (1, 2):
            report_within_item(step / 2, f"step {step}")
            seen.append((bars[0].tasks[0].completed, bars[0].tasks[0].description))
        return items

    jobs = [Job(Path(f"in{i}.png"), Path(f"out{i}.png")) for i in range(2)]
    run(jobs, load=lambda job: job, compute=compute, save=lambda *args: None, quiet=True, label="restoring")
    assert seen == [(0.5, "restoring: step 1"), (1.0, "restoring: step 2"),
                    (1.5, "restoring: step 1"), (2.0, "restoring: step 2")]
    assert bars[0].tasks[0].completed == 2 and bars[0].tasks[0].description == "restoring"
    report_within_item(0.5, "nobody listens")  # outside a batch: nothing happens
