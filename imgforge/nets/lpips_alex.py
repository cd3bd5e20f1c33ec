"""LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features
as a Perceptual Metric").

Two weights files: the backbone is torchvision's ImageNet AlexNet (`alexnet-owt-7be5be79.pth`; only its
`features.*` keys are used, under the same names) and the learned linear layers are the lpips package's
`weights/v0.1/alex.pth` (`lin0.model.1.weight` ... `lin4.model.1.weight`, the names it ships them under).

distance(x, y), x and y N x 3 x H x W in [-1, 1]: both are shifted and scaled per channel, the five ReLU
outputs of AlexNet are unit-normalised along the channels, their squared differences weighted per channel by
the linear layers, averaged over the positions and summed over the layers.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from .vae import load_official_weights

CHANNELS = (64, 192, 384, 256, 256)
TAPS = (1, 4, 7, 9, 11)  # indices in `features` of the ReLUs whose outputs are compared
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LinearLayer(nn.Module):
    """A 1x1 convolution to one channel without bias; `model.1` as the lpips package names it (its `model.0`
    is a dropout, which holds no weights and does nothing at evaluation)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPSAlex(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )
        for index, channels in enumerate(CHANNELS):
            self.add_module(f"lin{index}", LinearLayer(channels))
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAPS:
                taps.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The distance of each pair, shape N."""
        total = 0
        for index, (a, b) in enumerate(zip(self.activations(x), self.activations(y))):
            total = total + getattr(self, f"lin{index}")((a - b).pow(2)).mean(dim=(2, 3))
        return total.flatten()


def build_lpips_alex(backbone: dict | None = None, linear: dict | None = None) -> LPIPSAlex:
    """The network in eval mode; `backbone` an AlexNet state dict (its `classifier.*` keys are not used),
    `linear` the lpips package's v0.1 layers. Each part given must be complete: a missing, unexpected or
    misshapen tensor is a ModelError."""
    net = LPIPSAlex()
    state = net.state_dict()
    for part, given, what in ((("features.",), backbone, "AlexNet"), (("lin",), linear, "LPIPS linear layers")):
        if given is None:
            continue
        wanted = {k: v for k, v in given.items() if k.startswith(part)} if what == "AlexNet" else dict(given)
        missing = sorted(k for k in state if k.startswith(part) and k not in wanted)
        if missing:
            raise ModelError(f"the {what} weights lack {', '.join(missing[:3])}")
        state.update(wanted)
    load_official_weights(net, state, "LPIPS")
    return net.eval()
