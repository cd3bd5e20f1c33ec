"""The attention blocks of the scratch mapping networks, computed in bounded memory.

PartialNonLocalBlock is the official NonLocalBlock2D_with_mask_Res (Global/models/networks.py) with fusion
"combine", correlation renormalisation, temperature 1, no self attention, dot-product affinity. The official
code builds the full (positions x positions) affinity matrix; here queries are processed in row chunks, so
memory is bounded by `chunk_bytes` whatever the photo size, and each row is the same computation:
softmax over all keys, times the per-key validity, L1-renormalised with eps 1e-12 (F.normalize), times g.

PatchAttention is the official Patch_Attention_4.inference_forward (the HR model): every patch mostly
covered by scratches is replaced by the unscratched patch of highest cosine similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .vae import ResnetBlock, conv2d_banded

DEFAULT_CHUNK_BYTES = 256 * 2**20  # one affinity tile (query rows x all keys, float32)
RENORM_EPS = 1e-12  # F.normalize's eps in the official renormalisation


def latent_validity(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Image-size scratch mask (N, 1, H, W), 1 = scratch -> (N, 1, h, w), 1 = usable latent position.
    As the official block builds it: (1 - [bilinear resize > 0]) * nearest resize of (1 - mask), so a
    latent position touched by any scratch pixel is unusable."""
    touched = F.interpolate(mask, size, mode="bilinear", align_corners=False)
    touched = torch.where(touched > 0, torch.ones_like(touched), touched)
    return (1 - touched) * F.interpolate(1 - mask, size, mode="nearest")


def masked_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor,
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """queries (L, C), keys (C, L), values (L, C), valid (L,) -> (L, C).
    Row i: p = softmax(queries[i] @ keys) * valid; p / max(sum(p), 1e-12) @ values; computed for a chunk
    of rows at a time (chunk_bytes bounds the rows x L affinity tile)."""
    positions = keys.shape[1]
    rows = max(1, chunk_bytes // (4 * positions))
    out = torch.empty(queries.shape[0], values.shape[1], dtype=values.dtype, device=values.device)
    all_valid = bool((valid == 1).all())
    for start in range(0, queries.shape[0], rows):
        affinity = queries[start:start + rows] @ keys
        weights = affinity.sub_(affinity.amax(1, keepdim=True)).exp_()
        # row sums in float32, so that the 1e-12 clamp holds in half precision too
        total = weights.sum(1, keepdim=True, dtype=torch.float32)
        if not all_valid:
            weights.mul_(valid)
        kept_share = weights.sum(1, keepdim=True, dtype=torch.float32).div_(total)
        # softmax share of the usable keys, clamped as F.normalize(p=1) clamps the row sum
        scale = kept_share.clamp_(min=RENORM_EPS).mul_(total)
        out[start:start + rows] = (weights @ values).float().div_(scale)
    return out


def _pointwise(conv: nn.Conv2d, features: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv applied to positions-by-channels rows (L, C_in) -> (L, C_out)."""
    return F.linear(features, conv.weight.flatten(1), conv.bias)


class PartialNonLocalBlock(nn.Module):
    """forward(x: (N, C, h, w), mask: (N, 1, H, W) image-size, 1 = scratch) -> (N, C, h, w).
    Attention restricted to usable positions, W, three residual blocks; usable positions keep x."""

    def __init__(self, channels: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        super().__init__()
        self.g = nn.Conv2d(channels, channels, 1)
        self.W = nn.Conv2d(channels, channels, 1)
        self.theta = nn.Conv2d(channels, channels, 1)
        self.phi = nn.Conv2d(channels, channels, 1)
        self.res_block = nn.Sequential(*[ResnetBlock(channels) for _ in range(3)])
        self.chunk_bytes = chunk_bytes

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        valid = latent_validity(mask.to(x.dtype), (h, w))
        rows_per_chunk = max(1, self.chunk_bytes // (4 * h * w))
        for i in range(n):
            # keys and values as the official block lays them out: (C, L) and a (L, C) view
            keys = self.phi(x[i:i + 1]).view(c, -1)
            values = self.g(x[i:i + 1]).view(c, -1).t()
            usable = valid[i].flatten()
            if i == 0:  # allocated after the first keys and values: one full-size map less at the peak
                mixed = torch.empty_like(x)
            rows = x[i].flatten(1).t()  # (L, C) view
            # theta and W are 1x1 convs, applied per chunk of query rows: no further full-size map
            for start in range(0, h * w, rows_per_chunk):
                stop = min(start + rows_per_chunk, h * w)
                attended = masked_attention(_pointwise(self.theta, rows[start:stop]), keys, values, usable,
                                            self.chunk_bytes)
                mixed[i].view(c, -1)[:, start:stop] = _pointwise(self.W, attended).t()
            del keys, values
        for block in self.res_block:
            mixed = block(mixed)
        # "combine": usable positions keep their feature, the others take the attended one
        return mixed.mul_(1 - valid).add_(x * valid)


class PatchAttention(nn.Module):
    """forward(z: (N, C, h, w), mask: (N, 1, H, W) image-size, 1 = scratch) -> (N, C, h, w).
    Patches (patch_size², stride patch_size) whose scratch share exceeds 0.6 are replaced by the most
    similar other patch (cosine over the flattened patch), then [z, composed, mask] -> F_Combine."""

    def __init__(self, channels: int, patch_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        super().__init__()
        self.patch_size = patch_size
        self.F_Combine = nn.Conv2d(2 * channels + 1, channels, kernel_size=3, padding=1)
        self.res_block = nn.Sequential(ResnetBlock(channels))
        self.chunk_bytes = chunk_bytes

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.res_block(z)
        h, w = x.shape[2:]
        touched = F.interpolate(mask.to(x.dtype), (h, w), mode="bilinear", align_corners=False)
        touched = torch.where(touched > 0, torch.ones_like(touched), touched)
        for i in range(x.shape[0]):
            self._compose_(x[i], touched[i:i + 1])
        return conv2d_banded(self.F_Combine, [z, x, touched], 1, "zeros")

    def _compose_(self, x: torch.Tensor, touched: torch.Tensor) -> None:
        """x (C, h, w), in place: scratched patches take the best-matching unscratched patch's features."""
        p = self.patch_size
        share = F.unfold(touched, kernel_size=p, stride=p).mean(1)[0]
        query_index = torch.nonzero(share > 0.6, as_tuple=True)[0]
        key_index = torch.nonzero(share <= 0.6, as_tuple=True)[0]
        if len(query_index) == 0 or len(key_index) == 0:
            # nothing to fill, or nothing to fill from (the official code fails there): keep the features
            return
        rows, cols = x.shape[1] // p, x.shape[2] // p
        # (rows, cols, C, p, p) view of x: patches are written back in place, no unfolded copy of the map
        patches = x[:, :rows * p, :cols * p].unflatten(1, (rows, p)).unflatten(3, (cols, p)).permute(1, 3, 0, 2, 4)
        key_rows, key_cols = key_index // cols, key_index % cols
        keys_unit = patches[key_rows, key_cols].flatten(1)
        keys_unit.div_(torch.linalg.vector_norm(keys_unit, dim=1, keepdim=True).clamp_min_(1e-12))
        queries_unit = F.normalize(patches[query_index // cols, query_index % cols].flatten(1), dim=1)
        chunk = max(1, self.chunk_bytes // (4 * len(key_index)))
        best = torch.cat([
            F.softmax(queries_unit[start:start + chunk] @ keys_unit.t(), dim=1).max(1).indices
            for start in range(0, len(query_index), chunk)
        ])
        del keys_unit, queries_unit
        patches[query_index // cols, query_index % cols] = patches[key_rows[best], key_cols[best]]
        # the official fold leaves zeros where h or w is not a multiple of p
        x[:, rows * p:] = 0
        x[:, :, cols * p:] = 0
