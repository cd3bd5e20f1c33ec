"""The face stage: the real detectors on a real photograph (dlib with the predictor that
face-recognition-models ships, YuNet with the model in tests/data), the stage changing only the blended
face regions, and the restore options around it (--faces-only, --no-faces, --save-faces, --face-detector,
the face count in --json, a photo without faces, a missing predictor offline)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from imgforge.cli import main
from imgforge.errors import WeightsUnavailable
from imgforge.faces import align
from imgforge.faces.detect import DlibDetector, YuNetDetector
from imgforge.imageio import Picture
from imgforge.pipelines import restore as pipeline
from imgforge.pipelines.faces import FaceEnhancer, fetch_face_file
from imgforge.plan import RunPlan
from imgforge import manifest
from test_restore import YUNET_MODEL, checkpoints, manifest_tables, official_sources, weights_dir, ZIPPED  # noqa: F401

PREDICTOR = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]) / "models" / \
    "shape_predictor_68_face_landmarks.dat"
DLIB_TABLE = '''
[models.face-landmarks-dlib]
task = "restore"
arch = "dlib_shape_predictor"
description = "dlib 68 points"
files.predictor = { hub = "databuzzword/bringing-old-photos-back-to-life", path = "Face_Detection/shape_predictor_68_face_landmarks.dat" }
'''
ASTRONAUT_BOX = (179, 83, 266, 170)  # what dlib finds (shared/notes/oldphoto.md)


@pytest.fixture
def with_dlib(weights_dir, write_manifest, tmp_path):
    """The tiny manifest plus the dlib model, its predictor linked into the official Face_Detection folder."""
    write_manifest(tmp_path, manifest_tables(official_sources(ZIPPED)) + DLIB_TABLE)
    (weights_dir / "Face_Detection").mkdir()
    (weights_dir / "Face_Detection" / PREDICTOR.name).symlink_to(PREDICTOR)
    return weights_dir


def test_dlib_finds_the_astronaut_with_the_real_predictor():
    faces = DlibDetector(PREDICTOR).detect(data.astronaut())
    assert len(faces) == 1
    assert faces[0].box == ASTRONAUT_BOX
    assert faces[0].landmarks68.shape == (68, 2)
    np.testing.assert_array_equal(faces[0].points5, align.five_points(faces[0].landmarks68))


def test_yunet_finds_the_astronaut_close_to_dlib_and_on_large_scans():
    photo = data.astronaut()
    dlib_points = DlibDetector(PREDICTOR).detect(photo)[0].points5
    faces = YuNetDetector(YUNET_MODEL).detect(photo)
    assert len(faces) == 1 and faces[0].score > 0.9
    assert np.abs(faces[0].points5 - dlib_points).max() < 8  # eye centres vs corner midpoints: a few pixels
    large = cv2.resize(photo, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    scaled = YuNetDetector(YUNET_MODEL).detect(large)  # searched at 1024 px, points in the large photo's pixels
    assert len(scaled) == 1
    assert np.abs((scaled[0].points5 + 0.5) / 4 - 0.5 - faces[0].points5).max() < 5  # YuNet varies with scale


def test_no_face_in_a_photo_without_one():
    assert YuNetDetector(YUNET_MODEL).detect(data.coffee()) == []
    assert DlibDetector(PREDICTOR).detect(data.coffee()) == []


@pytest.mark.parametrize("detector", ["yunet", "dlib"])
def test_face_stage_changes_only_the_blended_face_region(with_dlib, detector):
    photo = data.astronaut()
    result = pipeline.restore_image(photo, faces_only=True, face_detector=detector, device="cpu",
                                    weights_dir=with_dlib)
    assert len(result.faces) == 1
    face = result.faces[0]
    assert face.aligned.shape == face.enhanced.shape == (256, 256, 3)
    # the blend weight of that face over the photo: where it is 0 the photo must be untouched, bit for bit
    points = (DlibDetector(PREDICTOR) if detector == "dlib" else YuNetDetector(YUNET_MODEL)).detect(photo)[0].points5
    blended = photo.astype(np.float64)
    weight = align.blend_face(blended, photo, points, face.enhanced, 256)
    transform = align.similarity_transform(256, points)
    inside = np.zeros(photo.shape[:2], bool)
    inside[align.face_window(transform, 256, *photo.shape[:2]).slices()] = weight > 0
    changed = (result.pixels != photo).any(axis=2)
    assert changed.any() and not changed[~inside].any()
    assert changed.sum() > 0.5 * inside.sum()


def _run(args: list[str]) -> int:
    return main(["restore", *args, "-q", "--device", "cpu", "--offline"])


def test_faces_only_no_faces_save_faces_and_json(weights_dir, tmp_path, capfd):
    source = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()[::2, ::2]).save(source)
    only = tmp_path / "only.png"
    assert _run([str(source), "-o", str(only), "--faces-only", "--save-faces", "--json",
                 "--weights-dir", str(weights_dir)]) == 0
    record = json.loads(capfd.readouterr().out.strip().splitlines()[0])
    assert record["faces"] == 1 and record["model"] == "face-enhance-256"
    aligned, enhanced = (only.with_name("only" + suffix) for suffix in pipeline.FACE_OUTPUTS)
    assert record["face_files"] == [str(aligned), str(enhanced)]
    assert Image.open(aligned).size == Image.open(enhanced).size == (256, 256)  # one face
    assert not np.array_equal(np.asarray(Image.open(aligned)), np.asarray(Image.open(enhanced)))



@pytest.mark.parametrize("scratches", ["--scratches", "--no-scratches"])
def test_faces_follow_the_global_stage(weights_dir, tmp_path, capfd, monkeypatch, scratches):
    # tiny random global networks would leave no face to find: here the global stage passes its input on
    monkeypatch.setattr(pipeline.Restorer, "restore_global", lambda self, work: work)
    source = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()[::2, ::2]).save(source)
    with_faces, without = tmp_path / "with.png", tmp_path / "without.png"
    assert _run([str(source), "-o", str(with_faces), scratches, "--json", "--weights-dir", str(weights_dir)]) == 0
    assert json.loads(capfd.readouterr().out.strip().splitlines()[0])["faces"] == 1
    assert _run([str(source), "-o", str(without), scratches, "--no-faces", "--json",
                 "--weights-dir", str(weights_dir)]) == 0
    assert "faces" not in json.loads(capfd.readouterr().out.strip().splitlines()[0])
    first, second = np.asarray(Image.open(with_faces)), np.asarray(Image.open(without))
    changed = (first != second).any(axis=2)
    rows, cols = np.nonzero(changed)  # only around the face (x 90-133, y 41-85, aligned with margin)
    assert changed.any() and rows.min() > 10 and rows.max() < 130 and cols.min() > 55 and cols.max() < 170


def test_a_photo_without_faces_is_not_an_error(weights_dir, tmp_path, capfd):
    source = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()[::2, ::2]).save(source)
    with_faces, without = tmp_path / "with.png", tmp_path / "without.png"
    assert _run([str(source), "-o", str(with_faces), "--no-scratches", "--json", "--weights-dir", str(weights_dir)]) == 0
    assert json.loads(capfd.readouterr().out.strip().splitlines()[0])["faces"] == 0
    assert _run([str(source), "-o", str(without), "--no-scratches", "--no-faces", "--weights-dir", str(weights_dir)]) == 0
    assert np.array_equal(np.asarray(Image.open(with_faces)), np.asarray(Image.open(without)))


def test_missing_predictor_offline_exits_4_naming_the_file(weights_dir, write_manifest, tmp_path, capfd):
    write_manifest(tmp_path, manifest_tables(official_sources(ZIPPED)) + DLIB_TABLE)
    source = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()[::4, ::4]).save(source)
    assert _run([str(source), "-o", str(tmp_path / "out.png"), "--face-detector", "dlib",
                 "--weights-dir", str(weights_dir)]) == 4
    assert "shape_predictor_68_face_landmarks.dat" in capfd.readouterr().err
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--faces-only", "--no-faces"], "contradict"),
    (["--faces-only", "--save-mask"], "--faces-only"),
    (["--no-faces", "--save-faces"], "--no-faces"),
    (["--face-detector", "mtcnn"], "unknown face detector"),
])
def test_conflicting_face_options_are_one_line_errors(weights_dir, tmp_path, capfd, args, message):
    source = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()[::4, ::4]).save(source)
    assert _run([str(source), "-o", str(tmp_path / "out.png"), *args, "--weights-dir", str(weights_dir)]) == 1
    err = capfd.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_weights_dir_may_be_the_official_repository_or_its_checkpoint_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = manifest.get_model("face-enhance-512")
    checkpoint = tmp_path / "repo" / "Face_Enhancement" / "checkpoints" / "FaceSR_512" / "latest_net_G.pth"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    def plan(folder):
        return RunPlan.resolve(weights_dir=folder, offline=True, quiet=True)

    for folder in (tmp_path / "repo", tmp_path / "repo" / "Face_Enhancement" / "checkpoints"):
        assert fetch_face_file(entry, "generator", plan(folder)) == checkpoint
    # a folder below the repository is not a way up into it (issue 16 item 11: no parents, no siblings)
    (tmp_path / "repo" / "Global" / "checkpoints").mkdir(parents=True)
    with pytest.raises(WeightsUnavailable):
        fetch_face_file(entry, "generator", plan(tmp_path / "repo" / "Global" / "checkpoints"))


def test_face_stage_runs_the_generator_through_onnx_too(weights_dir):
    photo = data.astronaut()[::2, ::2]
    stages = {backend: FaceEnhancer(plan=RunPlan.resolve(device="cpu", backend=backend, weights_dir=weights_dir,
                                                         quiet=True)) for backend in ("torch", "onnx")}
    (torch_image, torch_faces), (onnx_image, onnx_faces) = (stage(photo) for stage in stages.values())
    assert len(torch_faces) == len(onnx_faces) == 1
    assert np.abs(torch_faces[0].enhanced.astype(int) - onnx_faces[0].enhanced).max() <= 1
    assert np.abs(torch_image.astype(int) - onnx_image).max() <= 2


def test_the_face_stage_reports_its_faces_as_progress(weights_dir):
    from imgforge.progress import listening_within_item

    restorer = pipeline.Restorer(pipeline.Settings(faces_only=True),
                                 RunPlan.resolve(device="cpu", weights_dir=weights_dir, quiet=True))
    assert restorer.networks == [] and restorer.run_network == {} and restorer.provider == "torch:cpu"
    reports = []
    with listening_within_item(lambda fraction, stage: reports.append((fraction, stage))):
        restorer.run(Picture.from_array(data.astronaut()[::2, ::2]))
    assert reports == [(0.0, "enhancing faces"), (1.0, "enhancing faces 1/1")]


def test_models_list_shows_the_dlib_model_is_not_for_commercial_use(capfd):
    assert main(["models", "list", "--task", "restore", "--json"]) == 0
    model = next(row for row in json.loads(capfd.readouterr().out) if row["name"] == "face-landmarks-dlib")
    assert "NOT FOR COMMERCIAL USE" in model["description"] and "iBUG 300-W" in model["license"]


def test_hr_enhances_512_px_faces_with_the_512_checkpoint(weights_dir):
    result = pipeline.restore_image(data.astronaut()[::2, ::2], faces_only=True, hr=True, device="cpu",
                                    weights_dir=weights_dir)
    assert len(result.faces) == 1 and result.faces[0].enhanced.shape == (512, 512, 3)
