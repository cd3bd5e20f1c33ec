"""The Ray engine beyond the contract every engine keeps (tests/test_engine_contract.py): sample and restore
write the local bytes, an actor killed mid-run, errors while actors set up (the root cause in one line), and
the faults of a cluster that is not there or cannot hold a worker. One local Ray (2 CPUs) serves the whole
session (conftest.ray_address); the checks that must not find a Ray run imgforge in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine_tasks import BrokenSetupTask, InvertTask
from helpers import file_bytes
from imgforge.batch import plan_jobs
from imgforge.cli import main
from imgforge.engine import EngineOptions, execute
from imgforge.engine.ray import user_error
from imgforge.errors import ImgforgeError
from imgforge.imageio import read_image
from test_engine_contract import inverted_images
from test_restore_cli import checkpoints, served  # noqa: F401  (fixtures)
from test_restore_cli import photos as restore_photos  # noqa: F401  (fixture)
from test_sample_cli import write_folder
from test_translate_cli import save_image, write_checkpoint


def records(capsys) -> list[dict]:
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return sorted((line for line in lines if "summary" not in line), key=lambda r: (r.get("input"), r["output"]))


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    for index, shape in enumerate([(20, 16, 3), (20, 16, 3), (12, 24, 3)]):
        save_image(folder / f"p{index}.png", shape, seed=index)
    return folder


def translate_args(photos: Path | str, weights: Path, output: Path | str) -> list[str]:
    return ["translate", str(photos), "-o", str(output), "--checkpoint", str(weights), "--size", "128",
            "--seed", "3", "--json", "-q"]


@pytest.mark.slow
def test_ray_sample_writes_the_local_bytes(ray_address, tmp_path, capsys, monkeypatch):
    model = write_folder(tmp_path / "ddpm")
    args = ["sample", "-m", str(model), "-n", "5", "--steps", "3", "--batch-size", "2", "--device", "cpu", "--json",
            "-q"]
    assert main(args + ["-o", str(tmp_path / "local"), "--threads", "1"]) == 0
    local = records(capsys)
    monkeypatch.setenv("IMGFORGE_ENGINE", "ray")
    assert main(args + ["-o", str(tmp_path / "ray"), "--workers", "2", "--grid", str(tmp_path / "grid.png")]) == 0
    on_ray = records(capsys)
    assert [(r["index"], r["seed"], r["status"]) for r in on_ray] == [(i, i, "done") for i in range(5)]
    assert [r["seed"] for r in local] == [r["seed"] for r in on_ray]
    assert file_bytes(tmp_path / "local") == file_bytes(tmp_path / "ray")
    assert np.asarray(Image.open(tmp_path / "grid.png")).shape == (2 + 2 * 10, 2 + 3 * 10, 3)


@pytest.mark.slow
def test_ray_restore_writes_the_local_bytes_with_the_drivers_settings(ray_address, served, restore_photos,
                                                                      tmp_path, capsys):
    """The Ray started for the session predates this test's Hub server, cache and manifest: the actors get them
    from the driver (forwarded IMGFORGE_*/HF_* variables) and restore, masks and faces included, as locally."""
    args = ["restore", str(restore_photos), "--save-mask", "--device", "cpu", "--json", "-q", "--threads", "1"]
    assert main(args + ["-o", str(tmp_path / "local")]) == 0
    local = records(capsys)
    assert main(args + ["-o", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"]) == 0
    on_ray = records(capsys)
    assert [r["status"] for r in on_ray] == ["done"] * 4
    assert [(Path(r["output"]).name, r.get("faces")) for r in local] == \
        [(Path(r["output"]).name, r.get("faces")) for r in on_ray]
    assert file_bytes(tmp_path / "local") == file_bytes(tmp_path / "ray")
    assert len(file_bytes(tmp_path / "ray")) == 8  # four photos and their masks


@pytest.mark.slow
def test_an_actor_killed_mid_run_loses_nothing_and_a_rerun_finishes(ray_address, tmp_path):
    source, output = tmp_path / "in", tmp_path / "out"
    expected = inverted_images(source, 8, step=13)
    task = InvertTask(seconds_per_image=0.05, kill_at="img03.png", kill_marker=str(tmp_path / "killed"), batch_size=2)
    engine = EngineOptions("ray", {"workers": 2})
    report = execute(task, plan_jobs([str(source)], str(output)), engine=engine, quiet=True)
    assert (tmp_path / "killed").exists()  # an actor did die
    assert report.done + len(report.failed) == 8
    assert not list(output.glob(".*"))  # no temp file left behind, and whatever carries a final name is whole
    for path in output.iterdir():
        assert np.array_equal(read_image(path).pixels, expected[path.name])
    rerun = execute(task, plan_jobs([str(source)], str(output)), engine=engine, skip_existing=True, quiet=True)
    assert rerun.failed == [] and rerun.done + rerun.skipped == 8
    assert sorted(p.name for p in output.iterdir()) == sorted(expected)


def test_a_worker_setup_error_is_one_line(ray_address, photos, tmp_path, capsys):
    bad = tmp_path / "not_a_checkpoint.pth"
    bad.write_bytes(b"nonsense")
    assert main(translate_args(photos, bad, tmp_path / "out") + ["--engine", "ray"]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # Ray may print its own notes first
    assert last.startswith("error: cannot ") and "not_a_checkpoint.pth" in last and "Traceback" not in err


def make_inputs(tmp_path: Path) -> Path:
    inverted_images(tmp_path / "in", 2, step=50)
    return tmp_path / "in"


def test_a_bug_where_an_actor_sets_up_shows_its_root_cause(ray_address, tmp_path):
    jobs = plan_jobs([str(make_inputs(tmp_path))], str(tmp_path / "out"))
    with pytest.raises(ImgforgeError) as error:
        execute(BrokenSetupTask("the setup broke on purpose"), jobs, engine="ray", quiet=True)
    assert str(error.value) == "a Ray worker failed: RuntimeError: the setup broke on purpose"


def test_a_shadowed_package_is_named_in_the_root_cause():
    """What Ray reports when its working folder holds a folder named imgforge (as seen with `ray start` run
    from a checkout): the ImportError from the actor's log, cut nowhere, and the cause named."""
    text = ("ray.exceptions.ActorDiedError: The actor died because of an error raised in its creation task, "
            "ray::MapWorker(MapBatches(ActorWorker)).__init__() (pid=1, ip=127.0.0.1)\n  File \"x.py\", line 3\n"
            "ImportError: cannot import name '__version__' from 'imgforge' (unknown location)\n")
    message = str(user_error(RuntimeError(text)))
    assert message.startswith("a Ray worker failed: ImportError: cannot import name '__version__' from 'imgforge' "
                              "(unknown location) (a folder named imgforge in the working folder of Ray shadows")
    assert "\n" not in message


def test_ray_lines_do_not_reach_stdout(ray_address, capfd):
    """Ray's driver prints what it hears from the cluster ("(raylet) A worker died ...") on stdout; with the
    engine connected, the raylet's lines are dropped (imgforge reports the failure) and others go to stderr,
    so that --json output stays JSON."""
    from ray._private import worker

    from imgforge.engine.ray import connect

    connect()
    for pid, line in (("raylet", "A worker died or was killed"), (4321, "a line an actor printed")):
        worker.print_to_stdstream({"lines": [line], "pid": pid, "ip": "127.0.0.1", "is_err": False},
                                  ignore_prefix=False)
    out, err = capfd.readouterr()
    assert out == "" and "A worker died" not in err and "a line an actor printed" in err


def run_imgforge(args: list[str], env: dict, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "imgforge", *args], capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **env})
    return result, time.monotonic() - started


@pytest.mark.slow
def test_a_cluster_address_where_nothing_listens_fails_within_seconds(photos, tmp_path):
    weights = write_checkpoint(tmp_path / "g.pth")
    args = translate_args(photos, weights, tmp_path / "out") + ["--engine", "ray"]
    result, seconds = run_imgforge(args, {"RAY_ADDRESS": "127.0.0.1:1"}, timeout=120)
    assert result.returncode == 1 and seconds < 60, (result.stderr, seconds)
    assert result.stderr.strip().splitlines() == [
        "error: cannot connect to the Ray cluster at 127.0.0.1:1: connection refused (is a Ray head running "
        "there? `ray start --head` prints its address)"]
    assert result.stdout == "" and not (tmp_path / "out").exists()


def test_a_dashboard_address_is_a_usage_error(photos, tmp_path, capsys):
    weights = write_checkpoint(tmp_path / "g.pth")
    args = translate_args(photos, weights, tmp_path / "out")
    assert main(args + ["--engine", "ray", "--ray-address", "http://127.0.0.1:9/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ray-address http://127.0.0.1:9/x: give the cluster's address as host:port")
    assert len(err.strip().splitlines()) == 1


def test_gpus_the_cluster_does_not_have_fail_at_once(ray_address, photos, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    weights = write_checkpoint(tmp_path / "g.pth")
    started = time.monotonic()
    assert main(translate_args(photos, weights, tmp_path / "out") + ["--engine", "ray", "--gpus-per-worker", "1"]) == 1
    assert time.monotonic() - started < 30
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --gpus-per-worker 1: the Ray cluster has no GPUs; use --gpus-per-worker 0 to run on CPUs")
    assert not (tmp_path / "out").exists()


def test_engine_choice_errors(photos, tmp_path, capsys, monkeypatch):
    weights = write_checkpoint(tmp_path / "g.pth")
    args = translate_args(photos, weights, tmp_path / "out")
    assert main(args + ["--engine", "spark"]) == 2
    assert "unknown engine 'spark': use local or ray" in capsys.readouterr().err
    assert main(args + ["--engine", "local", "--workers", "2"]) == 2
    assert "error: --workers is not an option of --engine local" in capsys.readouterr().err
    assert main(args + ["--threads", "0"]) == 2  # the parser's own check
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is not installed
    assert main(args + ["--engine", "ray"]) == 1
    assert "--engine ray needs Ray: pip install 'imgforge[ray]'" in capsys.readouterr().err
    assert main(["sample", "--grid", str(tmp_path / "g.png"), "--engine", "ray"]) == 2
    assert capsys.readouterr().err == ("error: --engine ray runs its workers in other processes: without -o the "
                                       "samples stay in memory; give -o (a folder or s3:// URL)\n")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_two_ray_workers_share_a_gpu(ray_address, photos, tmp_path, capsys):
    weights = write_checkpoint(tmp_path / "g.pth", netG="unet_128")
    assert main(translate_args(photos, weights, tmp_path / "gpu") + ["--engine", "ray", "--workers", "2",
                                                                    "--gpus-per-worker", "0.5", "--device", "cuda"]) == 3
    assert [r["status"] for r in records(capsys)].count("done") == 3
    assert len(list((tmp_path / "gpu").iterdir())) == 3
