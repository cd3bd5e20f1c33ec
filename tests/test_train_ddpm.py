"""DDPM training (imgforge/train/ddpm.py): the recipe's pieces, the diffusers run folder, the CLI and the runs.

The step itself is pinned by the train.ddpm_step conformance fixtures (tests/test_conformance.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imgforge.nets.ddpm_unet import DDPMUNet
from imgforge.pipelines.sample import load_model, save_model
from imgforge.train.ddpm import (ExponentialMovingAverage, ForwardProcess, clip_by_global_norm,
                                 warmed_up_lr)

FIXTURE = Path(__file__).parent / "fixtures" / "conformance"
TINY_CONFIG = json.loads((FIXTURE / "train_ddpm_unet_tiny" / "config.json").read_text())[
    "unet_config"]


def tiny_unet(sample_size: int = 16, **changes) -> DDPMUNet:
    return DDPMUNet({**TINY_CONFIG, "sample_size": sample_size, **changes})


def test_warm_up_starts_at_zero_and_reaches_the_peak():
    assert warmed_up_lr(2e-4, 0, 5000) == 0.0
    assert warmed_up_lr(2e-4, 2500, 5000) == pytest.approx(1e-4)
    assert warmed_up_lr(2e-4, 5000, 5000) == warmed_up_lr(2e-4, 90000, 5000) == 2e-4
    assert warmed_up_lr(2e-4, 0, 0) == 2e-4


def test_global_norm_clipping_scales_every_gradient_alike():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
    params[0].grad, params[1].grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    norm = clip_by_global_norm(params, 1.0)
    assert norm.item() == pytest.approx(5.0)
    assert torch.allclose(params[0].grad, torch.tensor([0.6, 0.0])) and torch.allclose(params[1].grad,
                                                                                         torch.tensor([0.8]))
    params[0].grad, params[1].grad = torch.tensor([0.3, 0.0]), torch.tensor([0.4])
    clip_by_global_norm(params, 1.0)  # below the bound: untouched
    assert torch.allclose(params[1].grad, torch.tensor([0.4]))


def test_ema_copies_on_the_first_update_then_decays():
    net = torch.nn.Linear(1, 1, bias=False)
    ema = ExponentialMovingAverage(net, 0.9)
    with torch.no_grad():
        net.weight.fill_(2.0)
    ema.update(net, 0)
    assert ema.state_dict()["weight"].item() == pytest.approx(2.0)
    with torch.no_grad():
        net.weight.fill_(12.0)
    ema.update(net, 1)
    assert ema.state_dict()["weight"].item() == pytest.approx(3.0)


def test_forward_process_tables_are_the_float64_ones_in_float32():
    process = ForwardProcess()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    acp = torch.cumprod(1 - betas, 0)
    assert torch.equal(process.sqrt_alphas_cumprod, acp.sqrt().float())
    x0, noise = torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1)
    x_t = process.q_sample(x0, torch.tensor([0, 999]), noise)
    assert x_t[0].item() == pytest.approx(acp[0].sqrt().item()) and x_t[1].item() == pytest.approx(acp[-1].sqrt().item())


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    net = tiny_unet(dropout=0.5)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
    with torch.no_grad():
        net.train()
        assert not torch.equal(net(x, t), net(x, t))
        net.eval()
        assert torch.equal(net(x, t), net(x, t))


def test_saved_folder_loads_in_imgforge_and_in_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")  # test-only oracle
    torch.manual_seed(0)
    net = tiny_unet()
    save_model(tmp_path, net, ForwardProcess().scheduler_config())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors",
                                                          "model_index.json", "scheduler_config.json"]
    ours = load_model(str(tmp_path))
    pipeline = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    assert pipeline.scheduler.config.variance_type == "fixed_large"
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 900])
    with torch.no_grad():
        expected = net.eval()(x, t)
        assert torch.equal(ours.unet(x, t), expected)
        assert (pipeline.unet(x, t).sample - expected).abs().max() < 1e-5
    assert torch.equal(ours.schedule.alphas_cumprod, torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0))
