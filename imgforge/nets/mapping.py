"""The latent mapping networks of "Bringing Old Photos Back to Life" (Global/models/mapping_model.py and
NonLocal_feature_mapping_model.py):

- "quality": Mapping_Model (mapping_quality), forward(z) -> z'.
- "scratch": Mapping_Model_with_mask (mapping_scratch) with the partial non-local block, forward(z, mask).
- "hr": Mapping_Model_with_mask_2 (mapping_Patch_Attention), multi-scale patch attention, forward(z, mask)
  computing the official inference_forward (what the HR path runs).

z is the VAE latent (N, 64, h, w); mask is the image-size scratch mask (N, 1, H, W) in {0, 1}, 1 = scratch;
each attention block resizes it to the latent size as the official code does. `on_chunk(done, total)`, if
given, is called as the attention proceeds (chunks of queries; the HR model's three scales). Keys and shapes equal the
official `latest_net_mapping_net.pth` files (no remap). `chunk_bytes` bounds the attention's affinity tile.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from .nonlocal_attention import DEFAULT_CHUNK_BYTES, ChunkCallback, PartialNonLocalBlock, PatchAttention
from .vae import ResnetBlock, load_official_weights, run_sequential

LATENT_CHANNELS = 64  # the official mapping networks hard-code it (tmp_nc)


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

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return run_sequential(self.model, z)


class ScratchMapping(nn.Module):
    def __init__(self, mc: int = 512, n_blocks: int = 6, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        super().__init__()
        self.before_NL = nn.Sequential(*_widening(mc))
        self.NL = PartialNonLocalBlock(mc, chunk_bytes)
        self.after_NL = nn.Sequential(*_res_blocks(mc, n_blocks), *_narrowing(mc))

    def forward(self, z: torch.Tensor, mask: torch.Tensor, on_chunk: ChunkCallback | None = None) -> torch.Tensor:
        features = run_sequential(self.before_NL, z)
        features = self.NL(features, mask, on_chunk)
        return run_sequential(self.after_NL, features)


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

    def forward(self, z: torch.Tensor, mask: torch.Tensor, on_chunk: ChunkCallback | None = None) -> torch.Tensor:
        x = run_sequential(self.before_NL, z)
        for scale, (attention, after) in enumerate(((self.NL_scale_1, self.res_block_1),
                                                    (self.NL_scale_2, self.res_block_2),
                                                    (self.NL_scale_3, self.after_NL))):
            x = run_sequential(after, attention(x, mask))
            if on_chunk is not None:
                on_chunk(scale + 1, 3)
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
