"""The DDPM U-Net (Ho et al. 2020) as diffusers' UNet2DModel stores it: built from a checkpoint's config.json,
with the same state_dict keys (google/ddpm-cifar10-32: 328 keys; the 256px models: 450 keys).

Only the configurations the DDPM checkpoints use are built (positional time embedding, DownBlock2D /
AttnDownBlock2D / UpBlock2D / AttnUpBlock2D, conv resampling, SiLU); anything else is refused with a ModelError
rather than built wrongly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .registry import Descriptor, Export, Family, parameter_count, register

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
# Bookkeeping diffusers writes into config.json; it does not change the network.
_IGNORED_FIELDS = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"}
# Legacy (2022) attention parameter names -> current ones; the Hub files converted then still use them.
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEGACY_KEY = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")


@dataclass(frozen=True)
class UNetConfig:
    """The UNet2DModel config fields imgforge understands, with diffusers' defaults, so that a config.json means
    what it means to diffusers. attention_head_dim: null is one head over all channels (the DDPM paper; the
    google/ddpm-* configs say null); absent is diffusers' default of 8 channels per head."""

    sample_size: int | None = None
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    freq_shift: int = 0
    flip_sin_to_cos: bool = True
    down_block_types: tuple = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2D"
    up_block_types: tuple = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    block_out_channels: tuple = (224, 448, 672, 896)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1.0
    downsample_padding: int = 1
    downsample_type: str = "conv"
    upsample_type: str = "conv"
    dropout: float = 0.0
    act_fn: str = "silu"
    attention_head_dim: int | None = 8
    norm_num_groups: int = 32
    attn_norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    class_embed_type: str | None = None
    num_class_embeds: int | None = None
    num_train_timesteps: int | None = None

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config.json") -> "UNetConfig":
        """Validated config; ModelError naming the first field imgforge cannot build."""
        if not isinstance(raw, dict):
            raise ModelError(f"{where}: a U-Net config must be a JSON object")
        class_name = raw.get("_class_name", "UNet2DModel")
        if class_name != "UNet2DModel":
            raise ModelError(f"{where}: model class {class_name!r} is not supported (only UNet2DModel, as DDPM uses)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known - _IGNORED_FIELDS)
        if unknown:
            raise ModelError(f"{where}: unknown U-Net config field(s) {', '.join(unknown)}")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in known}
        config = cls(**values)
        config._check(where)
        return config

    def _check(self, where: str) -> None:
        def refuse(field: str, allowed: str) -> None:
            raise ModelError(f"{where}: {field}={getattr(self, field)!r} is not supported (imgforge builds {allowed})")

        if self.time_embedding_type != "positional":
            refuse("time_embedding_type", "'positional'")
        if self.mid_block_type != "UNetMidBlock2D":
            refuse("mid_block_type", "'UNetMidBlock2D'")
        if self.downsample_type != "conv":
            refuse("downsample_type", "'conv'")
        if self.upsample_type != "conv":
            refuse("upsample_type", "'conv'")
        if self.act_fn not in ("silu", "swish"):
            refuse("act_fn", "'silu'")
        if self.resnet_time_scale_shift != "default":
            refuse("resnet_time_scale_shift", "'default'")
        if self.class_embed_type is not None or self.num_class_embeds is not None:
            raise ModelError(f"{where}: class-conditional U-Nets are not supported (class_embed_type/num_class_embeds)")
        for kind in self.down_block_types:
            if kind not in DOWN_BLOCKS:
                raise ModelError(f"{where}: down block type {kind!r} is not supported (use {', '.join(DOWN_BLOCKS)})")
        for kind in self.up_block_types:
            if kind not in UP_BLOCKS:
                raise ModelError(f"{where}: up block type {kind!r} is not supported (use {', '.join(UP_BLOCKS)})")
        channels = self.block_out_channels
        if not channels or len(self.down_block_types) != len(channels) or len(self.up_block_types) != len(channels):
            raise ModelError(f"{where}: block_out_channels, down_block_types and up_block_types differ in length")
        for width in channels:
            if width % self.norm_num_groups or width % (self.attn_norm_num_groups or 1):
                raise ModelError(f"{where}: block_out_channels {list(channels)} not divisible by the norm groups")
            if self.attention_head_dim and width % self.attention_head_dim:
                raise ModelError(f"{where}: attention_head_dim {self.attention_head_dim} does not divide {width}")
        if self.layers_per_block < 1 or self.downsample_padding not in (0, 1):
            raise ModelError(f"{where}: layers_per_block must be >= 1 and downsample_padding 0 or 1")


def timestep_embedding(timesteps: torch.Tensor, dim: int, *, flip_sin_to_cos: bool, freq_shift: float) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, [B] -> [B, dim] float32 (diffusers' get_timestep_embedding)."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    frequencies = torch.exp(exponent / (half - freq_shift))
    angles = timesteps[:, None].float() * frequencies[None, :]
    sin, cos = torch.sin(angles), torch.cos(angles)
    embedding = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    return F.pad(embedding, (0, 1)) if dim % 2 else embedding


def norm_silu(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return F.silu(F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps), inplace=True)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_features: int, width: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, width)
        self.linear_2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, groups: int, eps: float, output_scale: float = 1.0,
                 dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout  # before conv2, in training only (the DDPM recipe trains with 0.1)
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None
        self.output_scale = output_scale

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        """`temb_act` is SiLU(time embedding), shared by every block."""
        h = self.conv1(norm_silu(self.norm1, x))
        h = h + self.time_emb_proj(temb_act)[:, :, None, None]
        h = self.conv2(F.dropout(norm_silu(self.norm2, h), self.dropout, self.training))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = shortcut + h
        return out if self.output_scale == 1 else out / self.output_scale


class SelfAttention(nn.Module):
    """Spatial self-attention with a residual (diffusers' Attention as UNet2DModel builds it)."""

    def __init__(self, channels: int, head_dim: int | None, groups: int, eps: float, output_scale: float = 1.0):
        super().__init__()
        self.heads = channels // head_dim if head_dim else 1
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])
        self.output_scale = output_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)

        q, k, v = (split_heads(proj(tokens)) for proj in (self.to_q, self.to_k, self.to_v))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        out = self.to_out[0](attended).transpose(1, 2).reshape(b, c, height, width)
        out = out + x
        return out if self.output_scale == 1 else out / self.output_scale


class Downsample(nn.Module):
    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv.padding == (0, 0):  # the TF original pads right/bottom only
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    def __init__(self, in_ch, out_ch, temb_ch, layers, attention, downsample, config: UNetConfig):
        super().__init__()
        groups, eps = config.norm_num_groups, config.norm_eps
        if attention:
            self.attentions = nn.ModuleList(
                SelfAttention(out_ch, config.attention_head_dim, groups, eps) for _ in range(layers)
            )
        self.resnets = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, temb_ch, groups, eps, dropout=config.dropout)
            for i in range(layers)
        )
        if downsample:
            self.downsamplers = nn.ModuleList([Downsample(out_ch, config.downsample_padding)])

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        attentions = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb_act)
            if attentions is not None:
                x = attentions[i](x)
            skips.append(x)
        if hasattr(self, "downsamplers"):
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    def __init__(self, in_ch, prev_ch, out_ch, temb_ch, layers, attention, upsample, config: UNetConfig):
        super().__init__()
        groups, eps = config.norm_num_groups, config.norm_eps
        if attention:
            self.attentions = nn.ModuleList(
                SelfAttention(out_ch, config.attention_head_dim, groups, eps) for _ in range(layers)
            )
        resnets = []
        for i in range(layers):
            skip_ch = in_ch if i == layers - 1 else out_ch
            resnets.append(ResnetBlock((prev_ch if i == 0 else out_ch) + skip_ch, out_ch, temb_ch, groups, eps,
                                       dropout=config.dropout))
        self.resnets = nn.ModuleList(resnets)
        if upsample:
            self.upsamplers = nn.ModuleList([Upsample(out_ch)])

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], temb_act: torch.Tensor) -> torch.Tensor:
        attentions = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb_act)
            if attentions is not None:
                x = attentions[i](x)
        if hasattr(self, "upsamplers"):
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    def __init__(self, channels: int, temb_ch: int, config: UNetConfig):
        super().__init__()
        groups, eps, scale = config.norm_num_groups, config.norm_eps, config.mid_block_scale_factor
        if config.add_attention:
            self.attentions = nn.ModuleList(
                [SelfAttention(channels, config.attention_head_dim, config.attn_norm_num_groups or groups, eps, scale)]
            )
        self.resnets = nn.ModuleList(ResnetBlock(channels, channels, temb_ch, groups, eps, scale, config.dropout)
                                     for _ in range(2))

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb_act)
        if hasattr(self, "attentions"):
            x = self.attentions[0](x)
        return self.resnets[1](x, temb_act)


class DDPMUNet(nn.Module):
    """eps = unet(x, t): x [B, C, H, W] float, t a tensor of shape [], [1] or [B] (integer values; any dtype),
    or a Python int."""

    def __init__(self, config: UNetConfig | dict):
        super().__init__()
        config = config if isinstance(config, UNetConfig) else UNetConfig.from_dict(config)
        self.config = config
        channels = list(config.block_out_channels)
        temb_ch = config.time_embedding_dim or channels[0] * 4
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], temb_ch)
        last = len(channels) - 1
        self.down_blocks = nn.ModuleList()
        out_ch = channels[0]
        for i, kind in enumerate(config.down_block_types):
            in_ch, out_ch = out_ch, channels[i]
            self.down_blocks.append(
                DownBlock(in_ch, out_ch, temb_ch, config.layers_per_block, kind == "AttnDownBlock2D", i < last, config)
            )
        self.mid_block = MidBlock(channels[-1], temb_ch, config)
        reversed_channels = channels[::-1]
        self.up_blocks = nn.ModuleList()
        out_ch = reversed_channels[0]
        for i, kind in enumerate(config.up_block_types):
            prev_ch, out_ch = out_ch, reversed_channels[i]
            in_ch = reversed_channels[min(i + 1, last)]
            self.up_blocks.append(
                UpBlock(in_ch, prev_ch, out_ch, temb_ch, config.layers_per_block + 1, kind == "AttnUpBlock2D",
                        i < last, config)
            )
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, channels[0], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(channels[0], config.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | int) -> torch.Tensor:
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], dtype=torch.long, device=x.device)
        timesteps = timesteps.reshape(-1).expand(x.shape[0])  # one shared timestep, or one per image
        if self.config.center_input_sample:
            x = 2 * x - 1.0
        embedding = timestep_embedding(
            timesteps, self.config.block_out_channels[0],
            flip_sin_to_cos=self.config.flip_sin_to_cos, freq_shift=self.config.freq_shift,
        ).to(self.conv_in.weight.dtype)
        temb_act = F.silu(self.time_embedding(embedding))
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb_act)
            skips += block_skips
        x = self.mid_block(x, temb_act)
        for block in self.up_blocks:
            x = block(x, skips, temb_act)
        return self.conv_out(norm_silu(self.conv_norm_out, x))


def remap_legacy_attention(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename 2022-style attention keys (`...attentions.N.query.weight`) to the current ones (`to_q`, ...)."""
    renamed = {}
    for key, value in state.items():
        match = _LEGACY_KEY.match(key)
        if match:
            key = f"{match.group(1)}.{_LEGACY_ATTENTION[match.group(2)]}.{match.group(3)}"
        renamed[key] = value
    return renamed


def load_unet(config: dict | UNetConfig, state: dict[str, torch.Tensor], where: str = "the checkpoint") -> DDPMUNet:
    """A U-Net in eval mode with `state` loaded strictly (legacy attention names accepted)."""
    unet = DDPMUNet(config)
    state = remap_legacy_attention(state)
    expected = unet.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ModelError(f"{where} does not fit the U-Net config: {', '.join(parts)} keys")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise ModelError(
                f"{where} does not fit the U-Net config: {key} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )
    unet.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return unet.eval()


# --- the registry: a bare diffusers U-Net state dict is enough ---------------------------------------------

# What google/ddpm-* config.json files say about the fields the weights cannot show (the DDPM paper's choices).
DDPM_DEFAULTS = {"flip_sin_to_cos": False, "freq_shift": 1, "norm_eps": 1e-6, "downsample_padding": 0,
                 "attention_head_dim": None, "norm_num_groups": 32}
_BLOCK_KEY = re.compile(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.")


def config_from_weights(state: dict[str, torch.Tensor]) -> dict:
    """The UNet2DModel config a state dict implies: widths, blocks, attention placement and channels from the
    keys and shapes; the rest (see DDPM_DEFAULTS) as the DDPM checkpoints have it; sample_size unknown."""
    blocks: dict[tuple[str, int], set] = {}
    layers = set()
    for key in state:
        if match := _BLOCK_KEY.match(key):
            side, index, part, layer = match.group(1), int(match.group(2)), match.group(3), int(match.group(4))
            blocks.setdefault((side, index), set()).add(part)
            if side == "down" and part == "resnets":
                layers.add(layer)
    count = 1 + max(index for side, index in blocks if side == "down")
    widths = [state[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(count)]
    embedding = state["time_embedding.linear_1.weight"].shape[0]
    return {
        **DDPM_DEFAULTS,
        "in_channels": state["conv_in.weight"].shape[1],
        "out_channels": state["conv_out.weight"].shape[0],
        "block_out_channels": widths,
        "layers_per_block": len(layers),
        "down_block_types": ["AttnDownBlock2D" if "attentions" in blocks.get(("down", i), ()) else "DownBlock2D"
                             for i in range(count)],
        "up_block_types": ["AttnUpBlock2D" if "attentions" in blocks.get(("up", i), ()) else "UpBlock2D"
                           for i in range(count)],
        "add_attention": any(key.startswith("mid_block.attentions.") for key in state),
        "time_embedding_dim": None if embedding == widths[0] * 4 else embedding,
    }


def load_unet_weights(state: dict[str, torch.Tensor], config: dict | None = None, **overrides) -> DDPMUNet:
    """`config` (a config.json) is authoritative where given; without it the config is read from the weights.
    `overrides` replace single fields (e.g. sample_size, norm_num_groups)."""
    base = dict(config) if config is not None else config_from_weights(remap_legacy_attention(state))
    base.update({k: v for k, v in overrides.items() if v is not None})
    return load_unet(base, state, where="the U-Net weights")


def build_unet(config: dict) -> DDPMUNet:
    """A fresh U-Net from a diffusers config.json dict (or the Descriptor's hyperparameters), PyTorch's
    default initialisation as diffusers' UNet2DModel has it."""
    if not isinstance(config, dict):
        raise ModelError(f"a ddpm_unet config must be a dict (a config.json), not {type(config).__name__}")
    return DDPMUNet(UNetConfig.from_dict(config, where="the U-Net config"))


def describe_unet(net: DDPMUNet) -> Descriptor:
    config = net.config
    multiple = 2 ** (len(config.block_out_channels) - 1)

    def example_inputs(height: int, width: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        return torch.randn((1, config.in_channels, height, width), generator=generator), torch.tensor([500.0])

    io = {"sample": "N x C x H x W float32, the noisy image x_t (data scaled to [-1, 1])",
          "timestep": "N float32, integer-valued t in [0, num_train_timesteps)",
          "eps": "N x C x H x W float32, the predicted noise"}
    axes = {"sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"},
            "eps": {0: "batch", 2: "height", 3: "width"}}
    export = Export("unet", net, example_inputs, ("sample", "timestep"), ("eps",), axes, io, multiple, multiple)
    hyperparameters = {f.name: getattr(config, f.name) for f in fields(config)}
    return Descriptor(
        family="ddpm_unet", task="sample", in_channels=config.in_channels, out_channels=config.out_channels,
        size_multiple=multiple, min_side=multiple, precisions=("fp32", "bf16", "fp16"),
        parameters=parameter_count(net), hyperparameters=hyperparameters, exports=(export,),
        test_time="noise prediction eps(x_t, t); the sampler runs outside the graph",
    )


register(Family(
    "ddpm_unet", "ddpm_unet", "sample", "DDPM noise-prediction U-Net (diffusers UNet2DModel)",
    detect=lambda state: "conv_in.weight" in state and "time_embedding.linear_1.weight" in state,
    load=load_unet_weights, describe=describe_unet, build=build_unet,
))
