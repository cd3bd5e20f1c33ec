"""The DDPM U-Net: official key manifests, legacy attention names, and clear errors for configs it cannot build."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from imgforge.errors import ModelError
from imgforge.nets.ddpm_unet import DDPMUNet, UNetConfig, load_unet, remap_legacy_attention

KEYS = Path(__file__).parent / "fixtures" / "conformance" / "keys"
TINY_FIXTURE = Path(__file__).parent / "fixtures" / "conformance" / "ddpm_unet_cifar_tiny"

# The Hub configs as published (diffusers 0.0.4 era; shared/notes/ddpm.md)
CIFAR10_32 = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
DDPM_256 = dict(
    CIFAR10_32, sample_size=256, block_out_channels=[128, 128, 256, 256, 512, 512],
    down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
)


@pytest.mark.parametrize(
    "config, manifest, params",
    [(CIFAR10_32, "ddpm_cifar10_32", 35_746_307), (DDPM_256, "ddpm_256", 113_673_219)],
    ids=["cifar10-32", "256px"],
)
def test_state_dict_equals_the_official_key_manifest(config, manifest, params):
    with torch.device("meta"):
        unet = DDPMUNet(config)
    shapes = {k: list(v.shape) for k, v in unet.state_dict().items()}
    assert shapes == json.loads((KEYS / f"{manifest}.keys.json").read_text())
    assert sum(math.prod(s) for s in shapes.values()) == params


@pytest.mark.parametrize("manifest", ["ddpm_cifar10_32", "ddpm_256"])
def test_legacy_attention_names_map_to_the_current_ones(manifest):
    keymap = json.loads((KEYS / f"{manifest}.legacy_attention_keymap.json").read_text())["new_to_legacy"]
    legacy_state = {legacy: new for new, legacy in keymap.items()}
    assert remap_legacy_attention(legacy_state) == {new: new for new in keymap}


def test_a_checkpoint_with_legacy_attention_names_loads_and_gives_the_same_output():
    from safetensors.torch import load_file

    config = json.loads((TINY_FIXTURE / "config.json").read_text())["unet_config"]
    weights = load_file(str(TINY_FIXTURE / "weights.safetensors"))
    legacy_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, value in weights.items():
        for new, old in legacy_names.items():
            if ".attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        legacy[key] = value
    assert any(".query.weight" in k for k in legacy)
    x, t = torch.randn(1, 3, 32, 32), torch.tensor(300)
    with torch.no_grad():
        assert torch.equal(load_unet(config, legacy)(x, t), load_unet(config, weights)(x, t))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"resnet_groups": 32}, "unknown U-Net config field(s) resnet_groups"),
        ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"]},
         "down block type 'CrossAttnDownBlock2D'"),
        ({"up_block_types": ["UpBlock2D", "UpBlock2D", "SkipUpBlock2D", "UpBlock2D"]}, "up block type 'SkipUpBlock2D'"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type='fourier'"),
        ({"_class_name": "UNet2DConditionModel"}, "model class 'UNet2DConditionModel'"),
        ({"num_class_embeds": 10}, "class-conditional"),
        ({"block_out_channels": [128, 256, 256]}, "differ in length"),
        ({"norm_num_groups": 48}, "not divisible"),
    ],
)
def test_configs_it_cannot_build_are_clear_errors(change, message):
    with pytest.raises(ModelError) as caught:
        UNetConfig.from_dict({**CIFAR10_32, **change})
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_weights_that_do_not_fit_name_the_first_mismatch():
    config = json.loads((TINY_FIXTURE / "config.json").read_text())["unet_config"]
    with torch.device("meta"):
        other = DDPMUNet(dict(config, layers_per_block=1)).state_dict()
    with pytest.raises(ModelError, match="missing .* keys"):
        load_unet(config, {k: torch.zeros(v.shape) for k, v in other.items()})
    own = DDPMUNet(config).state_dict()
    own["conv_in.weight"] = torch.zeros(16, 3, 5, 5)
    with pytest.raises(ModelError, match=r"conv_in.weight has shape \(16, 3, 5, 5\)"):
        load_unet(config, own)


def test_attention_heads_read_as_diffusers_reads_the_config():
    # null: one head over all channels (the google/ddpm-* configs); absent: diffusers' 8 channels per head
    single = DDPMUNet(CIFAR10_32)
    absent = DDPMUNet({k: v for k, v in CIFAR10_32.items() if k != "attention_head_dim"})
    heads = lambda unet: {m.heads for m in unet.modules() if hasattr(m, "to_q")}  # noqa: E731
    assert heads(single) == {1}
    assert heads(absent) == {256 // 8}
