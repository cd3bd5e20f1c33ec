"""The restoration VAEs of "Bringing Old Photos Back to Life": GlobalGenerator_DCDCv2 (Global/models/networks.py)
with separate encode and decode, and the residual block the mapping networks share.

Keys and shapes equal the official VAE_A_quality / VAE_B_quality / VAE_B_scratch `latest_net_G.pth` (no remap).
Norm layers are InstanceNorm2d(affine=False) and hold no state. For large photos the layers run with norms and
activations in place and convolutions in bands of rows, so that at most about three full-size feature maps
exist at once (the official Sequential holds padded copies and, for the transposed convs, a column buffer
several times the output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError

NORM_SLICE_ELEMENTS = 2**24  # instance norm runs on channel slices of at most this size (64 MB float32)


def instance_norm_(x: torch.Tensor) -> torch.Tensor:
    """InstanceNorm2d(affine=False) written back into x. Channels are independent, so F.instance_norm on
    slices of channels gives the same numbers as on the whole map, with a small temporary instead of a copy."""
    per_slice = max(1, NORM_SLICE_ELEMENTS // (x.shape[2] * x.shape[3]))
    for n in range(x.shape[0]):
        for c in range(0, x.shape[1], per_slice):
            part = x[n:n + 1, c:c + per_slice]
            part.copy_(F.instance_norm(part))
    return x


BAND_ELEMENTS = 2**24  # a conv reads its input in bands of output rows holding at most this many elements


def conv2d_banded(conv: nn.Conv2d, inputs: torch.Tensor | list[torch.Tensor], pad: int, mode: str) -> torch.Tensor:
    """conv(pad(cat(inputs, dim=1))) with `pad` pixels of "reflect" or "zeros" padding on each side (the
    module's own padding is not applied again). Large maps are computed in bands of output rows, so neither
    the padded copy nor the concatenation of the whole map is ever made; each output pixel sums the same terms."""
    inputs = [inputs] if isinstance(inputs, torch.Tensor) else inputs
    n, _, h, w = inputs[0].shape
    channels = sum(t.shape[1] for t in inputs)
    k, s = conv.kernel_size[0], conv.stride[0]
    out_h, out_w = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    band = max(1, (BAND_ELEMENTS // (n * channels * (w + 2 * pad)) - k) // s + 1)
    if band >= out_h:
        whole = torch.cat(inputs, 1) if len(inputs) > 1 else inputs[0]
        if mode == "reflect":
            whole = F.pad(whole, (pad,) * 4, mode="reflect")
        return F.conv2d(whole, conv.weight, conv.bias, s, 0 if mode == "reflect" else pad)
    out = torch.empty(n, conv.out_channels, out_h, out_w, dtype=inputs[0].dtype, device=inputs[0].device)
    for first in range(0, out_h, band):
        last = min(first + band, out_h)
        # rows of the padded map this band reads, in the unpadded map's coordinates
        rows = torch.arange(first * s - pad, (last - 1) * s - pad + k, device=inputs[0].device)
        if mode == "reflect":
            rows = rows.abs()
            rows = torch.where(rows > h - 1, 2 * (h - 1) - rows, rows)
            part = torch.cat([t.index_select(2, rows) for t in inputs], 1)
            part = F.pad(part, (pad, pad, 0, 0), mode="reflect")
        else:
            top, bottom = int(rows[0]), int(rows[-1]) + 1
            part = torch.cat([t[:, :, max(top, 0):min(bottom, h)] for t in inputs], 1)
            part = F.pad(part, (pad, pad, max(-top, 0), max(bottom - h, 0)))
        out[:, :, first:last] = F.conv2d(part, conv.weight, conv.bias, s)
    return out


def conv_transpose2d_banded(conv: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for a transposed conv without output padding, computed in bands of output rows: the CPU
    kernel's column buffer for a whole photo-size map is several times the map (about 9 GB at 4000x3000)."""
    n, _, h, w = x.shape
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    out_h = (h - 1) * s - 2 * p + k
    band = max(s, BAND_ELEMENTS // (n * conv.out_channels * w * s) // s * s)
    if band >= out_h or conv.output_padding[0]:
        return conv(x)
    out = torch.empty(n, conv.out_channels, out_h, (w - 1) * s - 2 * conv.padding[1] + k,
                      dtype=x.dtype, device=x.device)
    for first in range(0, out_h, band):
        last = min(first + band, out_h)
        # input rows that reach output rows [first, last): row i covers uncropped rows i*s .. i*s + k - 1
        top = max(0, -(-(first + p - k + 1) // s))
        bottom = min(h - 1, (last + p - 1) // s)
        part = F.conv_transpose2d(x[:, :, top:bottom + 1], conv.weight, conv.bias, s, (0, conv.padding[1]))
        offset = first + p - top * s
        out[:, :, first:last] = part[:, :, offset:offset + last - first]
    return out


class ResnetBlock(nn.Module):
    """x + (reflect pad 1, 3x3 conv, instance norm, ReLU, reflect pad 1, 3x3 conv, instance norm)(x).
    The Sequential keeps the official module indices (conv_block.1 and conv_block.5 hold the weights)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3), nn.InstanceNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3), nn.InstanceNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = instance_norm_(conv2d_banded(self.conv_block[1], x, 1, "reflect")).relu_()
        h = instance_norm_(conv2d_banded(self.conv_block[5], h, 1, "reflect"))
        return h.add_(x)


def run_sequential(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a Sequential of reflection pads, convs, InstanceNorm2d, ReLU, ResnetBlock and Tanh layers as
    written, with padding folded into banded convs and norm/activations in place (fewer full-size maps)."""
    reflect = 0
    for layer in layers:
        if isinstance(layer, nn.ReflectionPad2d):
            reflect = layer.padding[0]
        elif isinstance(layer, nn.Conv2d):
            x = conv2d_banded(layer, x, reflect, "reflect") if reflect else conv2d_banded(
                layer, x, layer.padding[0], "zeros")
            reflect = 0
        elif isinstance(layer, nn.ConvTranspose2d):
            x = conv_transpose2d_banded(layer, x)
        elif isinstance(layer, nn.InstanceNorm2d):
            x = instance_norm_(x)
        elif isinstance(layer, nn.ReLU):
            x = x.relu_()
        elif isinstance(layer, nn.Tanh):
            x = x.tanh_()
        else:
            x = layer(x)
    return x


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

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return run_sequential(self.encoder, x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return run_sequential(self.decoder, z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def load_official_weights(net: nn.Module, state_dict: dict, what: str) -> None:
    """load_state_dict(strict=True); a mismatch becomes a one-line ModelError naming a few offending keys."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state_dict)
                         if tuple(expected[k].shape) != tuple(getattr(state_dict[k], "shape", ())))
    problems = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
                if keys]
    if problems:
        raise ModelError(f"the {what} weights do not fit the network ({'; '.join(problems)})")
    net.load_state_dict(state_dict, strict=True)


def build_vae(state_dict: dict | None = None, **config) -> GlobalGeneratorDCDCv2:
    """The official VAE (ngf 64, k_size 4, n_downsampling 3, mc 64, start_r 1, spatio_size 64) or, with
    `config`, other sizes; eval mode. The checkpoint keys load unchanged (strict)."""
    net = GlobalGeneratorDCDCv2(**config)
    if state_dict is not None:
        load_official_weights(net, state_dict, "VAE")
    return net.eval()
