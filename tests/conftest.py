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

`here` -- tmp_path as the working folder, with an empty model manifest (tmp_path/none.toml).

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
from imgforge.engine import ENGINES  # noqa: E402


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


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """tmp_path as the working folder, for commands given relative paths; the model manifest is an empty file
    there, so that no model can load by accident."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMGFORGE_MANIFEST", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    return tmp_path


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, started by the first test that asks for it and stopped at the end of the
    session (a real HTTP endpoint, not a mocked client); the AWS variables point imgforge.storage (and the Ray
    workers, which get them from the driver) at it. Yields the server: calling it creates a fresh bucket and
    returns its s3:// URL; `.endpoint` is its URL."""
    from s3_server import S3Server

    server = S3Server()
    saved = {name: os.environ.get(name) for name in server.environment}
    os.environ.update(server.environment)
    from imgforge import storage

    storage._filesystem.cache_clear()
    yield server
    server.close()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    storage._filesystem.cache_clear()


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray with 2 CPUs on 127.0.0.1, started by the first test that needs it (it takes seconds) and
    shut down at the end of the session. Its workers import imgforge and tests/ from this checkout; settings
    a test makes later (an S3 server, a Hub) reach them through the driver's forwarded variables. Skips where
    the `ray` extra is not installed."""
    ray = pytest.importorskip("ray")
    root = Path(__file__).resolve().parent
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(root.parent), str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    import logging

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             _node_ip_address="127.0.0.1")  # all of its traffic stays on loopback
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


# the fixture that starts what an engine runs on, for the engines that need one
ENGINE_SERVICES = {"ray": "ray_address"}


@pytest.fixture(params=[pytest.param(name, marks=[pytest.mark.slow] if name in ENGINE_SERVICES else [])
                        for name in sorted(ENGINES)])
def engine_name(request) -> str:
    """Each registered engine in turn (the contract suite runs on all of them), its service started (an engine
    with a service of its own costs seconds per run: slow)."""
    if request.param in ENGINE_SERVICES:
        request.getfixturevalue(ENGINE_SERVICES[request.param])
    return request.param
