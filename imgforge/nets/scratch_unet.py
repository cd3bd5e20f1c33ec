"""The scratch-detection U-Net of "Bringing Old Photos Back to Life" (Global/detection_models/networks.py,
UNet with depth 4, conv_num 2, wf 6, batch norm, bilinear upsampling, anti-aliased downsampling).

Keys and shapes equal the official `FT_Epoch_latest.pt` (its state dict lies under "model_state").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .vae import load_official_weights


class BlurDownsample(nn.Module):
    """Anti-aliased stride-2 downsampling: a fixed [1,2,1]x[1,2,1]/16 blur per channel after reflection
    padding. The filter is a stored buffer (`filt`) because the checkpoint holds it."""

    def __init__(self, channels: int):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = taps[:, None] * taps[None, :]
        self.register_buffer("filt", (kernel / kernel.sum())[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class ConvBlock(nn.Module):
    """`conv_num` x (reflection pad 1, 3x3 conv, batch norm, LeakyReLU 0.2)."""

    def __init__(self, conv_num: int, in_channels: int, out_channels: int, batch_norm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(conv_num):
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(in_channels, out_channels, kernel_size=3)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.LeakyReLU(0.2, True))
            in_channels = out_channels
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UpBlock(nn.Module):
    """Bilinear x2 upsampling and a 3x3 conv, concatenated with the skip features, then a ConvBlock."""

    def __init__(self, conv_num: int, in_channels: int, out_channels: int, batch_norm: bool):
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(mode="bilinear", scale_factor=2, align_corners=False),
            nn.ReflectionPad2d(1),
            nn.Conv2d(in_channels, out_channels, kernel_size=3),
        )
        self.conv_block = ConvBlock(conv_num, in_channels, out_channels, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat([self.up(x), skip], 1))


class ScratchUNet(nn.Module):
    """forward(x: (N, in_channels, H, W) in [-1, 1]) -> logits (N, out_channels, H, W); H, W multiples of
    2**depth (the skip features must match the upsampled ones exactly)."""

    # Its thresholded output decides which pixels get repainted, so it runs in float32 whatever the
    # requested precision (runtime.place): the mask is the same as the fp32 one.
    float32_only = True

    def __init__(self, in_channels: int = 1, out_channels: int = 1, depth: int = 4, conv_num: int = 2,
                 wf: int = 6, batch_norm: bool = True, with_tanh: bool = False):
        super().__init__()
        self.first = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(in_channels, 2**wf, kernel_size=7), nn.LeakyReLU(0.2, True)
        )
        self.down_sample = nn.ModuleList()
        self.down_path = nn.ModuleList()
        channels = 2**wf
        for level in range(depth):
            self.down_sample.append(nn.Sequential(
                nn.ReflectionPad2d(1),
                nn.Conv2d(channels, channels, kernel_size=3),
                nn.BatchNorm2d(channels),
                nn.LeakyReLU(0.2, True),
                BlurDownsample(channels),
            ))
            self.down_path.append(ConvBlock(conv_num, channels, 2 ** (wf + level + 1), batch_norm))
            channels = 2 ** (wf + level + 1)
        self.up_path = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up_path.append(UpBlock(conv_num, channels, 2 ** (wf + level), batch_norm))
            channels = 2 ** (wf + level)
        last: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(channels, out_channels, kernel_size=3)]
        if with_tanh:
            last.append(nn.Tanh())
        self.last = nn.Sequential(*last)
        self.multiple = 2**depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        skips = []
        for down_sample, down in zip(self.down_sample, self.down_path):
            skips.append(x)
            x = down(down_sample(x))
        for up, skip in zip(self.up_path, reversed(skips)):
            x = up(x, skip)
        return self.last(x)


def build_scratch_detector(state_dict: dict | None = None, **config) -> ScratchUNet:
    """The official detector (wf 6) or, with `config`, a ScratchUNet of other widths; eval mode.
    `state_dict` may be the checkpoint as stored ({"model_state": {...}}) or the inner dict; loaded strictly."""
    net = ScratchUNet(**config)
    if state_dict is not None:
        if "model_state" in state_dict:
            state_dict = state_dict["model_state"]
        load_official_weights(net, state_dict, "scratch detector")
    return net.eval()
