"""The old-photo networks in forms that ONNX export traces for any input size, beside the torch forms (which
run convolutions in bands and norms in place to bound memory, with Python loops a trace would freeze).

Each wrapper computes the same function as the network's torch path from the same parameters; the
registry's descriptors export these.
"""

from __future__ import annotations

import warnings
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from .nonlocal_attention import latent_validity
from .oldphoto_blocks import ResnetBlock

# Elements of one (batch x query rows x positions) affinity tile in the exported attention loop: 64 MB in
# float32, so the scratch mapping's memory stays bounded at any photo size without a new export.
AFFINITY_TILE_ELEMENTS = 2**24


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm2d(affine=False) as reductions: the exporter's instance_norm needs a channel count the
    trace does not know after the attention loop."""
    mean = x.mean((2, 3), keepdim=True)
    centred = x - mean
    return centred / torch.sqrt(centred.pow(2).mean((2, 3), keepdim=True) + eps)


def plain_sequential(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The official Sequential run layer by layer with stock modules (ResnetBlock as x + conv_block(x))."""
    for layer in layers:
        if isinstance(layer, ResnetBlock):
            x = x + plain_sequential(layer.conv_block, x)
        elif isinstance(layer, nn.InstanceNorm2d):
            x = instance_norm(x, layer.eps)
        else:
            x = layer(x)
    return x


class SequentialPart(nn.Module):
    """One Sequential of a network (`part`: a VAE's "encoder" or "decoder", the quality mapping's "model")
    run with plain_sequential."""

    def __init__(self, net: nn.Module, part: str):
        super().__init__()
        self.net = net
        self.part = part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return plain_sequential(getattr(self.net, self.part), x)


def _masked_attention_loop(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor,
                          tile_elements: int) -> torch.Tensor:
    """nonlocal_attention.masked_attention for a batch, as a loop the ONNX export keeps (an ONNX Loop whose trip
    count follows the input size): queries (N, L, C), keys (N, C, L), values (N, L, C), valid (N, 1, L)."""
    positions = keys.shape[0] * keys.shape[2]
    rows = max(1, tile_elements // positions)
    chunks: List[torch.Tensor] = []
    for start in range(0, queries.shape[1], rows):
        affinity = torch.bmm(queries[:, start:start + rows], keys)
        weights = torch.exp(affinity - affinity.max(2, keepdim=True)[0])
        total = weights.sum(2, keepdim=True)
        weights = weights * valid
        scale = (weights.sum(2, keepdim=True) / total).clamp(min=1e-12) * total  # RENORM_EPS
        chunks.append(torch.bmm(weights, values) / scale)
    return torch.cat(chunks, 1)


with warnings.catch_warnings():  # torch 2.14 calls scripting deprecated; the ONNX exporter still needs it for Loop
    warnings.simplefilter("ignore", FutureWarning)
    masked_attention_loop = torch.jit.script(_masked_attention_loop)


class PartialNonLocalGraph(nn.Module):
    """nonlocal_attention.PartialNonLocalBlock's function, with the query chunks in masked_attention_loop."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        block = self.block
        valid = latent_validity(mask, x.shape[2:])
        queries = block.theta(x).flatten(2).transpose(1, 2)
        values = block.g(x).flatten(2).transpose(1, 2)
        attended = masked_attention_loop(queries, block.phi(x).flatten(2), values, valid.flatten(2),
                                         AFFINITY_TILE_ELEMENTS)
        mixed = block.W(attended.transpose(1, 2).reshape_as(x))
        return plain_sequential(block.res_block, mixed) * (1 - valid) + x * valid


class ScratchMappingGraph(nn.Module):
    def __init__(self, mapping: nn.Module):
        super().__init__()
        self.mapping = mapping
        self.attention = PartialNonLocalGraph(mapping.NL)

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        features = self.attention(plain_sequential(self.mapping.before_NL, z), mask)
        return plain_sequential(self.mapping.after_NL, features)


def _best_keys_loop(unit: torch.Tensor, is_key: torch.Tensor, tile_elements: int) -> torch.Tensor:
    """For every patch (unit: N x P x D, unit-length rows), the index of the key patch (is_key: N x 1 x P, 1 =
    key) of highest softmax-ed cosine similarity, as the official max(1).indices over the keys; query rows
    in chunks (an ONNX Loop) so that the P x P similarity is never whole."""
    rows = max(1, tile_elements // (unit.shape[0] * unit.shape[1]))
    chunks: List[torch.Tensor] = []
    for start in range(0, unit.shape[1], rows):
        similarity = torch.bmm(unit[:, start:start + rows], unit.transpose(1, 2))
        similarity = similarity.masked_fill(is_key == 0, float("-inf"))
        chunks.append(torch.softmax(similarity, 2).argmax(2))
    return torch.cat(chunks, 1)


with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    best_keys_loop = torch.jit.script(_best_keys_loop)


class PatchAttentionGraph(nn.Module):
    """nonlocal_attention.PatchAttention's function as graph operations: the scratched patches (share > 0.6)
    take the best-matching unscratched patch, for every image of the batch at once."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        block, p = self.block, self.block.patch_size
        x = plain_sequential(block.res_block, z)
        n, c, h, w = x.shape
        touched = F.interpolate(mask, (h, w), mode="bilinear", align_corners=False)
        touched = torch.where(touched > 0, torch.ones_like(touched), touched)
        rows, cols = h // p, w // p
        grid = (n, c, rows, p, cols, p)
        patches = x[:, :, :rows * p, :cols * p].reshape(grid).permute(0, 2, 4, 1, 3, 5).reshape(n, rows * cols, -1)
        share = touched[:, :, :rows * p, :cols * p].reshape(n, 1, rows, p, cols, p).mean((3, 5)).reshape(n, -1)
        query, key = share > 0.6, share <= 0.6
        unit = patches / patches.norm(dim=2, keepdim=True).clamp_min(1e-12)
        best = best_keys_loop(unit, key.unsqueeze(1).to(unit.dtype), AFFINITY_TILE_ELEMENTS)
        chosen = torch.gather(patches, 1, best.unsqueeze(2).expand_as(patches))
        active = (query.any(1) & key.any(1)).view(n, 1, 1)  # something to fill, and something to fill from
        composed = torch.where(query.unsqueeze(2) & active, chosen, patches)
        composed = composed.reshape(n, rows, cols, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, c, rows * p, cols * p)
        # the official fold leaves zeros where h or w is not a multiple of p
        composed = F.pad(composed, (0, w - cols * p, 0, h - rows * p))
        x = torch.where(active.view(n, 1, 1, 1), composed, x)
        return block.F_Combine(torch.cat([z, x, touched], 1))


class PatchMappingGraph(nn.Module):
    def __init__(self, mapping: nn.Module):
        super().__init__()
        self.mapping = mapping
        self.scales = nn.ModuleList(PatchAttentionGraph(getattr(mapping, f"NL_scale_{i}")) for i in (1, 2, 3))

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mapping = self.mapping
        x = plain_sequential(mapping.before_NL, z)
        for attention, after in zip(self.scales, (mapping.res_block_1, mapping.res_block_2, mapping.after_NL)):
            x = plain_sequential(after, attention(x, mask))
        return x


def mapping_graph(mapping: nn.Module) -> nn.Module:
    """The exportable form of a mapping network."""
    if hasattr(mapping, "model"):
        return SequentialPart(mapping, "model")
    return ScratchMappingGraph(mapping) if hasattr(mapping, "NL") else PatchMappingGraph(mapping)
