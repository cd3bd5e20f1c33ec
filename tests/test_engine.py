"""The job engine on Ray: the same bytes as the local engine for translate and sample, failures reported as
records, skip-existing at plan time, s3:// inputs and outputs, an actor killed mid-run, a driver killed and
rerun, and one-line errors. One local Ray (2 CPUs) serves the whole session (conftest.ray_address)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine_tasks import InvertTask
from helpers import kill_when_written
from imgforge.batch import plan_jobs
from imgforge.cli import main
from imgforge.engine import EngineOptions, execute
from imgforge.imageio import read_image
from imgforge.storage import location
from test_batch import DRIVER, make_image
from test_restore_cli import checkpoints, served  # noqa: F401  (fixtures)
from test_restore_cli import photos as restore_photos  # noqa: F401  (fixture)
from test_sample_cli import write_folder
from test_translate_cli import save_image, write_checkpoint


def records(capsys) -> list[dict]:
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return sorted((line for line in lines if "summary" not in line), key=lambda r: (r.get("input"), r["output"]))


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    for index, shape in enumerate([(20, 16, 3), (20, 16, 3), (12, 24, 3), (20, 16, 3), (12, 24, 4)]):
        save_image(folder / f"p{index}.png", shape, seed=index)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    return folder


def checkpoint(path: Path) -> Path:
    """A tiny unet_128 with dropout (so that seeds matter), run at 128x128."""
    return write_checkpoint(path, netG="unet_128")


def translate_args(photos: Path | str, weights: Path, output: Path | str) -> list[str]:
    return ["translate", str(photos), "-o", str(output), "--checkpoint", str(weights), "--size", "128",
            "--seed", "3", "--json", "-q"]


def test_ray_translate_writes_the_local_bytes_and_reports_failures_alike(ray_address, photos, tmp_path, capsys):
    weights = checkpoint(tmp_path / "latest_net_G.pth")
    assert main(translate_args(photos, weights, tmp_path / "local")) == 3
    local = records(capsys)
    assert main(translate_args(photos, weights, tmp_path / "ray")
                + ["--engine", "ray", "--workers", "2", "--batch-size", "2"]) == 3
    on_ray = records(capsys)
    assert [r["status"] for r in local].count("done") == 5
    for a, b in zip(local, on_ray, strict=True):
        assert Path(a["output"]).name == Path(b["output"]).name
        assert {k: v for k, v in a.items() if k != "output"} == {k: v for k, v in b.items() if k != "output"}
    assert file_bytes(tmp_path / "local") == file_bytes(tmp_path / "ray")
    assert len(file_bytes(tmp_path / "ray")) == 5


def test_ray_sample_writes_the_local_bytes(ray_address, tmp_path, capsys, monkeypatch):
    model = write_folder(tmp_path / "ddpm")
    args = ["sample", "-m", str(model), "-n", "5", "--steps", "3", "--batch-size", "2", "--device", "cpu", "--json",
            "-q"]
    assert main(args + ["-o", str(tmp_path / "local")]) == 0
    local = records(capsys)
    monkeypatch.setenv("IMGFORGE_ENGINE", "ray")
    assert main(args + ["-o", str(tmp_path / "ray"), "--workers", "2", "--grid", str(tmp_path / "grid.png")]) == 0
    on_ray = records(capsys)
    assert [(r["index"], r["seed"], r["status"]) for r in on_ray] == [(i, i, "done") for i in range(5)]
    assert [r["seed"] for r in local] == [r["seed"] for r in on_ray]
    assert file_bytes(tmp_path / "local") == file_bytes(tmp_path / "ray")
    assert np.asarray(Image.open(tmp_path / "grid.png")).shape == (2 + 2 * 10, 2 + 3 * 10, 3)


def test_ray_restore_writes_the_local_bytes_with_the_drivers_settings(ray_address, served, restore_photos,
                                                                      tmp_path, capsys):
    """The Ray started for the session predates this test's Hub server, cache and manifest: the actors get them
    from the driver (forwarded IMGFORGE_*/HF_* variables) and restore, masks and faces included, as locally."""
    args = ["restore", str(restore_photos), "--save-mask", "--device", "cpu", "--json", "-q"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each 1-CPU actor runs: float sums in another order could move a level
    try:
        assert main(args + ["-o", str(tmp_path / "local")]) == 0
    finally:
        torch.set_num_threads(threads)
    local = records(capsys)
    assert main(args + ["-o", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"]) == 0
    on_ray = records(capsys)
    assert [r["status"] for r in on_ray] == ["done"] * 4
    assert [(Path(r["output"]).name, r.get("faces")) for r in local] == \
        [(Path(r["output"]).name, r.get("faces")) for r in on_ray]
    assert file_bytes(tmp_path / "local") == file_bytes(tmp_path / "ray")
    assert len(file_bytes(tmp_path / "ray")) == 8  # four photos and their masks


def test_skip_existing_is_decided_at_plan_time(ray_address, photos, tmp_path, capsys):
    weights = checkpoint(tmp_path / "g.pth")
    out = tmp_path / "out"
    out.mkdir()
    (out / "p1.png").write_bytes(b"kept as it is")
    args = translate_args(photos, weights, out) + ["--engine", "ray", "--skip-existing"]
    assert main(args) == 3
    statuses = {Path(r["input"]).name: r["status"] for r in records(capsys)}
    assert statuses == {"broken.png": "failed", "p0.png": "done", "p1.png": "skipped", "p2.png": "done",
                        "p3.png": "done", "p4.png": "done"}
    assert (out / "p1.png").read_bytes() == b"kept as it is"


def test_s3_inputs_and_outputs_on_both_engines(ray_address, s3_server, photos, tmp_path, capsys):
    bucket = s3_server()
    for path in sorted(photos.iterdir()):
        location(f"{bucket}/scans/{path.name}").write_bytes(path.read_bytes())
    weights = checkpoint(tmp_path / "g.pth")
    assert main(translate_args(photos, weights, tmp_path / "files")) == 3
    expected = file_bytes(tmp_path / "files")
    capsys.readouterr()
    for engine in ("local", "ray"):
        assert main(translate_args(f"{bucket}/scans", weights, f"{bucket}/{engine}") + ["--engine", engine]) == 3
        outputs = {r["output"]: r["status"] for r in records(capsys)}
        assert outputs[f"{bucket}/{engine}/p0.png"] == "done" and outputs[f"{bucket}/{engine}/broken.png"] == "failed"
        written = {path.name: path.read_bytes() for path in location(f"{bucket}/{engine}").iterdir()}
        assert written == expected


def inverted_images(folder: Path, count: int, step: int) -> dict[str, np.ndarray]:
    """`count` flat images in `folder`, by file name the pixels InvertTask writes for each."""
    expected = {}
    for index in range(count):
        path = make_image(folder / f"img{index:02d}.png", value=index * step, size=(16, 12))
        expected[path.name] = 255 - np.asarray(Image.open(path))
    return expected


def test_an_actor_killed_mid_run_loses_nothing_and_a_rerun_finishes(ray_address, tmp_path):
    source, output = tmp_path / "in", tmp_path / "out"
    expected = inverted_images(source, 8, step=13)
    task = InvertTask(seconds_per_image=0.05, kill_at="img03.png", kill_marker=str(tmp_path / "killed"), batch_size=2)
    engine = EngineOptions("ray", workers=2)
    report = execute(task, plan_jobs([str(source)], str(output)), engine=engine, quiet=True)
    assert (tmp_path / "killed").exists()  # an actor did die
    assert report.done + len(report.failed) == 8
    assert not list(output.glob(".*"))  # no temp file left behind, and whatever carries a final name is whole
    for path in output.iterdir():
        assert np.array_equal(read_image(path).pixels, expected[path.name])
    rerun = execute(task, plan_jobs([str(source)], str(output)), engine=engine, skip_existing=True, quiet=True)
    assert rerun.failed == [] and rerun.done + rerun.skipped == 8
    assert sorted(p.name for p in output.iterdir()) == sorted(expected)


def test_a_killed_driver_resumes_when_run_again(ray_address, tmp_path):
    source, output = tmp_path / "in", tmp_path / "out"
    expected = inverted_images(source, 16, step=7)
    command = [sys.executable, str(DRIVER), str(source), str(output), "--ray", ray_address]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_when_written(process, output, "img*.png", 4, timeout=120)
    finished = {p.name for p in output.glob("img*.png")}
    assert 4 <= len(finished) < 16
    rerun = subprocess.run(command + ["--skip-existing"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    statuses = {Path(line["input"]).name: line["status"] for line in map(json.loads, rerun.stdout.splitlines())}
    skipped = {name for name, status in statuses.items() if status == "skipped"}
    assert finished <= skipped  # outputs that existed when the driver died (workers may have finished more)
    assert {name for name, status in statuses.items() if status == "done"} == set(expected) - skipped
    for name, pixels in expected.items():
        assert np.array_equal(read_image(output / name).pixels, pixels)


def test_a_worker_setup_error_is_one_line(ray_address, photos, tmp_path, capsys):
    bad = tmp_path / "not_a_checkpoint.pth"
    bad.write_bytes(b"nonsense")
    assert main(translate_args(photos, bad, tmp_path / "out") + ["--engine", "ray"]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # Ray may print its own notes first
    assert last.startswith("error: cannot load ") and "not_a_checkpoint.pth" in last and "Traceback" not in err


def test_engine_choice_errors(photos, tmp_path, capsys, monkeypatch):
    weights = checkpoint(tmp_path / "g.pth")
    assert main(translate_args(photos, weights, tmp_path / "out") + ["--engine", "spark"]) == 1
    assert "unknown engine 'spark': use local or ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is not installed
    assert main(translate_args(photos, weights, tmp_path / "out") + ["--engine", "ray"]) == 1
    assert "--engine ray needs Ray: pip install 'imgforge[ray]'" in capsys.readouterr().err
    assert main(["sample", "--grid", str(tmp_path / "g.png"), "--engine", "ray"]) == 1
    assert "give -o" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_two_ray_workers_share_a_gpu(ray_address, photos, tmp_path, capsys):
    weights = checkpoint(tmp_path / "g.pth")
    assert main(translate_args(photos, weights, tmp_path / "gpu") + ["--engine", "ray", "--workers", "2",
                                                                    "--gpus-per-worker", "0.5", "--device", "cuda"]) == 3
    assert [r["status"] for r in records(capsys)].count("done") == 5
    assert len(list((tmp_path / "gpu").iterdir())) == 5
