"""Shared pytest fixtures.

`hub_server` -- a local Hugging Face Hub (and plain download site) for end-to-end tests without network:

    def test_x(hub_server, write_manifest, tmp_path):
        commit = hub_server.add_file("org/tiny", "model.safetensors", data)       # -> the commit hash
        write_manifest(tmp_path, f'''
            [models.tiny]
            task = "translate"
            arch = "pix2pix"
            description = "a tiny test model"
            files.generator = {hub_server.file_table("org/tiny", "model.safetensors")}
        ''')
        assert main(["models", "pull", "tiny"]) == 0
        assert ("GET", "/org/tiny/resolve/" + commit + "/model.safetensors") in hub_server.requests

  It sets HF_ENDPOINT to the server, HF_HOME and HF_HUB_CACHE to a fresh temporary folder, and removes
  HF_HUB_OFFLINE and IMGFORGE_WEIGHTS_DIR, for the duration of the test. API (see tests/hub_server.py):
  `endpoint`, `add_file(repo, path, data, commit=None) -> commit`, `add_url_file(name, data) -> url`,
  `file_table(repo, path, *, commit=None, pinned=True, checksum=True) -> "{ hub = ..., ... }"`, and
  `requests`, the list of (method, path) the server answered.

`write_manifest(tmp_path, tables_toml) -> Path` -- writes `tables_toml` (dedented) as tmp_path/manifest.toml
  and points IMGFORGE_MANIFEST at it, so get_model()/`imgforge ...` see only these models for the test.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

# Tests never reach the real Hub: huggingface_hub reads these at import time, and with telemetry on it fetches
# an "agent harness" list from its import-time endpoint on the first request it builds headers for.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")

sys.path.insert(0, str(Path(__file__).parent))  # so that tests can `from hub_server import HubServer`

from hub_server import HubServer  # noqa: E402


@pytest.fixture
def hub_server(tmp_path_factory, monkeypatch):
    cache_home = tmp_path_factory.mktemp("hf-home")
    server = HubServer()
    from huggingface_hub import constants  # in case a plugin imported it before the lines above ran

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HOME", str(cache_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache_home / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("IMGFORGE_WEIGHTS_DIR", raising=False)
    yield server
    server.close()


@pytest.fixture
def write_manifest(monkeypatch):
    def write(tmp_path: Path, tables_toml: str) -> Path:
        path = Path(tmp_path) / "manifest.toml"
        path.write_text(textwrap.dedent(tables_toml), encoding="utf-8")
        monkeypatch.setenv("IMGFORGE_MANIFEST", str(path))
        return path

    return write
