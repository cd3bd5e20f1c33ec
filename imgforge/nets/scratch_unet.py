"""The scratch-detection U-Net of "Bringing Old Photos Back to Life" (Global/detection_models/networks.py,
UNet with depth 4, conv_num 2, wf 6, batch norm, bilinear upsampling, anti-aliased downsampling).

Keys and shapes equal the official `FT_Epoch_latest.pt` (its state dict lies under "model_state").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .oldphoto_blocks import load_official_weights
from .registry import (Descriptor, Export, Family, RunPolicy, check_overrides, construct, parameter_count, register,
                       unwrap)


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


# --- the registry --------------------------------------------------------------------------------------------


def _detector_options(state: dict) -> dict:
    """Constructor options read from the weights (with_tanh has no weights: the official detector has none)."""
    first = state["first.1.weight"]
    levels = {int(key.split(".")[1]) for key in state if key.startswith("down_path.")}
    block = [key for key in state if key.startswith("down_path.0.block.")]
    return {"in_channels": first.shape[1], "out_channels": state["last.1.weight"].shape[0], "depth": len(levels),
            "conv_num": sum(1 for key in block if key.endswith(".weight") and state[key].dim() == 4),
            "wf": int(first.shape[0]).bit_length() - 1, "batch_norm": any("running_mean" in key for key in block)}


def load_detector_weights(state_dict: dict, **overrides) -> ScratchUNet:
    state = unwrap(state_dict, "model_state")
    options = check_overrides("oldphoto_detector", _detector_options(state), overrides)
    return build_scratch_detector(state, **options)


def describe_detector(net: ScratchUNet) -> Descriptor:
    channels = net.first[1].in_channels

    def example_inputs(height: int, width: int) -> tuple[torch.Tensor, ...]:
        return (torch.rand((1, channels, height, width), generator=torch.Generator().manual_seed(0)) * 2 - 1,)

    io = {"input": "N x 1 x H x W float32 in [-1, 1]: grey uint8 / 127.5 - 1, resized to a short side of 256",
          "logits": "N x 1 x H x W float32; scratch where sigmoid(logits) >= 0.4"}
    axes = {name: {0: "batch", 2: "height", 3: "width"} for name in ("input", "logits")}
    hyperparameters = _detector_options(net.state_dict())
    return Descriptor(
        family="oldphoto_detector", task="restore", in_channels=channels, out_channels=net.last[1].out_channels,
        size_multiple=net.multiple, min_side=net.multiple, precisions=("fp32", "bf16", "fp16"),
        parameters=parameter_count(net), hyperparameters=hyperparameters,
        exports=(Export("detector", net, example_inputs, ("input",), ("logits",), axes, io, net.multiple, net.multiple),),
        test_time="eval: running BatchNorm statistics",
    )


register(Family(
    "oldphoto_detector", "oldphoto", "restore", "old-photo scratch-detection U-Net",
    detect=lambda state: "first.1.weight" in unwrap(state, "model_state")
    and "down_path.0.block.1.weight" in unwrap(state, "model_state"),
    load=load_detector_weights, describe=describe_detector,
    build=lambda config: construct("oldphoto_detector", ScratchUNet, config),
    # its thresholded output decides which pixels get repainted: float32 at any requested precision keeps the
    # mask the fp32 one
    policy=RunPolicy(float32=True),
))
