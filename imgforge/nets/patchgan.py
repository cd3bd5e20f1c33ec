"""The PatchGAN discriminator of junyanz/pytorch-CycleGAN-and-pix2pix (models/networks.py,
NLayerDiscriminator, `--netD basic` with n_layers 3: a 70x70 receptive field). It scores every overlapping
patch of its input as real or fake: the output is a map of logits, not one number. Layer indices follow the
official `self.model` Sequential, so `state_dict()` keys equal an official `latest_net_D.pth`
(`model.0.weight`, `model.2.weight`, ...).

pix2pix conditions it on the input: its input is the input image and the real or generated output side by
side in channels (6 channels); CycleGAN's two discriminators see one image (3 channels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import ModelError
from .pix2pix import official_init
from .registry import Descriptor, Export, Family, check_overrides, construct, parameter_count, register

NORMS = ("batch", "instance", "none")
KERNEL = 4
PADDING = 1
MAX_WIDTH_MULTIPLE = 8  # the official min(2 ** n, 8): widths stop growing at 8 * ndf


@dataclass(frozen=True)
class DiscriminatorOptions:
    """The official options that decide the discriminator's layers (--ndf, --n_layers_D, --norm, input_nc)."""

    input_nc: int = 6
    ndf: int = 64
    n_layers: int = 3
    norm: str = "batch"


def _norm(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


class PatchDiscriminator(nn.Module):
    """conv(stride 2) + LeakyReLU(0.2); then n_layers - 1 times conv(stride 2) + norm + LeakyReLU, doubling
    the width up to 8 * ndf; one more conv + norm + LeakyReLU at stride 1; a final conv to one logit per
    patch. Convolutions before a norm have a bias only with InstanceNorm, as in the official code."""

    def __init__(self, options: DiscriminatorOptions):
        super().__init__()
        if options.norm not in NORMS:
            raise ModelError(f"unknown norm {options.norm!r}: use one of {', '.join(NORMS)}")
        if options.n_layers < 1:
            raise ModelError(f"the discriminator needs at least one layer (n_layers {options.n_layers})")
        self.options = options
        ndf, bias = options.ndf, options.norm == "instance"
        layers: list[nn.Module] = [nn.Conv2d(options.input_nc, ndf, KERNEL, stride=2, padding=PADDING),
                                   nn.LeakyReLU(0.2, True)]
        width = ndf
        for n in range(1, options.n_layers + 1):
            wider = ndf * min(2 ** n, MAX_WIDTH_MULTIPLE)
            stride = 2 if n < options.n_layers else 1
            layers += [nn.Conv2d(width, wider, KERNEL, stride=stride, padding=PADDING, bias=bias),
                       _norm(options.norm, wider), nn.LeakyReLU(0.2, True)]
            width = wider
        layers.append(nn.Conv2d(width, 1, KERNEL, stride=1, padding=PADDING))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def infer_options(state_dict: dict[str, torch.Tensor]) -> DiscriminatorOptions:
    """The options an official discriminator state dict was saved with, read from its keys and shapes."""
    convs = sorted(int(key.split(".")[1]) for key, value in state_dict.items()
                   if key.startswith("model.") and key.endswith(".weight") and value.dim() == 4)
    if not convs or convs[0] != 0:
        raise ModelError("the weights are not a PatchGAN discriminator (no model.0.weight convolution)")
    first = state_dict["model.0.weight"]
    if "model.3.running_mean" in state_dict or "model.3.weight" in state_dict:
        norm = "batch"
    elif "model.2.bias" in state_dict:
        norm = "instance"
    else:
        norm = "none"
    return DiscriminatorOptions(input_nc=first.shape[1], ndf=first.shape[0], n_layers=len(convs) - 2, norm=norm)


def _detect(state_dict: dict) -> bool:
    """model.<i> layers only, every convolution 4x4, the last one giving one channel (a logit per patch)."""
    parts = [key.split(".") for key in state_dict]
    if not parts or not all(len(p) == 3 and p[0] == "model" and p[1].isdigit() for p in parts):
        return False  # a flat Sequential: nested blocks (model.12.conv_block...) are another network
    convs = sorted(((int(key.split(".")[1]), value) for key, value in state_dict.items()
                    if key.endswith(".weight") and isinstance(value, torch.Tensor) and value.dim() == 4),
                   key=lambda item: item[0])
    return (bool(convs) and convs[0][0] == 0 and all(tuple(w.shape[2:]) == (KERNEL, KERNEL) for _, w in convs)
            and convs[-1][1].shape[0] == 1)


def load_discriminator(state_dict: dict, **overrides) -> PatchDiscriminator:
    """A discriminator built from what the weights say, `overrides` checked against them; strict load."""
    found = asdict(infer_options(state_dict))
    options = DiscriminatorOptions(**check_overrides("patchgan", found, overrides))
    net = PatchDiscriminator(options)
    state = {k: v for k, v in state_dict.items() if k != "_metadata"}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"the weights do not fit a PatchGAN discriminator {options}: "
                         f"{' '.join(str(exc).split())[:200]}") from None
    return net.eval()


def describe_discriminator(net: PatchDiscriminator) -> Descriptor:
    options = net.options
    # each stride-2 layer halves the side; the three 4x4 stride-1 convolutions need a map of at least 2
    multiple = 2 ** options.n_layers

    def example_inputs(height: int, width: int) -> tuple[torch.Tensor, ...]:
        return (torch.rand((1, options.input_nc, height, width), generator=torch.Generator().manual_seed(0)) * 2 - 1,)

    io = {"images": "N x C x H x W float32 in [-1, 1] (pix2pix: the input and the real or generated output "
                    "side by side in channels)", "logits": "N x 1 x h x w float32, real/fake logit per patch"}
    axes = {name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in ("images", "logits")}
    export = Export("discriminator", net, example_inputs, ("images",), ("logits",), axes, io, multiple, multiple * 4)
    return Descriptor(
        family="patchgan", task="train", in_channels=options.input_nc, out_channels=1, size_multiple=1,
        min_side=multiple * 4, precisions=("fp32", "bf16", "fp16"), parameters=parameter_count(net),
        hyperparameters=asdict(options), exports=(export,),
        test_time="training only: a map of real/fake logits, one per patch",
    )


def build_discriminator(config: dict) -> PatchDiscriminator:
    """A fresh discriminator for training from DiscriminatorOptions fields, with the official init."""
    return official_init(PatchDiscriminator(construct("patchgan", DiscriminatorOptions, config)))


register(Family(
    "patchgan", "patchgan", "train", "PatchGAN discriminator (pix2pix/CycleGAN netD basic, n_layers_D)",
    detect=_detect, load=load_discriminator, describe=describe_discriminator, build=build_discriminator,
))
