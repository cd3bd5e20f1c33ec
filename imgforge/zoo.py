"""The networks of a zoo model, a weights folder or a weights file, loaded through the registry: the one way in
for `imgforge.load_model`, `imgforge export` and the pipelines.

    networks("oldphoto-scratch")          # the manifest's networks of the model (files fetched by hub)
    networks("runs/ddpm")                 # a folder: a diffusers folder (config.json + weights), or its files
    networks("latest_net_G.pth")          # one weights file, its family detected
    modules(networks("face-enhance-256"))  # the modules, in eval mode: what imgforge.load_model returns for it

Which networks a model has is data (the manifest's `networks` tables, manifest.NetworkSpec); no pipeline
keeps a table of roles.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path, PurePosixPath

from . import hub, manifest
from .checkpoint import building, load_state_dict
from .errors import ModelError, RunWideError
from .nets import registry
from .progress import console

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# The networks each task's pipeline composes: a model that has them loads as the pipeline's object.
PIPELINE_NETWORKS = {"translate": {"generator"}, "sample": {"unet"}, "restore": {"vae_a", "mapping", "vae_b"}}


def network_specs(entry: manifest.ModelEntry) -> dict[str, manifest.NetworkSpec]:
    """The model's networks as its manifest table says, or, without one, every file that is not JSON as a
    network of the model's arch."""
    if entry.networks is not None:
        return entry.networks
    return {role: manifest.NetworkSpec(role, entry.arch, role) for role, source in entry.files.items()
            if not source.path.endswith(".json")}


def model_families(entry: manifest.ModelEntry) -> list[registry.Family]:
    """The registry families the model's networks may be, known before any file is fetched (a network the
    manifest gives an arch may be any family of it): what a run plan is checked against."""
    return [family for spec in network_specs(entry).values() for family in registry.families_of(spec.family)]


def model_networks(entry: manifest.ModelEntry | str, *, names=None, offline: bool | None = None,
                   weights_dir: hub.WeightsDirs = None, quiet: bool = False,
                   options: dict[str, dict] | None = None) -> list[registry.Network]:
    """The networks of a zoo model (all, or those in `names`), each loaded through the registry from its file
    (fetched by hub), with the manifest's load options, then `options[name]` (None values ignored). A file
    of another family than the manifest says is a ModelError naming the model and the network. Unless
    `quiet`, says which model it loads."""
    entry = manifest.get_model(entry) if isinstance(entry, str) else entry
    specs = network_specs(entry)
    if not specs:
        raise ModelError(f"model '{entry.name}' ({entry.arch}) has no network imgforge builds: it is a file "
                         "a pipeline reads as it is")
    unknown = sorted(set(names or ()) - set(specs))
    if unknown:
        raise ModelError(f"model '{entry.name}' has no network {', '.join(unknown)}; it has {', '.join(specs)}")
    if not quiet:
        console.print(f"loading {entry.name}", markup=False, highlight=False)
    loaded = []
    for spec in specs.values():
        if names is not None and spec.name not in names:
            continue
        path = hub.fetch_file(entry, spec.file, offline=offline, weights_dir=weights_dir, quiet=quiet)
        asked = {key: value for key, value in (options or {}).get(spec.name, {}).items() if value is not None}
        overrides = {**_config_options(entry, spec.name), **spec.options, **asked}
        if spec.config_file is not None:
            config_path = hub.fetch_file(entry, spec.config_file, offline=offline, weights_dir=weights_dir,
                                         quiet=quiet)
            overrides["config"] = read_json(config_path)
        state = load_state_dict(path)
        if spec.package_file is not None:
            state = {**state, **load_state_dict(package_file(entry, spec.package_file))}
        try:
            with building(state, path):
                module, family = registry.load(state, spec.family, **overrides)
        except ModelError as exc:
            raise ModelError(f"model '{entry.name}', network {spec.name}: {exc}") from None
        loaded.append(registry.Network(spec.name, module, family, source=path, parts=spec.parts,
                                       settings=dict(spec.settings)))
    return loaded


def package_file(entry: manifest.ModelEntry, name: str) -> Path:
    """The file `name` ("package/path/in/it") of an installed Python package, found without importing it."""
    package, *inside = PurePosixPath(name).parts
    found = importlib.util.find_spec(package)
    if found is None or not found.origin:
        raise RunWideError(f"model '{entry.name}' needs the {package} package, which ships {'/'.join(inside)}: "
                           f"pip install {package}")
    path = Path(found.origin).parent.joinpath(*inside)
    if not path.is_file():
        raise RunWideError(f"the {package} package has no {path.name} under {path.parent}")
    return path


def _config_options(entry: manifest.ModelEntry, name: str) -> dict:
    """The model's `config`: flat values apply to every network, a table named after a network to that one."""
    flat = {key: value for key, value in entry.config.items() if not isinstance(value, dict)}
    own = entry.config.get(name)
    return {**flat, **(own if isinstance(own, dict) else {})}


def path_networks(path: str | Path) -> list[registry.Network]:
    """The networks of a weights file, or of every weights file in a folder (a diffusers folder's config.json
    is read with its U-Net; files that are no network imgforge knows, such as optimiser states, are passed
    over in a folder and an error for a file)."""
    path = Path(path).expanduser()
    if path.is_file():
        return [file_network(path)]
    if not path.is_dir():
        raise ModelError(f"no such model, file or folder: {path}")
    found = []
    for file in weight_files(path):
        try:
            found.append(file_network(file))
        except ModelError:
            continue
    if not found:
        raise ModelError(f"no file in {path} is a network imgforge knows ({', '.join(registry.families())})")
    roles = [network.role for network in found]
    for network in found:  # several of one kind (a CycleGAN run's G_A and G_B): named after their files
        if roles.count(network.role) > 1:
            network.role = "_".join(network.source.relative_to(path).with_suffix("").parts)
    return found


def weight_files(folder: Path) -> list[Path]:
    """The weights files of a folder and its sub-folders (a diffusers pipeline folder keeps its U-Net in unet/)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ModelError(f"{folder} holds no weights files ({', '.join(WEIGHT_SUFFIXES)})")
    return files


def file_network(path: Path, arch: str | None = None, **options) -> registry.Network:
    """The network of one weights file, of a family `arch` names (any family when None), loaded with `options`
    (None values ignored); a DDPM U-Net reads the config.json beside it unless `options` give its config."""
    state = load_state_dict(path)
    family = registry.find(state, arch)
    options = {key: value for key, value in options.items() if value is not None}
    config = path.with_name("config.json")
    if family.name == "ddpm_unet" and config.is_file():
        options.setdefault("config", read_json(config))
    with building(state, path):
        module = family.load(state, **options)
    return registry.Network(default_role(family, module), module, family, source=path)


def default_role(family: registry.Family, module) -> str:
    """The name of a network loaded from a file: its export's ("generator", "unet", "mapping", ...), or for a
    network of several exports the family's name within its arch ("vae")."""
    exports = family.describe(module).exports
    return exports[0].name if len(exports) == 1 else family.name.removeprefix(f"{family.arch}_")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path} as JSON: {exc}") from None


def networks(source: str | Path, **options) -> list[registry.Network]:
    """The networks of a zoo model name (`options`: offline=, weights_dir=, quiet=, names=), or of a weights
    folder or file (a path that exists, or that looks like one)."""
    if is_path(source):
        return path_networks(source)
    return model_networks(str(source), **options)


def pipeline_of(entry: manifest.ModelEntry) -> str | None:
    """The task whose pipeline runs the model: the one whose networks the model has (None for a model that is a
    part of another, such as a face generator, or a file a pipeline reads as it is)."""
    return entry.task if PIPELINE_NETWORKS.get(entry.task, {""}) <= set(network_specs(entry)) else None


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and any((folder / "config.json").is_file() for folder in (path, path / "unet"))


def modules(loaded: list[registry.Network]):
    """The loaded networks' modules in eval mode: the module itself for one network, else {name: module}."""
    modules = {network.role: network.module.eval() for network in loaded}
    return next(iter(modules.values())) if len(modules) == 1 else modules


def is_path(source: str | Path) -> bool:
    """A folder or file rather than a zoo name: it exists, or has a path separator, a leading dot or a weights
    suffix."""
    text = str(source)
    return isinstance(source, Path) or Path(text).expanduser().exists() or any(sep in text for sep in ("/", "\\")) \
        or text.startswith(".") or text.endswith(WEIGHT_SUFFIXES)
