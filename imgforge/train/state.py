"""What a run leaves on disk, written so that a SIGKILL at any moment leaves every file whole: the
resumable training state (`train_state/latest.pt`), the method's weights files, and the random-number
generators every process draws from."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_state_dict
from ..errors import OutputError
from ..imageio import partial_path

STATE_FOLDER = "train_state"
STATE_FILE = "latest.pt"


def atomic_save(obj: object, path: Path) -> None:
    """torch.save into a hidden file beside `path`, flushed to the disk, then renamed over `path`: readers
    (and a resume after a crash) see the old file or the new one, never a part of one."""
    path = Path(path)
    temp = partial_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """The rename itself reaches the disk (POSIX; Windows has no directory handles to sync)."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def state_path(run_dir: Path) -> Path:
    return Path(run_dir) / STATE_FOLDER / STATE_FILE


def load_training_state(run_dir: Path) -> dict:
    """The saved state of a run, read without executing pickles."""
    return load_state_dict(state_path(run_dir))


def cpu_state(value):
    """`value` (a state dict, possibly nested) with every tensor copied to the CPU, for saving."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: cpu_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_state(v) for v in value)
    return value


def rng_state() -> dict:
    """Every generator this process draws from (torch CPU and CUDA, NumPy's and Python's global ones), in a
    form torch.load(weights_only=True) reads back."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": position, "has_gauss": has_gauss,
                  "cached_gaussian": cached},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
