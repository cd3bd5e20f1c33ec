"""Conformance checks for the eval kinds: imgforge's FID Inception and its input transform against pytorch-fid's
features, imgforge's LPIPS and the scaling of eval pairs against the lpips package's distances. The fixtures'
networks are narrowed (config.json `reference.narrowing`): imgforge's network is built the same way, every
convolution narrowed while it is constructed, and its weights are loaded through the registry, strictly."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch

from imgforge.eval.features import compute_features, to_model_input
from imgforge.eval.pairwise import PairWorker
from imgforge.nets import fid_inception, registry

from .common import TOLERANCE, assert_close, load_fixture

DIMS = tuple(fid_inception.BLOCK_OF_DIMS)


@contextmanager
def _narrowed(divisor: int):
    """FID Inceptions built inside have every convolution with 1/divisor of its channels (RGB input kept)."""

    class NarrowConv(fid_inception.Conv):
        def __init__(self, cin: int, cout: int, *args, **kwargs):
            super().__init__(*(c if c == 3 else c // divisor for c in (cin, cout)), *args, **kwargs)

    with mock.patch.object(fid_inception, "Conv", NarrowConv):
        yield


def narrowed_inception(folder: Path, config: dict, dims: int) -> tuple[fid_inception.FIDInception, dict]:
    """(the fixture's network loaded by the registry for `dims` features, eval; the fixture's io). The fixture
    has no classifier (not part of pytorch-fid's feature extractor): a zero one stands in, unused by features."""
    weights, io = load_fixture(folder)
    classifier = {"fc.weight": torch.zeros(fid_inception.CLASSES, 2048), "fc.bias": torch.zeros(fid_inception.CLASSES)}
    with _narrowed(config["reference"]["channel_divisor"]):
        net, family = registry.load({**weights, **classifier}, "fid_inception", dims=dims)
    assert family.name == "fid_inception"
    return net, io


def image_sets(io: dict) -> dict[str, torch.Tensor]:
    """set name -> N x 3 x H x W float32 in [0, 1], from the stored uint8 pixels as imgforge reads images."""
    return {key.removesuffix(".images"): torch.stack([to_model_input(image.numpy(), clean=False) for image in images])
            for key, images in io.items() if key.endswith(".images")}


def check_fid_inception(folder: Path, config: dict) -> None:
    for dims in DIMS:
        net, io = narrowed_inception(folder, config, dims)
        for name, images in image_sets(io).items():
            features, _ = compute_features(net, images)
            assert_close(f"{name}.features_{dims}", features, io[f"{name}.features_{dims}"], TOLERANCE)


@contextmanager
def _narrowed_convolutions(divisor: int):
    """Networks built inside have every torch.nn.Conv2d with 1/divisor of its channels (the RGB input and a
    single output channel kept), as the lpips fixture's generator built the reference."""
    original = torch.nn.Conv2d

    class NarrowConv2d(original):
        def __init__(self, cin: int, cout: int, *args, **kwargs):
            super().__init__(*(c if c in (1, 3) else c // divisor for c in (cin, cout)), *args, **kwargs)

    with mock.patch.object(torch.nn, "Conv2d", NarrowConv2d):
        yield


def narrowed_lpips(folder: Path, config: dict) -> tuple[torch.nn.Module, dict]:
    """(the fixture's LPIPS loaded by the registry, eval; the fixture's io)."""
    weights, io = load_fixture(folder)
    with _narrowed_convolutions(config["reference"]["channel_divisor"]):
        net, family = registry.load(weights, "lpips_alex")
    assert family.name == "lpips_alex" and not net.training
    return net, io


def image_pairs(io: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """set name -> (x, y), N x H x W x 3 uint8."""
    return {key.removesuffix(".x"): (images, io[key.removesuffix(".x") + ".y"])
            for key, images in io.items() if key.endswith(".x")}


def check_lpips_alex(folder: Path, config: dict) -> None:
    """Through eval pairs' worker: its scaling of the uint8 images and its batched call of the network."""
    net, io = narrowed_lpips(folder, config)
    worker = PairWorker(("lpips",), net, torch.device("cpu"))
    for name, (x, y) in image_pairs(io).items():
        rows = worker.compute(list(zip(x.numpy(), y.numpy())))
        distances = torch.tensor([row["lpips"] for row in rows])
        assert_close(f"{name}.distance", distances, io[f"{name}.distance"], config["tolerance_abs"])


CHECKS = {"eval.fid_inception": check_fid_inception, "eval.lpips_alex": check_lpips_alex}
