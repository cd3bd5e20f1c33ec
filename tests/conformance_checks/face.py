"""Conformance checks for the face stage (kinds face.spade_generator, face.align, face.blend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy

from imgforge.faces import align
from imgforge.nets.face_spade import build_face_generator
from imgforge.pipelines.faces import to_uint8

from .common import assert_close, load_fixture

# Reference options imgforge implements as the only behaviour (test_face.py's command line).
GENERATOR_FIXED = {"norm_G": "spectralspadesyncbatch3x3", "injection_layer": "all", "no_parsing_map": True,
                   "num_upsampling_layers": "normal", "use_vae": False, "netG": "spade", "aspect_ratio": 1.0}
TRANSFORM_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-6


def _assert_uint8_equal(name: str, actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == np.uint8 and actual.shape == expected.shape, (name, actual.dtype, actual.shape)
    differing = int((actual != expected).any(axis=-1).sum()) if actual.ndim == 3 else int((actual != expected).sum())
    assert differing == 0, f"{name}: {differing} pixels differ (max {np.abs(actual.astype(int) - expected).max()})"


def check_generator(folder: Path, config: dict) -> None:
    opt = config["reference"]["opt"]
    for key, value in GENERATOR_FIXED.items():
        assert opt[key] == value, f"reference {key}={opt[key]!r}; imgforge implements {value!r}"
    weights, io = load_fixture(folder)
    # The generator reads load_size only (latent side load_size / 32); crop_size is the data loader's and may
    # differ (the official FaceSR_512 options: load_size 512, crop_size 256).
    side = io["degraded_image"].shape[-1]
    assert side == opt["load_size"], f"the faces are {side} px, and the reference's load_size is {opt['load_size']}"
    net = build_face_generator(weights, ngf=opt["ngf"])
    with torch.inference_mode():
        output = net(io["degraded_image"])
    assert_close("output", output, io["output"])
    levels = (to_uint8(output).astype(int) - io["output_uint8"].numpy()).__abs__()
    assert levels.max() <= 1, f"output_uint8: {levels.max()} levels off"


def check_align(folder: Path, config: dict) -> None:
    io = load_numpy(str(folder / "io.safetensors"))
    size = config["reference"]["output_size"]
    assert config["reference"]["target_face_scale"] == align.FACE_SCALE
    np.testing.assert_array_equal(align.template(size), io["target_points"])
    for k, landmarks in enumerate(io["landmarks68"]):
        points = align.five_points(landmarks)
        np.testing.assert_array_equal(points, io["points5"][k])
        aligned, transform = align.align(io["image"], points, size)
        assert np.abs(transform - io["transform"][k]).max() <= TRANSFORM_TOLERANCE
        _assert_uint8_equal(f"aligned[{k}]", aligned, io["aligned"][k])
        if "aligned_float" in io:
            exact = align.warp_bilinear(io["image"] * (1.0 / 255), transform, align.Region(0, 0, size, size))
            assert np.abs(exact - io["aligned_float"][k]).max() <= WEIGHT_TOLERANCE


def check_blend(folder: Path, config: dict) -> None:
    io = load_numpy(str(folder / "io.safetensors"))
    size = config["reference"]["aligned_size"]
    image = io["image"]
    points = [align.five_points(landmarks) for landmarks in io["landmarks68"]]
    # per-face diagnostics, each from the reference's own inputs
    blended = image.astype(np.float64)
    for k, (face_points, restored) in enumerate(zip(points, io["restored"])):
        np.testing.assert_array_equal(face_points, io["points5"][k])
        transform = align.similarity_transform(size, face_points)
        assert np.abs(transform - io["transform"][k]).max() <= TRANSFORM_TOLERANCE
        assert np.abs(np.linalg.inv(transform) - io["transform_inverse"][k]).max() <= TRANSFORM_TOLERANCE
        reference = align.warp_bilinear(image, transform, align.Region(0, 0, size, size)).astype(np.uint8)
        _assert_uint8_equal(f"aligned_trunc[{k}]", reference, io["aligned_trunc"][k])
        _assert_uint8_equal(f"matched[{k}]", align.match_histograms(restored, reference), io["matched"][k])
        weight = align.blend_face(blended, image, face_points, restored, size)
        window = align.face_window(transform, size, *image.shape[:2])
        full = np.zeros(image.shape[:2])
        full[window.slices()] = weight
        assert np.abs(full - io["blend_weight"][k]).max() <= WEIGHT_TOLERANCE, f"blend_weight[{k}]"
    _assert_uint8_equal("output", align.blend(image, list(zip(points, io["restored"])), size), io["output"])


CHECKS = {"face.spade_generator": check_generator, "face.align": check_align, "face.blend": check_blend}
