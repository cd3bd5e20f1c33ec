"""The building blocks the old-photo networks share (VAE, mapping, their ONNX forms, the non-local attention;
the detector and the face generator load their weights through load_official_weights): memory-bounded
convolutions and instance norm, the residual block, and a strict load that names what does not fit.

The layers run channels-last (oneDNN's own layout), with norms and activations in place and convolutions in
bands of rows for large photos, so that at most about three full-size feature maps exist at once (the official
Sequential holds padded copies and, for the transposed convs, a column buffer several times the output).
A leaf among the nets: it imports no other network module.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError

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


def run_sequential(layers: nn.Sequential, x: torch.Tensor,
                   on_progress: Callable[[float], None] | None = None) -> torch.Tensor:
    """Run a Sequential of reflection pads, convs, InstanceNorm2d, ReLU, ResnetBlock and Tanh layers as
    written, channels-last, with padding folded into banded convs, and norm (with the ReLU after it) and
    activations in place (fewer full-size maps, fewer passes over them). `on_progress(fraction)`, if given,
    is called after each layer with the share of the multiply-adds done (a decoder's last layers, at full
    size, are most of its time)."""
    x = x.contiguous(memory_format=torch.channels_last)
    reflect = 0
    layers = list(layers)
    work = layer_work(layers, x.shape[1:]) if on_progress is not None else []
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
        if on_progress is not None and work[i]:
            on_progress(sum(work[:i + 1]) / sum(work))
    return x


def layer_work(layers: list[nn.Module], shape: tuple[int, int, int]) -> list[float]:
    """Multiply-adds of each layer of a run_sequential chain on a (C, H, W) input; 0 for the layers that do
    none (pads, norms, activations: a few passes over a map, small beside a convolution's)."""
    _, height, width = shape
    reflect, work = 0, []
    for layer in layers:
        cost = 0.0
        if isinstance(layer, nn.ReflectionPad2d):
            reflect = layer.padding[0]
        elif isinstance(layer, nn.Conv2d):
            k, s, pad = layer.kernel_size[0], layer.stride[0], reflect or layer.padding[0]
            height, width = (height + 2 * pad - k) // s + 1, (width + 2 * pad - k) // s + 1
            cost = height * width * layer.in_channels * layer.out_channels * k * k
            reflect = 0
        elif isinstance(layer, nn.ConvTranspose2d):
            k, s, p = layer.kernel_size[0], layer.stride[0], layer.padding[0]
            cost = height * width * layer.in_channels * layer.out_channels * k * k
            extra = layer.output_padding[0]
            height, width = (height - 1) * s - 2 * p + k + extra, (width - 1) * s - 2 * p + k + extra
        elif isinstance(layer, ResnetBlock):
            conv = layer.conv_block[1]
            cost = 2 * height * width * conv.in_channels * conv.out_channels * 9
        work.append(float(cost))
    return work


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
