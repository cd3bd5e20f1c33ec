"""Where and how networks run: device and precision choice, and runners over torch or ONNX Runtime.

Every pipeline chooses its device and precision through `select_device` and `select_dtype`, so the rules (half
precision refused on the CPU) live here only; translate and sample run their networks through `make_runner` /
`on_device` (the ONNX provider actually in use reported), restore through its own stages under `autocast`.
A module passed in is never moved or cast in place: `on_device` copies it when anything has to change.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from .errors import ImgforgeError, RunWideError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BACKENDS = ("torch", "onnx")


def select_device(spec: str = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; an explicit device that is not there is an error."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ImgforgeError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ImgforgeError(f"device {spec!r} asked for, but no CUDA GPU is available to torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ImgforgeError(f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ImgforgeError("device 'mps' asked for, but Apple's MPS backend is not available")
    elif device.type != "cpu":
        raise ImgforgeError(f"unsupported device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def select_dtype(precision: str, device: torch.device) -> torch.dtype:
    """fp32 everywhere; bf16 on CPU and GPU; fp16 only on a GPU (CPU half kernels are slow or missing)."""
    key = (precision or "fp32").strip().lower()
    if key not in PRECISIONS:
        raise ImgforgeError(f"unknown precision {precision!r}: use fp32, fp16 or bf16")
    if key == "fp16" and device.type == "cpu":
        raise ImgforgeError("fp16 is not supported on the CPU: use --precision fp32 or bf16 there")
    return PRECISIONS[key]


def on_device(module: torch.nn.Module, device: torch.device, dtype: torch.dtype | None = None,
              memory_format: torch.memory_format | None = None) -> torch.nn.Module:
    """`module` with its weights on `device` (and floating weights in `dtype`, 4-d ones in `memory_format`):
    the module itself when it already is, else a copy, so that a caller's model (or one shared by several
    runners) keeps its device, precision and layout."""
    tensors = [*module.parameters(), *module.buffers()]
    if all(_placed(tensor, device, dtype, memory_format) for tensor in tensors):
        return module
    moved = copy.deepcopy(module)
    moved.to(device=device)
    if dtype is not None:
        moved.to(dtype=dtype)
    if memory_format is not None:
        moved.to(memory_format=memory_format)
    return moved


def _placed(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None,
            memory_format: torch.memory_format | None) -> bool:
    if tensor.device.type != device.type or (device.index is not None and tensor.device.index != device.index):
        return False
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        return False
    return memory_format is None or tensor.dim() != 4 or tensor.is_contiguous(memory_format=memory_format)


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for a reduced dtype (weights stay float32, matmuls/convs run in `dtype`)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class TorchRunner:
    """Calls a module under inference mode and the chosen precision; outputs come back as float32."""

    backend = "torch"

    def __init__(self, module: torch.nn.Module, device: torch.device, dtype: torch.dtype = torch.float32,
                 memory_format: torch.memory_format | None = None):
        self.module = on_device(module, device, memory_format=memory_format).eval()
        self.device = device
        self.dtype = dtype

    @property
    def provider(self) -> str:
        return f"torch:{self.device}"

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(self.device, self.dtype):
            out = self.module(*(x.to(self.device) for x in inputs))
        return out.float()


def _onnx_cache_dir() -> Path:
    root = os.environ.get("IMGFORGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imgforge"
    )
    return Path(root) / "onnx"


def _module_fingerprint(module: torch.nn.Module, extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def check_backend(backend: str) -> None:
    """RunWideError, before any image is read, for a backend that cannot run here."""
    if backend not in BACKENDS:
        raise RunWideError(f"unknown backend {backend!r}: use torch or onnx")
    if backend == "onnx":
        for package, extra in (("onnxruntime", "'imgforge[onnx]' (GPU) or 'imgforge[onnx-cpu]'"),
                               ("onnx", "'imgforge[onnx]'")):  # torch.onnx needs onnx to export
            try:
                importlib.import_module(package)
            except ImportError:
                raise RunWideError(f"--backend onnx needs the {package} package: pip install {extra}") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class OnnxRunner:
    """Exports the module once (cached by a hash of its weights and the call signature), then runs it with
    ONNX Runtime. Reports the provider that actually runs: onnxruntime falls back to the CPU silently."""

    backend = "onnx"

    def __init__(
        self,
        module: torch.nn.Module,
        example_inputs: Sequence[torch.Tensor],
        device: torch.device,
        input_names: Sequence[str],
        dynamic_axes: dict[str, dict[int, str]] | None = None,
    ):
        check_backend("onnx")
        import onnxruntime as ort

        self.device = device
        self.input_names = list(input_names)
        signature = repr([(tuple(x.shape), str(x.dtype)) for x in example_inputs]) + repr(dynamic_axes)
        path = _onnx_cache_dir() / f"{type(module).__name__}-{_module_fingerprint(module, signature)}.onnx"
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        cached = path.exists()
        for attempt in ("cached", "exported") if cached else ("exported",):
            if attempt == "exported":
                self._export(on_device(module, torch.device("cpu")).eval(), [x.cpu() for x in example_inputs], path,
                             dynamic_axes)
            try:
                self.session = ort.InferenceSession(str(path), ort.SessionOptions(), providers=providers)
                break
            except Exception as exc:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
                if attempt == "exported":
                    raise RunWideError(f"onnxruntime cannot load the graph exported to {path}: "
                                       f"{_first_line(exc)}") from None
                path.unlink(missing_ok=True)  # a damaged cached graph (a full disk, a killed copy): export again
        if device.type == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise RunWideError(
                "onnxruntime could not use CUDA (is onnxruntime-gpu installed, without plain onnxruntime, "
                "and are the CUDA libraries found?); use --device cpu or --backend torch"
            )

    def _export(self, module, example_inputs, path: Path, dynamic_axes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunWideError(f"cannot create the ONNX graph cache {path.parent} (set IMGFORGE_CACHE to a "
                               f"writable folder): {exc.strerror or _first_line(exc)}") from None
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            with torch.no_grad():
                torch.onnx.export(
                    module,
                    tuple(example_inputs),
                    str(tmp),
                    input_names=self.input_names,
                    output_names=["output"],
                    dynamic_axes=dynamic_axes,
                    opset_version=17,
                    dynamo=False,
                )
            os.replace(tmp, path)
        except Exception as exc:  # an export that fails once fails for every image
            reason = getattr(exc, "strerror", None) or _first_line(exc)
            raise RunWideError(f"cannot export {type(module).__name__} to the ONNX graph {path}: {reason}") from None
        finally:
            tmp.unlink(missing_ok=True)

    @property
    def provider(self) -> str:
        return f"onnxruntime:{self.session.get_providers()[0]}"

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = {
            n: (x.detach().cpu().float() if x.is_floating_point() else x.detach().cpu()).numpy()
            for n, x in zip(self.input_names, inputs)
        }
        (out,) = self.session.run(["output"], feeds)
        return torch.from_numpy(out)


Runner = Callable[..., torch.Tensor]


def make_runner(
    module: torch.nn.Module,
    *,
    backend: str = "torch",
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    example_inputs: Sequence[torch.Tensor] = (),
    input_names: Sequence[str] = ("input",),
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    memory_format: torch.memory_format | None = None,
) -> TorchRunner | OnnxRunner:
    if backend == "torch":
        return TorchRunner(module, device, dtype, memory_format)
    if backend == "onnx":
        if dtype != torch.float32:
            raise ImgforgeError("--backend onnx runs in fp32 only; drop --precision or use --backend torch")
        return OnnxRunner(module, example_inputs, device, input_names, dynamic_axes)
    raise ImgforgeError(f"unknown backend {backend!r}: use torch or onnx")
