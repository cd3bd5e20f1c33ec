"""The attention blocks of the scratch mapping networks, computed in bounded memory.

PartialNonLocalBlock is the official NonLocalBlock2D_with_mask_Res (Global/models/networks.py) with fusion
"combine", correlation renormalisation, temperature 1, no self attention, dot-product affinity. The official
code builds the full (positions x positions) affinity matrix, softmaxes each row, multiplies it by the
per-key validity, L1-renormalises it with eps 1e-12 (F.normalize) and multiplies by g. Here the same numbers
come out of one fused attention call (torch's scaled_dot_product_attention, which never holds more than a
tile of the affinities): the values carry one more column, the validity, so that one softmax-weighted sum
gives both the masked numerator and the kept share of the softmax that F.normalize divides by.

PatchAttention is the official Patch_Attention_4.inference_forward (the HR model): every patch mostly
covered by scratches is replaced by the unscratched patch of highest cosine similarity.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .oldphoto_blocks import ResnetBlock, conv2d_banded

DEFAULT_CHUNK_BYTES = 256 * 2**20  # one affinity tile (query rows x all keys, float32) where no fused kernel runs
QUERY_CHUNK_ROWS = 4096  # queries per fused attention call: the unit of progress and of temporary memory
RENORM_EPS = 1e-12  # F.normalize's eps in the official renormalisation
# zero columns appended to queries and keys: fused kernels want one head size for queries, keys and values,
# and the values carry the validity column (16 keeps rows aligned for the vector units)
EXTRA_COLUMNS = 16
FUSED_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
ChunkCallback = Callable[[int, int], None]  # (chunks done, chunks in all): progress within a large photo


def latent_validity(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Image-size scratch mask (N, 1, H, W), 1 = scratch -> (N, 1, h, w), 1 = usable latent position.
    As the official block builds it: (1 - [bilinear resize > 0]) * nearest resize of (1 - mask), so a
    latent position touched by any scratch pixel is unusable. Computed in float32 whatever the network's
    precision, so that the same positions are usable."""
    mask = mask.float()
    touched = F.interpolate(mask, size, mode="bilinear", align_corners=False)
    touched = torch.where(touched > 0, torch.ones_like(touched), touched)
    return (1 - touched) * F.interpolate(1 - mask, size, mode="nearest")


class MaskedAttention:
    """The official masked, renormalised attention of queries over fixed keys and values ((L, C) rows):
    row i -> p = softmax(q_i . keys) * valid; p / max(sum(p), 1e-12) @ values. The keys and values are set
    a block of positions at a time (padded, values times validity plus the validity column, so that the
    projections are never held twice), then the queries are attended a chunk at a time."""

    def __init__(self, positions: int, channels: int, like: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        self.channels = channels
        self.keys = like.new_zeros(positions, channels + EXTRA_COLUMNS)
        self.values = like.new_zeros(positions, channels + EXTRA_COLUMNS)
        self.chunk_bytes = chunk_bytes

    def set_rows(self, start: int, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> None:
        stop = start + len(keys)
        self.keys[start:stop, :self.channels] = keys
        self.values[start:stop, :self.channels] = values * valid[:, None]
        self.values[start:stop, self.channels] = valid

    def __call__(self, queries: torch.Tensor) -> torch.Tensor:
        weighted = _attend(F.pad(queries, (0, EXTRA_COLUMNS)), self.keys, self.values, self.chunk_bytes)
        kept_share = weighted[:, self.channels:self.channels + 1].float().clamp_(min=RENORM_EPS)
        return (weighted[:, :self.channels].float() / kept_share).to(queries.dtype)


def masked_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor,
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """queries, keys, values (L, C), valid (L,) -> (L, C): MaskedAttention over whole tensors."""
    attention = MaskedAttention(len(keys), keys.shape[1], keys, chunk_bytes)
    attention.set_rows(0, keys, values, valid.to(values.dtype))
    return attention(queries)


def _attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, chunk_bytes: int) -> torch.Tensor:
    """softmax(queries @ keys.T) @ values, unscaled, through a fused kernel (scores and softmax in float32,
    tile by tile); where none takes these sizes, through an explicit affinity tile of at most chunk_bytes."""
    try:
        with sdpa_kernel(FUSED_BACKENDS):
            return F.scaled_dot_product_attention(queries[None, None], keys[None, None], values[None, None],
                                                  scale=1.0)[0, 0]
    except RuntimeError:
        return attend_explicitly(queries, keys, values, chunk_bytes)


def attend_explicitly(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                      chunk_bytes: int) -> torch.Tensor:
    rows = max(1, chunk_bytes // (4 * len(keys)))
    return torch.cat([torch.softmax(queries[start:start + rows] @ keys.t(), 1, dtype=torch.float32)
                      .to(values.dtype) @ values for start in range(0, len(queries), rows)])


def _pointwise(conv: nn.Conv2d, rows: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv applied to positions-by-channels rows (L, C_in) -> (L, C_out)."""
    return F.linear(rows, conv.weight.flatten(1), conv.bias)


def positions(x: torch.Tensor) -> torch.Tensor:
    """One image's features (C, h, w) as positions-by-channels rows (h*w, C): a view of a channels-last map."""
    return x.permute(1, 2, 0).reshape(-1, x.shape[0])


class PartialNonLocalBlock(nn.Module):
    """forward(x: (N, C, h, w), mask: (N, 1, H, W) image-size, 1 = scratch) -> (N, C, h, w).
    Attention restricted to usable positions, W, three residual blocks; usable positions keep x.
    `on_chunk(done, total)`, if given, is called after each chunk of queries."""

    def __init__(self, channels: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        super().__init__()
        self.g = nn.Conv2d(channels, channels, 1)
        self.W = nn.Conv2d(channels, channels, 1)
        self.theta = nn.Conv2d(channels, channels, 1)
        self.phi = nn.Conv2d(channels, channels, 1)
        self.res_block = nn.Sequential(*[ResnetBlock(channels) for _ in range(3)])
        self.chunk_bytes = chunk_bytes

    def forward(self, x: torch.Tensor, mask: torch.Tensor, on_chunk: ChunkCallback | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.contiguous(memory_format=torch.channels_last)
        valid = latent_validity(mask, (h, w)).to(x.dtype)
        mixed = torch.empty_like(x)
        for i in range(n):
            rows, usable, out = positions(x[i]), valid[i].flatten(), positions(mixed[i])
            attention = MaskedAttention(h * w, c, x, self.chunk_bytes)
            chunks = range(0, h * w, QUERY_CHUNK_ROWS)
            for start in chunks:
                part = rows[start:start + QUERY_CHUNK_ROWS]
                attention.set_rows(start, _pointwise(self.phi, part), _pointwise(self.g, part),
                                   usable[start:start + QUERY_CHUNK_ROWS])
            # theta and W are 1x1 convs, applied per chunk of query rows: no further full-size map
            for chunk, start in enumerate(chunks):
                stop = start + QUERY_CHUNK_ROWS
                out[start:stop] = _pointwise(self.W, attention(_pointwise(self.theta, rows[start:stop])))
                if on_chunk is not None:
                    on_chunk(i * len(chunks) + chunk + 1, n * len(chunks))
            del attention
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
        # which patches count as scratched is decided in float32 whatever the network's precision
        touched = F.interpolate(mask.float(), (h, w), mode="bilinear", align_corners=False)
        touched = torch.where(touched > 0, torch.ones_like(touched), touched)
        for i in range(x.shape[0]):
            self._compose_(x[i], touched[i:i + 1])
        return conv2d_banded(self.F_Combine, [z, x, touched.to(x.dtype)], 1, "zeros")

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
