"""Read a checkpoint's state dict without executing pickled code, and without trusting what it declares:
the sizes it claims are checked against the file before anything is read, its nesting is walked once per
object to a bounded depth, and a network it describes that does not fit in memory is named by its shapes."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import stat
import zipfile
from pathlib import Path
from typing import Iterator

import torch

from .errors import ModelError

# state dicts nest a few levels ({"model_state": {...}}, optimiser states); deeper is a crafted file
MAX_DEPTH = 8
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"  # protocol 2 and later open with PROTO; torch's legacy format is protocol 2

_HINT_PICKLE = (
    "it holds Python objects besides tensors, and imgforge loads weights without running pickled code; "
    "re-save it as a plain state dict (torch.save(model.state_dict(), ...)) or as .safetensors"
)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The dict stored in `path`, on the CPU: .safetensors through safetensors, anything else (.pt, .pth,
    .bin, .ckpt) through torch.load(weights_only=True). Nested dicts (e.g. {"model_state": {...}}) are
    returned as stored; callers unwrap them. ModelError (one line) if the file cannot be read this way, is
    not a regular file, declares more bytes than it holds, nests deeper than MAX_DEPTH, holds an expanded
    tensor or a tensor with NaN or infinity (a diverged training run: every output would be garbage)."""
    path = Path(path)
    _check_regular(path)
    if path.suffix == ".safetensors":
        state = _load_safetensors(path)
    else:
        state = _load_pickle(path)
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state dict (a dict of tensors)")
    for key, tensor in tensors(state, path):
        _check_tensor(path, key, tensor)
    return state


def tensors(state: dict, path: Path | str = "the checkpoint") -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted key, tensor) of every tensor in a nested state dict (dicts, lists and tuples), each container
    visited once however often it is shared (a pickle can make 80 levels of shared children, 2^80 paths, in
    2.5 KB); ModelError below MAX_DEPTH levels."""
    seen: set[int] = set()
    pending: list[tuple[str, object, int]] = [("", state, 0)]
    while pending:
        prefix, container, depth = pending.pop()
        if id(container) in seen:
            continue
        seen.add(id(container))
        if depth > MAX_DEPTH:
            raise ModelError(f"{path} nests its contents deeper than {MAX_DEPTH} levels (at '{prefix[:80]}…'); "
                             "no saved network does: the file is damaged or crafted")
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, value in items:
            name = f"{prefix}{key}"
            if isinstance(value, torch.Tensor):
                yield name, value
            elif isinstance(value, (dict, list, tuple)):
                pending.append((f"{name}.", value, depth + 1))


def _check_tensor(path: Path, key: str, tensor: torch.Tensor) -> None:
    stored = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
    if tensor.numel() > stored:  # torch.save of an expand()ed view: a huge shape over a few stored values
        raise ModelError(f"{path}: tensor '{key}' of shape {shape_text(tensor.shape)} is stored as {stored} "
                         "value(s) (an expanded view); a saved network's weights never are: the file is damaged "
                         "or crafted")
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise ModelError(f"{path}: tensor '{key}' holds NaN or infinite values; the weights are damaged")


def shape_text(shape) -> str:
    return "×".join(str(side) for side in shape) or "scalar"


@contextlib.contextmanager
def building(state: dict, path: Path | str) -> Iterator[None]:
    """Around building the network a state dict describes: running out of memory there is the weights'
    doing (shapes read from them), so the error names the largest tensor, not options of the command."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "memory" not in str(exc).lower():
            raise
        key, tensor = max(tensors(state, path), key=lambda item: item[1].numel(), default=("", torch.zeros(())))
        raise ModelError(f"out of memory building the network {path} describes: its largest tensor '{key}' is "
                         f"{shape_text(tensor.shape)}; is this the checkpoint you meant?") from None


def _check_regular(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ModelError(f"weights file not found: {path}") from None
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise ModelError(f"{path} is a folder, not a weights file (give the .pth or .safetensors file inside it)")
    if not stat.S_ISREG(mode):  # a FIFO would block, /dev/zero never ends
        raise ModelError(f"{path} is not a regular file (a device, pipe or socket); give a weights file")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError and plain OSError/ValueError
        raise ModelError(f"cannot read {path} as safetensors (corrupt or truncated?): {_first_line(exc)}") from None


def _load_pickle(path: Path) -> object:
    with open(path, "rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if head.startswith(_ZIP_MAGIC):
        _check_declared_sizes(path)
    elif not head.startswith(_PICKLE_MAGIC):
        raise ModelError(f"cannot read {path} (corrupt or truncated?): it is neither a torch zip archive nor "
                         "a pickle")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = re.search(r"GLOBAL (\S+)", str(exc))
        if blocked:
            raise ModelError(f"cannot load {path}: {_HINT_PICKLE} (found {blocked.group(1)})") from None
        raise ModelError(f"cannot read {path} (corrupt or truncated?): {_first_line(exc)}") from None
    except MemoryError:
        raise ModelError(f"cannot read {path}: it declares more data than fits in memory") from None
    except Exception as exc:  # a damaged pickle raises anything: KeyError from its memo, IndexError, TypeError
        raise ModelError(f"cannot read {path} (corrupt or truncated?): {type(exc).__name__}: "
                         f"{_first_line(exc)}") from None


def _check_declared_sizes(path: Path) -> None:
    """torch stores every record uncompressed, so together they cannot hold more bytes than the file: a
    record that inflates past it (2 GB of deflated zeros in a few KB) is refused before it is read."""
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path} (corrupt or truncated?): {_first_line(exc)}") from None
    declared = sum(member.file_size for member in members)
    if declared > size:
        largest = max(members, key=lambda member: member.file_size)
        raise ModelError(f"{path} declares {declared} bytes of records in a file of {size} bytes ('{largest.filename}' "
                         f"alone {largest.file_size}); torch never compresses them: the file is damaged or crafted")


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's run to a paragraph)."""
    lines = str(exc).strip().splitlines()
    return lines[0].split(". ")[0].rstrip(".") if lines else type(exc).__name__
