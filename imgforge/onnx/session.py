"""ONNX Runtime sessions over graph files, called with torch tensors like a module, and the execution
providers they ask for."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import RunWideError

# what each package is for, and the extra that installs it
PACKAGES = (("onnxruntime", "'imgforge[onnx]' (GPU) or 'imgforge[onnx-cpu]'"),
            ("onnx", "'imgforge[onnx]'"))  # torch.onnx needs onnx to export


def require_onnx() -> None:
    """RunWideError, before any image is read, when the packages the ONNX backend needs are missing."""
    for package, extra in PACKAGES:
        try:
            importlib.import_module(package)
        except ImportError:
            raise RunWideError(f"--backend onnx needs the {package} package: pip install {extra}") from None


def providers(device: torch.device, tensorrt_cache: Path | None = None) -> list:
    """TensorRT when asked for (IMGFORGE_TENSORRT=1) and installed, then CUDA on a CUDA device, then the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen: list = []
    if device.type == "cuda":
        options = {"device_id": device.index or 0}
        if os.environ.get("IMGFORGE_TENSORRT") == "1" and "TensorrtExecutionProvider" in available:
            chosen.append(("TensorrtExecutionProvider", {**options, "trt_engine_cache_enable": True,
                                                         "trt_engine_cache_path": str(tensorrt_cache)}))
        chosen.append(("CUDAExecutionProvider", options))
    return chosen + ["CPUExecutionProvider"]


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class OnnxRunner:
    """An ONNX Runtime session over one graph file, called with torch tensors like a module. On a CUDA device
    inputs and outputs stay on the GPU (IO binding, no host copies). Reports the provider that actually
    runs: onnxruntime falls back to the CPU silently, so asking for CUDA and not getting it is an error."""

    backend = "onnx"

    def __init__(self, graph: Path, device: torch.device, output_names=None, tensorrt_cache: Path | None = None):
        ort = importlib.import_module("onnxruntime")
        self.device = device
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # one thread setting for both backends
        # without the CPU arena, memory freed by one layer goes back instead of staying reserved in
        # power-of-two blocks: the 768² scratch chain peaked 0.8 GB lower (docs/onnx.md)
        options.enable_cpu_mem_arena = False
        options.log_severity_level = 3  # no warnings about unused initialisers and the like on stderr
        self.session = ort.InferenceSession(str(graph), options, providers=providers(device, tensorrt_cache))
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
