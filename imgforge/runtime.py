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
from typing import Callable

import numpy as np
import torch

from . import __version__
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


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The network on `device`, channels-last, in the precision it runs in: `dtype`, unless the network
    declares `float32_only` (one whose output is thresholded, where a reduced precision would flip
    decisions). In place (the caller's module itself, unlike on_device): casting the weights once is faster
    on the CPU than autocast, which re-casts them per call."""
    if getattr(module, "float32_only", False):
        dtype = torch.float32
    return module.to(device=device, dtype=dtype, memory_format=torch.channels_last)


def dtype_of(module: torch.nn.Module) -> torch.dtype:
    """The precision a placed network runs in: what its inputs are cast to."""
    return next(module.parameters()).dtype


class TorchRunner:
    """Calls a module under inference mode and the chosen precision; outputs come back as float32."""

    backend = "torch"

    def __init__(self, module: torch.nn.Module, device: torch.device, dtype: torch.dtype = torch.float32,
                 memory_format: torch.memory_format | None = None):
        self.module = on_device(module, device, memory_format=memory_format).eval()
        self.device = device
        self.dtype = torch.float32 if getattr(module, "float32_only", False) else dtype  # as place() decides

    @property
    def provider(self) -> str:
        return f"torch:{self.device}"

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(self.device, self.dtype):
            out = self.module(*(x.to(self.device) for x in inputs))
        return out.float()


def onnx_cache_dir() -> Path:
    root = os.environ.get("IMGFORGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imgforge"
    )
    return Path(root) / "onnx"


def graph_key(export, precision: str) -> str:
    """What a cached graph depends on: the weights (every tensor of the exported module, buffers too, so a
    test-time mode kept in a buffer counts), the export's names, axes and size rule (the side a fixed-size
    graph is traced at), precision, opset and versions. Never a batch or image size: graphs are dynamic in both
    wherever the network allows."""
    from .export import OPSET

    digest = hashlib.sha256(repr((export.name, type(export.module).__name__, export.input_names, export.output_names,
                                  export.dynamic_axes, export.size_multiple, export.min_side, precision, OPSET,
                                  __version__, torch.__version__)).encode())
    for name, tensor in export.module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def onnx_providers(device: torch.device) -> list:
    """TensorRT when asked for (IMGFORGE_TENSORRT=1) and installed, then CUDA on a CUDA device, then the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers: list = []
    if device.type == "cuda":
        options = {"device_id": device.index or 0}
        if os.environ.get("IMGFORGE_TENSORRT") == "1" and "TensorrtExecutionProvider" in available:
            cache = str(onnx_cache_dir() / "tensorrt")
            providers.append(("TensorrtExecutionProvider", {**options, "trt_engine_cache_enable": True,
                                                             "trt_engine_cache_path": cache}))
        providers.append(("CUDAExecutionProvider", options))
    return providers + ["CPUExecutionProvider"]


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
    """An ONNX Runtime session over one graph file, called with torch tensors like a module. On a CUDA device
    inputs and outputs stay on the GPU (IO binding, no host copies). Reports the provider that actually
    runs: onnxruntime falls back to the CPU silently, so asking for CUDA and not getting it is an error."""

    backend = "onnx"

    def __init__(self, graph: Path, device: torch.device, output_names=None):
        ort = importlib.import_module("onnxruntime")
        self.device = device
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # one thread setting for both backends
        # without the CPU arena, memory freed by one layer goes back instead of staying reserved in
        # power-of-two blocks: the 768² scratch chain peaked 0.8 GB lower (docs/onnx.md)
        options.enable_cpu_mem_arena = False
        options.log_severity_level = 3  # no warnings about unused initialisers and the like on stderr
        self.session = ort.InferenceSession(str(graph), options, providers=onnx_providers(device))
        if device.type == "cuda" and self.session.get_providers()[0] == "CPUExecutionProvider":
            raise RunWideError(
                "onnxruntime could not use CUDA (is onnxruntime-gpu installed, without plain onnxruntime, "
                "and are the CUDA libraries found?); use --device cpu or --backend torch"
            )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = list(output_names or [o.name for o in self.session.get_outputs()])

    @property
    def provider(self) -> str:
        return f"onnxruntime:{self.session.get_providers()[0]}"

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.device.type == "cuda":
            outputs = self._run_bound(inputs)
        else:
            feeds = {name: x.detach().float().cpu().numpy() for name, x in zip(self.input_names, inputs)}
            outputs = [torch.from_numpy(out) for out in self.session.run(self.output_names, feeds)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _run_bound(self, inputs) -> list[torch.Tensor]:
        binding = self.session.io_binding()
        kept = [x.detach().to(self.device, torch.float32).contiguous() for x in inputs]  # alive until run ends
        for name, x in zip(self.input_names, kept):
            binding.bind_input(name, "cuda", self.device.index or 0, np.float32, tuple(x.shape), x.data_ptr())
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device.index or 0)
        self.session.run_with_iobinding(binding)
        return [torch.from_dlpack(value._ortvalue) for value in binding.get_outputs()]


def onnx_runner(export, device: torch.device, precision: str = "fp32") -> OnnxRunner:
    """The runner of a registry Export: its graph exported once into the cache (keyed by graph_key), then run
    by ONNX Runtime. A cached graph that cannot be loaded (a full disk, a killed copy) is exported again; every
    failure here is a RunWideError, which stops a batch before its first image."""
    from .export import export_graph

    check_backend("onnx")
    if precision == "fp16" and device.type != "cuda":
        raise RunWideError("fp16 ONNX graphs run on a CUDA device only; use --precision fp32 on the CPU")
    if precision not in ("fp32", "fp16"):
        raise RunWideError(f"--backend onnx runs fp32 or fp16 (GPU) graphs, not {precision}")
    path = onnx_cache_dir() / f"{export.name}-{precision}-{graph_key(export, precision)}.onnx"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunWideError(f"cannot create the ONNX graph cache {path.parent} (set IMGFORGE_CACHE to a "
                           f"writable folder): {exc.strerror or _first_line(exc)}") from None
    if path.exists():
        try:
            return OnnxRunner(path, device, export.output_names)
        except ImgforgeError:
            raise
        except Exception:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...): a damaged graph
            path.unlink(missing_ok=True)
    try:
        export_graph(export, path, precision=precision)
    except ImgforgeError:
        raise
    except Exception as exc:  # an export that fails once fails for every image
        raise RunWideError(f"cannot export {export.name} to the ONNX graph {path}: "
                           f"{getattr(exc, 'strerror', None) or _first_line(exc)}") from None
    try:
        return OnnxRunner(path, device, export.output_names)
    except ImgforgeError:
        raise
    except Exception as exc:
        raise RunWideError(f"onnxruntime cannot load the graph exported to {path}: {_first_line(exc)}") from None


Runner = Callable[..., torch.Tensor]


def make_runner(module: torch.nn.Module, *, device: torch.device, backend: str = "torch",
                dtype: torch.dtype = torch.float32, memory_format: torch.memory_format | None = None,
                export=None) -> TorchRunner | OnnxRunner:
    """The one way pipelines run a network: torch runs `module` (copied if it must move); onnx runs the graph
    of `export` (the module's registry Export), in fp32 or, on a GPU, fp16."""
    check_backend(backend)
    if backend == "onnx":
        return onnx_runner(export, device, onnx_precision(dtype))
    return TorchRunner(module, device, dtype, memory_format)


def onnx_precision(dtype: torch.dtype) -> str:
    """The graph precision of --precision under --backend onnx: fp32, or fp16 (GPU)."""
    names = {torch.float32: "fp32", torch.float16: "fp16"}
    if dtype not in names:
        raise RunWideError("--backend onnx runs fp32 or fp16 (GPU) graphs; drop --precision bf16 or use "
                           "--backend torch")
    return names[dtype]
