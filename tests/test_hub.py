"""hub.fetch_file / fetch_model against the local Hub server: cache, pinning, checksums, offline, URLs, zips."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest

from imgforge import hub
from imgforge.errors import ChecksumMismatch, DownloadError, ModelError, WeightsUnavailable
from imgforge.manifest import get_model

DATA = b"tiny weights " * 50
OTHER = b"other bytes " * 40


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _zoo(write_manifest, tmp_path, files: str) -> None:
    write_manifest(tmp_path, f'[models.tiny]\ntask = "sample"\narch = "a"\ndescription = "d"\n{files}\n')


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_download_then_cache_hit_makes_no_request(hub_server, write_manifest, tmp_path):
    commit = hub_server.add_file("org/tiny", "sub/w.bin", DATA)
    _zoo(write_manifest, tmp_path, f'files.weights = {hub_server.file_table("org/tiny", "sub/w.bin")}')
    path = hub.fetch_file(get_model("tiny"), "weights", quiet=True)
    assert path.read_bytes() == DATA
    assert path.resolve().is_relative_to(hub.hub_cache_dir().resolve())
    assert ("GET", f"/org/tiny/resolve/{commit}/sub/w.bin") in hub_server.requests
    hub_server.requests.clear()
    assert hub.fetch_model(get_model("tiny"), quiet=True) == {"weights": path}
    assert hub_server.requests == []


def test_pinned_revision_fetches_that_commit(hub_server, write_manifest, tmp_path):
    old = hub_server.add_file("org/tiny", "w.bin", DATA)
    hub_server.add_file("org/tiny", "w.bin", OTHER)  # main moves on
    _zoo(write_manifest, tmp_path, f'files.weights = {hub_server.file_table("org/tiny", "w.bin", commit=old)}')
    assert hub.fetch_file(get_model("tiny"), "weights", quiet=True).read_bytes() == DATA
    assert {path for _, path in hub_server.requests} == {f"/org/tiny/resolve/{old}/w.bin"}


def test_unpinned_file_follows_main(hub_server, write_manifest, tmp_path):
    hub_server.add_file("org/tiny", "w.bin", DATA)
    hub_server.add_file("org/tiny", "w.bin", OTHER)
    table = hub_server.file_table("org/tiny", "w.bin", pinned=False, checksum=False)
    _zoo(write_manifest, tmp_path, f"files.weights = {table}")
    assert hub.fetch_file(get_model("tiny"), "weights", quiet=True).read_bytes() == OTHER
    assert ("HEAD", "/org/tiny/resolve/main/w.bin") in hub_server.requests


def test_checksum_mismatch_deletes_download_and_raises(hub_server, write_manifest, tmp_path):
    commit = hub_server.add_file("org/tiny", "w.bin", DATA)
    wrong = _sha(OTHER)
    _zoo(write_manifest, tmp_path,
         f'files.weights = {{ hub = "org/tiny", path = "w.bin", revision = "{commit}", sha256 = "{wrong}" }}')
    with pytest.raises(ChecksumMismatch) as error:
        hub.fetch_file(get_model("tiny"), "weights", quiet=True)
    message = str(error.value)
    assert "w.bin" in message and wrong in message and _sha(DATA) in message and "\n" not in message
    cache = hub.hub_cache_dir()
    assert not [p for p in cache.rglob("*") if p.is_file() and p.read_bytes() == DATA]  # blob gone
    assert not list((cache / "models--org--tiny" / "snapshots").rglob("w.bin"))  # link gone


def test_size_mismatch_is_rejected(hub_server, write_manifest, tmp_path):
    commit = hub_server.add_file("org/tiny", "w.bin", DATA)
    _zoo(write_manifest, tmp_path,
         f'files.weights = {{ hub = "org/tiny", path = "w.bin", revision = "{commit}", size = {len(DATA) + 1} }}')
    with pytest.raises(ChecksumMismatch, match=f"is {len(DATA)} bytes"):
        hub.fetch_file(get_model("tiny"), "weights", quiet=True)


def test_corrupted_cache_is_caught_and_hash_is_remembered(hub_server, write_manifest, tmp_path, monkeypatch):
    hub_server.add_file("org/tiny", "w.bin", DATA)
    _zoo(write_manifest, tmp_path, f'files.weights = {hub_server.file_table("org/tiny", "w.bin")}')
    hashed = []
    real_sha = hub.sha256_of
    monkeypatch.setattr(hub, "sha256_of", lambda path: hashed.append(path) or real_sha(path))
    path = hub.fetch_file(get_model("tiny"), "weights", quiet=True)
    hub.fetch_file(get_model("tiny"), "weights", quiet=True)
    assert len(hashed) == 1  # the second call trusted the record of the first check
    path.resolve().write_bytes(OTHER[: len(DATA)].ljust(len(DATA), b"x"))  # same size, other bytes
    with pytest.raises(ChecksumMismatch, match="deleted"):
        hub.fetch_file(get_model("tiny"), "weights", quiet=True)
    assert not path.exists()
    assert hub.fetch_file(get_model("tiny"), "weights", quiet=True).read_bytes() == DATA  # downloaded again


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_offline_uses_the_cache_without_requests(hub_server, write_manifest, tmp_path, monkeypatch, how):
    hub_server.add_file("org/tiny", "w.bin", DATA)
    _zoo(write_manifest, tmp_path, f'files.weights = {hub_server.file_table("org/tiny", "w.bin", pinned=False)}')
    hub.fetch_file(get_model("tiny"), "weights", quiet=True)
    hub_server.requests.clear()
    if how == "environment":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = how == "argument"  # False (a CLI flag's default) leaves the choice to HF_HUB_OFFLINE
    assert hub.fetch_file(get_model("tiny"), "weights", offline=offline).read_bytes() == DATA
    assert hub_server.requests == []


def test_offline_without_cache_is_weights_unavailable(hub_server, write_manifest, tmp_path):
    hub_server.add_file("org/tiny", "w.bin", DATA)
    _zoo(write_manifest, tmp_path, f'files.weights = {hub_server.file_table("org/tiny", "w.bin")}')
    with pytest.raises(WeightsUnavailable) as error:
        hub.fetch_file(get_model("tiny"), "weights", offline=True)
    assert error.value.exit_code == 4
    message = str(error.value)
    assert "'w.bin'" in message and "'tiny'" in message and "imgforge models pull tiny" in message
    assert "--weights-dir" in message and "\n" not in message
    assert hub_server.requests == []


def test_hub_errors_are_one_line_download_errors(hub_server, write_manifest, tmp_path):
    commit = hub_server.add_file("org/tiny", "w.bin", DATA)
    _zoo(write_manifest, tmp_path, f"""
files.norepo = {{ hub = "org/none", path = "w.bin" }}
files.nofile = {{ hub = "org/tiny", path = "missing.bin", revision = "{commit}" }}
files.norev = {{ hub = "org/tiny", path = "w.bin", revision = "{"0" * 40}" }}""")
    entry = get_model("tiny")
    for role, expected in [("norepo", "repo org/none not found"), ("nofile", "no such file"),
                           ("norev", "revision 0000")]:
        with pytest.raises(DownloadError, match=expected) as error:
            hub.fetch_file(entry, role, quiet=True)
        assert "\n" not in str(error.value)
    with pytest.raises(ModelError, match="has no 'generator' file"):
        hub.fetch_file(entry, "generator")


def test_url_source_falls_back_to_the_next_address(hub_server, write_manifest, tmp_path, capfd):
    good = hub_server.add_url_file("w.pth", DATA)
    missing = f"{hub_server.endpoint}/files/gone/w.pth"
    _zoo(write_manifest, tmp_path, f'files.generator = {{ urls = ["{missing}", "{good}"], sha256 = "{_sha(DATA)}" }}')
    path = hub.fetch_file(get_model("tiny"), "generator", quiet=True)
    assert path.read_bytes() == DATA and path.name == "w.pth"
    assert capfd.readouterr().err == ""  # quiet: no progress bar
    assert [p for _, p in hub_server.requests] == ["/files/gone/w.pth", "/files/w.pth"]
    hub_server.requests.clear()
    assert hub.fetch_file(get_model("tiny"), "generator", offline=True) == path
    assert hub_server.requests == []
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".part")]


def test_url_failures_are_reported_together(hub_server, write_manifest, tmp_path):
    closed = "http://127.0.0.1:9/w.pth"  # the discard port: nothing listens there
    _zoo(write_manifest, tmp_path, f'files.generator = {{ urls = ["{hub_server.endpoint}/files/w.pth", "{closed}"] }}')
    with pytest.raises(DownloadError) as error:
        hub.fetch_file(get_model("tiny"), "generator", quiet=True)
    message = str(error.value)
    assert "HTTP 404" in message and closed in message and "\n" not in message
    with pytest.raises(WeightsUnavailable):
        hub.fetch_file(get_model("tiny"), "generator", offline=True)


def test_url_checksum_mismatch_deletes_the_download(hub_server, write_manifest, tmp_path):
    url = hub_server.add_url_file("w.pth", DATA)
    _zoo(write_manifest, tmp_path, f'files.generator = {{ urls = ["{url}"], sha256 = "{_sha(OTHER)}" }}')
    with pytest.raises(ChecksumMismatch):
        hub.fetch_file(get_model("tiny"), "generator", quiet=True)
    assert not [p for p in hub.hub_cache_dir().rglob("w.pth")]


def test_zip_members_are_extracted_from_one_download(hub_server, write_manifest, tmp_path):
    members = {"ckpt/a/latest.pth": DATA, "ckpt/b/latest.pth": OTHER}
    url = hub_server.add_url_file("ckpt.zip", _zip(members))
    _zoo(write_manifest, tmp_path, f"""
files.first = {{ urls = ["{url}"], member = "ckpt/a/latest.pth", sha256 = "{_sha(DATA)}" }}
files.second = {{ urls = ["{url}"], member = "ckpt/b/latest.pth", sha256 = "{_sha(OTHER)}" }}""")
    paths = hub.fetch_model(get_model("tiny"), quiet=True)
    assert paths["first"].read_bytes() == DATA and paths["second"].read_bytes() == OTHER
    assert paths["first"] != paths["second"]
    assert hub_server.requests == [("GET", "/files/ckpt.zip")]


def test_bad_zip_member_is_refused(hub_server, write_manifest, tmp_path):
    url = hub_server.add_url_file("ckpt.zip", _zip({"a.pth": DATA}))
    _zoo(write_manifest, tmp_path, f"""
files.absent = {{ urls = ["{url}"], member = "b.pth" }}
files.wrong = {{ urls = ["{url}"], member = "a.pth", sha256 = "{_sha(OTHER)}" }}""")
    entry = get_model("tiny")
    with pytest.raises(DownloadError, match="has no member 'b.pth'"):
        hub.fetch_file(entry, "absent", quiet=True)
    with pytest.raises(ChecksumMismatch):
        hub.fetch_file(entry, "wrong", quiet=True)
    assert not list(hub.hub_cache_dir().rglob("a.pth")) and not list(hub.hub_cache_dir().rglob("ckpt.zip"))


@pytest.mark.parametrize(
    "repo_path, layout", [("sub/w.bin", "sub/w.bin"), ("sub/w.bin", "tiny/w.bin"), ("w.bin", "w.bin")]
)
def test_weights_dir_is_looked_up_first(hub_server, write_manifest, tmp_path, monkeypatch, repo_path, layout):
    hub_server.add_file("org/tiny", repo_path, DATA)
    _zoo(write_manifest, tmp_path, f'files.weights = {hub_server.file_table("org/tiny", repo_path)}')
    folder = tmp_path / "weights"
    (folder / layout).parent.mkdir(parents=True)
    (folder / layout).write_bytes(DATA)
    assert hub.fetch_file(get_model("tiny"), "weights", weights_dir=folder) == folder / layout
    monkeypatch.setenv("IMGFORGE_WEIGHTS_DIR", str(folder))
    assert hub.fetch_file(get_model("tiny"), "weights") == folder / layout
    assert hub_server.requests == []


def test_loose_file_does_not_stand_in_for_a_file_in_a_folder(hub_server, write_manifest, tmp_path):
    # official checkpoints share names (latest_net_G.pth): a loose one must not be taken for all of them
    hub_server.add_file("org/tiny", "sub/w.bin", DATA)
    hub_server.add_file("org/tiny", "other/w.bin", OTHER)
    _zoo(write_manifest, tmp_path, f'files.weights = {hub_server.file_table("org/tiny", "sub/w.bin")}\n'
                                   f'files.more = {hub_server.file_table("org/tiny", "other/w.bin")}')
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "w.bin").write_bytes(OTHER)
    assert hub.fetch_file(get_model("tiny"), "weights", weights_dir=folder, quiet=True).read_bytes() == DATA


def test_weights_dir_order_and_bad_file_kept(hub_server, write_manifest, tmp_path):
    hub_server.add_file("org/tiny", "sub/w.bin", DATA)
    _zoo(write_manifest, tmp_path, f'files.weights = {hub_server.file_table("org/tiny", "sub/w.bin")}')
    folder = tmp_path / "weights"
    for layout in ("sub/w.bin", "tiny/w.bin", "w.bin"):
        (folder / layout).parent.mkdir(parents=True, exist_ok=True)
        (folder / layout).write_bytes(DATA)
    assert hub.fetch_file(get_model("tiny"), "weights", weights_dir=folder) == folder / "sub/w.bin"
    (folder / "sub/w.bin").write_bytes(OTHER)
    with pytest.raises(ChecksumMismatch, match="replace it"):
        hub.fetch_file(get_model("tiny"), "weights", weights_dir=folder)
    assert (folder / "sub/w.bin").read_bytes() == OTHER  # the user's own file is not deleted


def test_weights_dir_miss_falls_back_to_the_hub(hub_server, write_manifest, tmp_path):
    hub_server.add_file("org/tiny", "w.bin", DATA)
    _zoo(write_manifest, tmp_path, f'files.weights = {hub_server.file_table("org/tiny", "w.bin")}')
    (tmp_path / "empty").mkdir()
    path = hub.fetch_file(get_model("tiny"), "weights", weights_dir=tmp_path / "empty", quiet=True)
    assert path.read_bytes() == DATA and hub_server.requests
