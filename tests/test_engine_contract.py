"""The contract every registered engine keeps (conftest.engine_name runs each test on each engine): the local
engine's bytes and records at equal thread counts, side outputs, a failing input failing alone (its name
escaped in its `failed:` line), s3:// inputs and outputs, skip-existing at plan time, a killed driver resumed
by a rerun, and Ctrl-C / SIGTERM ending with one line that counts the outputs actually written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine_tasks import InvertTask
from helpers import file_bytes, kill_when_written, make_image
from imgforge.batch import plan_jobs
from imgforge.cli import main
from imgforge.engine import EngineOptions, execute
from imgforge.imageio import read_image
from imgforge.progress import printable
from imgforge.storage import location
from test_batch import DRIVER
from test_translate_cli import save_image, write_checkpoint

# what each engine is given besides its name in these tests (one Ray actor: each starts in seconds)
ENGINE_SETTINGS = {"ray": {"workers": 1}}


def options_for(name: str) -> EngineOptions:
    return EngineOptions(name, ENGINE_SETTINGS.get(name, {}))


def driver_command(name: str, source: Path, output: Path) -> list[str]:
    """tests/batch_driver.py on engine `name` (Ray: the session's cluster, which the driver joins)."""
    command = [sys.executable, str(DRIVER), str(source), str(output)]
    if name == "ray":
        import ray

        command += ["--ray", ray.get_runtime_context().gcs_address]
    return command


def json_lines(text: str) -> tuple[list[dict], dict]:
    """The records (sorted by input) and the summary of --json output; every line must be JSON."""
    lines = [json.loads(line) for line in text.splitlines()]
    records = sorted((line for line in lines if "summary" not in line), key=lambda r: (r.get("input"), r["output"]))
    summaries = [line["summary"] for line in lines if "summary" in line]
    return records, summaries[-1] if summaries else {}


def inverted_images(folder: Path, count: int, step: int) -> dict[str, np.ndarray]:
    """`count` flat images in `folder`, by file name the pixels InvertTask writes for each."""
    expected = {}
    for index in range(count):
        path = make_image(folder / f"img{index:02d}.png", value=index * step, size=(16, 12))
        expected[path.name] = 255 - np.asarray(Image.open(path))
    return expected


def test_translate_writes_the_local_bytes_at_equal_thread_counts(engine_name, tmp_path, capsys):
    photos = tmp_path / "in"
    for index, shape in enumerate([(20, 16, 3), (12, 24, 3), (20, 16, 3), (12, 24, 4)]):
        save_image(photos / f"p{index}.png", shape, seed=index)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    (photos / "odd\nname.png").write_bytes(b"not an image")
    weights = write_checkpoint(tmp_path / "g.pth", netG="unet_128")  # dropout on: the seed matters

    def translate(output: Path, engine: str) -> tuple[list[dict], dict, str]:
        args = ["translate", str(photos), "-o", str(output), "--checkpoint", str(weights), "--size", "128",
                "--seed", "3", "--json", "-q", "--threads", "1", "--engine", engine]
        if engine == "ray":
            args += ["--workers", "2", "--batch-size", "2"]  # jobs spread over two actors
        assert main(args) == 3
        out, err = capsys.readouterr()
        return (*json_lines(out), err)

    local, _, _ = translate(tmp_path / "local", "local")
    records, summary, err = translate(tmp_path / engine_name, engine_name)
    assert summary == {"done": 4, "skipped": 0, "failed": 2, "engine": engine_name, "threads": 1}
    for a, b in zip(local, records, strict=True):
        assert Path(a["output"]).name == Path(b["output"]).name
        assert {k: v for k, v in a.items() if k != "output"} == {k: v for k, v in b.items() if k != "output"}
    assert file_bytes(tmp_path / "local") == file_bytes(tmp_path / engine_name)
    assert len(file_bytes(tmp_path / engine_name)) == 4
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    odd = printable(photos / "odd\nname.png")
    assert len(failed) == 2 and f"failed: {printable(photos / 'broken.png')}: " in err
    assert any(line.startswith(f"failed: {odd}: not an image") for line in failed), failed
    assert "odd name" not in err


def test_side_outputs_failures_and_object_storage(engine_name, s3_server, tmp_path):
    """Inputs and outputs in a bucket (the workers read and write it themselves), a side output beside each
    output, and an unreadable input that fails alone."""
    bucket = s3_server()
    expected = inverted_images(tmp_path / "in", 3, step=40)
    for path in sorted((tmp_path / "in").iterdir()):
        location(f"{bucket}/scans/{path.name}").write_bytes(path.read_bytes())
    location(f"{bucket}/scans/broken.png").write_bytes(b"not an image")
    jobs = plan_jobs([f"{bucket}/scans"], f"{bucket}/out", side_suffixes=["_as_given.png"])
    report = execute(InvertTask(seconds_per_image=0), jobs, engine=options_for(engine_name), quiet=True)
    assert report.done == 3 and report.engine == engine_name
    assert [(str(path), reason) for path, reason in report.failed] == [
        (f"{bucket}/scans/broken.png", f"cannot read {bucket}/scans/broken.png: not an image (or a format Pillow "
                                       "does not read)")]
    for name, pixels in expected.items():
        assert np.array_equal(read_image(f"{bucket}/out/{name}").pixels, pixels)
        given = read_image(f"{bucket}/out/{name.replace('.png', '_as_given.png')}").pixels
        assert np.array_equal(given, 255 - pixels)


def test_skip_existing_is_decided_at_plan_time(engine_name, tmp_path):
    source, output = tmp_path / "in", tmp_path / "out"
    inverted_images(source, 3, step=40)
    output.mkdir()
    (output / "img01.png").write_bytes(b"kept as it is")
    report = execute(InvertTask(seconds_per_image=0), plan_jobs([str(source)], str(output)),
                     engine=options_for(engine_name), skip_existing=True, quiet=True)
    statuses = {Path(r["input"]).name: r["status"] for r in report.records}
    assert statuses == {"img00.png": "done", "img01.png": "skipped", "img02.png": "done"}
    assert (output / "img01.png").read_bytes() == b"kept as it is"


@pytest.mark.slow
def test_a_killed_driver_resumes_when_run_again(engine_name, tmp_path):
    source, output = tmp_path / "in", tmp_path / "out"
    expected = inverted_images(source, 16, step=7)
    command = driver_command(engine_name, source, output)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_when_written(process, output, "img*.png", 4, timeout=120)
    finished = {p.name for p in output.glob("img*.png")}
    assert 4 <= len(finished) < 16
    rerun = subprocess.run(command + ["--skip-existing"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    records, _ = json_lines(rerun.stdout)
    statuses = {Path(record["input"]).name: record["status"] for record in records}
    skipped = {name for name, status in statuses.items() if status == "skipped"}
    assert finished <= skipped  # outputs that existed when the driver died (workers may have finished more)
    assert {name for name, status in statuses.items() if status == "done"} == set(expected) - skipped
    for name, pixels in expected.items():
        assert np.array_equal(read_image(output / name).pixels, pixels)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_ends_with_one_line_counting_the_outputs_written(engine_name, signum, tmp_path):
    source, output = tmp_path / "in", tmp_path / "out"
    inverted_images(source, 16, step=7)
    # SIGINT as a terminal delivers it, even where the suite itself was started in the background (a shell then
    # ignores SIGINT for it, and its children would inherit that)
    process = subprocess.Popen(driver_command(engine_name, source, output), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while len(list(output.glob("img*.png"))) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    written_before = len(list(output.glob("img*.png")))
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    written_after = len(list(output.glob("img*.png")))
    assert process.returncode == 130, err
    (line,) = [line for line in err.splitlines() if line.startswith("interrupted: ")]  # Ray's notes may follow
    assert "SIGTERM received" not in err and "Traceback" not in err, err
    done = int(line.removeprefix("interrupted: ").split(" done")[0])
    assert 3 <= written_before <= done <= written_after
    records, summary = json_lines(out)  # stdout: JSON only, ending with the summary
    assert summary["interrupted"] is True and summary["done"] == done
    assert not list(output.glob(".*"))  # no temp file left behind
