"""The old-photo networks in forms that ONNX export traces for any input size, beside the torch forms (which
run convolutions in bands and norms in place to bound memory, with Python loops a trace would freeze).

Each wrapper computes the same function as the network's torch path from the same parameters; the
registry's descriptors export these.
"""

from __future__ import annotations

import torch
from torch import nn

from .vae import ResnetBlock


def plain_sequential(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The official Sequential run layer by layer with the stock modules (ResnetBlock as x + conv_block(x))."""
    for layer in layers:
        x = x + layer.conv_block(x) if isinstance(layer, ResnetBlock) else layer(x)
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


def mapping_graph(mapping: nn.Module) -> nn.Module:
    """The exportable form of a mapping network."""
    return SequentialPart(mapping, "model") if hasattr(mapping, "model") else mapping
