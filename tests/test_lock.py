"""Lock files (`imgforge models lock`, `--lock`, IMGFORGE_LOCK, ./imgforge.lock) against the local Hub server,
and the weights-folder lookup by trailing path components (`--weights-dir`, repeatable, IMGFORGE_WEIGHTS_DIR)."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from imgforge import hub, lock
from imgforge.cli import main
from imgforge.errors import ChecksumMismatch
from imgforge.manifest import get_model
from test_restore import checkpoints, weights_dir  # noqa: F401  (the tiny official-layout folder)

DATA = b"tiny weights " * 50
CHANGED = b"changed weights " * 40
REPO = "org/tiny"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def zoo(hub_server, write_manifest, tmp_path, monkeypatch):
    """Model `tiny`: a Hub file and a URL file, neither pinned nor checksummed in the manifest (as the shipped
    manifest is today); cwd = tmp_path/work; no lock in effect."""
    monkeypatch.delenv("IMGFORGE_LOCK", raising=False)
    hub_server.add_file(REPO, "sub/w.bin", DATA)
    url = hub_server.add_url_file("x.bin", DATA + b"url")
    write_manifest(tmp_path, f"""
        [models.tiny]
        task = "sample"
        arch = "a"
        description = "d"
        files.weights = {hub_server.file_table(REPO, "sub/w.bin", pinned=False, checksum=False)}
        files.extra = {{ urls = ["{url}"] }}
    """)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return hub_server


def fresh_cache(monkeypatch, tmp_path, name: str) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / name))


def test_lock_records_commit_sha256_and_size(zoo, capfd):
    commit = zoo.branches[REPO]["main"]
    assert main(["models", "lock", "tiny"]) == 0
    assert "locked 2 file(s) of 1 model(s) in imgforge.lock" in capfd.readouterr().err
    recorded = lock.read_lock(lock.Path("imgforge.lock"))["tiny"]
    assert recorded["weights"] == lock.LockedFile(sha(DATA), len(DATA), hub=REPO, path="sub/w.bin", revision=commit)
    assert recorded["extra"].url.endswith("/files/x.bin") and recorded["extra"].sha256 == sha(DATA + b"url")


def test_a_file_changed_on_the_server_is_refused_with_both_hashes(zoo, tmp_path, monkeypatch, capfd):
    assert main(["models", "lock", "tiny", "--file", "pinned.lock"]) == 0
    commit = zoo.branches[REPO]["main"]
    zoo.add_file(REPO, "sub/w.bin", CHANGED, commit=commit)  # the same commit now serves other bytes
    fresh_cache(monkeypatch, tmp_path, "second-run")
    capfd.readouterr()
    assert main(["--lock", "pinned.lock", "models", "pull", "tiny"]) == 1
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert line.startswith("error: 'sub/w.bin' (weights) of model 'tiny' at ")
    assert (f"has sha256 {sha(CHANGED)} ({len(CHANGED)} bytes), the lock file pinned.lock says {sha(DATA)} "
            f"({len(DATA)} bytes); it was deleted") in line


def test_without_a_lock_the_changed_file_is_taken(zoo, tmp_path, monkeypatch):
    zoo.add_file(REPO, "sub/w.bin", CHANGED, commit=zoo.branches[REPO]["main"])
    assert hub.fetch_file(get_model("tiny"), "weights", quiet=True).read_bytes() == CHANGED


def test_the_lock_fetches_the_locked_commit_when_main_moves(zoo, tmp_path, monkeypatch):
    commit = zoo.branches[REPO]["main"]
    assert main(["models", "lock", "tiny", "-q"]) == 0  # ./imgforge.lock, in effect by default from now on
    zoo.add_file(REPO, "sub/w.bin", CHANGED)  # a new commit on main
    fresh_cache(monkeypatch, tmp_path, "second-run")
    assert hub.fetch_file(get_model("tiny"), "weights", quiet=True).read_bytes() == DATA
    assert ("GET", f"/{REPO}/resolve/{commit}/sub/w.bin") in zoo.requests


def test_a_changed_url_file_is_refused(zoo, tmp_path, monkeypatch):
    assert main(["models", "lock", "tiny", "-q"]) == 0
    zoo.url_files["x.bin"] = CHANGED
    fresh_cache(monkeypatch, tmp_path, "second-run")
    with pytest.raises(ChecksumMismatch, match=rf"has sha256 {sha(CHANGED)} \(\d+ bytes\), the lock file "
                                               f"imgforge.lock says {sha(DATA + b'url')}"):
        hub.fetch_file(get_model("tiny"), "extra", quiet=True)


def test_models_verify_checks_the_cache_against_the_lock(zoo, capfd):
    assert main(["models", "lock", "-q"]) == 0  # every model of the manifest
    assert main(["models", "verify"]) == 0
    cached = hub.cached_file(get_model("tiny"), "weights")
    os.chmod(cached, 0o644)
    cached.resolve().write_bytes(CHANGED)  # the blob behind the snapshot link
    capfd.readouterr()
    assert main(["models", "verify"]) == 1
    err = capfd.readouterr().err
    assert f"has sha256 {sha(CHANGED)} ({len(CHANGED)} bytes), the lock file imgforge.lock says {sha(DATA)}" in err
    assert "error: 1 file(s) did not match the sha256 of the lock file imgforge.lock" in err


def test_imgforge_lock_must_name_an_existing_file(zoo, monkeypatch, capfd):
    monkeypatch.setenv("IMGFORGE_LOCK", "missing.lock")
    assert main(["models", "pull", "tiny"]) == 1
    assert "lock file missing.lock not found" in capfd.readouterr().err


def test_a_lock_from_another_source_is_named(zoo, write_manifest, tmp_path, capfd):
    assert main(["models", "lock", "tiny", "-q"]) == 0
    text = (tmp_path / "manifest.toml").read_text().replace("sub/w.bin", "moved/w.bin")
    (tmp_path / "manifest.toml").write_text(text)
    assert main(["models", "pull", "tiny"]) == 1
    assert "locked from another source than the manifest's" in capfd.readouterr().err


# ---- --weights-dir: any folder name, trailing components, several folders ------------------------------------


@pytest.fixture
def official(hub_server, write_manifest, tmp_path, monkeypatch):
    """A restore-like model whose files share a name, one from the Hub and one a release-zip member; offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_manifest(tmp_path, """
        [models.photo]
        task = "restore"
        arch = "oldphoto"
        description = "d"
        files.vae = { hub = "org/photo", path = "restoration/VAE_A_quality/latest_net_G.pth" }
        files.mapping = { urls = ["https://example.invalid/global_checkpoints.zip"], member = "checkpoints/restoration/mapping_quality/latest_net_G.pth" }
        files.unique = { hub = "org/photo", path = "detection/FT_Epoch_latest.pt" }
    """)
    return get_model("photo")


def place(root, relative: str) -> os.PathLike:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(relative.encode())
    return path


@pytest.mark.parametrize("layout,given", [("{role}", "."), ("my_weights/{role}", "my_weights"),
                                          ("Global/checkpoints/{role}", "Global")])
def test_weights_found_in_a_folder_of_any_name(official, tmp_path, layout, given):
    """The official checkpoints folder renamed or moved, or the folder above it (e.g. Global/)."""
    relatives = {"vae": "restoration/VAE_A_quality/latest_net_G.pth",
                 "mapping": "restoration/mapping_quality/latest_net_G.pth", "unique": "detection/FT_Epoch_latest.pt"}
    folder = tmp_path / "renamed"
    for role, relative in relatives.items():
        place(folder, layout.format(role=relative))
    given = folder / given
    for role, relative in relatives.items():
        assert hub.fetch_file(official, role, weights_dir=given) == folder / layout.format(role=relative)


def test_shorter_trailing_paths_and_bare_names_only_when_unambiguous(official, tmp_path):
    folder = tmp_path / "flat"
    place(folder, "VAE_A_quality/latest_net_G.pth")
    place(folder, "latest_net_G.pth")  # shared by two files: never taken for either
    place(folder, "FT_Epoch_latest.pt")
    assert hub.fetch_file(official, "vae", weights_dir=folder) == folder / "VAE_A_quality/latest_net_G.pth"
    assert hub.fetch_file(official, "unique", weights_dir=folder) == folder / "FT_Epoch_latest.pt"
    assert hub.cached_file(official, "mapping", weights_dir=folder) is None


def test_several_weights_folders(official, tmp_path, monkeypatch, capfd):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    vae = place(second, "VAE_A_quality/latest_net_G.pth")
    assert hub.fetch_file(official, "vae", weights_dir=[first, second]) == vae
    monkeypatch.setenv("IMGFORGE_WEIGHTS_DIR", os.pathsep.join([str(first), str(second)]))
    assert hub.fetch_file(official, "vae") == vae
    monkeypatch.delenv("IMGFORGE_WEIGHTS_DIR")
    assert main(["models", "path", "photo", "--role", "vae", "--weights-dir", str(first),
                 "--weights-dir", str(second)]) == 0
    assert capfd.readouterr().out.strip() == str(vae)
    shutil.rmtree(second)


# -- the face stage's files (issue 16, item 11) -----------------------------------------------------------------

YUNET = "face_detection_yunet_2023mar.onnx"
FACE_256 = "Face_Enhancement/checkpoints/Setting_9_epoch_100/latest_net_G.pth"


def _tamper(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    before = path.stat()
    if how == "append":
        data += b"\0\0"
    else:
        data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    if how == "flip, mtime set back":
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("target, how, lock_option", [
    (YUNET, "flip", []), (YUNET, "append", ["--lock", "imgforge.lock"]), (YUNET, "flip, mtime set back", []),
    (FACE_256, "flip", ["--lock", "imgforge.lock"])])
def test_every_face_stage_file_is_checked_against_the_lock(weights_dir, tmp_path, monkeypatch, capfd, target, how,
                                                           lock_option):
    from PIL import Image

    from test_restore import scratched_photo

    monkeypatch.delenv("IMGFORGE_LOCK", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    Image.fromarray(scratched_photo(64, 64)).save(tmp_path / "a.png")
    restore = [*lock_option, "restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--faces-only",
               "--weights-dir", str(weights_dir), "-q"]
    assert main(["models", "lock", "face-enhance-256", "face-detect-yunet", "--weights-dir", str(weights_dir),
                 "-q"]) == 0
    assert main(restore) == 0  # the untouched files pass (and their check is remembered)
    capfd.readouterr()
    _tamper(weights_dir / target, how)
    assert main(restore) == 1
    err = capfd.readouterr().err.strip()
    assert f"{weights_dir / target} has sha256" in err and "the lock file imgforge.lock says" in err
    assert len(err.splitlines()) == 1


def test_the_face_stage_looks_only_in_the_folders_given(weights_dir, tmp_path, monkeypatch):
    from imgforge.errors import WeightsUnavailable
    from imgforge.pipelines.faces import fetch_face_file
    from imgforge.plan import RunPlan

    downloads = tmp_path / "dl"
    (downloads / "G").mkdir(parents=True)
    shutil.move(weights_dir, downloads / "G" / "checkpoints")
    for name in ("yunet", "tamp"):
        (downloads / name).mkdir()
        shutil.copy(downloads / "G" / "checkpoints" / YUNET, downloads / name / YUNET)
    (downloads / "G" / "checkpoints" / YUNET).unlink()
    (downloads / "tamp" / YUNET).write_bytes(b"not the graph you gave")
    shutil.move(downloads / "G" / "checkpoints" / "Face_Enhancement", downloads / "Face_Enhancement")
    given = RunPlan.resolve(weights_dir=[downloads / "G" / "checkpoints", downloads / "yunet"], offline=True,
                            quiet=True)
    yunet = get_model("face-detect-yunet")
    assert fetch_face_file(yunet, "model", given) == downloads / "yunet" / YUNET
    with pytest.raises(WeightsUnavailable):  # in dl/Face_Enhancement: beside a folder given, not below it
        fetch_face_file(get_model("face-enhance-256"), "generator", given)
    assert fetch_face_file(get_model("face-enhance-256"), "generator",
                           RunPlan.resolve(weights_dir=[downloads], offline=True, quiet=True)) == downloads / FACE_256
