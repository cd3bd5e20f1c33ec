"""The latent mapping networks of "Bringing Old Photos Back to Life" (Global/models/mapping_model.py and
NonLocal_feature_mapping_model.py):

- "quality": Mapping_Model (mapping_quality), forward(z) -> z'.
- "scratch": Mapping_Model_with_mask (mapping_scratch) with the partial non-local block, forward(z, mask).
- "hr": Mapping_Model_with_mask_2 (mapping_Patch_Attention), multi-scale patch attention, forward(z, mask)
  computing the official inference_forward (what the HR path runs).

z is the VAE latent (N, 64, h, w); mask is the image-size scratch mask (N, 1, H, W) in {0, 1}, 1 = scratch;
each attention block resizes it to the latent size as the official code does. `on_progress(part, done,
detail)`, if given, is called as the network proceeds: `part` is "convolutions" (the quality model), or
"before attention", "attention" (chunks of queries; the HR model's three scales with their residual blocks)
and "after attention"; `done` is the share of that part done (0 to 1), `detail` the chunks or scales done
("3/64"). Keys and shapes equal the official `latest_net_mapping_net.pth` files (no remap). `chunk_bytes`
bounds the attention's affinity tile.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import ModelError
from .nonlocal_attention import DEFAULT_CHUNK_BYTES, PartialNonLocalBlock, PatchAttention
from .oldphoto_blocks import ResnetBlock, load_official_weights, run_sequential
from .oldphoto_onnx import mapping_graph
from .registry import Descriptor, Export, Family, check_overrides, construct, parameter_count, register

LATENT_CHANNELS = 64  # the official mapping networks hard-code it (tmp_nc)
PartProgress = Callable[[str, float, str], None]  # (part of the network, share of it done, e.g. "3/64")


def _ignore(part: str, done: float, detail: str) -> None:
    pass


def _widening(mc: int) -> list[nn.Module]:
    """64 -> 128 -> 256 -> 512 -> 512 channels (capped at mc), conv 3x3 + instance norm + ReLU each."""
    layers: list[nn.Module] = []
    for i in range(4):
        ic, oc = min(LATENT_CHANNELS * 2**i, mc), min(LATENT_CHANNELS * 2 ** (i + 1), mc)
        layers += [nn.Conv2d(ic, oc, 3, 1, 1), nn.InstanceNorm2d(oc), nn.ReLU(True)]
    return layers


def _narrowing(mc: int) -> list[nn.Module]:
    """Back to the latent's 64 channels; the last conv has no norm or activation."""
    layers: list[nn.Module] = []
    for i in range(3):
        ic, oc = min(LATENT_CHANNELS * 2 ** (4 - i), mc), min(LATENT_CHANNELS * 2 ** (3 - i), mc)
        layers += [nn.Conv2d(ic, oc, 3, 1, 1), nn.InstanceNorm2d(oc), nn.ReLU(True)]
    return layers + [nn.Conv2d(LATENT_CHANNELS * 2, LATENT_CHANNELS, 3, 1, 1)]


def _res_blocks(mc: int, count: int) -> list[nn.Module]:
    return [ResnetBlock(mc) for _ in range(count)]


class QualityMapping(nn.Module):
    def __init__(self, mc: int = 512, n_blocks: int = 6):
        super().__init__()
        self.model = nn.Sequential(*_widening(mc), *_res_blocks(mc, n_blocks), *_narrowing(mc))

    def forward(self, z: torch.Tensor, on_progress: PartProgress | None = None) -> torch.Tensor:
        report = on_progress or _ignore
        return run_sequential(self.model, z, lambda done: report("convolutions", done, ""))


class ScratchMapping(nn.Module):
    def __init__(self, mc: int = 512, n_blocks: int = 6, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        super().__init__()
        self.before_NL = nn.Sequential(*_widening(mc))
        self.NL = PartialNonLocalBlock(mc, chunk_bytes)
        self.after_NL = nn.Sequential(*_res_blocks(mc, n_blocks), *_narrowing(mc))

    def forward(self, z: torch.Tensor, mask: torch.Tensor, on_progress: PartProgress | None = None) -> torch.Tensor:
        report = on_progress or _ignore
        features = run_sequential(self.before_NL, z, lambda done: report("before attention", done, ""))
        features = self.NL(features, mask, lambda done, total: report("attention", done / total, f"{done}/{total}"))
        return run_sequential(self.after_NL, features, lambda done: report("after attention", done, ""))


class PatchAttentionMapping(nn.Module):
    """Three patch-attention scales (patches of 8, 4, 2 latent pixels) between residual blocks."""

    def __init__(self, mc: int = 512, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        super().__init__()
        self.before_NL = nn.Sequential(*_widening(mc), *_res_blocks(mc, 2))
        self.NL_scale_1 = PatchAttention(mc, 8, chunk_bytes)
        self.res_block_1 = nn.Sequential(*_res_blocks(mc, 2))
        self.NL_scale_2 = PatchAttention(mc, 4, chunk_bytes)
        self.res_block_2 = nn.Sequential(*_res_blocks(mc, 2))
        self.NL_scale_3 = PatchAttention(mc, 2, chunk_bytes)
        self.after_NL = nn.Sequential(*_res_blocks(mc, 2), *_narrowing(mc))

    def forward(self, z: torch.Tensor, mask: torch.Tensor, on_progress: PartProgress | None = None) -> torch.Tensor:
        report = on_progress or _ignore
        x = run_sequential(self.before_NL, z, lambda done: report("before attention", done, ""))
        for scale, (attention, after) in enumerate(((self.NL_scale_1, self.res_block_1),
                                                    (self.NL_scale_2, self.res_block_2),
                                                    (self.NL_scale_3, self.after_NL))):
            x = run_sequential(after, attention(x, mask))
            report("attention", (scale + 1) / 3, f"{scale + 1}/3")
        return x


MAPPINGS = {"quality": QualityMapping, "scratch": ScratchMapping, "hr": PatchAttentionMapping}


def build_mapping(kind: str, state_dict: dict | None = None, **config) -> nn.Module:
    """kind "quality" | "scratch" | "hr"; official size (mc 512, 6 blocks) unless `config` says otherwise
    (mc, n_blocks, chunk_bytes); eval mode; weights loaded strictly."""
    if kind not in MAPPINGS:
        raise ModelError(f"unknown mapping kind {kind!r} (expected one of: {', '.join(MAPPINGS)})")
    net = MAPPINGS[kind](**config)
    if state_dict is not None:
        load_official_weights(net, state_dict, f"{kind} mapping")
    return net.eval()


# --- the registry: the kind is told by the keys ----------------------------------------------------------------

_KIND_KEYS = {"quality": "model.0.weight", "scratch": "NL.theta.weight", "hr": "NL_scale_1.F_Combine.weight"}


def mapping_kind(state: dict) -> str | None:
    """quality | scratch | hr, or None; a quality mapping also has residual blocks (model.0.weight alone is any
    Sequential's first layer, e.g. a PatchGAN's)."""
    kind = next((kind for kind, key in _KIND_KEYS.items() if key in state), None)
    if kind == "quality" and not any(key.startswith("model.") and ".conv_block." in key for key in state):
        return None
    return kind


def _mapping_options(state: dict) -> dict:
    kind = mapping_kind(state)
    first = "model" if kind == "quality" else "before_NL"
    options = {"mc": state[f"{first}.9.weight"].shape[0]}  # the fourth widening conv: min(512, mc) channels
    if kind != "hr":
        body = "model" if kind == "quality" else "after_NL"
        options["n_blocks"] = len({key.split(".")[1] for key in state if key.startswith(f"{body}.")
                                   and ".conv_block." in key})
    return options


def load_mapping_weights(state_dict: dict, **overrides) -> nn.Module:
    """The mapping network of the kind its keys show, widths and block count read from the weights;
    `chunk_bytes` (memory bound of the attention) is free."""
    kind = mapping_kind(state_dict)
    return build_mapping(kind, state_dict, **check_overrides(f"{kind} mapping", _mapping_options(state_dict),
                                                             overrides))


def build_mapping_config(config: dict) -> nn.Module:
    """A fresh mapping network from {"kind": "quality" | "scratch" | "hr", mc, n_blocks, ...}."""
    options = dict(config)
    kind = options.pop("kind", None)
    if kind not in MAPPINGS:
        raise ModelError(f"an oldphoto_mapping config needs kind {', '.join(MAPPINGS)}, not {kind!r}")
    return construct(f"{kind} mapping", MAPPINGS[kind], options)


def describe_mapping(net: nn.Module) -> Descriptor:
    state = net.state_dict()
    kind = mapping_kind(state)
    masked = kind != "quality"
    channels = state["model.0.weight" if kind == "quality" else "before_NL.0.weight"].shape[1]

    def example_inputs(height: int, width: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        latent = torch.randn((1, channels, height // 4, width // 4), generator=generator)
        if not masked:
            return (latent,)
        mask = (torch.rand((1, 1, height, width), generator=generator) > 0.995).float()
        mask[..., :, :width // 2] = 1  # a scratched half: patches to fill, and patches to fill them from
        return latent, mask

    names = ("latent", "mask") if masked else ("latent",)
    axes = {"latent": {0: "batch", 2: "latent_height", 3: "latent_width"},
            "mask": {0: "batch", 2: "height", 3: "width"},
            "latent_mapped": {0: "batch", 2: "latent_height", 3: "latent_width"}}
    io = {"latent": "N x 64 x h x w float32, VAE_A's latent", "latent_mapped": "N x 64 x h x w, for VAE_B",
          "mask": "N x 1 x 4h x 4w float32, 1 = scratch (image size)"}
    used = (*names, "latent_mapped")
    exports = (Export("mapping", mapping_graph(net), example_inputs, names, ("latent_mapped",),
                      {k: v for k, v in axes.items() if k in used}, {k: v for k, v in io.items() if k in used}, 4, 16),)
    return Descriptor(
        family="oldphoto_mapping", task="restore", in_channels=channels, out_channels=channels,
        size_multiple=4, min_side=16, precisions=("fp32", "bf16", "fp16"), parameters=parameter_count(net),
        hyperparameters={"kind": kind, **_mapping_options(state)}, exports=exports,
        test_time={"quality": "latent mapping", "scratch": "latent mapping with partial non-local attention "
                   "over unscratched positions", "hr": "latent mapping with multi-scale patch attention"}[kind],
    )


register(Family(
    "oldphoto_mapping", "oldphoto", "restore", "old-photo latent mapping (quality, scratch or HR, from its keys)",
    detect=lambda state: mapping_kind(state) is not None, load=load_mapping_weights, describe=describe_mapping,
    build=build_mapping_config,
))
