"""The README's cluster job as a user runs it: a Ray head from `ray start --head` on 127.0.0.1 (its own ports,
temp folder and token), the README's `ray job submit ... imgforge restore s3://...` with the endpoint and
credentials given in `--runtime-env-json`, against moto's S3 server; the outputs equal a local run's. And
`ray job stop` ends the driver with its one `interrupted:` line, not Ray's SIGTERM dump."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import free_ports
from imgforge.cli import main
from imgforge.storage import location
from test_batch import DRIVER
from test_engine_contract import inverted_images
from test_restore_cli import checkpoints, served  # noqa: F401  (fixtures)
from test_restore_cli import photos  # noqa: F401  (fixture)

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head` on 127.0.0.1 with free ports, a temp folder and a HOME of its own, whose token
    (~/.ray/auth_token, from `ray get-auth-token --generate`) turns Ray 2.60's token authentication on;
    started from an empty folder, stopped by its own temp folder's processes at the end. Yields the
    environment in which `ray job submit` reaches it."""
    home = Path(tempfile.mkdtemp(prefix="rayhead", dir="/tmp"))  # short: Ray's socket paths are limited
    (home / "cwd").mkdir()
    gcs, dashboard, client, manager, objects, agent, grpc, metrics, runtime_env = free_ports(9)
    workers = free_ports(1)[0]
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    env.pop("RAY_AUTH_MODE", None)  # unset: `ray start --head` turns token authentication on if a token exists
    command = ["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
               "--ray-client-server-port", str(client), "--node-manager-port", str(manager),
               "--object-manager-port", str(objects), "--dashboard-agent-listen-port", str(agent),
               "--dashboard-agent-grpc-port", str(grpc), "--metrics-export-port", str(metrics),
               "--runtime-env-agent-port", str(runtime_env), "--min-worker-port", str(workers),
               "--max-worker-port", str(workers + 200), "--num-cpus", "2", "--temp-dir", str(home / "ray"),
               "--disable-usage-stats"]
    token = subprocess.run(["ray", "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert token.returncode == 0 and (home / ".ray" / "auth_token").is_file(), token.stdout + token.stderr
    started = subprocess.run(command, cwd=home / "cwd", env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "Token authentication is enabled" in started.stdout + started.stderr
        # the client side, as docs/scale.md says: token mode, the head's token from ~/.ray/auth_token
        yield {"env": {**env, "RAY_AUTH_MODE": "token"}, "address": f"http://127.0.0.1:{dashboard}", "home": home}
    finally:
        stop_processes_of(home / "ray")
        shutil.rmtree(home, ignore_errors=True)


def stop_processes_of(temp_dir: Path) -> None:
    """Stop exactly the Ray head whose temp folder is `temp_dir` (never `ray stop`, which stops every Ray on
    the machine): its processes name that folder on their command lines; the workers are their children."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        table[int(entry.name)] = (parent, command)
    marker = f"{temp_dir}/session_"
    chosen = {pid for pid, (_, command) in table.items() if marker in command and pid != os.getpid()}
    while True:
        children = {pid for pid, (parent, _) in table.items() if parent in chosen} - chosen
        if not children:
            break
        chosen |= children
    for each in (signal.SIGTERM, signal.SIGKILL):
        for pid in chosen:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, each)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in chosen):
            time.sleep(0.1)


def submit(head: dict, entrypoint: list[str], env_vars: dict, *, wait: bool = True) -> subprocess.CompletedProcess:
    """`ray job submit` as the README writes it, with the job's environment in --runtime-env-json."""
    command = ["ray", "job", "submit", "--address", head["address"], "--runtime-env-json",
               json.dumps({"env_vars": env_vars})] + ([] if wait else ["--no-wait"])
    return subprocess.run(command + ["--", *entrypoint], env=head["env"], cwd=head["home"] / "cwd",
                          capture_output=True, text=True, timeout=600)


def checkout_path() -> dict[str, str]:
    """The job runs this checkout's imgforge (and tests/), not an installed one."""
    return {"PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}


def test_the_readmes_cluster_job_writes_the_local_bytes(ray_head, s3_server, served, photos, tmp_path):
    bucket = s3_server()
    for path in sorted(photos.iterdir()):
        location(f"{bucket}/scans/{path.name}").write_bytes(path.read_bytes())
    assert main(["restore", str(photos), "-o", str(tmp_path / "local"), "--device", "cpu", "--threads", "1",
                 "-q"]) == 0
    # the S3 endpoint and credentials (and this test's Hub server, cache and manifest) travel in env_vars
    settings = {name: value for name, value in os.environ.items() if name.startswith(("AWS_", "HF_", "IMGFORGE_"))}
    command = ["imgforge", "restore", f"{bucket}/scans/", "-o", f"{bucket}/restored/", "-r", "--engine", "ray",
               "--workers", "2", "--skip-existing", "--json", "--threads", "1", "--device", "cpu"]
    result = submit(ray_head, command, {**settings, **checkout_path()})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(line["status"] for line in lines if "status" in line) == ["done"] * 4
    assert lines[-1]["summary"] == {"done": 4, "skipped": 0, "failed": 0, "engine": "ray", "threads": 1}
    written = {path.name: path.read_bytes() for path in location(f"{bucket}/restored").iterdir()}
    assert written == {path.name: path.read_bytes() for path in sorted((tmp_path / "local").iterdir())}


def test_ray_job_stop_ends_the_driver_with_its_interrupted_line(ray_head, tmp_path):
    source, output = tmp_path / "in", tmp_path / "out"
    inverted_images(source, 40, step=3)
    started = submit(ray_head, [sys.executable, str(DRIVER), str(source), str(output), "--ray", "auto"],
                     checkout_path(), wait=False)
    assert started.returncode == 0, started.stdout + started.stderr
    job = re.search(r"raysubmit_\w+", started.stdout + started.stderr).group(0)
    deadline = time.monotonic() + 300
    while len(list(output.glob("img*.png"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    ray_job = ["ray", "job"]
    stopped = subprocess.run(ray_job + ["stop", "--address", ray_head["address"], job], env=ray_head["env"],
                             capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    logs = subprocess.run(ray_job + ["logs", "--address", ray_head["address"], job], env=ray_head["env"],
                          capture_output=True, text=True, timeout=120).stdout
    (line,) = [line for line in logs.splitlines() if line.startswith("interrupted: ")]
    assert "SIGTERM received" not in logs and "Traceback" not in logs, logs
    assert int(line.removeprefix("interrupted: ").split(" done")[0]) >= 3
