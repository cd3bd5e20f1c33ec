"""`imgforge sample`: draw images from a DDPM checkpoint, see docs/sample.md."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import options
from .app import app
from ..progress import console


@app.command()
@options.taking(*options.RUN_OPTIONS)
def sample(
    model: Annotated[
        str, typer.Option("--model", "-m", metavar="NAME|DIR",
                          help="A model name ('imgforge models list') or a diffusers-format folder.")
    ] = "ddpm-cifar10-32",
    num: Annotated[int, typer.Option("-n", "--num", metavar="N", min=1, help="How many images.")] = 16,
    steps: Annotated[
        int, typer.Option("--steps", metavar="N",
                          min=1, help="Denoising steps (1000 = the paper's DDPM; fewer with ddim/dpm++2m).")
    ] = 1000,
    sampler: Annotated[str, typer.Option("--sampler", metavar="NAME", help="ddpm, ddim or dpm++2m.")] = "ddpm",
    eta: Annotated[float, typer.Option("--eta", metavar="X",
                                       min=0.0, help="DDIM noise: 0 deterministic, 1 DDPM-like.")] = 0.0,
    spacing: Annotated[
        Optional[str],
        typer.Option("--spacing", metavar="NAME",
                     help="Timestep spacing: leading (ddpm/ddim default) or trailing; dpm++2m "
                     "defaults to linspace.", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N",
                                      help="Image i uses seed+i, whatever -n and --batch-size.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", min=1, help="Images per U-Net call.")] = 16,
    output: Annotated[
        Optional[str],
        typer.Option("-o", "--output", metavar="DIR",
                     help="Folder or s3:// URL for sample_00000.png ... (default: samples/, unless only "
                     "--grid is given).", show_default=False),
    ] = None,
    grid: Annotated[
        Optional[str], typer.Option("--grid", metavar="FILE",
                                     help="Also write one tiled picture of all samples.", show_default=False)
    ] = None,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Keep the sample files already there and make only the missing "
                           "ones (resume an interrupted run).")
    ] = False,
    **run_options,
) -> None:
    """Generate images with DDPM, from the official checkpoints or your own diffusers model.

    Denoising diffusion probabilistic models (Ho, Jain and Abbeel, 2020)."""
    from ..pipelines.sample import sample as run_sample

    if output is None and grid is None:
        output = "samples"
    report = run_sample(
        model, num=num, steps=steps, sampler=sampler.lower(), eta=eta, spacing=spacing, seed=seed,
        batch_size=batch_size, output=output, grid=grid, skip_existing=skip_existing,
        **options.run_arguments(run_options),
    )
    if report.grid is not None and not run_options["quiet"]:
        console.print(f"grid: {report.grid}", markup=False, highlight=False, soft_wrap=True)
    options.finish_batch(report, json=run_options["json"], quiet=run_options["quiet"])
