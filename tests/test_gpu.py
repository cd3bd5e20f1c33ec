"""On a CUDA GPU only (skipped without one): CUDA graphs in sample's step loop, and fp16/bf16 for the three
commands. benchmarks/gpu_report.py runs this file first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from imgforge.nets.ddpm_unet import load_unet
from imgforge.pipelines import restore as restore_pipeline
from imgforge.pipelines.sample import DiffusionModel, generate, make_eps_function
from imgforge.pipelines.samplers import NoiseSchedule
from imgforge.pipelines.translate import Translator
from imgforge.plan import RunPlan
from test_restore import checkpoints, scratched_photo, weights_dir  # noqa: F401  (fixtures)
from test_translate import picture, tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY_UNET = Path(__file__).parent / "fixtures" / "conformance" / "ddpm_unet_cifar_tiny"


def tiny_unet():
    config = json.loads((TINY_UNET / "config.json").read_text())["unet_config"]
    return load_unet(config, load_file(str(TINY_UNET / "weights.safetensors")))


def test_cuda_graph_replays_the_eager_unet_for_each_batch_shape():
    device = torch.device("cuda")
    graphed = make_eps_function(tiny_unet(), device, cuda_graphs=True)
    eager = make_eps_function(tiny_unet(), device, cuda_graphs=False)
    with torch.inference_mode():
        for batch in (4, 4, 3):
            x = torch.randn(batch, 3, 32, 32, device=device)
            for t in (999, 500, 0):
                assert torch.allclose(graphed(x, t), eager(x, t), rtol=1e-4, atol=1e-5)
    assert set(graphed.graphs) == {(4, 3, 32, 32), (3, 3, 32, 32)} and all(graphed.graphs.values())


def _levels(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


# GPU float32 is not CPU float32 (cuDNN may use TF32), and tiny random networks amplify rounding: each result is
# held against how far an unrelated result lies (other seeds, the image upside down), tighter for fp32.
TOLERANCE = {"fp32": 1 / 4, "fp16": 1 / 2, "bf16": 1 / 2}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_sampling_on_cuda_in_each_precision_is_near_the_cpu_images(precision):
    betas = torch.linspace(1e-4, 0.02, 1000)
    model = DiffusionModel("tiny", tiny_unet(), NoiseSchedule((1 - betas).cumprod(0)))

    def images(indices, **options):
        return np.concatenate([batch for _, batch in generate(model, indices, steps=20, sampler="ddim", **options)])

    cpu = images(range(4), device="cpu")
    gpu = images(range(4), device="cuda", precision=precision)
    assert _levels(gpu, cpu) < TOLERANCE[precision] * _levels(images(range(4, 8), device="cpu"), cpu)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_translate_on_cuda_in_each_precision_is_near_the_cpu_output(precision):
    image = picture(64, 64)
    cpu = Translator(tiny(dropout=False), mode="eval", plan=RunPlan.resolve(device="cpu"))(image)
    gpu = Translator(tiny(dropout=False), mode="eval", plan=RunPlan.resolve(device="cuda", precision=precision))(image)
    assert _levels(gpu, cpu) < TOLERANCE[precision] * _levels(cpu, cpu[::-1])


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_restore_on_cuda_keeps_the_mask_and_stays_near_the_cpu_output(weights_dir, precision):  # noqa: F811
    photo = scratched_photo(96, 128)
    cpu = restore_pipeline.restore_image(photo, device="cpu", weights_dir=weights_dir)
    gpu = restore_pipeline.restore_image(photo, device="cuda", precision=precision, weights_dir=weights_dir)
    # the detector runs in float32 on both; GPU and CPU kernels may still round a logit at the threshold apart
    assert (gpu.mask != cpu.mask).mean() < 0.01
    assert _levels(gpu.pixels, cpu.pixels) < TOLERANCE[precision] * _levels(cpu.pixels, cpu.pixels[::-1])
