"""LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features
as a Perceptual Metric").

State-dict keys: AlexNet's `features.*` as torchvision names them and the learned linear layers
`lin0.model.1.weight` ... `lin4.model.1.weight` as the lpips package names them. The zoo model `lpips-alex`
puts the two official files together (imgforge/zoo.py): torchvision's ImageNet AlexNet
`alexnet-owt-7be5be79.pth` (its `classifier.*` keys are not used) and the lpips package's
`weights/v0.1/alex.pth`.

distance(x, y), x and y N x 3 x H x W in [-1, 1]: both are shifted and scaled per channel, the five ReLU
outputs of AlexNet are unit-normalised along the channels, their squared differences weighted per channel by
the linear layers, averaged over the positions and summed over the layers.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import Descriptor, Export, Family, check_overrides, construct, parameter_count, register
from .vae import load_official_weights

CHANNELS = (64, 192, 384, 256, 256)
TAPS = (1, 4, 7, 9, 11)  # indices in `features` of the ReLUs whose outputs are compared
CONVOLUTIONS = (0, 3, 6, 8, 10)  # indices in `features` of the convolutions
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
MIN_SIDE = 31  # the smallest image whose last AlexNet map is not empty (11x11 stride 4, two 3x3 stride-2 pools)


class LinearLayer(nn.Module):
    """Dropout, then a 1x1 convolution to one channel without bias: `model.0` and `model.1` as the lpips package
    names them (the dropout holds no weights and does nothing at evaluation; it is there for training)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPSAlex(nn.Module):
    """Fresh, it is initialised as the original code initialises it: PyTorch's default for every convolution
    (torchvision's AlexNet and the lpips package's linear layers add no initialisation of their own)."""

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


# --- the registry --------------------------------------------------------------------------------------------


def _detect(state: dict) -> bool:
    """AlexNet's convolutions and the five linear layers, whatever their widths."""
    wanted = {f"features.{i}.{p}" for i in CONVOLUTIONS for p in ("weight", "bias")} \
        | {f"lin{i}.model.1.weight" for i in range(len(CHANNELS))}
    return wanted <= set(state)


def load_lpips_alex(state_dict: dict, **overrides) -> LPIPSAlex:
    """The network (eval mode), loaded strictly; torchvision's `classifier.*` keys, which a state dict made
    from its AlexNet file may hold, are not part of LPIPS and are left out."""
    check_overrides("lpips_alex", {}, overrides)
    net = LPIPSAlex()
    load_official_weights(net, {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}, "LPIPS")
    return net.eval()


def describe_lpips_alex(net: LPIPSAlex) -> Descriptor:
    def example_inputs(height: int, width: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        return tuple(torch.rand((2, 3, height, width), generator=generator) * 2 - 1 for _ in range(2))

    image = "N x 3 x H x W float32 in [-1, 1]: RGB / 127.5 - 1"
    io = {"x": image, "y": f"{image}, the same size as x",
          "distance": "N float32: the LPIPS distance of each pair (x[i], y[i]), 0 for identical images"}
    axes = {name: {0: "batch", 2: "height", 3: "width"} for name in ("x", "y")}
    return Descriptor(
        family="lpips_alex", task="eval", in_channels=3, out_channels=1, size_multiple=1, min_side=MIN_SIDE,
        precisions=("fp32",), parameters=parameter_count(net), hyperparameters={},
        exports=(Export("lpips", net, example_inputs, ("x", "y"), ("distance",),
                        {**axes, "distance": {0: "batch"}}, io, 1, MIN_SIDE),),
        test_time="eval: no dropout in the linear layers",
    )


register(Family(
    "lpips_alex", "lpips_alex", "eval", "LPIPS v0.1 with AlexNet (torchvision's features, the lpips linear layers)",
    detect=_detect, load=load_lpips_alex, describe=describe_lpips_alex,
    build=lambda config: construct("lpips_alex", LPIPSAlex, config),
))
