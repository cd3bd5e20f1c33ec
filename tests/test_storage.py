"""s3:// inputs and outputs through imgforge.storage, against moto's S3 server on 127.0.0.1 (conftest.s3_server):
planning with the local naming rules, reading and writing images, skip-existing, and sample on the local
engine. Ray's side is in tests/test_engine.py."""

from __future__ import annotations

import http.server
import json
import sys
import threading

import numpy as np
import pytest

from engine_tasks import InvertTask
from helpers import make_image
from imgforge.batch import plan_jobs
from imgforge.cli import main
from imgforge.engine import execute
from imgforge.errors import InputError
from imgforge.imageio import read_image, write_image
from imgforge.storage import ObjectPath, StorageError, check_buckets, existing, location
from test_sample_cli import write_folder

pytest.importorskip("pyarrow")


def put(url: str, value: int = 0) -> str:
    write_image(url, np.full((6, 8, 3), value, np.uint8))
    return url


def test_urls_and_paths(tmp_path):
    url = location("s3://bucket/scans/a b.png")
    assert isinstance(url, ObjectPath) and str(url) == "s3://bucket/scans/a b.png"
    assert str(url.parent / "out" / url.with_suffix(".jpg").name) == "s3://bucket/scans/out/a b.jpg"
    assert url.key == "bucket/scans/a b.png" and location(tmp_path) == tmp_path
    with pytest.raises(InputError, match="unsupported URL gs://b/x: use a local path or s3://bucket/key"):
        location("gs://b/x")


def test_planning_follows_the_local_naming_rules(s3_server):
    bucket = s3_server()
    for name in ("scans/a.png", "scans/b.jpg", "scans/deeper/c.png", "scans/.hidden.png"):
        put(f"{bucket}/{name}")
    location(f"{bucket}/scans/notes.txt").write_bytes(b"not an image")
    jobs = plan_jobs([f"{bucket}/scans"], f"{bucket}/out", recursive=True, suffix="_x", extension="png")
    assert [(str(j.source), str(j.target)) for j in jobs] == [
        (f"{bucket}/scans/a.png", f"{bucket}/out/a_x.png"), (f"{bucket}/scans/b.jpg", f"{bucket}/out/b_x.png"),
        (f"{bucket}/scans/deeper/c.png", f"{bucket}/out/deeper/c_x.png")]
    beside = plan_jobs([f"{bucket}/scans/a.png"], None, default_suffix="_restored")
    assert str(beside[0].target) == f"{bucket}/scans/a_restored.png"
    with pytest.raises(InputError, match=f"cannot read {bucket}/nothing: no such file or folder"):
        plan_jobs([f"{bucket}/nothing"], "out")
    with pytest.raises(InputError, match="would overwrite the input"):
        plan_jobs([f"{bucket}/scans/a.png"], f"{bucket}/scans")
    with pytest.raises(InputError, match="no images match"):
        plan_jobs([f"{bucket}/scans/*.png"], "out")


def test_reading_writing_and_what_exists(s3_server):
    bucket = s3_server()
    url = put(f"{bucket}/x/one.png", value=7)
    picture = read_image(url)
    assert picture.pixels.shape == (6, 8, 3) and int(picture.pixels[0, 0, 0]) == 7 and str(picture.path) == url
    with pytest.raises(InputError, match=f"cannot read {bucket}/x/two.png: no such file"):
        read_image(f"{bucket}/x/two.png")
    assert existing([location(url), location(f"{bucket}/x/two.png"), location(f"{bucket}/y/z.png")]) == {url}


def test_translate_and_sample_on_the_local_engine(s3_server, tmp_path, capsys):
    from test_translate_cli import write_checkpoint

    bucket = s3_server()
    for index in range(3):
        put(f"{bucket}/in/p{index}.png", value=40 * index)
    checkpoint = write_checkpoint(tmp_path / "g.pth")
    args = ["translate", f"{bucket}/in", "-o", f"{bucket}/out", "--checkpoint", str(checkpoint), "--seed", "1",
            "--json", "-q"]
    assert main(args) == 0
    assert main(args + ["--skip-existing"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line.get("status") for line in lines] == ["done"] * 3 + [None] + ["skipped"] * 3 + [None]
    assert lines[0]["output"] == f"{bucket}/out/p0.png" and read_image(lines[0]["output"]).pixels.shape == (6, 8, 3)

    model = write_folder(tmp_path / "ddpm")
    assert main(["sample", "-m", str(model), "-n", "3", "--steps", "2", "--device", "cpu", "-q",
                 "-o", f"{bucket}/samples", "--grid", f"{bucket}/grid.png"]) == 0
    names = sorted(path.name for path in location(f"{bucket}/samples").iterdir())
    assert names == ["sample_00000.png", "sample_00001.png", "sample_00002.png"]
    assert read_image(f"{bucket}/grid.png").pixels.shape == (2 + 2 * 10, 2 + 2 * 10, 3)


# ---- faults of the storage itself: one line, before the first image ---------------------------------------


def test_dot_segments_are_refused_up_front(tmp_path, capsys):
    for url in ("s3://bkt/../other/", "s3://bkt/a/./b.png", "s3:///key"):
        with pytest.raises(InputError):
            location(url)
    photo = put(str(tmp_path / "a.png"))
    assert main(["translate", photo, "-o", "s3://bkt/../other/"]) == 1
    err = capsys.readouterr().err
    assert err == "error: s3://bkt/../other/: '.' and '..' are not allowed in s3:// URLs (object keys are not " \
                  "folders that can be walked up)\n"


def test_a_missing_output_bucket_stops_the_run_before_the_first_image(s3_server, tmp_path, capsys):
    from test_translate_cli import write_checkpoint

    bucket = s3_server()
    put(f"{bucket}/in/p0.png")
    args = ["translate", f"{bucket}/in", "-o", "s3://no-such-bucket/out", "--checkpoint",
            str(write_checkpoint(tmp_path / "g.pth")), "--json", "-q"]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"error: the bucket no-such-bucket does not exist at {s3_server.endpoint}; create it first\n")


@pytest.fixture
def endpoint(monkeypatch):
    """Point imgforge.storage at another endpoint, with or without credentials, for one test."""
    from imgforge import storage

    def use(url: str, credentials: bool) -> None:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(name, raising=False)
        if credentials:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")  # no profile from the home folder
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        storage._filesystem.cache_clear()

    yield use
    storage._filesystem.cache_clear()


def test_an_endpoint_that_does_not_listen_is_named(endpoint, capsys):
    endpoint("http://127.0.0.1:9", credentials=True)
    assert main(["translate", "s3://bkt/in/", "-o", "out", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the S3 endpoint http://127.0.0.1:9 (for s3://bkt/in): ")
    assert err.rstrip().endswith("check AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 and that the server is up")
    assert len(err.splitlines()) == 1


class _Denying(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that refuses every request, as one does without credentials."""

    def _deny(self):
        body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = _deny

    def log_message(self, *args):
        pass


def test_missing_credentials_are_named_with_the_endpoint(endpoint, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Denying)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        endpoint(url, credentials=False)
        assert main(["translate", "s3://bkt/in/a.png", "-o", "out.png", "-q"]) == 1
    finally:
        server.shutdown()
        server.server_close()
    assert capsys.readouterr().err == (
        f"error: the S3 endpoint {url} denied access to s3://bkt/in/a.png: no credentials are set: give "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)\n")


@pytest.fixture
def without_pyarrow(monkeypatch):
    """As on a plain `pip install imgforge`: pyarrow (the s3 and ray extras) cannot be imported."""
    for name in ("pyarrow", "pyarrow.fs"):
        monkeypatch.setitem(sys.modules, name, None)


def test_a_local_run_needs_no_pyarrow(without_pyarrow, tmp_path):
    make_image(tmp_path / "in" / "a.png", value=10)
    report = execute(InvertTask(seconds_per_image=0), plan_jobs([str(tmp_path / "in")], str(tmp_path / "out")),
                     quiet=True)
    assert report.done == 1 and not report.failed
    assert read_image(tmp_path / "out" / "a.png").pixels.max() == 245


def test_s3_without_pyarrow_names_the_extra(without_pyarrow, tmp_path):
    check_buckets([tmp_path / "a.png"])
    with pytest.raises(StorageError, match=r"^s3:// inputs and outputs need pyarrow: pip install 'imgforge\[s3\]'$"):
        check_buckets([location("s3://bucket/a.png")])
