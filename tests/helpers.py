"""Small helpers shared by several test files."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_image(path: Path, value: int = 0, size=(8, 6)) -> Path:
    """A `size` (width, height) RGB gradient shifted by `value` at `path`, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(size[0] * size[1] * 3).reshape(size[1], size[0], 3) + value) % 256
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def stderr_lines(capfd) -> list[str]:
    """What the command printed on stderr so far, line by line."""
    return capfd.readouterr().err.strip().splitlines()


def sizes_and_modes(folder: Path) -> dict[str, tuple[tuple[int, int], str]]:
    """{file name: (size, PIL mode)} of every file in `folder`."""
    result = {}
    for path in sorted(folder.iterdir()):
        with Image.open(path) as image:
            result[path.name] = (image.size, image.mode)
    return result


def kill_when_written(process: subprocess.Popen, folder: Path, pattern: str, count: int, timeout: float) -> None:
    """SIGKILL `process` as soon as `folder` holds `count` files matching `pattern` (it must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if folder.is_dir() and len(list(folder.glob(pattern))) >= count:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    process.stderr.close()


def free_ports(count: int) -> list[int]:
    """`count` distinct ports nothing listens on at 127.0.0.1 (all bound at once, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    for each in sockets:
        each.bind(("127.0.0.1", 0))
    ports = [each.getsockname()[1] for each in sockets]
    for each in sockets:
        each.close()
    return ports


def file_bytes(folder: Path) -> dict[str, bytes]:
    """Each file of `folder` by name, with its bytes (outputs compared byte for byte)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
