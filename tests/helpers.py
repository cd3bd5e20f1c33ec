"""Small helpers shared by several test files."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from PIL import Image


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
