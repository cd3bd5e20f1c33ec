"""Conformance checks for the "Bringing Old Photos Back to Life" networks (kinds oldphoto.*)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from conformance_checks.common import TOLERANCE, assert_close, load_fixture
from imgforge.nets.mapping import build_mapping
from imgforge.nets.scratch_unet import build_scratch_detector
from imgforge.nets.vae import build_vae

MASK_THRESHOLD = 0.4  # the official detection stage: scratch where sigmoid(logit) >= 0.4

# Reference options imgforge implements as the only behaviour (the official inference settings).
UNET_FIXED = {"padding": True, "up_mode": "upsample", "antialiasing": True}
MAPPING_FIXED = {"norm": "instance", "padding_type": "reflect"}
MAPPING_OPT_FIXED = {"mapping_net_dilation": 1, "feat_dim": -1}
NONLOCAL_OPT_FIXED = {"NL_res": True, "NL_fusion_method": "combine", "correlation_renormalize": True,
                      "softmax_temperature": 1.0, "use_self": False, "cosin_similarity": False}


def _assert_fixed(reference: dict, fixed: dict) -> None:
    for key, value in fixed.items():
        assert reference[key] == value, f"reference {key}={reference[key]!r}; imgforge implements {value!r}"


def _split(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def check_scratch_unet(folder: Path, config: dict) -> None:
    ref = config["reference"]
    _assert_fixed(ref, UNET_FIXED)
    weights, io = load_fixture(folder)
    net = build_scratch_detector(
        weights, in_channels=ref["in_channels"], out_channels=ref["out_channels"], depth=ref["depth"],
        conv_num=ref["conv_num"], wf=ref["wf"], batch_norm=ref["batch_norm"], with_tanh=ref["with_tanh"],
    )
    with torch.inference_mode():
        logits = net(io["input"])
    assert_close("logits", logits, io["logits"])
    mask = (torch.sigmoid(logits) >= MASK_THRESHOLD).float()
    decided = (io["logits"] - math.log(MASK_THRESHOLD / (1 - MASK_THRESHOLD))).abs() > TOLERANCE
    assert torch.equal(mask[decided], io["mask"][decided]), "scratch mask differs away from the threshold"


def build_chain(weights: dict, ref: dict, kind: str):
    vae_ref = ref["vae"]
    assert vae_ref["norm"] == "instance" and not vae_ref["opt"]["use_segmentation_model"]
    vae_config = {k: vae_ref[k] for k in ("input_nc", "output_nc", "ngf", "k_size", "n_downsampling")}
    vae_config.update({k: vae_ref["opt"][k] for k in ("mc", "start_r", "spatio_size", "feat_dim")})
    map_ref = ref["mapping"]
    _assert_fixed(map_ref, MAPPING_FIXED)
    _assert_fixed(map_ref["opt"], MAPPING_OPT_FIXED | (NONLOCAL_OPT_FIXED if kind == "scratch" else {}))
    assert map_ref["nc"] == 64
    vae_a = build_vae(_split(weights, "vae_a."), **vae_config)
    vae_b = build_vae(_split(weights, "vae_b."), **vae_config)
    mapping = build_mapping(kind, _split(weights, "mapping."), mc=map_ref["mc"], n_blocks=map_ref["n_blocks"])
    return vae_a, mapping, vae_b


def check_chain(kind: str):
    def check(folder: Path, config: dict) -> None:
        weights, io = load_fixture(folder)
        vae_a, mapping, vae_b = build_chain(weights, config["reference"], kind)
        with torch.inference_mode():
            latent = vae_a.encode(io["input"])
            assert_close("latent", latent, io["latent"])
            # each step from the reference's own input: an error is pinned to one network, and float
            # noise of one step (torch versions differ by ~1e-5) is not amplified by the next
            mapped = mapping(io["latent"]) if kind == "quality" else mapping(io["latent"], io["mask"])
            assert_close("latent_mapped", mapped, io["latent_mapped"])
            assert_close("output", vae_b.decode(io["latent_mapped"]), io["output"])

    return check


CHECKS = {
    "oldphoto.scratch_unet": check_scratch_unet,
    "oldphoto.chain_quality": check_chain("quality"),
    "oldphoto.chain_scratch": check_chain("scratch"),
}
