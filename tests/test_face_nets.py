"""The SPADE face generator: the official key layout, strict loading, width read from the weights, and the
rules that make it the official inference network (stored u, v; running statistics). Outputs against the
official code: the face.spade_generator conformance fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conformance_checks.common import load_fixture
from imgforge import runtime
from imgforge.errors import ModelError
from imgforge.nets import registry
from imgforge.nets.face_spade import FaceSPADEGenerator, build_face_generator, detect

FIXTURES = Path(__file__).parent / "fixtures" / "conformance"
FIXTURE = FIXTURES / "face_spade_generator_256"


def test_full_size_state_dict_equals_official_manifest():
    with torch.device("meta"):
        net = FaceSPADEGenerator()
    expected = json.loads((FIXTURES / "keys" / "face_spade_generator_ngf64_256.keys.json").read_text())
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == expected
    assert sum(p.numel() for p in net.parameters()) == 92_059_587


def test_width_is_read_from_the_weights_and_loading_is_strict():
    weights, _ = load_fixture(FIXTURE)
    assert detect(weights) == {"ngf": 2}
    assert build_face_generator(weights).ngf == 2
    with pytest.raises(ModelError, match="missing: head_0.conv_0.weight_u"):
        build_face_generator({k: v for k, v in weights.items() if k != "head_0.conv_0.weight_u"})
    with pytest.raises(ModelError, match="unexpected: extra"):
        build_face_generator({**weights, "extra": torch.zeros(1)}, ngf=2)
    assert detect({"fc.weight": torch.zeros(1)}) is None


def test_label_map_checkpoints_are_refused():
    weights, _ = load_fixture(FIXTURE)
    with pytest.raises(ModelError, match="18-channel label map"):
        detect({**weights, "fc.weight": torch.zeros(32, 18, 3, 3)})


def test_inference_uses_stored_u_v_and_running_statistics():
    weights, io = load_fixture(FIXTURE)
    net = build_face_generator(weights)
    with torch.inference_mode():
        reference = net(io["degraded_image"])
        conv = net.head_0.conv_0
        conv.weight_u.copy_(torch.nn.functional.normalize(torch.randn_like(conv.weight_u), dim=0))
        assert (net(io["degraded_image"]) - reference).abs().max() > 1e-3
    assert not net.training


def test_faces_must_be_square_multiples_of_32():
    net = FaceSPADEGenerator(ngf=1)
    with pytest.raises(ModelError, match="multiple of 32"):
        net(torch.zeros(1, 3, 48, 48))
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 3, 64, 64)


def test_registered_family_exports_and_runs_through_onnx():
    weights, io = load_fixture(FIXTURE)
    net, family = registry.load(weights, "face_spade")
    assert family.name == "face_spade" and registry.detect(weights) is family
    descriptor = family.describe(net)
    assert descriptor.hyperparameters == {"ngf": 2} and descriptor.parameters == 919_525
    export = descriptor.exports[0]
    runner = runtime.make_runner(net, backend="onnx", device=torch.device("cpu"), export=export)
    faces = torch.cat([io["degraded_image"], io["degraded_image"].flip(-1)])  # a batch of 2: dynamic batch axis
    with torch.inference_mode():
        expected = net(faces)
    assert (runner(faces) - expected).abs().max() < 1e-4


def test_the_generator_check_reads_load_size_not_crop_size():
    """FaceSR_512's options have load_size 512 and crop_size 256; the generator reads load_size only, so the
    conformance check takes any crop_size and holds the faces to load_size."""
    from conformance_checks.face import check_generator

    config = json.loads((FIXTURE / "config.json").read_text())
    config["reference"]["opt"]["crop_size"] = 128
    check_generator(FIXTURE, config)
    config["reference"]["opt"]["load_size"] = 512
    with pytest.raises(AssertionError, match="the faces are 256 px, and the reference's load_size is 512"):
        check_generator(FIXTURE, config)
