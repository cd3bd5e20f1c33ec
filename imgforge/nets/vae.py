"""The restoration VAEs of "Bringing Old Photos Back to Life": GlobalGenerator_DCDCv2 (Global/models/networks.py)
with separate encode and decode.

Keys and shapes equal the official VAE_A_quality / VAE_B_quality / VAE_B_scratch `latest_net_G.pth` (no remap).
Norm layers are InstanceNorm2d(affine=False) and hold no state. The memory-bounded layers it runs are in
oldphoto_blocks.py.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import ModelError
from .oldphoto_blocks import ResnetBlock, load_official_weights, run_sequential
from .oldphoto_onnx import SequentialPart
from .registry import Descriptor, Export, Family, check_overrides, construct, fit_config, parameter_count, register


class GlobalGeneratorDCDCv2(nn.Module):
    """encode(x: (N, 3, H, W) in [-1, 1]) -> latent (N, min(ngf*2**(n_downsampling-1), mc), H/4, W/4) for the
    official configuration; decode(latent) -> (N, 3, H, W) in [-1, 1]. H, W multiples of 4.
    Arguments follow the official constructor (k_size, n_downsampling) and its options (mc, start_r,
    spatio_size, feat_dim); the official checkpoints use the defaults."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, k_size: int = 4,
                 n_downsampling: int = 3, mc: int = 64, start_r: int = 1, spatio_size: int = 64,
                 feat_dim: int = -1):
        super().__init__()

        def width(factor: float) -> int:
            return min(int(ngf * factor), mc)

        def down(factor: int) -> list[nn.Module]:
            return [nn.Conv2d(width(factor), width(factor * 2), kernel_size=k_size, stride=2, padding=1),
                    nn.InstanceNorm2d(width(factor * 2)), nn.ReLU(True)]

        def up(factor: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(width(factor), width(factor / 2), kernel_size=k_size, stride=2, padding=1,
                                       output_padding=0 if k_size == 4 else 1),
                    nn.InstanceNorm2d(width(factor / 2)), nn.ReLU(True)]

        enc: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, width(1), kernel_size=7),
                                nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        for i in range(start_r):
            enc += down(2**i)
        for i in range(start_r, n_downsampling - 1):
            enc += down(2**i) + [ResnetBlock(width(2 ** (i + 1))), ResnetBlock(width(2 ** (i + 1)))]
        deepest = 2 ** (n_downsampling - 1)
        if spatio_size == 32:
            enc += down(deepest)
        if spatio_size == 64:
            enc.append(ResnetBlock(width(deepest * 2)))
        enc.append(ResnetBlock(width(deepest * 2)))
        if feat_dim > 0:
            enc.append(nn.Conv2d(width(deepest * 2), feat_dim, 1, 1))
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = []
        if feat_dim > 0:
            dec.append(nn.Conv2d(feat_dim, width(deepest * 2), 1, 1))
        dec.append(ResnetBlock(width(2**n_downsampling)))
        if spatio_size == 32:
            dec += up(2**n_downsampling)
        if spatio_size == 64:
            dec.append(ResnetBlock(width(2**n_downsampling)))
        for i in range(1, n_downsampling - start_r):
            factor = 2 ** (n_downsampling - i)
            dec += [ResnetBlock(width(factor)), ResnetBlock(width(factor))] + up(factor)
        for i in range(n_downsampling - start_r, n_downsampling):
            dec += up(2 ** (n_downsampling - i))
        dec += [nn.ReflectionPad2d(3), nn.Conv2d(width(1), output_nc, kernel_size=7), nn.Tanh()]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor, on_progress: Callable[[float], None] | None = None) -> torch.Tensor:
        """`on_progress(fraction)`: called after each layer (see run_sequential)."""
        return run_sequential(self.encoder, x, on_progress)

    def decode(self, z: torch.Tensor, on_progress: Callable[[float], None] | None = None) -> torch.Tensor:
        """`on_progress(fraction)`: called after each layer (see run_sequential)."""
        return run_sequential(self.decoder, z, on_progress)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def build_vae(state_dict: dict | None = None, **config) -> GlobalGeneratorDCDCv2:
    """The official VAE (ngf 64, k_size 4, n_downsampling 3, mc 64, start_r 1, spatio_size 64) or, with
    `config`, other sizes; eval mode. The checkpoint keys load unchanged (strict)."""
    net = GlobalGeneratorDCDCv2(**config)
    if state_dict is not None:
        load_official_weights(net, state_dict, "VAE")
    return net.eval()


# --- the registry --------------------------------------------------------------------------------------------


def _vae_candidates(state: dict):
    """Constructor options to try against the weights: widths, kernel and channels read directly, the layout
    (n_downsampling, start_r, spatio_size) searched, the official one (3, 1, 64) first."""
    first, last = state["encoder.1.weight"], state[max((k for k in state if k.startswith("decoder.")
                                                        and k.endswith(".weight") and state[k].dim() == 4),
                                                       key=lambda k: int(k.split(".")[1]))]
    convs = [v for k, v in state.items() if k.startswith("encoder.") and v.dim() == 4]
    fixed = {"input_nc": first.shape[1], "output_nc": last.shape[0], "ngf": first.shape[0],
             "mc": max(v.shape[0] for v in convs), "k_size": state["encoder.4.weight"].shape[-1]}
    feat = state.get("decoder.0.weight")
    fixed["feat_dim"] = feat.shape[1] if feat is not None and feat.shape[-1] == 1 else -1
    layouts = [(3, 1, 64)] + [(n, r, s) for n in range(1, 6) for r in range(0, n + 1) for s in (64, 32, 0)]
    for n, r, s in layouts:
        yield {**fixed, "n_downsampling": n, "start_r": r, "spatio_size": s}


def load_vae_weights(state_dict: dict, **overrides) -> GlobalGeneratorDCDCv2:
    found = fit_config(state_dict, GlobalGeneratorDCDCv2, _vae_candidates(state_dict))
    if found is None:
        raise ModelError("the weights look like an old-photo VAE but fit no GlobalGenerator_DCDCv2 layout")
    return build_vae(state_dict, **check_overrides("oldphoto_vae", found, overrides))


def describe_vae(net: GlobalGeneratorDCDCv2) -> Descriptor:
    found = fit_config(net.state_dict(), GlobalGeneratorDCDCv2, _vae_candidates(net.state_dict())) or {}
    image_channels, latent_channels = net.encoder[1].in_channels, net.decoder[0].conv_block[1].in_channels
    downs = found.get("start_r", 1) + max(0, found.get("n_downsampling", 3) - 1 - found.get("start_r", 1))
    multiple = 2 ** (downs + (found.get("spatio_size") == 32))

    def image(height: int, width: int) -> tuple[torch.Tensor, ...]:
        return (torch.rand((1, image_channels, height, width), generator=torch.Generator().manual_seed(0)) * 2 - 1,)

    def latent(height: int, width: int) -> tuple[torch.Tensor, ...]:
        shape = (1, latent_channels, height // multiple, width // multiple)
        return (torch.randn(shape, generator=torch.Generator().manual_seed(0)),)

    axes = {name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in ("image", "latent")}
    io = {"image": "N x 3 x H x W float32 in [-1, 1]: uint8 / 127.5 - 1",
          "latent": f"N x C x H/{multiple} x W/{multiple}, the latent"}
    decoded = {"image": f"N x 3 x H x W float32 in [-1, 1] (tanh); the official save_image(normalize=True) "
                        "stretches min..max to 0..255", "latent": io["latent"]}
    exports = (
        Export("encoder", SequentialPart(net, "encoder"), image, ("image",), ("latent",), axes, io, multiple, 16,
               method="encode"),
        Export("decoder", SequentialPart(net, "decoder"), latent, ("latent",), ("image",), axes, decoded,
               multiple, 16, method="decode"),
    )
    return Descriptor(
        family="oldphoto_vae", task="restore", in_channels=image_channels, out_channels=net.decoder[-2].out_channels,
        size_multiple=multiple, min_side=16, precisions=("fp32", "bf16", "fp16"), parameters=parameter_count(net),
        hyperparameters=found, exports=exports, test_time="instance norm (no state)",
    )


register(Family(
    "oldphoto_vae", "oldphoto", "restore", "old-photo VAE (GlobalGenerator_DCDCv2: encoder and decoder)",
    detect=lambda state: "encoder.1.weight" in state and any(key.startswith("decoder.") for key in state),
    load=load_vae_weights, describe=describe_vae,
    build=lambda config: construct("oldphoto_vae", GlobalGeneratorDCDCv2, config),
))
