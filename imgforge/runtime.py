"""How a network runs: through torch or through an ONNX graph, in the precision its family's policy gives.

`make_runner` is the one way pipelines run a network. The precision policy (nets/registry.py RunPolicy) is
applied here only, for both backends: a float32-only network (the scratch detector) runs in float32 whatever
was asked; otherwise a reduced precision is either cast (torch: a copy of the weights in bf16/fp16; ONNX: an
fp16 graph) or, for families that ask for it, autocast (float32 weights, convolutions and matmuls in the
reduced dtype). The caller's module is never moved, cast or re-laid out: a copy is made when anything changes
(imgforge.device.on_device). Devices and dtypes are chosen in imgforge.device; graphs, their cache and ONNX
Runtime sessions live in imgforge.onnx.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from .device import NAMES, autocast, cpu_bf16_note, on_device
from .errors import RunWideError
from .nets.registry import RunPolicy
from .onnx.cache import cached_runner
from .onnx.session import OnnxRunner, require_onnx
from .plan import BACKENDS, ONNX_PRECISIONS, RunPlan
from .progress import console

Runner = Callable[..., torch.Tensor]


class TorchRunner:
    """Calls a module (or one of its methods, e.g. a VAE's "encode") under inference mode in the precision the
    policy gives; outputs come back as float32. Inputs are cast to the dtype the weights were cast to."""

    backend = "torch"

    def __init__(self, module: torch.nn.Module, device: torch.device, dtype: torch.dtype = torch.float32,
                 memory_format: torch.memory_format | None = None, policy: RunPolicy = RunPolicy(),
                 method: str | None = None):
        self.device = device
        self.dtype = policy.dtype(dtype)
        self.autocast = policy.reduced == "autocast" and self.dtype != torch.float32
        weights = None if self.autocast else self.dtype
        self.module = on_device(module, device, weights, memory_format).eval()
        self.forward = getattr(self.module, method) if method else self.module
        self.input_dtype = torch.float32 if self.autocast else self.dtype

    @property
    def provider(self) -> str:
        return f"torch:{self.device}"

    def __call__(self, *inputs: torch.Tensor, **options) -> torch.Tensor:
        precision = autocast(self.device, self.dtype) if self.autocast else contextlib.nullcontext()
        with torch.inference_mode(), precision:
            out = self.forward(*(x.to(self.device, self.input_dtype) for x in inputs), **options)
        return out.float()


def check_backend(backend: str) -> None:
    """RunWideError, before any image is read, for a backend that cannot run here."""
    if backend not in BACKENDS:
        raise RunWideError(f"unknown backend {backend!r}: use torch or onnx")
    if backend == "onnx":
        require_onnx()


def make_runner(module: torch.nn.Module, *, device: torch.device, backend: str = "torch",
                dtype: torch.dtype = torch.float32, memory_format: torch.memory_format | None = None,
                export=None, policy: RunPolicy = RunPolicy(), method: str | None = None) -> TorchRunner | OnnxRunner:
    """The runner of a network: torch runs `module` (copied if it must move or change precision; `method`: the
    one of its methods to call); onnx runs the graph of `export` (the module's registry Export, the method's
    computation), fp32, or fp16 on a GPU."""
    check_backend(backend)
    if backend == "onnx":
        return cached_runner(export, device, graph_precision(policy.dtype(dtype)))
    return TorchRunner(module, device, dtype, memory_format, policy, method)


def announce(plan: RunPlan, device: torch.device, provider: str) -> None:
    """What a worker tells once its networks are set up (unless quiet): the ONNX provider that actually runs,
    and what bf16 costs on a CPU that does not compute it natively."""
    if plan.quiet:
        return
    if plan.backend == "onnx":
        console.print(f"running on {provider}", markup=False, highlight=False)
    note = cpu_bf16_note(plan.precision, device)
    if note:
        console.print(note, markup=False, highlight=False, soft_wrap=True)


def graph_precision(dtype: torch.dtype) -> str:
    """The ONNX graph precision that runs `dtype`: fp32 or fp16 (the plan refuses bf16 with --backend onnx)."""
    name = NAMES[dtype]
    if name not in ONNX_PRECISIONS:
        raise RunWideError("--backend onnx runs fp32 or fp16 (GPU) graphs; drop --precision bf16 or use "
                           "--backend torch")
    return name
