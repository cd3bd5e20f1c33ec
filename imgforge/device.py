"""Devices and number formats: which device a run uses, what each precision name means there, whether the CPU
computes bfloat16 natively, and copies of modules on a device and dtype that leave the caller's module as it was.

A leaf: it imports torch and imgforge.errors only, so that runtime, the ONNX module, pipelines and trainers can
all build on it.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from .errors import ImgforgeError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISIONS = (*DTYPES, "auto")  # what --precision accepts; auto: bf16 where it is native and safe, else fp32
NAMES = {dtype: name for name, dtype in DTYPES.items()}


def select_device(spec: str = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; an explicit device that is not there is an error."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = parse_device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ImgforgeError(f"device {spec!r} asked for, but no CUDA GPU is available to torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ImgforgeError(f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    elif device.type == "mps" and not _mps_available():
        raise ImgforgeError("device 'mps' asked for, but Apple's MPS backend is not available")
    return device


def parse_device(spec: str) -> torch.device:
    """The device a spec names, without asking whether it is there (a Ray worker may have what the driver lacks)."""
    try:
        device = torch.device(spec.strip().lower())
    except RuntimeError:
        raise ImgforgeError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ImgforgeError(f"unsupported device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def precision_name(precision: str | None) -> str:
    """A --precision value, checked and lower-cased."""
    name = (precision or "fp32").strip().lower()
    if name not in PRECISIONS:
        raise ImgforgeError(f"unknown precision {precision!r}: use fp32, bf16, fp16 or auto")
    return name


def select_dtype(precision: str, device: torch.device) -> torch.dtype:
    """fp32 everywhere; bf16 on CPU and GPU; fp16 only on a GPU (CPU half kernels are slow or missing);
    auto: bf16 where the device computes it natively, else fp32."""
    name = precision_name(precision)
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if name == "fp16" and device.type == "cpu":
        raise ImgforgeError("fp16 is not supported on the CPU: use --precision fp32 or bf16 there")
    return DTYPES[name]


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 in hardware: on a CPU, AVX512-BF16 or AMX (Intel Cooper Lake and
    Sapphire Rapids or later, AMD Zen 4 or later); elsewhere the oneDNN kernels convert to float32 and back,
    which made restore 2.9x slower than fp32 on an AVX-512 Xeon without either. CUDA: compute capability 8
    (Ampere) or later."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return cpu_bf16_support() != ""
    return False


def cpu_bf16_support() -> str:
    """The CPU feature that computes bfloat16 natively ("AMX", "AVX512-BF16"), or "" when there is none."""
    probes = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    for name, probe in probes:
        check = getattr(torch.cpu, probe, None)  # private probes: absent in some torch builds
        if check is not None and check():
            return name
    return ""


def cpu_bf16_note(precision: str, device: torch.device) -> str:
    """One line for a user who asked for bf16 on a CPU that does not compute it natively, else ""."""
    if precision_name(precision) != "bf16" or device.type != "cpu" or native_bf16(device):
        return ""
    return ("note: this CPU has neither AMX nor AVX512-BF16, so bf16 is emulated and runs about 3x slower than "
            "fp32 here; --precision auto picks fp32 on such CPUs")


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for a reduced dtype (weights stay float32, matmuls/convs run in `dtype`)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
