"""`imgforge translate`: pix2pix / CycleGAN models, from the zoo or a user's latest_net_G.pth, see
docs/translate.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options
from .app import app


@app.command()
@options.taking(*options.RUN_OPTIONS)
def translate(
    inputs: options.Inputs,
    output: options.Output = None,
    model: Annotated[
        Optional[str],
        typer.Option("--model", "-m", metavar="NAME",
                     help="A zoo model, e.g. pix2pix-facades-label2photo or cyclegan-horse2zebra "
                     "(imgforge models list --task translate).", show_default=False),
    ] = None,
    checkpoint: Annotated[
        Optional[Path],
        typer.Option("--checkpoint", metavar="FILE",
                     help="Your own generator weights (the official latest_net_G.pth); its "
                     "architecture is read from the weights.", show_default=False),
    ] = None,
    netG: Annotated[
        Optional[str],
        typer.Option("--netG", metavar="NAME",
                     help="unet_256, unet_128, resnet_9blocks or resnet_6blocks (default: from the "
                     "weights).", show_default=False),
    ] = None,
    norm: Annotated[
        Optional[str],
        typer.Option("--norm", metavar="NAME",
                     help="batch, instance or none (default: from the weights).", show_default=False),
    ] = None,
    ngf: Annotated[
        Optional[int],
        typer.Option("--ngf", metavar="N",
                     min=1, help="Generator filters in the first layer (default: from the weights).",
                     show_default=False),
    ] = None,
    no_dropout: Annotated[
        bool, typer.Option("--no-dropout", help="Switch dropout off; BatchNorm still uses each image's statistics.")
    ] = False,
    eval_mode: Annotated[
        bool, typer.Option("--eval", help="The official --eval: BatchNorm running statistics, no dropout.")
    ] = False,
    direction: Annotated[
        Optional[str],
        typer.Option("--direction", metavar="AtoB|BtoA",
                     help="With --aligned: AtoB feeds the left half, BtoA the right (default: the "
                     "model's, else AtoB).", show_default=False),
    ] = None,
    size: Annotated[
        Optional[str],
        typer.Option("--size", metavar="N|native",
                     help="Process at N x N (a multiple of the network's stride; official: 256), or "
                     "'native' (resnet generators: the image's own size). The output keeps the input's size.",
                     show_default=False),
    ] = None,
    aligned: Annotated[
        bool, typer.Option("--aligned", help="Inputs are A|B pairs side by side, as in the official datasets.")
    ] = False,
    compare: Annotated[
        bool, typer.Option("--compare", help="Write input | output (| target, with --aligned) side by side.")
    ] = False,
    seed: options.Seed = None,
    batch_size: options.BatchSize = 4,
    recursive: options.Recursive = False,
    suffix: options.Suffix = "",
    output_format: options.OutputFormat = None,
    skip_existing: options.SkipExisting = False,
    **run_options,
) -> None:
    """Translate images with pix2pix or CycleGAN.

    Test-time behaviour is the official test.py's (BatchNorm on each image's statistics, dropout on; --seed
    makes it reproducible) unless --eval or --no-dropout. Outputs keep the input's size, metadata and alpha;
    default name <name>_translated."""
    from ..pipelines.translate import translate as run_translate

    mode = "eval" if eval_mode else "no-dropout" if no_dropout else "official"
    report = run_translate(
        inputs, output, model=model, checkpoint=checkpoint, netG=netG, norm=norm, ngf=ngf, mode=mode,
        direction=direction, size=size, aligned=aligned, compare=compare, seed=seed, batch_size=batch_size,
        recursive=recursive, suffix=suffix, output_format=output_format, skip_existing=skip_existing,
        **options.run_arguments(run_options),
    )
    options.finish_batch(report, json=run_options["json"], quiet=run_options["quiet"])
