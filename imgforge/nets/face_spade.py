"""The face-enhancement generator of "Bringing Old Photos Back to Life" (Face_Enhancement SPADEGenerator as
test_face.py builds it: norm_G spectralspadesyncbatch3x3, injection_layer all, no_parsing_map).

forward(face: (N, 3, S, S) in [-1, 1]) -> (N, 3, S, S) in [-1, 1], S a multiple of 32. The network starts
from the face resized (plain bilinear) to S/32, and every block is a SPADE residual block whose scale and
shift maps are computed from the face resized to the block's size. The official 18-channel label input is
all zeros and unused with no_parsing_map, so it is not an argument here.

Keys and shapes equal the official `Setting_9_epoch_100/latest_net_G.pth` and `FaceSR_512/latest_net_G.pth`
(no remap): spectral-norm convs keep `weight_orig`, `weight_u`, `weight_v`, and the affine-free
SyncBatchNorm stores plain BatchNorm running statistics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .oldphoto_blocks import load_official_weights
from .registry import Descriptor, Export, Family, RunPolicy, check_overrides, construct, parameter_count, register

SPADE_HIDDEN = 128  # SPADE's nhidden, fixed in the official code
LATENT_DIVISOR = 32  # five x2 upsamplings from the S/32 start


class SpectralNormConv2d(nn.Module):
    """A conv whose weight is weight_orig / sigma with sigma = u . (W v) from the stored u and v, as
    torch.nn.utils.spectral_norm computes it in eval mode (no power iteration at inference)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True):
        super().__init__()
        self.padding = kernel_size // 2
        self.weight_orig = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("weight_u", torch.empty(out_channels))
        self.register_buffer("weight_v", torch.empty(in_channels * kernel_size * kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random weights with u, v close to the top singular vectors (a few power iterations), so that an
        unloaded network behaves like a trained one in scale; loading a checkpoint replaces all of it."""
        nn.init.kaiming_uniform_(self.weight_orig, a=math.sqrt(5))
        matrix = self.weight_orig.detach().flatten(1)
        v = F.normalize(torch.randn(matrix.shape[1]), dim=0)
        for _ in range(3):
            u = F.normalize(matrix @ v, dim=0)
            v = F.normalize(matrix.t() @ u, dim=0)
        self.weight_u.copy_(u)
        self.weight_v.copy_(v)

    def weight(self) -> torch.Tensor:
        sigma = torch.dot(self.weight_u, torch.mv(self.weight_orig.flatten(1), self.weight_v))
        return self.weight_orig / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)


class SPADE(nn.Module):
    """Affine-free BatchNorm (running statistics), then x * (1 + gamma) + beta with gamma, beta computed
    from the face at x's size."""

    def __init__(self, channels: int):
        super().__init__()
        self.param_free_norm = nn.BatchNorm2d(channels, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(3, SPADE_HIDDEN, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(SPADE_HIDDEN, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(SPADE_HIDDEN, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        hidden = self.mlp_shared(face)
        return self.param_free_norm(x) * (1 + self.mlp_gamma(hidden)) + self.mlp_beta(hidden)


class SPADEResnetBlock(nn.Module):
    """shortcut(x) + conv_1(act(norm_1(conv_0(act(norm_0(x)))))); the shortcut is a SPADE-normalised 1x1
    conv when the width changes. LeakyReLU 0.2."""

    def __init__(self, fin: int, fout: int):
        super().__init__()
        middle = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.conv_0 = SpectralNormConv2d(fin, middle, 3)
        self.conv_1 = SpectralNormConv2d(middle, fout, 3)
        self.norm_0 = SPADE(fin)
        self.norm_1 = SPADE(middle)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, 1, bias=False)
            self.norm_s = SPADE(fin)

    def forward(self, x: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, face)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, face), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, face), 0.2))
        return shortcut + dx


class FaceSPADEGenerator(nn.Module):
    """The official generator with width `ngf` (64 in both official checkpoints)."""

    def __init__(self, ngf: int = 64):
        super().__init__()
        self.ngf = ngf
        self.fc = nn.Conv2d(3, 16 * ngf, 3, padding=1)
        self.head_0 = SPADEResnetBlock(16 * ngf, 16 * ngf)
        self.G_middle_0 = SPADEResnetBlock(16 * ngf, 16 * ngf)
        self.G_middle_1 = SPADEResnetBlock(16 * ngf, 16 * ngf)
        self.up_0 = SPADEResnetBlock(16 * ngf, 8 * ngf)
        self.up_1 = SPADEResnetBlock(8 * ngf, 4 * ngf)
        self.up_2 = SPADEResnetBlock(4 * ngf, 2 * ngf)
        self.up_3 = SPADEResnetBlock(2 * ngf, ngf)
        self.conv_img = nn.Conv2d(ngf, 3, 3, padding=1)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        size = face.shape[-1]
        if face.shape[-2] != size or size % LATENT_DIVISOR:
            raise ModelError(f"the face generator needs square faces of a multiple of {LATENT_DIVISOR} pixels, "
                             f"not {face.shape[-1]}x{face.shape[-2]}")
        # Each resolution's copy of the face is the same plain bilinear resize of the input (as the official
        # code recomputes in every SPADE), made once here.
        faces: dict[int, torch.Tensor] = {}

        def face_at(side: int) -> torch.Tensor:
            if side not in faces:
                faces[side] = F.interpolate(face, size=(side, side), mode="bilinear", align_corners=False)
            return faces[side]

        x = self.fc(face_at(size // LATENT_DIVISOR))
        x = self.head_0(x, face_at(x.shape[-1]))
        x = _upsample(x)
        x = self.G_middle_0(x, face_at(x.shape[-1]))
        x = self.G_middle_1(x, face_at(x.shape[-1]))
        for block in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = _upsample(x)
            x = block(x, face_at(x.shape[-1]))
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def is_face_generator(state_dict: dict) -> bool:
    return "fc.weight" in state_dict and "head_0.conv_0.weight_orig" in state_dict and "conv_img.weight" in state_dict


def detect(state_dict: dict) -> dict | None:
    """The constructor options of a face generator state dict ({"ngf": ...}), or None if it is not one."""
    if not is_face_generator(state_dict):
        return None
    fc = state_dict["fc.weight"]
    if fc.shape[1] != 3:
        raise ModelError(f"this face generator reads a {fc.shape[1]}-channel label map (a parsing-map model); "
                         "imgforge runs the official no_parsing_map checkpoints")
    return {"ngf": int(state_dict["conv_img.weight"].shape[1])}


def build_face_generator(state_dict: dict | None = None, **config) -> FaceSPADEGenerator:
    """The official generator (ngf 64), or the width `ngf` read from the weights; eval mode. Every weight
    must be present: a missing one is an error, never a random weight left in place (the official loader
    keeps random weights silently)."""
    if state_dict is not None and not config:
        config = detect(state_dict) or {}
    net = FaceSPADEGenerator(**config)
    if state_dict is not None:
        load_official_weights(net, state_dict, "face generator")
    return net.eval()


def load_face_weights(state_dict: dict, **overrides) -> FaceSPADEGenerator:
    return build_face_generator(state_dict, **check_overrides("face_spade", detect(state_dict), overrides))


def describe_face_generator(net: FaceSPADEGenerator, size: int = 256) -> Descriptor:
    """`size`: the aligned face side the checkpoint was trained for (256 Setting_9_epoch_100, 512 FaceSR_512);
    the export has a dynamic batch and that fixed side."""

    def example_inputs(height: int, width: int) -> tuple[torch.Tensor, ...]:
        return (torch.rand((1, 3, height, width), generator=torch.Generator().manual_seed(0)) * 2 - 1,)

    io = {"face": f"N x 3 x {size} x {size} float32 in [-1, 1]: an aligned face, uint8 / 255, Normalize(0.5, 0.5)",
          "enhanced": "N x 3 x S x S float32 in [-1, 1] (tanh); test_face.py saves ((g + 1) / 2) * 255 + 0.5 "
                      "truncated"}
    axes = {name: {0: "batch"} for name in ("face", "enhanced")}
    return Descriptor(
        family="face_spade", task="restore", in_channels=3, out_channels=3, size_multiple=LATENT_DIVISOR,
        min_side=LATENT_DIVISOR, precisions=("fp32", "bf16", "fp16"), parameters=parameter_count(net),
        hyperparameters={"ngf": net.ngf},
        exports=(Export("face_generator", net, example_inputs, ("face",), ("enhanced",), axes, io, size, size),),
        test_time="eval: running BatchNorm statistics, spectral norm from the stored u, v",
    )


register(Family(
    "face_spade", "face_spade", "restore", "old-photo face enhancement (SPADE generator, no parsing map)",
    detect=is_face_generator, load=load_face_weights, describe=describe_face_generator,
    build=lambda config: construct("face_spade", FaceSPADEGenerator, config),
    policy=RunPolicy(reduced="autocast"),
))
