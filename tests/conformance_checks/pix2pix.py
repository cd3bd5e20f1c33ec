"""Conformance checks for the pix2pix / CycleGAN kinds: the generators built from a fixture's reference
constructor arguments, loaded through the same code as a real checkpoint, in the fixture's test-time mode;
and the official float -> uint8 conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imgforge.nets.pix2pix import GeneratorOptions, build_generator, load_weights
from imgforge.pipelines.translate import tensor_to_uint8

from .common import TOLERANCE, assert_close, load_fixture

_UNET_NETG = {7: "unet_128", 8: "unet_256"}
_RESNET_NETG = {6: "resnet_6blocks", 9: "resnet_9blocks"}


def build_generator_of(folder: Path, config: dict):
    """(the generator of a pix2pix.* fixture, loaded through the official loading code, eval; its io)."""
    reference = config["reference"]
    netG = _UNET_NETG[reference["num_downs"]] if "num_downs" in reference else _RESNET_NETG[reference["n_blocks"]]
    options = GeneratorOptions(netG=netG, norm=reference["norm"], ngf=reference["ngf"],
                               dropout=reference["use_dropout"], input_nc=reference["input_nc"],
                               output_nc=reference["output_nc"])
    weights, io = load_fixture(folder)
    net = build_generator(options)
    load_weights(net, weights)
    return net.eval(), io


def _run_generator(folder: Path, config: dict) -> None:
    net, io = build_generator_of(folder, config)
    # "testmode": the official default (no --eval) BatchNorm on batch statistics, dropout switched off
    net.use_image_statistics(config["mode"] == "testmode")
    with torch.no_grad():
        output = net(io["input"])
    assert_close(config["name"], output, io["output"], TOLERANCE)


def check_unet(folder: Path, config: dict) -> None:
    _run_generator(folder, config)


def check_resnet(folder: Path, config: dict) -> None:
    assert config["reference"]["padding_type"] == "reflect", "only the official reflection padding is built"
    _run_generator(folder, config)


def check_tensor2im(folder: Path, config: dict) -> None:
    _, io = load_fixture(folder)
    actual = tensor_to_uint8(io["input"])
    expected = io["output"].numpy()
    assert actual.dtype == np.uint8 and actual.shape == expected.shape, (actual.dtype, actual.shape, expected.shape)
    assert np.array_equal(actual, expected), f"{int((actual != expected).sum())} values differ"


CHECKS = {"pix2pix.unet": check_unet, "pix2pix.resnet": check_resnet, "pix2pix.tensor2im": check_tensor2im}
