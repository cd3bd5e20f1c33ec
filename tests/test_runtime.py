"""Device and precision choice (imgforge/device.py), the torch / ONNX runners (imgforge/runtime.py) and the ONNX
graph cache and sessions (imgforge/onnx/)."""

import sys

import pytest
import torch

from helpers import make_image, stderr_lines
from imgforge import device as devices
from imgforge import runtime
from imgforge.cli import main
from imgforge.errors import ImgforgeError, RunWideError
from imgforge.nets.registry import RunPolicy
from imgforge.onnx import cache, session


def test_auto_picks_an_available_device():
    device = devices.select_device("auto")
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert device.type == expected
    assert devices.select_device("CPU") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["tpu", "gpu0", "cuda:x"])
def test_unknown_devices_are_one_line_errors(spec):
    with pytest.raises(ImgforgeError, match="device"):
        devices.select_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_missing_cuda_is_named(spec):
    with pytest.raises(ImgforgeError, match="no CUDA GPU"):
        devices.select_device(spec)


def test_precision_rules():
    cpu = torch.device("cpu")
    assert devices.select_dtype("fp32", cpu) == torch.float32
    assert devices.select_dtype("BF16", cpu) == torch.bfloat16
    with pytest.raises(ImgforgeError, match="fp16 is not supported on the CPU"):
        devices.select_dtype("fp16", cpu)
    with pytest.raises(ImgforgeError, match="unknown precision"):
        devices.select_dtype("int8", cpu)


def _module():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())


def _export(module=None):
    from imgforge.nets.registry import Export

    axes = {"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "height", 3: "width"}}
    return Export("conv", module or _module(), lambda h, w: (torch.randn(1, 3, h, w),), ("input",), ("output",), axes)


def test_onnx_runner_matches_torch_at_any_size_and_batch_and_is_cached_by_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path))
    cpu = torch.device("cpu")
    torch_runner = runtime.make_runner(_module(), device=cpu)
    onnx_runner = cache.cached_runner(_export(), cpu)
    for shape in ((1, 3, 20, 24), (3, 3, 40, 16)):
        x = torch.randn(shape)
        assert (torch_runner(x) - onnx_runner(x)).abs().max() < 1e-5
    assert onnx_runner.provider == "onnxruntime:CPUExecutionProvider"
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1
    cache.cached_runner(_export(), cpu)
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1  # same weights: no new export
    other = _module()
    other[0].bias.data += 1
    cache.cached_runner(_export(other), cpu)
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 2  # other weights: another graph


def test_corrupt_cached_graph_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path))
    cpu = torch.device("cpu")
    cache.cached_runner(_export(), cpu)
    (graph,) = (tmp_path / "onnx").glob("*.onnx")
    graph.write_bytes(graph.read_bytes()[:100])
    x = torch.randn(1, 3, 8, 8)
    assert (cache.cached_runner(_export(), cpu)(x) - _module()(x)).abs().max() < 1e-5
    assert graph.stat().st_size > 100


def test_an_onnx_cache_that_is_a_file_is_named(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file")
    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RunWideError, match=r"cannot create the ONNX graph cache .*cache/onnx \(set IMGFORGE_CACHE"):
        runtime.make_runner(_module(), backend="onnx", device=torch.device("cpu"), export=_export())


def test_missing_onnxruntime_stops_the_run_before_the_first_image(here, capfd, monkeypatch):
    make_image(here / "a.png")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert main(["translate", "a.png", "-o", "out", "--model", "x", "--backend", "onnx"]) == 1
    assert stderr_lines(capfd) == ["error: --backend onnx needs the onnxruntime package: pip install "
                                   "'imgforge[onnx]' (GPU) or 'imgforge[onnx-cpu]'"]


def test_providers_prefer_tensorrt_when_asked_then_cuda_then_cpu(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    names = lambda device: [p[0] if isinstance(p, tuple) else p for p in session.providers(device)]  # noqa: E731
    assert names(torch.device("cpu")) == ["CPUExecutionProvider"]
    assert names(torch.device("cuda")) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setenv("IMGFORGE_TENSORRT", "1")
    assert names(torch.device("cuda")) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def _onnx_cuda_available() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return torch.cuda.is_available() and "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(not _onnx_cuda_available(), reason="needs a CUDA GPU and onnxruntime-gpu")
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("fp16", 5e-2)])
def test_cuda_provider_io_binding_and_fp16_graphs(tmp_path, monkeypatch, precision, tolerance):
    monkeypatch.setenv("IMGFORGE_CACHE", str(tmp_path))
    cuda = torch.device("cuda")
    runner = cache.cached_runner(_export(), cuda, precision)
    assert runner.provider == "onnxruntime:CUDAExecutionProvider"
    x = torch.randn(2, 3, 32, 48, device=cuda)
    out = runner(x)
    assert out.device.type == "cuda"  # IO binding: the output stays on the GPU
    assert (out - _module().to(cuda)(x)).abs().max() < tolerance


def test_bf16_runner_returns_float32_close_to_fp32():
    cpu = torch.device("cpu")
    x = torch.randn(1, 3, 8, 8)
    full = runtime.make_runner(_module(), device=cpu)(x)
    half = runtime.make_runner(_module(), device=cpu, dtype=torch.bfloat16)(x)
    assert half.dtype == torch.float32
    assert (full - half).abs().max() < 0.05


def test_a_runner_never_moves_the_module_it_is_given():
    module = _module()
    runner = runtime.make_runner(module, device=torch.device("meta"))
    assert {p.device.type for p in module.parameters()} == {"cpu"}
    assert {p.device.type for p in runner.module.parameters()} == {"meta"}
    same = runtime.make_runner(module, device=torch.device("cpu"))
    assert same.module is module  # nothing to change: no copy


def test_onnx_refuses_bf16_and_fp16_on_cpu_and_unknown_backends():
    with pytest.raises(ImgforgeError, match="fp32 or fp16"):
        runtime.graph_precision(torch.bfloat16)
    with pytest.raises(ImgforgeError, match="CUDA device only"):
        cache.cached_runner(_export(), torch.device("cpu"), "fp16")
    with pytest.raises(ImgforgeError, match="unknown backend"):
        runtime.check_backend("tensorrt")


def test_a_float32_family_runs_in_float32_whatever_is_asked_and_the_callers_module_is_untouched():
    module = _module()
    detector = runtime.make_runner(module, device=torch.device("cpu"), dtype=torch.bfloat16,
                                   policy=RunPolicy(float32=True))
    cast = runtime.make_runner(module, device=torch.device("cpu"), dtype=torch.bfloat16, policy=RunPolicy())
    assert next(detector.module.parameters()).dtype == torch.float32
    assert next(cast.module.parameters()).dtype == torch.bfloat16 and cast.module is not module
    assert next(module.parameters()).dtype == torch.float32


def test_an_autocast_family_keeps_float32_weights_and_computes_in_the_reduced_dtype():
    seen = []
    module = _module()
    module.register_forward_hook(lambda _, inputs, output: seen.append((inputs[0].dtype, output.dtype)))
    runner = runtime.make_runner(module, device=torch.device("cpu"), dtype=torch.bfloat16,
                                 policy=RunPolicy(reduced="autocast"))
    out = runner(torch.randn(1, 3, 8, 8))
    assert runner.module is module  # nothing to change on the weights: no copy
    assert seen == [(torch.float32, torch.bfloat16)] and out.dtype == torch.float32


def test_the_plan_refuses_combinations_naming_both_options():
    from imgforge.errors import UsageError
    from imgforge.plan import RunPlan

    with pytest.raises(UsageError, match="--backend onnx.*--precision bf16"):
        RunPlan.resolve(backend="onnx", precision="bf16")
    with pytest.raises(UsageError, match="--precision fp16 with --device cpu"):
        RunPlan.resolve(device="cpu", precision="fp16")
    with pytest.raises(UsageError, match="--threads"):
        RunPlan.resolve(threads=0)
    with pytest.raises(ImgforgeError, match="unknown precision"):
        RunPlan.resolve(precision="int8")
    plan = RunPlan.resolve(device="CPU", precision="BF16", threads=2, weights_dir="~/w")
    assert (plan.device, plan.precision, plan.threads, plan.dtype()) == ("cpu", "bf16", 2, torch.bfloat16)
    assert plan.weights_dir[0].is_absolute()


def test_the_plan_is_checked_against_each_family_policy():
    from imgforge.errors import UsageError
    from imgforge.nets.registry import Family
    from imgforge.plan import RunPlan

    torch_only = Family("t", "t", "translate", "test network", lambda s: False, None, None, None,
                        policy=RunPolicy(backends=("torch",), precisions=("fp32",)))
    RunPlan.resolve().check_networks([torch_only])
    with pytest.raises(UsageError, match="--backend onnx: the test network has no onnx form"):
        RunPlan.resolve(backend="onnx").check_networks([torch_only])
    with pytest.raises(UsageError, match="--precision bf16: the test network runs in fp32 only"):
        RunPlan.resolve(precision="bf16").check_networks([torch_only])


def test_auto_precision_is_bf16_only_where_it_is_native(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: "")
    assert devices.select_dtype("auto", cpu) == torch.float32
    assert "neither AMX nor AVX512-BF16" in devices.cpu_bf16_note("bf16", cpu)
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: "AMX")
    assert devices.select_dtype("auto", cpu) == torch.bfloat16
    assert devices.cpu_bf16_note("bf16", cpu) == "" and devices.cpu_bf16_note("fp32", cpu) == ""


def test_a_worker_says_in_one_line_what_bf16_costs_on_a_cpu_without_it(monkeypatch, capfd):
    from imgforge.plan import RunPlan

    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: "")
    runtime.announce(RunPlan.resolve(device="cpu", precision="bf16"), torch.device("cpu"), "torch:cpu")
    err = capfd.readouterr().err.strip()
    assert err.startswith("note: this CPU has neither AMX nor AVX512-BF16") and len(err.splitlines()) == 1
    runtime.announce(RunPlan.resolve(device="cpu", precision="bf16", quiet=True), torch.device("cpu"), "torch:cpu")
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: "AMX")
    runtime.announce(RunPlan.resolve(device="cpu", precision="bf16"), torch.device("cpu"), "torch:cpu")
    assert capfd.readouterr().err == ""
