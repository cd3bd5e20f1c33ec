"""The GAN run folder's weights files, in the official layout (BaseModel.save_networks / load_networks):
`latest_net_<name>.pth` at every save and `<epoch>_net_<name>.pth` snapshots, each a plain state dict on the
CPU without a `module.` prefix, so that `imgforge translate --checkpoint` and the official test.py load them;
and the weights a run starts from with `--from` (a weights file, a run folder, or a zoo model)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .. import hub, manifest
from ..checkpoint import load_state_dict
from ..errors import ImgforgeError, ModelError
from ..nets.pix2pix import Generator, load_weights
from .state import atomic_save, cpu_state


def write_networks(run_dir: Path, modules: dict[str, nn.Module], epoch: int | None) -> None:
    """latest_net_<name>.pth for every module, and <epoch>_net_<name>.pth when `epoch` is given."""
    for name, module in modules.items():
        state = cpu_state(module.state_dict())
        atomic_save(state, Path(run_dir) / f"latest_net_{name}.pth")
        if epoch is not None:
            atomic_save(state, Path(run_dir) / f"{epoch}_net_{name}.pth")


def load_start_weights(source: str, modules: dict[str, nn.Module]) -> list[str]:
    """Fine-tuning: load the weights `source` names into `modules` (the generator first). A run folder gives
    every `latest_net_<name>.pth` it holds; a weights file or a zoo model (e.g. pix2pix-facades) gives the
    generator. Returns the names loaded; a mismatch is a one-line ModelError naming the options."""
    path = Path(source)
    if path.is_dir():
        loaded = [name for name, module in modules.items() if (path / f"latest_net_{name}.pth").is_file()]
        if not loaded:
            raise ImgforgeError(f"--from {source}: the folder holds none of "
                                f"{', '.join(f'latest_net_{n}.pth' for n in modules)}")
        for name in loaded:
            _load_into(modules[name], load_state_dict(path / f"latest_net_{name}.pth"), name)
        return loaded
    if not path.is_file():
        entry = manifest.get_model(source)  # not a file: a zoo model's name (a ManifestError if unknown)
        if entry.task != "translate":
            raise ImgforgeError(f"--from {source}: a {entry.task} model, not a pix2pix/CycleGAN generator")
        path = hub.fetch_file(entry, "generator")
    name = next(iter(modules))
    _load_into(modules[name], load_state_dict(path), name)
    return [name]


def _load_into(module: nn.Module, state: dict, name: str) -> None:
    if isinstance(module, Generator):
        load_weights(module, state)
        return
    try:
        module.load_state_dict({k: v for k, v in state.items() if k != "_metadata"}, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"the {name} weights do not fit this network (check --ndf, --n-layers-d, --norm): "
                         f"{' '.join(str(exc).split())[:200]}") from None
