"""Device and precision choice, and the torch / ONNX runners (imgforge/runtime.py)."""

import pytest
import torch

from imgforge import runtime
from imgforge.errors import ImgforgeError


def test_auto_picks_an_available_device():
    device = runtime.select_device("auto")
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert device.type == expected
    assert runtime.select_device("CPU") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["tpu", "gpu0", "cuda:x"])
def test_unknown_devices_are_one_line_errors(spec):
    with pytest.raises(ImgforgeError, match="device"):
        runtime.select_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_missing_cuda_is_named(spec):
    with pytest.raises(ImgforgeError, match="no CUDA GPU"):
        runtime.select_device(spec)


def test_precision_rules():
    cpu = torch.device("cpu")
    assert runtime.select_dtype("fp32", cpu) == torch.float32
    assert runtime.select_dtype("BF16", cpu) == torch.bfloat16
    with pytest.raises(ImgforgeError, match="fp16 is not supported on the CPU"):
        runtime.select_dtype("fp16", cpu)
    with pytest.raises(ImgforgeError, match="unknown precision"):
        runtime.select_dtype("int8", cpu)


def _module():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())


def test_onnx_runner_matches_torch_at_another_size_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path))
    cpu = torch.device("cpu")
    example = torch.randn(2, 3, 16, 16)
    axes = {"input": {0: "batch", 2: "height", 3: "width"}}
    torch_runner = runtime.make_runner(_module(), device=cpu)
    onnx_runner = runtime.make_runner(_module(), backend="onnx", device=cpu, example_inputs=[example],
                                      dynamic_axes=axes)
    x = torch.randn(1, 3, 20, 24)
    assert (torch_runner(x) - onnx_runner(x)).abs().max() < 1e-5
    assert onnx_runner.provider == "onnxruntime:CPUExecutionProvider"
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1
    runtime.make_runner(_module(), backend="onnx", device=cpu, example_inputs=[example], dynamic_axes=axes)
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1  # same weights and signature: no new export


def test_bf16_runner_returns_float32_close_to_fp32():
    cpu = torch.device("cpu")
    x = torch.randn(1, 3, 8, 8)
    full = runtime.make_runner(_module(), device=cpu)(x)
    half = runtime.make_runner(_module(), device=cpu, dtype=torch.bfloat16)(x)
    assert half.dtype == torch.float32
    assert (full - half).abs().max() < 0.05


def test_onnx_refuses_reduced_precision_and_unknown_backends():
    cpu = torch.device("cpu")
    with pytest.raises(ImgforgeError, match="fp32 only"):
        runtime.make_runner(_module(), backend="onnx", device=cpu, dtype=torch.bfloat16)
    with pytest.raises(ImgforgeError, match="unknown backend"):
        runtime.make_runner(_module(), backend="tensorrt", device=cpu)
