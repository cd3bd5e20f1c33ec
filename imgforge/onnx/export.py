"""Networks -> ONNX graphs: `imgforge export`, and the graphs the ONNX backend caches (onnx/cache.py).

Every graph is traced from a registry `Export` (nets/registry.py) with batch, height and width dynamic where
the network allows, and checked before it is reported: onnx.checker, then ONNX Runtime (CPU) at two sizes
against torch. fp16 graphs are traced from a half copy of the network with float32 inputs and outputs cast at
the graph's edges (as faithful as onnxconverter-common's conversion where that works, and that conversion
breaks the DDPM U-Net and the scratch mapping: docs/onnx.md).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

import torch

from .. import __version__, zoo
from ..device import on_device
from ..batch import claim_outputs, output_exists
from ..errors import ImgforgeError, OutputError
from ..imageio import write_file
from ..nets.registry import Export, Network
from ..plan import ONNX_PRECISIONS as PRECISIONS
from .session import OnnxRunner

OPSET = 17
# the role (graph name) of a lone checkpoint's network, as the zoo models of its task name it
# max abs difference from torch (float32) a graph must meet at both check sizes
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}


def export_graph(export: Export, path: Path, *, precision: str = "fp32", size: tuple[int, int] | None = None) -> str:
    """Trace `export` at `size` (default: its first check size) into `path`, as imgforge writes every file
    (complete or not at all, never through a symlink, no temp file left: imageio.write_file); the sha256 of
    the graph written, for its sidecar."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs it)
    except ImportError:
        raise ImgforgeError("ONNX export needs the onnx package: pip install 'imgforge[onnx]'") from None
    if precision not in PRECISIONS:
        raise ImgforgeError(f"ONNX graphs are fp32 or fp16, not {precision!r}")
    module = on_device(export.module, torch.device("cpu")).eval()  # the caller's module stays where it is
    if precision == "fp16":
        module = HalfWithFloatIO(module)
    inputs = export.example_inputs(*(size or check_sizes(export)[0]))
    traced = io.BytesIO()  # traced in memory: nothing is written until the whole graph exists
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes turned into constants mean nothing here
        torch.onnx.export(module, inputs, traced, input_names=list(export.input_names),
                          output_names=list(export.output_names), dynamic_axes=export.dynamic_axes,
                          opset_version=OPSET, dynamo=False,
                          # the exporter's folding dropped initialisers shared by equal constants (seen with
                          # fresh BatchNorm weights); ONNX Runtime folds constants itself at session start
                          do_constant_folding=False)
    graph = traced.getvalue()
    write_file(path, graph)
    return hashlib.sha256(graph).hexdigest()


class HalfWithFloatIO(torch.nn.Module):
    """A half-precision copy of a network that takes and returns float32 tensors."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = copy.deepcopy(module).half()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(*(x.half() for x in inputs)).float()


def check_sizes(export: Export) -> list[tuple[int, int]]:
    """Two (height, width) sizes, the second not square, honouring the export's size rule; a graph of one
    fixed side (no dynamic height or width) is checked at that side twice, the second time as a batch of 2."""
    multiple, smallest = export.size_multiple, export.min_side
    side = max(smallest, -(-64 // multiple) * multiple)
    if not _spatially_dynamic(export):
        return [(side, side), (side, side)]
    return [(side, side), (side + multiple, side + 2 * multiple)]


def _spatially_dynamic(export: Export) -> bool:
    return any({2, 3} & set(export.dynamic_axes.get(name, {})) for name in export.input_names)


def check_graph(path: Path, export: Export, precision: str = "fp32") -> list[float]:
    """onnx.checker, then ONNX Runtime on the CPU at both check sizes against torch; the max abs difference at
    each. ImgforgeError if the graph is invalid or misses the tolerance."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ImgforgeError(f"{path.name} fails onnx.checker: {' '.join(str(exc).split())[:200]}") from None
    runner = OnnxRunner(path, torch.device("cpu"), export.output_names)
    differences = []
    for check, size in enumerate(check_sizes(export)):
        inputs = export.example_inputs(*size)
        if check and not _spatially_dynamic(export):
            inputs = tuple(torch.cat([x, x.flip(-1)]) for x in inputs)
        with torch.no_grad():
            expected = on_device(export.module, torch.device("cpu"))(*inputs)
        got = runner(*inputs)
        difference = float((got - expected.float()).abs().max())
        if not difference <= TOLERANCE[precision]:
            raise ImgforgeError(f"{path.name} differs from torch by {difference:.3g} at {size[0]}x{size[1]} "
                                f"(tolerance {TOLERANCE[precision]})")
        differences.append(difference)
    return differences


@dataclass
class ExportReport:
    folder: Path
    graphs: list[Path] = field(default_factory=list)
    differences: dict[str, list[float]] = field(default_factory=dict)  # graph name -> max abs diff per size


def export_model(output: str | os.PathLike, model: str | None = None, checkpoint: str | os.PathLike | None = None, *,
                 precision: str = "fp32", mode: str = "official", offline: bool | None = None,
                 weights_dir: Path | None = None, quiet: bool = False) -> ExportReport:
    """Write one checked .onnx per network of a zoo model, or of a weights file or folder (a diffusers folder, a
    training run), into `output` (networks through imgforge.zoo), each with a sidecar <name>.json: inputs,
    outputs, value ranges and normalisation, size rule, test-time mode, source weights' sha256, and the
    measured differences from torch. `mode`: pix2pix's test-time mode."""
    from ..hub import sha256_of
    from ..progress import console

    if (model is None) == (checkpoint is None):
        raise ImgforgeError("give a zoo model name or --checkpoint FILE|FOLDER (one of them)")
    if precision not in PRECISIONS:
        raise ImgforgeError(f"--precision must be fp32 or fp16 for ONNX graphs, not {precision!r}")
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"-o must be a folder, and {folder} is a file")
    if model is not None:  # the manifest's networks of a zoo model (or a path given as the model)
        networks = zoo.networks(model, offline=offline, weights_dir=weights_dir, quiet=quiet)
    else:  # a weights file, or a folder of them (a diffusers folder, a training run)
        networks = zoo.path_networks(checkpoint)
    report = ExportReport(folder)
    for network in networks:
        network.settings.setdefault("mode", mode)  # pix2pix's test-time mode; other families take none
        if not network.exports():
            raise ImgforgeError(f"the {network.role} network ({network.family.name}) has no ONNX form yet")
    planned = [(network, export, graph_name(network, export)) for network in networks for export in network.exports()]
    _plan_outputs(folder, [name for _, _, name in planned])
    for network, export, name in planned:
        digest = sha256_of(network.source) if network.source else None
        path = folder / f"{name}.onnx"
        if not quiet:
            console.print(f"exporting {name} ({network.family.name}, {precision})", markup=False, highlight=False)
        graph_sha256 = export_graph(export, path, precision=precision)
        try:
            report.differences[name] = check_graph(path, export, precision)
        except ImgforgeError:
            path.unlink(missing_ok=True)  # a graph that fails its check is not left looking exported
            raise
        sidecar = _sidecar(network, export, precision, digest, report.differences[name], model or checkpoint,
                           graph_sha256)
        write_file(folder / f"{name}.json", (json.dumps(sidecar, indent=2) + "\n").encode("utf-8"))
        report.graphs.append(path)
    return report


def graph_name(network: Network, export: Export) -> str:
    """The file stem of a network's graph: its role (generator, unet, ...), with the part when it has several."""
    return network.role if export.name == network.role else f"{network.role}_{export.name}"


def _plan_outputs(folder: Path, names: list[str]) -> None:
    """Every file export writes, checked before the first is traced, as translate and restore plan theirs
    (batch.claim_outputs): inside -o once symlinks are resolved (a link to elsewhere, dangling or not, is
    refused, never written through), no folder in the way."""
    files = [folder / f"{name}{suffix}" for name in names for suffix in (".onnx", ".json")]
    claim_outputs([(path, f"the {path.suffix[1:]} file {path.name}") for path in files], folder=folder)
    for path in files:
        output_exists(path)


def _sidecar(network: Network, export: Export, precision: str, digest: str | None, differences: list[float],
             source: object, graph_sha256: str) -> dict:
    facts = network.describe()
    pipeline = f"imgforge.pipelines.{network.family.task}"  # none for a training-only network (patchgan)
    recipe = getattr(import_module(pipeline), "deploy_recipe", None) if find_spec(pipeline) else None

    def tensors(names):
        return [{"name": name, "dtype": "float32", "dynamic_axes": export.dynamic_axes.get(name, {}),
                 "meaning": export.io.get(name, "")} for name in names]

    return {
        "graph": f"{graph_name(network, export)}.onnx", "graph_sha256": graph_sha256,
        "family": network.family.name, "task": network.family.task, "part": export.name,
        "precision": precision, "opset": OPSET, "imgforge": __version__,
        "source": {"model_or_file": str(source), "role": network.role, "sha256": digest},
        "inputs": tensors(export.input_names), "outputs": tensors(export.output_names),
        "size_rule": {"multiple": export.size_multiple, "min_side": export.min_side},
        "test_time": facts.test_time, "hyperparameters": facts.hyperparameters,
        "deploy": recipe(network) if recipe is not None else {},
        "check": {"sizes": check_sizes(export), "max_abs_diff_vs_torch": differences,
                  "tolerance": TOLERANCE[precision]},
    }
