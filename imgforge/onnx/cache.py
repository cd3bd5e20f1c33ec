"""The graph cache of the ONNX backend: each network's graph exported once, keyed by everything it depends on,
and run from there by ONNX Runtime."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .. import __version__
from ..errors import ImgforgeError, RunWideError
from ..hub import sha256_of
from ..imageio import write_file
from .export import OPSET, PRECISIONS, export_graph
from .session import OnnxRunner, first_line, require_onnx


def cache_dir() -> Path:
    root = os.environ.get("IMGFORGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imgforge"
    )
    return Path(root) / "onnx"


def graph_key(export, precision: str) -> str:
    """What a cached graph depends on: the weights (every tensor of the exported module, buffers too, so a
    test-time mode kept in a buffer counts), the module's printed structure (its layers, and settings a module
    prints in its extra_repr, such as the FID Inception's feature block), the export's names, axes and size rule
    (the side a fixed-size graph is traced at), precision, opset and versions. Never a batch or image size:
    graphs are dynamic in both wherever the network allows."""
    digest = hashlib.sha256(repr((export.name, repr(export.module), export.input_names, export.output_names,
                                  export.dynamic_axes, export.size_multiple, export.min_side, precision, OPSET,
                                  __version__, torch.__version__)).encode())
    for name, tensor in export.module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def cached_runner(export, device: torch.device, precision: str = "fp32") -> OnnxRunner:
    """The runner of a registry Export: its graph exported once into the cache (keyed by graph_key), then run
    by ONNX Runtime. A cached graph that cannot be loaded (a full disk, a killed copy) is exported again; every
    failure here is a RunWideError, which stops a batch before its first image."""
    require_onnx()
    if precision not in PRECISIONS:
        raise RunWideError(f"--backend onnx runs fp32 or fp16 (GPU) graphs, not {precision}")
    if precision == "fp16" and device.type != "cuda":
        raise RunWideError("fp16 ONNX graphs run on a CUDA device only; use --precision fp32 on the CPU")
    path = cache_dir() / f"{export.name}-{precision}-{graph_key(export, precision)}.onnx"
    tensorrt_cache = cache_dir() / "tensorrt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunWideError(f"cannot create the ONNX graph cache {path.parent} (set IMGFORGE_CACHE to a "
                           f"writable folder): {exc.strerror or first_line(exc)}") from None
    record = path.with_suffix(".json")
    if path.exists():
        if _matches_record(path, record, export):
            try:
                return _checked(OnnxRunner(path, device, export.output_names, tensorrt_cache), export, path)
            except ImgforgeError:
                raise
            except Exception:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...): a damaged graph
                pass
        # swapped, modified, damaged or without its record: never run, exported again below
        path.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
    try:
        digest = export_graph(export, path, precision=precision)
        write_file(record, json.dumps(_record(export, digest), indent=1).encode("utf-8"))
    except ImgforgeError as exc:
        raise RunWideError(str(exc)) from None
    except Exception as exc:  # an export that fails once fails for every image
        raise RunWideError(f"cannot export {export.name} to the ONNX graph {path}: "
                           f"{getattr(exc, 'strerror', None) or first_line(exc)}") from None
    try:
        return _checked(OnnxRunner(path, device, export.output_names, tensorrt_cache), export, path)
    except ImgforgeError:
        raise
    except Exception as exc:
        raise RunWideError(f"onnxruntime cannot load the graph exported to {path}: {first_line(exc)}") from None


def _record(export, digest: str) -> dict:
    """What the cache writes beside a graph it exported (a sidecar's signature and content hash)."""
    return {"graph_sha256": digest, "inputs": list(export.input_names), "outputs": list(export.output_names)}


def _matches_record(path: Path, record: Path, export) -> bool:
    """The cached graph is the one this cache exported for `export`: its record names the same inputs and
    outputs and its bytes still have the recorded sha256 (a graph of another network, or of the same network
    with other weights, dropped into the cache under this name does not)."""
    try:
        recorded = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(recorded, dict) and recorded == _record(export, sha256_of(path))


def _checked(runner: OnnxRunner, export, path: Path) -> OnnxRunner:
    """RunWideError, before any image, for a session whose inputs or outputs are not the export's."""
    inputs = [i.name for i in runner.session.get_inputs()]
    outputs = [o.name for o in runner.session.get_outputs()]
    if inputs != list(export.input_names) or outputs != list(export.output_names):
        raise RunWideError(f"the cached ONNX graph {path} takes {inputs} and gives {outputs}, not the "
                           f"{list(export.input_names)} -> {list(export.output_names)} of {export.name}; delete it")
    return runner
