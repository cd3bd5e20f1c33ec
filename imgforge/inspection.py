"""What a weights file (or a folder of them) is: the network family detected by the registry, the
hyperparameters read from its shapes, and the zoo models it matches (`imgforge models inspect`)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import manifest
from .checkpoint import building, load_state_dict, tensors
from .errors import ModelError
from .hub import sha256_of
from .nets import registry

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


@dataclass
class Inspection:
    path: Path
    family: str
    arch: str
    task: str
    summary: str
    hyperparameters: dict
    parameters: int
    dtype: str
    sha256: str
    in_channels: int
    out_channels: int
    size_multiple: int
    min_side: int
    precisions: tuple[str, ...]
    exports: list[str]
    zoo_by_sha256: list[str] = field(default_factory=list)  # zoo files with exactly these bytes
    zoo_by_layout: list[str] = field(default_factory=list)  # zoo models of this family and options

    def as_dict(self) -> dict:
        record = dict(vars(self), path=str(self.path), precisions=list(self.precisions))
        return json.loads(json.dumps(record, default=str))


def inspect_weights(path: str | Path, skipped: Callable[[Path, str], None] | None = None) -> list[Inspection]:
    """One Inspection per weights file: `path` itself, or every weights file in a folder (a diffusers folder's
    config.json is authoritative for its U-Net). ModelError if a file (or every file of a folder) is not a
    network imgforge knows; the message lists the families it does know. In a folder, a file that is not
    (optimiser states, discriminators, a damaged file) is passed to `skipped` with the reason, and the
    others are still inspected."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if not files:
            raise ModelError(f"{path} holds no weights files ({', '.join(WEIGHT_SUFFIXES)})")
        found = []
        for file in files:
            try:
                found.append(_inspect_file(file))
            except ModelError as exc:
                if skipped is not None:
                    skipped(file, str(exc))
        if not found:
            raise ModelError(f"no file in {path} is a network imgforge knows ({', '.join(registry.families())})")
        return found
    if not path.exists() and not path.is_symlink():
        raise ModelError(f"no such file or folder: {path}")
    return [_inspect_file(path)]


def _inspect_file(path: Path) -> Inspection:
    state = load_state_dict(path)
    config_path = path.with_name("config.json")
    options = {}
    if config_path.is_file():
        try:
            options["config"] = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
    family = registry.detect(state)
    if family.name != "ddpm_unet":
        options = {}
    with building(state, path):
        net = family.load(state, **options)
    facts = family.describe(net)
    digest = sha256_of(path)
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for _, t in tensors(state, path) if t.is_floating_point())
    found = Inspection(
        path=path, family=family.name, arch=family.arch, task=family.task, summary=family.summary,
        hyperparameters=facts.hyperparameters, parameters=facts.parameters,
        dtype=dtypes.most_common(1)[0][0] if dtypes else "none", sha256=digest, in_channels=facts.in_channels,
        out_channels=facts.out_channels, size_multiple=facts.size_multiple, min_side=facts.min_side,
        precisions=facts.precisions, exports=[export.name for export in facts.exports],
    )
    for entry in manifest.load_manifest().values():
        if any(source.sha256 == digest for source in entry.files.values()):
            found.zoo_by_sha256.append(entry.name)
        elif entry.arch in (family.arch, family.name) and _same_layout(entry.config, facts.hyperparameters):
            found.zoo_by_layout.append(entry.name)
    return found


def _same_layout(config: dict, hyperparameters: dict) -> bool:
    """The entry's flat options agree with what the weights say (nested per-network tables are not compared;
    options the weights cannot tell, such as dropout of a U-Net, are not either)."""
    return all(hyperparameters.get(key) == value for key, value in config.items()
               if not isinstance(value, dict) and key in hyperparameters and key != "dropout")

