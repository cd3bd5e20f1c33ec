"""The restoration VAEs of "Bringing Old Photos Back to Life": GlobalGenerator_DCDCv2 (Global/models/networks.py)
with separate encode and decode, and the residual block the mapping networks share.

Keys and shapes equal the official VAE_A_quality / VAE_B_quality / VAE_B_scratch `latest_net_G.pth` (no remap).
Norm layers are InstanceNorm2d(affine=False) and hold no state. The layers run channels-last (oneDNN's own
layout), with norms and activations in place and convolutions in bands of rows for large photos, so that at
most about three full-size feature maps exist at once (the official Sequential holds padded copies and, for
the transposed convs, a column buffer several times the output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .registry import Descriptor, Export, Family, check_overrides, construct, fit_config, parameter_count, register

NORM_BAND_BYTES = 2**22  # instance norm reads and rewrites a map in bands of rows of about this size
NORM_EPS = 1e-5


def instance_norm_(x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """InstanceNorm2d(affine=False), then ReLU with `relu`, written back into x. Per image, the statistics are
    gathered band by band of rows (float32, combined exactly), then each band is normalised through a small
    temporary: no full-size copy, and each band stays in cache (x is channels-last in the restoration chain,
    where a band of rows is one contiguous block)."""
    n, c, h, w = x.shape
    rows = max(1, NORM_BAND_BYTES // (c * w * x.element_size()))
    for i in range(n):
        bands = [x[i:i + 1, :, top:top + rows] for top in range(0, h, rows)]
        mean, var = _statistics(bands)
        for band in bands:
            normed = F.batch_norm(band, mean, var, training=False, eps=NORM_EPS)
            band.copy_(normed.relu_() if relu else normed)
    return x


def _statistics(bands: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over all bands (float32), from each band's own statistics
    (batch norm's kernel; a half-precision band is read as float32) combined in float64."""
    counts, means, variances = [], [], []
    for band in bands:
        _, mean, invstd = torch.native_batch_norm(band.float(), None, None, None, None, True, 0.0, NORM_EPS)
        counts.append(band.shape[2] * band.shape[3])
        means.append(mean.double())
        variances.append(invstd.double().pow(-2) - NORM_EPS)
    if len(bands) == 1:
        return means[0].float(), variances[0].float()
    total = sum(counts)
    mean = sum(k * m for k, m in zip(counts, means)) / total
    var = sum(k * (v + (m - mean) ** 2) for k, m, v in zip(counts, means, variances)) / total
    return mean.float(), var.float()


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
    out = torch.empty(n, conv.out_channels, out_h, out_w, dtype=inputs[0].dtype, device=inputs[0].device,
                      memory_format=memory_format(inputs[0]))
    for first in range(0, out_h, band):
        last = min(first + band, out_h)
        # rows of the padded map this band reads, in the unpadded map's coordinates; only the first and the
        # last band reach past the map, so padding the band's own edge pads the map's edge
        top, bottom = first * s - pad, (last - 1) * s - pad + k
        part = [t[:, :, max(top, 0):min(bottom, h)] for t in inputs]
        part = torch.cat(part, 1) if len(part) > 1 else part[0]
        rows = (max(-top, 0), max(bottom - h, 0))
        if mode == "reflect":
            out[:, :, first:last] = F.conv2d(F.pad(part, (pad, pad, *rows), mode="reflect"), conv.weight,
                                             conv.bias, s)
        else:  # zero columns come from the convolution itself: an inner band is read without any copy
            part = F.pad(part, (0, 0, *rows)) if any(rows) else part
            out[:, :, first:last] = F.conv2d(part, conv.weight, conv.bias, s, (0, pad))
    return out


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels-last for a channels-last map (how the restoration networks keep their features: oneDNN's
    native layout, no conversion around each convolution), else the default layout."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


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
                      dtype=x.dtype, device=x.device, memory_format=memory_format(x))
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
        h = instance_norm_(conv2d_banded(self.conv_block[1], x, 1, "reflect"), relu=True)
        h = instance_norm_(conv2d_banded(self.conv_block[5], h, 1, "reflect"))
        return h.add_(x)


def run_sequential(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a Sequential of reflection pads, convs, InstanceNorm2d, ReLU, ResnetBlock and Tanh layers as
    written, channels-last, with padding folded into banded convs, and norm (with the ReLU after it) and
    activations in place (fewer full-size maps, fewer passes over them)."""
    x = x.contiguous(memory_format=torch.channels_last)
    reflect = 0
    layers = list(layers)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.ReflectionPad2d):
            reflect = layer.padding[0]
        elif isinstance(layer, nn.Conv2d):
            x = conv2d_banded(layer, x, reflect, "reflect") if reflect else conv2d_banded(
                layer, x, layer.padding[0], "zeros")
            reflect = 0
        elif isinstance(layer, nn.ConvTranspose2d):
            x = conv_transpose2d_banded(layer, x)
        elif isinstance(layer, nn.InstanceNorm2d):
            x = instance_norm_(x, relu=i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU))
        elif isinstance(layer, nn.ReLU):
            if i == 0 or not isinstance(layers[i - 1], nn.InstanceNorm2d):
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
    from .oldphoto_onnx import SequentialPart

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
        Export("encoder", SequentialPart(net, "encoder"), image, ("image",), ("latent",), axes, io, multiple, 16),
        Export("decoder", SequentialPart(net, "decoder"), latent, ("latent",), ("image",), axes, decoded,
               multiple, 16),
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
