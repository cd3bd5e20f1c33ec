"""The pix2pix / CycleGAN generators of junyanz/pytorch-CycleGAN-and-pix2pix (models/networks.py):
UnetGenerator (unet_128, unet_256) and ResnetGenerator (resnet_6blocks, resnet_9blocks), norm batch /
instance / none, with or without dropout. Layer order and indices follow the official modules, so that
`state_dict()` keys equal an official `latest_net_G.pth`.

Two test-time switches the official code does not have, both off by default:
- `ImageBatchNorm.per_image`: normalise every image with its own per-channel statistics (what the official
  test.py does without --eval, where batches hold one image), so that batching never changes a result;
- dropout masks are arguments of `forward`, so that a caller can seed them per image (and an ONNX graph can
  take them as inputs). Without masks the dropout layers are the identity, as in eval().
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .registry import Descriptor, Export, Family, RunPolicy, construct, parameter_count, register

NETGS = ("unet_128", "unet_256", "resnet_6blocks", "resnet_9blocks")
NORMS = ("batch", "instance", "none")
DROPOUT_P = 0.5  # the official nn.Dropout(0.5)
_UNET_DOWNS = {"unet_128": 7, "unet_256": 8}
_RESNET_BLOCKS = {"resnet_6blocks": 6, "resnet_9blocks": 9}


@dataclass(frozen=True)
class GeneratorOptions:
    """The official options that decide a generator's layers (--netG, --norm, --ngf, --no_dropout,
    --input_nc, --output_nc)."""

    netG: str
    norm: str = "batch"
    ngf: int = 64
    dropout: bool = False
    input_nc: int = 3
    output_nc: int = 3

    def describe(self) -> str:
        return (f"{self.netG}, norm {self.norm}, ngf {self.ngf}, {'with' if self.dropout else 'no'} dropout, "
                f"{self.input_nc}->{self.output_nc} channels")


def normalise_per_image(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                        eps: float) -> torch.Tensor:
    """F.instance_norm's arithmetic (per image and channel, biased variance, then the affine weight and bias),
    computed as train-mode batch norm on one image at a time: that kernel works on channels-last tensors in
    place, where F.instance_norm copies to NCHW and back (4-5x slower per layer on a CPU, measured). The ONNX
    export gets plain reductions instead, which trace for any batch size."""
    if torch.onnx.is_in_onnx_export():
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        scale = torch.rsqrt(var + eps)
        if weight is not None:
            scale = scale * weight.view(1, -1, 1, 1)
        shift = -mean * scale
        if bias is not None:
            shift = shift + bias.view(1, -1, 1, 1)
        return x * scale + shift
    images = [F.batch_norm(image, None, None, weight, bias, True, 0.0, eps) for image in x.split(1)]
    return images[0] if len(images) == 1 else torch.cat(images)


class ImageInstanceNorm(nn.InstanceNorm2d):
    """The official InstanceNorm2d(affine=False, track_running_stats=False), computed layout-friendly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalise_per_image(x, None, None, self.eps)


class ImageBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d (same parameters and buffers) that, with `per_image` set, normalises each image of the
    batch with its own mean and biased variance, then applies the affine weight and bias: the official
    train-mode BatchNorm on a batch of one, without updating the running statistics."""

    per_image = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_image:
            return normalise_per_image(x, self.weight, self.bias, self.eps)
        return super().forward(x)


class MaskedDropout(nn.Module):
    """The official Dropout(0.5), with its mask given from outside: `mask` (N x C x H x W, values 0 or
    1/(1-p)) is set by the generator's forward for one call; without one the layer is the identity."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.channels = channels
        self.reduction = reduction  # the input image's side over this layer's side
        self.mask: torch.Tensor | None = None

    def mask_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return self.channels, math.ceil(height / self.reduction), math.ceil(width / self.reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mask is None else x * self.mask


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return ImageBatchNorm(channels)
    if norm == "instance":
        return ImageInstanceNorm(channels, affine=False, track_running_stats=False)
    return nn.Identity()


class Generator(nn.Module):
    """What the pipelines need of either generator: its options, the side multiple it needs, its dropout
    layers, and a forward that takes one dropout mask per dropout layer (or none)."""

    options: GeneratorOptions
    stride: int  # height and width must be multiples of it

    def dropout_layers(self) -> list[MaskedDropout]:
        return [m for m in self.modules() if isinstance(m, MaskedDropout)]

    def use_image_statistics(self, per_image: bool) -> None:
        """Per-image BatchNorm statistics (the official test mode) or the running ones (--eval)."""
        for module in self.modules():
            if isinstance(module, ImageBatchNorm):
                module.per_image = per_image

    def forward(self, x: torch.Tensor, *dropout_masks: torch.Tensor) -> torch.Tensor:
        layers = self.dropout_layers()
        if dropout_masks and len(dropout_masks) != len(layers):
            raise ValueError(f"{len(dropout_masks)} dropout masks given for {len(layers)} dropout layers")
        for layer, mask in zip(layers, dropout_masks):
            layer.mask = mask
        try:
            return self.model(x)
        finally:
            for layer in layers:
                layer.mask = None


class UnetBlock(nn.Module):
    """One level of the U-Net: down (LeakyReLU, conv, norm), the inner levels, up (ReLU, transposed conv,
    norm, dropout); returns the input and the up path concatenated. The outermost level has no down
    activation or norm and ends in Tanh; the innermost has no inner levels and no down norm."""

    def __init__(self, outer: int, inner: int, norm: str, submodule: nn.Module | None = None,
                 input_channels: int | None = None, outermost: bool = False, dropout: MaskedDropout | None = None):
        super().__init__()
        self.outermost = outermost
        bias = norm == "instance"  # the official code gives convolutions a bias only before InstanceNorm
        down = nn.Conv2d(input_channels or outer, inner, kernel_size=4, stride=2, padding=1, bias=bias)
        if outermost:
            layers = [down, submodule, nn.ReLU(True),
                      nn.ConvTranspose2d(inner * 2, outer, kernel_size=4, stride=2, padding=1), nn.Tanh()]
        elif submodule is None:
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True),
                      nn.ConvTranspose2d(inner, outer, kernel_size=4, stride=2, padding=1, bias=bias),
                      _norm_layer(norm, outer)]
        else:
            layers = [nn.LeakyReLU(0.2, True), down, _norm_layer(norm, inner), submodule, nn.ReLU(True),
                      nn.ConvTranspose2d(inner * 2, outer, kernel_size=4, stride=2, padding=1, bias=bias),
                      _norm_layer(norm, outer)]
            if dropout is not None:
                layers.append(dropout)
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        # The in-place LeakyReLU has rewritten x by now, as in the official block; the parent's ReLU
        # comes next, and ReLU(LeakyReLU(x)) == ReLU(x), so the skip carries the same values either way.
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(Generator):
    """unet_256 (num_downs 8) / unet_128 (7): each level halves the size, so sides must be multiples of
    2**num_downs. The num_downs - 5 levels below the 8*ngf one carry the dropout layers."""

    def __init__(self, options: GeneratorOptions):
        super().__init__()
        self.options = options
        num_downs = _UNET_DOWNS[options.netG]
        self.stride = 2 ** num_downs
        ngf, norm = options.ngf, options.norm
        block = UnetBlock(ngf * 8, ngf * 8, norm)  # innermost, at level num_downs
        for level in range(num_downs - 1, 4, -1):  # levels are counted from 1, the outermost
            dropout = MaskedDropout(ngf * 8, 2 ** (level - 1)) if options.dropout else None
            block = UnetBlock(ngf * 8, ngf * 8, norm, block, dropout=dropout)
        block = UnetBlock(ngf * 4, ngf * 8, norm, block)
        block = UnetBlock(ngf * 2, ngf * 4, norm, block)
        block = UnetBlock(ngf, ngf * 2, norm, block)
        self.model = UnetBlock(options.output_nc, ngf, norm, block, input_channels=options.input_nc, outermost=True)


class ResnetBlock(nn.Module):
    """x + (pad, conv3, norm, ReLU, [dropout], pad, conv3, norm), reflection padding."""

    def __init__(self, channels: int, norm: str, dropout: MaskedDropout | None):
        super().__init__()
        bias = norm == "instance"
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, kernel_size=3, bias=bias),
                  _norm_layer(norm, channels), nn.ReLU(True)]
        if dropout is not None:
            layers.append(dropout)
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, kernel_size=3, bias=bias),
                   _norm_layer(norm, channels)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(Generator):
    """resnet_6blocks / resnet_9blocks: 7x7 conv, two stride-2 convs, residual blocks at 4*ngf, two
    stride-2 transposed convs, 7x7 conv, Tanh. Sides must be multiples of 4 to come back at the same size."""

    stride = 4

    def __init__(self, options: GeneratorOptions):
        super().__init__()
        self.options = options
        ngf, norm = options.ngf, options.norm
        bias = norm == "instance"
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(options.input_nc, ngf, kernel_size=7, bias=bias),
                  _norm_layer(norm, ngf), nn.ReLU(True)]
        for scale in (1, 2):
            layers += [nn.Conv2d(ngf * scale, ngf * scale * 2, kernel_size=3, stride=2, padding=1, bias=bias),
                       _norm_layer(norm, ngf * scale * 2), nn.ReLU(True)]
        for _ in range(_RESNET_BLOCKS[options.netG]):
            dropout = MaskedDropout(ngf * 4, 4) if options.dropout else None
            layers.append(ResnetBlock(ngf * 4, norm, dropout))
        for scale in (4, 2):
            layers += [nn.ConvTranspose2d(ngf * scale, ngf * scale // 2, kernel_size=3, stride=2, padding=1,
                                          output_padding=1, bias=bias),
                       _norm_layer(norm, ngf * scale // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, options.output_nc, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*layers)


def build_generator(options: GeneratorOptions) -> Generator:
    if options.norm not in NORMS:
        raise ModelError(f"unknown norm {options.norm!r}: use one of {', '.join(NORMS)}")
    if options.netG in _UNET_DOWNS:
        return UnetGenerator(options)
    if options.netG in _RESNET_BLOCKS:
        return ResnetGenerator(options)
    raise ModelError(f"unknown netG {options.netG!r}: use one of {', '.join(NETGS)}")


# --- reading official checkpoints -------------------------------------------------------------------------

_UNET_DOWNCONV = re.compile(r"^model\.model\.0\.weight$|\.model\.1\.weight$")
_RESNET_BLOCK = re.compile(r"^model\.(\d+)\.conv_block\.")


def infer_options(state_dict: dict[str, torch.Tensor]) -> tuple[GeneratorOptions, bool]:
    """The generator options an official state dict was saved with, read from its keys and shapes, and
    whether `dropout` could be read (a U-Net's dropout layers have no weights, so its files cannot tell;
    the official default, dropout on, is returned). ModelError if it is no official generator."""
    if "model.model.0.weight" in state_dict:
        return _infer_unet(state_dict), False
    if "model.1.weight" in state_dict and any(_RESNET_BLOCK.match(k) for k in state_dict):
        return _infer_resnet(state_dict), True
    first = ", ".join(list(state_dict)[:3]) or "none"
    raise ModelError(f"the weights are not a pix2pix/CycleGAN generator (unet_* or resnet_*); first keys: {first}")


def _infer_unet(state: dict[str, torch.Tensor]) -> GeneratorOptions:
    first = state["model.model.0.weight"]
    num_downs = sum(1 for key in state if _UNET_DOWNCONV.search(key) and state[key].dim() == 4)
    netG = {downs: name for name, downs in _UNET_DOWNS.items()}.get(num_downs)
    if netG is None:
        raise ModelError(f"the weights are a U-Net with {num_downs} levels; only unet_128 (7) and unet_256 (8) "
                         "are official generators")
    # level 2's down norm sits at model.model.1.model.2; its convolution has a bias only with InstanceNorm
    if "model.model.1.model.2.weight" in state:
        norm = "batch"
    elif "model.model.1.model.1.bias" in state:
        norm = "instance"
    else:
        norm = "none"
    return GeneratorOptions(netG=netG, norm=norm, ngf=first.shape[0], dropout=True, input_nc=first.shape[1],
                            output_nc=state["model.model.3.weight"].shape[1])


def _infer_resnet(state: dict[str, torch.Tensor]) -> GeneratorOptions:
    blocks = {int(m.group(1)) for key in state if (m := _RESNET_BLOCK.match(key))}
    netG = {n: name for name, n in _RESNET_BLOCKS.items()}.get(len(blocks))
    if netG is None:
        raise ModelError(f"the weights are a ResNet generator with {len(blocks)} blocks; only resnet_6blocks "
                         "and resnet_9blocks are official generators")
    first = state["model.1.weight"]
    if "model.2.weight" in state:
        norm = "batch"
    elif "model.1.bias" in state:
        norm = "instance"
    else:
        norm = "none"
    last_conv = f"model.{max(blocks) + 8}.weight"  # after the blocks: 2 x (convT, norm, ReLU), pad, conv
    dropout = any(key.endswith(".conv_block.6.weight") for key in state)
    return GeneratorOptions(netG=netG, norm=norm, ngf=first.shape[0], dropout=dropout, input_nc=first.shape[1],
                            output_nc=state[last_conv].shape[0])


def official_state_dict(net: Generator, state_dict: dict) -> dict[str, torch.Tensor]:
    """The state dict as the official loader (BaseModel.load_networks) hands it to load_state_dict: no
    `_metadata`, no running statistics or counters of InstanceNorm layers (files from the months when
    InstanceNorm tracked them carry them; using them would change the outputs), and BatchNorm counters
    that predate PyTorch 0.4.1 (absent from the file) filled in with 0, as PyTorch does for such files."""
    state = {k: v for k, v in state_dict.items() if k != "_metadata"}
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ModelError(f"the weights hold {not_tensors[0]!r}, which is not a tensor: is this a plain state dict "
                         "of a generator (latest_net_G.pth)?")
    for name, module in net.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.InstanceNorm2d):
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                state.pop(prefix + buffer, None)
        elif isinstance(module, ImageBatchNorm):
            state.setdefault(prefix + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return state


_OPTION_FLAGS = {"netG": "--netG", "norm": "--norm", "ngf": "--ngf", "dropout": "--no-dropout",
                 "input_nc": "input_nc", "output_nc": "output_nc"}


def load_weights(net: Generator, state_dict: dict) -> None:
    """Load an official state dict strictly, after `official_state_dict`. On a mismatch, a one-line
    ModelError that names the options in which the weights differ from the network (read from the weights
    with `infer_options`), or else the first offending keys."""
    state = official_state_dict(net, state_dict)
    expected = net.state_dict()
    wrong = [k for k in expected.keys() & state.keys() if tuple(expected[k].shape) != tuple(state[k].shape)]
    if expected.keys() == state.keys() and not wrong:
        net.load_state_dict(state, strict=True)
        return
    asked = net.options
    try:
        found, dropout_known = infer_options(state)
    except ModelError:
        found = None
    if found is not None:
        fields = [f for f in _OPTION_FLAGS if getattr(found, f) != getattr(asked, f)
                  and (f != "dropout" or dropout_known)]
        if fields:
            differing = ", ".join(f"{_OPTION_FLAGS[f]} ({getattr(asked, f)} asked, {getattr(found, f)} in the file)"
                                  for f in fields)
            raise ModelError(f"the weights do not fit {asked.describe()}: they are {found.describe()}; "
                             f"check {differing}")
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    problems = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", sorted(wrong)))
                if keys]
    raise ModelError(f"the weights do not fit {asked.describe()} ({'; '.join(problems)}); "
                     "check --netG, --norm, --ngf and --no-dropout")


# --- test-time modes, loading and the registry ----------------------------------------------------------

TEST_MODES = ("official", "eval", "no-dropout")


class TestTimeGenerator(nn.Module):
    """The generator in one test-time mode, as a runner or an ONNX export calls it: "official" (test.py
    without --eval: each image's own BatchNorm statistics, dropout masks as inputs), "no-dropout" (the same,
    no masks) or "eval" (running statistics, no dropout). The BatchNorm mode is set at every call
    (translators may share a generator) and is also a buffer, so that graphs of different modes (same
    weights) get different cache keys."""

    def __init__(self, generator: Generator, mode: str = "official"):
        super().__init__()
        if mode not in TEST_MODES:
            raise ModelError(f"unknown mode {mode!r}: use one of {', '.join(TEST_MODES)}")
        self.generator = generator
        self.mode = mode
        self.per_image = mode != "eval"
        self.dropout_layers = generator.dropout_layers() if mode == "official" else []
        self.register_buffer("image_statistics", torch.tensor(self.per_image))

    def forward(self, x: torch.Tensor, *dropout_masks: torch.Tensor) -> torch.Tensor:
        self.generator.use_image_statistics(self.per_image)
        return self.generator(x, *dropout_masks)

    def dropout_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        return [layer.mask_shape(height, width) for layer in self.dropout_layers]


def load_generator_weights(state_dict: dict, **overrides) -> Generator:
    """A generator built from what the weights say (infer_options), with `overrides` (netG, norm, ngf,
    dropout, input_nc, output_nc) applied; a contradiction is a ModelError naming the option."""
    found, _ = infer_options(state_dict)
    try:
        options = replace(found, **{k: v for k, v in overrides.items() if v is not None})
    except TypeError as exc:
        raise ModelError(f"unknown generator option ({exc})") from None
    with torch.device("meta"):  # no random initialisation of weights that are overwritten next
        net = build_generator(options)
    net = net.to_empty(device="cpu")
    load_weights(net, state_dict)
    return net.eval()


def describe_generator(net: Generator, mode: str = "official") -> Descriptor:
    module = TestTimeGenerator(net, mode)
    options = net.options
    names = ("input", *(f"dropout{i}" for i in range(len(module.dropout_layers))))

    def example_inputs(height: int, width: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        image = torch.rand((1, options.input_nc, height, width), generator=generator) * 2 - 1
        masks = [(torch.rand((1, *shape), generator=generator) >= DROPOUT_P).float() / (1 - DROPOUT_P)
                 for shape in module.dropout_shapes(height, width)]
        return (image, *masks)

    io = {"input": "N x C x H x W float32 in [-1, 1]: uint8 / 127.5 - 1 (ToTensor, Normalize(0.5, 0.5))",
          "output": "N x C x H x W float32 in [-1, 1] (tanh); uint8 = trunc((y + 1) / 2 * 255)"}
    io.update({name: f"N x {layer.channels} x ceil(H/{layer.reduction}) x ceil(W/{layer.reduction}) float32, 0 or "
                     f"{1 / (1 - DROPOUT_P):g} per element (Dropout({DROPOUT_P}) mask, drawn by the caller)"
               for name, layer in zip(names[1:], module.dropout_layers)})
    test_time = {"official": "per-image BatchNorm statistics, dropout masks as inputs (official test.py)",
                 "no-dropout": "per-image BatchNorm statistics, no dropout",
                 "eval": "running BatchNorm statistics, no dropout (test.py --eval)"}[mode]
    export = Export("generator", module, example_inputs, names, ("output",),
                    {name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in (*names, "output")}, io,
                    net.stride, net.stride)
    return Descriptor(
        family=f"pix2pix_{'unet' if isinstance(net, UnetGenerator) else 'resnet'}", task="translate",
        in_channels=options.input_nc, out_channels=options.output_nc, size_multiple=net.stride,
        min_side=net.stride, precisions=("fp32", "bf16", "fp16"), parameters=parameter_count(net),
        hyperparameters=asdict(options), exports=(export,), test_time=test_time,
    )


def official_init(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """The official init_weights(net, "normal", gain) that train.py applies to every network: convolution
    and linear weights N(0, gain), their biases 0, BatchNorm weights N(1, gain) and biases 0, in the
    order of `net.apply` (so a seeded run draws the same numbers as the official code)."""

    def init(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, gain)
            nn.init.zeros_(module.bias)

    with torch.no_grad():
        net.apply(init)
    return net


def _builder(netGs: tuple[str, ...]):
    def build(config: dict) -> Generator:
        """A generator for training: GeneratorOptions from `config` (netG required), official init."""
        family = f"pix2pix_{'unet' if netGs[0].startswith('unet') else 'resnet'}"
        if config.get("netG") not in netGs:
            raise ModelError(f"a {family} config needs netG {' or '.join(netGs)}, not {config.get('netG')!r}")
        return official_init(build_generator(construct(family, GeneratorOptions, config)))

    return build


# both generators keep float32 weights under autocast in a reduced precision (as translate has run them)
AUTOCAST = RunPolicy(reduced="autocast")
register(Family(
    "pix2pix_unet", "pix2pix", "translate", "pix2pix U-Net generator (unet_128, unet_256)",
    detect=lambda state: "model.model.0.weight" in state,
    load=load_generator_weights, describe=describe_generator, build=_builder(tuple(_UNET_DOWNS)),
    policy=AUTOCAST,
))
register(Family(
    "pix2pix_resnet", "pix2pix", "translate", "CycleGAN/pix2pix ResNet generator (resnet_6blocks, resnet_9blocks)",
    detect=lambda state: "model.1.weight" in state and any(_RESNET_BLOCK.match(k) for k in state),
    load=load_generator_weights, describe=describe_generator, build=_builder(tuple(_RESNET_BLOCKS)),
    policy=AUTOCAST,
))
