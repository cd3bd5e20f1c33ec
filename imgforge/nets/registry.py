"""The registry of network families: which architecture a state dict is, and how to build it from the weights.

A family is declared in its own network module (`register(Family(...))` at the bottom of nets/<file>.py) and
the module is named once in `FAMILY_MODULES` below: adding a network is one file and one line here.

    family = detect(state_dict)                      # the Family whose `detect` accepts the keys
    net = family.load(state_dict, **overrides)       # hyperparameters read from tensor shapes; strict load
    facts = family.describe(net)                     # Descriptor: channels, size rule, precisions, exports
    net, family = load(state_dict, "pix2pix_unet")   # both at once, the family named or detected
    fresh = build("pix2pix_unet", {"netG": "unet_256", "norm": "batch"})   # random weights, for training

`build(config)` takes the dict `describe(net).hyperparameters` reports (missing keys: the family's defaults),
so that `family.build(family.describe(net).hyperparameters)` has the same state_dict keys and shapes as `net`.

`load` takes options the weights cannot tell (dropout, a DDPM config.json) and overrides of what they can;
an override that contradicts the weights is a one-line ModelError naming it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ModelError

# One line per network file that registers families (imported on first use of the registry).
# patchgan comes before mapping: the quality mapping is detected by its model.0.weight alone
FAMILY_MODULES = ("pix2pix", "ddpm_unet", "scratch_unet", "vae", "patchgan", "mapping", "face_spade", "fid_inception",
                 "lpips_alex")


@dataclass(frozen=True)
class Export:
    """One network (or sub-network) as an ONNX graph: the module to trace, example inputs for an image of a
    given (height, width), names, the axes that stay dynamic, and what each input and output holds
    (value range and normalisation, for the sidecar a deployer reads). `method`: the network's method that
    computes the same part in torch (None: forward), e.g. a VAE's "encode" for its encoder, which a pipeline
    calls with its progress callbacks."""

    name: str
    module: nn.Module
    example_inputs: Callable[[int, int], tuple[torch.Tensor, ...]]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    io: dict[str, str] = field(default_factory=dict)
    size_multiple: int = 1  # the (height, width) example_inputs take: multiples of it, at least min_side
    min_side: int = 1
    method: str | None = None


@dataclass(frozen=True)
class Descriptor:
    """What the weights determine and a pipeline, `export` or `models inspect` needs to know."""

    family: str
    task: str
    in_channels: int
    out_channels: int
    size_multiple: int  # image sides must be multiples of it
    min_side: int
    precisions: tuple[str, ...]
    parameters: int
    hyperparameters: dict
    exports: tuple[Export, ...] = ()
    test_time: str = ""  # the test-time semantics an export reproduces (e.g. pix2pix's per-image statistics)


@dataclass(frozen=True)
class RunPolicy:
    """How a family's networks run, known before any weights are read (the run plan is checked against it, and
    imgforge.runtime applies it, for torch and ONNX alike): the precisions and backends it supports; `float32`:
    it computes in float32 whatever is asked (its output is thresholded, so a reduced precision would flip
    decisions: the scratch detector); `reduced`: how a reduced precision is applied, "cast" (a copy of the
    weights in that dtype: faster on CPUs, where autocast re-casts the weights on every call) or "autocast"
    (float32 weights, convolutions and matmuls in the reduced dtype)."""

    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")
    backends: tuple[str, ...] = ("torch", "onnx")
    float32: bool = False
    reduced: str = "cast"

    def dtype(self, asked: torch.dtype) -> torch.dtype:
        """The dtype a network of this family computes in when `asked` is the run's."""
        return torch.float32 if self.float32 else asked


@dataclass(frozen=True)
class Family:
    """One architecture. `arch` is the manifest's name for it (several families may share one: "pix2pix"
    is both generators, "oldphoto" the restoration networks). `detect(state_dict)` looks at keys only;
    `load(state_dict, **overrides)` builds the module in eval mode on the CPU with the weights loaded
    strictly; `describe(module, **settings)` gives its Descriptor (settings: test-time options that change
    what is exported, e.g. pix2pix's mode); `build(config)` makes a fresh network on the CPU in training mode,
    randomly initialised as the family's original training code initialises it, from a hyperparameter dict
    (the Descriptor's `hyperparameters`; an unknown key or value is a ModelError); `policy`: how it runs
    (precisions, backends, float32 layers)."""

    name: str
    arch: str
    task: str
    summary: str
    detect: Callable[[dict], bool]
    load: Callable[..., nn.Module]
    describe: Callable[..., Descriptor]
    build: Callable[[dict], nn.Module]
    policy: RunPolicy = RunPolicy()


@dataclass
class Network:
    """A loaded network in a model: its role (the manifest's network name, e.g. "generator", "vae_a"), the
    module and its family, the weights file it came from, which of its exports the model uses (None: all)
    and the test-time settings its exports take (e.g. {"mode": "eval"} for pix2pix)."""

    role: str
    module: nn.Module
    family: Family
    source: Path | None = None
    parts: tuple[str, ...] | None = None
    settings: dict = field(default_factory=dict)

    def describe(self) -> Descriptor:
        accepted = inspect.signature(self.family.describe).parameters
        return self.family.describe(self.module, **{k: v for k, v in self.settings.items() if k in accepted})

    def exports(self) -> list[Export]:
        return [e for e in self.describe().exports if self.parts is None or e.name in self.parts]


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    """Every registered family, by name, in the order of FAMILY_MODULES whatever order the modules were
    imported in: detection takes the first family that accepts a state dict, and some detectors are broader
    than others (the mapping network's accepts any `model.N.weight`, so the PatchGAN is asked first)."""
    for module in FAMILY_MODULES:
        import_module(f".{module}", __package__)
    rank = {f"{__package__}.{module}": n for n, module in enumerate(FAMILY_MODULES)}
    ordered = sorted(_FAMILIES.values(), key=lambda f: rank.get(f.detect.__module__, len(rank)))
    return {family.name: family for family in ordered}


def get_family(name: str) -> Family:
    known = families()
    if name not in known:
        raise ModelError(f"unknown network family {name!r}; imgforge knows {', '.join(known)}")
    return known[name]


def detect(state_dict: dict) -> Family:
    """The family whose keys these are; a ModelError listing the known families otherwise."""
    for family in families().values():
        if family.detect(state_dict):
            return family
    first = ", ".join(list(state_dict)[:3]) or "none"
    raise ModelError(f"the weights match no network family imgforge knows ({', '.join(families())}); "
                     f"first keys: {first}")


def families_of(arch: str | None) -> list[Family]:
    """The families `arch` names: the family of that name, or every family of that manifest arch (all for None)."""
    known = families()
    named = [f for f in known.values() if arch in (None, f.name, f.arch)]
    if not named:
        archs = sorted({f.arch for f in known.values()} | set(known))
        raise ModelError(f"unknown architecture {arch!r}; imgforge knows {', '.join(archs)}")
    return named


def find(state_dict: dict, arch: str | None = None) -> Family:
    """The family of these weights among those `arch` names (any family when None); a ModelError if the
    weights are not of that kind."""
    candidates = families_of(arch)
    chosen = next((f for f in candidates if f.detect(state_dict)), None)
    if chosen is None:
        if arch is None:
            detect(state_dict)  # raises, listing the families
        found = next((f.name for f in families().values() if f.detect(state_dict)), None)
        what = f"{found} weights" if found else "no network imgforge knows"
        raise ModelError(f"the weights are {what}, not {arch} ({'; '.join(f.summary for f in candidates)})")
    return chosen


def load(state_dict: dict, arch: str | None = None, **overrides) -> tuple[nn.Module, Family]:
    """(module, family): the family found among those `arch` names (a family name or a manifest arch; any
    family when None) builds the module from the weights."""
    family = find(state_dict, arch)
    return family.load(state_dict, **overrides), family


def build(name: str, config: dict) -> nn.Module:
    """A fresh, randomly initialised network of the family `name` (see Family.build)."""
    return get_family(name).build(config)


def construct(family: str, constructor: Callable[..., nn.Module], config: dict) -> nn.Module:
    """`constructor(**config)`, a config key the constructor does not take being a ModelError naming it (for
    the families' `build`)."""
    if not isinstance(config, dict):
        raise ModelError(f"a {family} config must be a dict of hyperparameters, not {type(config).__name__}")
    accepted = inspect.signature(constructor).parameters
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise ModelError(f"unknown {family} hyperparameter(s) {', '.join(unknown)}; "
                         f"it takes {', '.join(accepted)}")
    return constructor(**config)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_overrides(family: str, found: dict, overrides: dict, flags: dict[str, str] | None = None) -> dict:
    """`found` (what the weights say) updated with `overrides`; an override that differs from a value the
    weights determine is a ModelError naming the option. Keys absent from `found` are free options."""
    flags = flags or {}
    for key, value in overrides.items():
        if value is not None and key in found and found[key] != value:
            raise ModelError(f"{flags.get(key, key)} {value} contradicts the weights, which are a {family} "
                             f"network with {key} {found[key]}")
    return {**found, **{k: v for k, v in overrides.items() if v is not None}}


def unwrap(state_dict: dict, *containers: str) -> dict:
    """The inner state dict of a checkpoint stored as {container: {...}} (e.g. "model_state")."""
    for key in containers:
        if isinstance(state_dict.get(key), dict):
            return state_dict[key]
    return state_dict


def fit_config(state_dict: dict, build: Callable[..., nn.Module], candidates) -> dict | None:
    """The first candidate config whose network (built on the meta device, no memory) has exactly the
    state dict's keys and shapes; None if none has."""
    wanted = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    for config in candidates:
        try:
            with torch.device("meta"):
                built = build(**config).state_dict()
        except (ValueError, RuntimeError, TypeError, ZeroDivisionError):
            continue
        if {k: tuple(v.shape) for k, v in built.items()} == wanted:
            return config
    return None
