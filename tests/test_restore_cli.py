"""`imgforge restore` end to end: tiny official-architecture checkpoints served by the local Hub server (and
the release zip from its download site), real photographs from scikit-image with scratches drawn on them."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from imgforge.cli import main
from helpers import sizes_and_modes
from test_restore import CHECKPOINT_FILES, ZIPPED, manifest_tables, tiny_checkpoints

HUB_REPO = "leonelhs/zeroscratches"


@pytest.fixture(scope="module")
def checkpoints() -> dict[str, bytes]:
    return tiny_checkpoints()


@pytest.fixture
def served(hub_server, write_manifest, tmp_path, checkpoints):
    """The Hub copies in the Hub server, the rest in a release-style zip; a manifest naming them as the real one
    does (the zip members pinned by sha256)."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(ZIPPED):
            zipped.writestr(f"checkpoints/{path}", checkpoints[path])
    url = hub_server.add_url_file("global_checkpoints.zip", archive.getvalue())
    sources = {}
    for path in CHECKPOINT_FILES:
        if path in ZIPPED:
            digest = hashlib.sha256(checkpoints[path]).hexdigest()
            sources[path] = f'{{ urls = ["{url}"], member = "checkpoints/{path}", sha256 = "{digest}" }}'
        else:
            hub_server.add_file(HUB_REPO, path, checkpoints[path])
    for path in CHECKPOINT_FILES:
        if path not in ZIPPED:
            sources[path] = hub_server.file_table(HUB_REPO, path)
    write_manifest(tmp_path, manifest_tables(sources))
    return hub_server


@pytest.fixture
def photos(tmp_path):
    """astronaut, coffee, chelsea (colour) and camera (grey) from scikit-image, reduced, with white scratches;
    odd sizes so that the /4 and /16 rounding has to be undone."""
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("astronaut", (128, 128)), ("coffee", (150, 100)), ("chelsea", (113, 75)),
                       ("camera", (90, 70))):
        image = cv2.resize(getattr(data, name)(), size, interpolation=cv2.INTER_AREA)
        for _ in range(3):
            x0, x1 = (int(v) for v in rng.integers(0, size[0], 2))
            cv2.line(image, (x0, 0), (x1, size[1] - 1), 250 if image.ndim == 2 else (250, 250, 250), 1)
        Image.fromarray(image).save(folder / f"{name}.{'png' if name == 'camera' else 'jpg'}", quality=92)
    return folder


def test_folder_with_scratches_writes_same_size_outputs_and_masks(served, photos, tmp_path, capfd):
    out = tmp_path / "out"
    assert main(["restore", str(photos), "-o", str(out), "--save-mask", "--device", "cpu", "--json"]) == 0
    records = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert records[-1] == {"summary": {"done": 4, "skipped": 0, "failed": 0, "engine": "local",
                                       "threads": torch.get_num_threads()}}
    assert {r["model"] for r in records[:-1]} == {"oldphoto-scratch"}
    inputs = sizes_and_modes(photos)
    outputs = sizes_and_modes(out)
    assert set(outputs) == {n for name in inputs for n in (name, name.rsplit(".", 1)[0] + "_mask.png")}
    for name, (size, mode) in inputs.items():
        assert outputs[name] == (size, "L" if mode == "L" else "RGB")
        assert outputs[name.rsplit(".", 1)[0] + "_mask.png"] == (size, "L")
    # the release zip was downloaded once for its two members of this model
    assert [r for r in served.requests if r == ("GET", "/files/global_checkpoints.zip")] == [
        ("GET", "/files/global_checkpoints.zip")]


@pytest.mark.parametrize("extra", [["--no-scratches", "--mode", "scale", "--no-stretch"], ["--hr"]])
def test_modes_keep_the_input_size(served, photos, tmp_path, extra):
    target = tmp_path / "fixed.png"
    assert main(["restore", str(photos / "chelsea.jpg"), "-o", str(target), "-q", "--device", "cpu", *extra]) == 0
    with Image.open(target) as image:
        assert image.size == (113, 75) and image.mode == "RGB"


def test_given_mask_is_saved_back_unchanged(served, photos, tmp_path):
    mask = np.zeros((128, 128), np.uint8)
    mask[40:44, :] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    target = tmp_path / "fixed.png"
    assert main(["restore", str(photos / "astronaut.jpg"), "-o", str(target), "--mask", str(tmp_path / "mask.png"),
                 "--save-mask", "-q", "--device", "cpu"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "fixed_mask.png")), mask)
    # dilation grows it by one pixel per step
    assert main(["restore", str(photos / "astronaut.jpg"), "-o", str(target), "--mask", str(tmp_path / "mask.png"),
                 "--mask-dilation", "2", "--save-mask", "-q", "--device", "cpu"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "fixed_mask.png")) > 0, np.pad(
        np.ones((8, 128), bool), ((38, 82), (0, 0))))


def test_a_bad_input_fails_alone_and_nothing_is_half_written(served, photos, tmp_path, capfd):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "camera.png").write_bytes((photos / "camera.png").read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    assert main(["restore", str(folder), "-o", str(out), "-q", "--device", "cpu"]) == 3
    err = capfd.readouterr().err
    assert "broken.jpg" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["camera.png"]  # no temp files left beside it
    # resuming skips what exists and fails the broken file again
    assert main(["restore", str(folder), "-o", str(out), "--skip-existing", "--device", "cpu"]) == 3
    assert "1 done" not in capfd.readouterr().err
    assert [p.name for p in out.iterdir()] == ["camera.png"]


@pytest.mark.parametrize("args,message", [
    (["--hr", "--no-scratches"], "--hr"),
    (["--save-mask", "--no-scratches"], "--save-mask"),
    (["--mode", "crop"], "unknown mode"),
])
def test_conflicting_options_are_one_line_errors(served, photos, tmp_path, capfd, args, message):
    assert main(["restore", str(photos / "coffee.jpg"), "-o", str(tmp_path / "x.png"), *args]) == 1
    err = capfd.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args,options", [
    (["--backend", "onnx", "--precision", "bf16"], ("--backend onnx", "--precision bf16")),
    (["--device", "cpu", "--precision", "fp16"], ("--precision fp16 with --device cpu",)),
])
def test_options_that_cannot_run_together_are_refused_before_any_download(served, photos, tmp_path, capfd, args,
                                                                            options):
    assert main(["restore", str(photos / "coffee.jpg"), "-o", str(tmp_path / "x.png"), *args]) == 2
    err = capfd.readouterr().err.strip()
    assert all(option in err for option in options) and len(err.splitlines()) == 1
    assert served.requests == []  # the run plan is checked before anything is fetched


def test_one_mask_file_for_many_inputs_is_refused(served, photos, tmp_path, capfd):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "mask.png")
    assert main(["restore", str(photos), "-o", str(tmp_path / "out"), "--mask", str(tmp_path / "mask.png")]) == 1
    assert "give a folder of masks" in capfd.readouterr().err


def test_offline_without_weights_exits_4(served, photos, tmp_path, capfd):
    assert main(["restore", str(photos / "coffee.jpg"), "-o", str(tmp_path / "x.png"), "--offline"]) == 4
    assert "offline" in capfd.readouterr().err
    assert served.requests == []


def test_official_checkpoints_folder_works_offline(served, photos, tmp_path, checkpoints):
    root = tmp_path / "Global" / "checkpoints"
    for path, data in checkpoints.items():  # the repository's layout: Global/checkpoints, Face_Enhancement/...
        target = (tmp_path if path.startswith("Face_Enhancement/") else root) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    # the repository's root, or each official folder named: nothing above or beside a folder given is looked in
    for n, folders in enumerate(([tmp_path], [root, tmp_path / "Face_Enhancement"])):
        target = tmp_path / f"fixed-{n}.png"
        given = [arg for folder in folders for arg in ("--weights-dir", str(folder))]
        assert main(["restore", str(photos / "camera.png"), "-o", str(target), "-q", "--offline", *given,
                     "--device", "cpu"]) == 0
        assert Image.open(target).size == (90, 70)
    assert served.requests == []
