"""`imgforge models list/pull/verify/path`, in-process through imgforge.cli.main."""

from __future__ import annotations

import hashlib
import json

from imgforge import hub
from imgforge.cli import main
from imgforge.manifest import get_model

DATA = b"tiny weights " * 50
CONFIG = b'{"channels": 3}'


def _zoo(hub_server, write_manifest, tmp_path) -> None:
    hub_server.add_file("org/tiny", "w.bin", DATA)
    hub_server.add_file("org/tiny", "config.json", CONFIG)
    url = hub_server.add_url_file("gen.pth", DATA)
    write_manifest(tmp_path, f"""
        [models.tiny]
        task = "sample"
        arch = "ddpm_unet"
        description = "tiny DDPM"
        files.weights = {hub_server.file_table("org/tiny", "w.bin")}
        files.config = {hub_server.file_table("org/tiny", "config.json", pinned=False, checksum=False)}

        [models.tiny-gan]
        task = "translate"
        arch = "pix2pix"
        description = "tiny GAN"
        direction = "AtoB"
        files.generator = {{ urls = ["{url}"], sha256 = "{hashlib.sha256(DATA).hexdigest()}" }}
    """)


def test_list_json_reports_sources_and_cache(hub_server, write_manifest, tmp_path, capsys):
    _zoo(hub_server, write_manifest, tmp_path)
    assert main(["models", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"tiny", "tiny-gan"}
    tiny = rows["tiny"]
    assert (tiny["source"], tiny["pinned"], tiny["verified"], tiny["cached"]) == ("hub:org/tiny", False, False, False)
    assert tiny["files"]["weights"]["pinned"] and not tiny["files"]["config"]["pinned"]
    assert rows["tiny-gan"]["source"] == "url:" + hub_server.endpoint.split("/")[2] and rows["tiny-gan"]["pinned"]

    assert main(["models", "pull", "tiny-gan", "--quiet"]) == 0
    assert main(["models", "list", "--json", "--task", "translate"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["tiny-gan"] and rows[0]["cached"]
    assert rows[0]["files"]["generator"]["cached"].endswith("gen.pth")
    assert hub_server.requests == [("GET", "/files/gen.pth")]  # listing never touches the network


def test_list_table(hub_server, write_manifest, tmp_path, capsys):
    _zoo(hub_server, write_manifest, tmp_path)
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "tiny DDPM" in line)
    assert line.split()[:3] == ["tiny", "sample", "tiny"] and "hub:org/tiny" in line and "1/2" in line


def test_pull_then_path(hub_server, write_manifest, tmp_path, capsys):
    _zoo(hub_server, write_manifest, tmp_path)
    assert main(["models", "path", "tiny"]) == 1
    assert "not cached" in capsys.readouterr().err
    assert main(["models", "pull", "tiny", "tiny-gan", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "tiny weights:" in err and "tiny config:" in err and "not verified" in err
    assert main(["models", "path", "tiny"]) == 0
    lines = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert set(lines) == {"weights", "config"} and open(lines["weights"], "rb").read() == DATA
    assert main(["models", "path", "tiny", "--role", "config"]) == 0
    assert open(capsys.readouterr().out.strip(), "rb").read() == CONFIG
    assert main(["models", "path", "tiny", "--role", "nope"]) == 1
    assert "has no 'nope' file" in capsys.readouterr().err


def test_pull_unknown_name_suggests_and_downloads_nothing(hub_server, write_manifest, tmp_path, capsys):
    _zoo(hub_server, write_manifest, tmp_path)
    assert main(["models", "pull", "tiny", "tiny-gn"]) == 1
    err = capsys.readouterr().err
    assert "unknown model 'tiny-gn'" in err and "tiny-gan" in err and len(err.strip().splitlines()) == 1
    assert hub_server.requests == []


def test_pull_offline_without_cache_exits_4(hub_server, write_manifest, tmp_path, capsys):
    _zoo(hub_server, write_manifest, tmp_path)
    assert main(["models", "pull", "tiny", "--offline"]) == 4
    err = capsys.readouterr().err
    assert "w.bin" in err and "imgforge models pull tiny" in err and len(err.strip().splitlines()) == 1
    assert main(["models", "pull", "tiny", "--quiet"]) == 0
    hub_server.requests.clear()
    capsys.readouterr()
    assert main(["models", "pull", "tiny", "--offline"]) == 0
    assert hub_server.requests == []


def test_pull_with_weights_dir(hub_server, write_manifest, tmp_path, capsys):
    _zoo(hub_server, write_manifest, tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "gen.pth").write_bytes(DATA)
    assert main(["models", "pull", "tiny-gan", "--offline", "--weights-dir", str(tmp_path / "mine")]) == 0
    assert str(tmp_path / "mine" / "gen.pth") in capsys.readouterr().err


def test_verify_reports_and_deletes_mismatches(hub_server, write_manifest, tmp_path, capsys):
    _zoo(hub_server, write_manifest, tmp_path)
    assert main(["models", "verify"]) == 0
    assert "no model has cached files" in capsys.readouterr().err
    assert main(["models", "pull", "tiny", "tiny-gan", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["models", "verify"]) == 0
    out = capsys.readouterr().out
    statuses = {tuple(line.split()[:2]): line for line in out.splitlines()[1:]}
    assert " ok " in statuses[("tiny", "weights")] and "no sha256 known" in statuses[("tiny", "config")]
    assert " ok " in statuses[("tiny-gan", "generator")]

    generator = hub.cached_file(get_model("tiny-gan"), "generator")
    generator.write_bytes(DATA.replace(b"tiny", b"TINY"))  # same size, other bytes: only a re-hash sees it
    assert main(["models", "verify", "tiny-gan"]) == 1
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.out and "did not match" in captured.err
    assert not generator.exists()
    assert main(["models", "verify", "tiny-gan"]) == 0
    assert "not cached" in capsys.readouterr().out
