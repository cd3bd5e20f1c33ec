"""Test oracles for imgforge eval: pytorch-fid's Inception with random weights, and small image sets.

pytorch-fid builds the full-size FID Inception (torchvision's Inception3 with its FIDInceptionA/C/E blocks)
and loads `pt_inception-2015-12-05-6726825d.pth` from torch's hub cache. The tests give it a randomly
initialised network of that structure, saved under that name in a temporary TORCH_HOME, and give the same file
to imgforge. Random weights make activations vanish or explode through 90 layers, so the BatchNorm running
statistics are calibrated on a batch first: every layer then sees inputs of unit scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"


def reference_inception() -> torch.nn.Module:
    """pytorch-fid's FID Inception structure, randomly initialised (no download)."""
    import torchvision
    from pytorch_fid import inception as fid_inception

    net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = fid_inception.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid_inception.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid_inception.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid_inception.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid_inception.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid_inception.FIDInceptionE_1(1280)
    net.Mixed_7c = fid_inception.FIDInceptionE_2(2048)
    return net


def calibrated_state_dict(seed: int = 0, size: int = 224, batch: int = 2) -> dict[str, torch.Tensor]:
    """A random FID Inception whose BatchNorm running statistics are those of a batch of random images, with
    random affine BatchNorm parameters around (1, 0) and a random classifier."""
    torch.manual_seed(seed)
    net = reference_inception()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = the average over the calibration batches
            torch.nn.init.uniform_(module.weight, 0.8, 1.2)
            torch.nn.init.uniform_(module.bias, -0.1, 0.2)
    net.train()
    x = torch.rand(batch, 3, size, size) * 2 - 1
    with torch.no_grad():
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(net, name)(x)
    return {key: value.clone() for key, value in net.eval().state_dict().items()}


def keep_unit_scale_(net: torch.nn.Module) -> torch.nn.Module:
    """Random weights (in place, from torch's RNG) that keep an Inception's activations near unit scale through
    its 94 layers: He-initialised convolutions, BatchNorms near the identity; the classifier is left alone.
    PyTorch's default init makes its features vanish (an ONNX or conformance check of numbers near zero checks
    nothing), and BatchNorm statistics calibrated on a batch make a narrow random copy chaotic (its float32
    features move by 5e-5 between thread counts)."""
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.8, 1.2)
            torch.nn.init.uniform_(module.bias, -0.1, 0.2)
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net


def write_fid_weights(torch_home: Path, state_dict: dict) -> Path:
    """Save the weights where pytorch-fid looks (TORCH_HOME/hub/checkpoints/<official name>)."""
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FID_WEIGHTS_NAME
    torch.save(state_dict, path)
    return path


def write_image_set(folder: Path, count: int, seed: int, size: int = 32, tint: tuple = (0, 0, 0)) -> Path:
    """`count` PNGs of smooth random colour fields plus noise; `tint` shifts the set's colours."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        coarse = rng.uniform(0, 255, (4, 4, 3))
        field = np.kron(coarse, np.ones((size // 4, size // 4, 1)))
        pixels = np.clip(field + rng.normal(0, 20, field.shape) + np.array(tint), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{index:03d}.png")
    return folder
