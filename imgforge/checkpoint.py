"""Read a checkpoint's state dict without executing pickled code."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from .errors import ModelError

_HINT_PICKLE = (
    "it holds Python objects besides tensors, and imgforge loads weights without running pickled code; "
    "re-save it as a plain state dict (torch.save(model.state_dict(), ...)) or as .safetensors"
)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The dict stored in `path`, on the CPU: .safetensors through safetensors, anything else (.pt, .pth,
    .bin, .ckpt) through torch.load(weights_only=True). Nested dicts (e.g. {"model_state": {...}}) are
    returned as stored; callers unwrap them. ModelError (one line) if the file cannot be read this way or a
    tensor holds NaN or infinity (a diverged training run: every output would be garbage)."""
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{path} is a folder, not a weights file (give the .pth or .safetensors file inside it)")
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        state = _load_safetensors(path)
    else:
        state = _load_pickle(path)
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state dict (a dict of tensors)")
    _check_finite(state, path)
    return state


def _check_finite(state: dict, path: Path, prefix: str = "") -> None:
    for key, value in state.items():
        if isinstance(value, dict):
            _check_finite(value, path, f"{prefix}{key}.")
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise ModelError(f"{path}: tensor '{prefix}{key}' holds NaN or infinite values; the weights are damaged")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError and plain OSError/ValueError
        raise ModelError(f"cannot read {path} as safetensors (corrupt or truncated?): {_first_line(exc)}") from None


def _load_pickle(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc):
            raise ModelError(f"cannot load {path}: {_HINT_PICKLE} ({_blocked_name(exc)})") from None
        raise ModelError(f"cannot read {path} (corrupt or truncated?): {_first_line(exc)}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path} (corrupt or truncated?): {_first_line(exc)}") from None


def _blocked_name(exc: Exception) -> str:
    """What torch refused, from its long message: e.g. 'found mymodule.MyClass'."""
    found = re.search(r"GLOBAL (\S+)", str(exc))
    return f"found {found.group(1)}" if found else _first_line(exc)


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's run to a paragraph)."""
    lines = str(exc).strip().splitlines()
    return lines[0].split(". ")[0].rstrip(".") if lines else type(exc).__name__
