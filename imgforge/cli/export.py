"""`imgforge export`: the networks of a zoo model, a weights file or a folder (imgforge.zoo) as checked ONNX
graphs with sidecars, see docs/onnx.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options
from .app import app


@app.command()
def export(
    model: Annotated[Optional[str], typer.Argument(help="A zoo model (imgforge models list), or a weights file or "
                                                   "folder.", show_default=False)] = None,
    output: Annotated[Path, typer.Option("-o", "--output", metavar="DIR",
                                         help="Folder for the .onnx graphs and their .json sidecars.")] = Path("onnx"),
    checkpoint: Annotated[
        Optional[Path], typer.Option("--checkpoint", metavar="FILE|FOLDER", show_default=False,
                                     help="A weights file, or a folder of them (a diffusers folder, a training "
                                     "run), instead of a zoo model; each network is detected."),
    ] = None,
    precision: Annotated[str, typer.Option("--precision", metavar="NAME",
                                           help="fp32, or fp16 (for GPUs; float32 inputs and outputs).")] = "fp32",
    mode: Annotated[str, typer.Option("--mode", metavar="NAME",
                                      help="pix2pix test-time mode: official (per-image statistics, dropout "
                                      "masks as inputs), no-dropout or eval.")] = "official",
    quiet: options.Quiet = False,
    offline: options.Offline = False,
    weights_dir: options.WeightsDir = None,
) -> None:
    """Export a model's networks as checked ONNX graphs.

    One graph per network (dynamic batch, height and width), each checked with onnx.checker and run by ONNX
    Runtime at two sizes against torch before it is reported, with a JSON sidecar."""
    from ..onnx.export import export_model

    report = export_model(output, model, checkpoint, precision=precision.lower(), mode=mode, offline=offline,
                          weights_dir=weights_dir, quiet=quiet)
    if quiet:  # errors only, as --help says
        return
    for path in report.graphs:
        worst = max(report.differences[path.stem])
        typer.echo(f"{path} (max abs diff from torch {worst:.2g} at two sizes)")
