"""`imgforge restore`: old-photo restoration (scratch detection, VAE + latent mapping), see docs/restore.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options
from .app import app


@app.command()
@options.taking(*options.RUN_OPTIONS)
def restore(
    inputs: options.Inputs,
    output: options.Output = None,
    scratches: Annotated[
        bool, typer.Option("--scratches/--no-scratches", help="Detect and repair scratches, or only fix quality.")
    ] = True,
    mode: Annotated[
        str, typer.Option("--mode", metavar="full|scale",
                          help="full: work at the photo's size; scale: at a shorter side of 256 px.")
    ] = "full",
    hr: Annotated[
        bool, typer.Option("--hr", help="High-resolution scratched photos: the patch-attention mapping model.")
    ] = False,
    mask: Annotated[
        Optional[Path],
        typer.Option("--mask", metavar="PATH",
                     help="Scratch mask (white = scratch) instead of detection: a file, or a folder of "
                     "masks named like the inputs.", show_default=False),
    ] = None,
    mask_dilation: Annotated[
        Optional[int],
        typer.Option("--mask-dilation", metavar="N",
                     min=0, help="Grow the mask by this many 3x3 dilations (default: 3 with "
                     "--hr, else 0).", show_default=False),
    ] = None,
    save_mask: Annotated[
        bool, typer.Option("--save-mask", help="Also write the scratch mask beside each output (<name>_mask.png).")
    ] = False,
    stretch: Annotated[
        bool, typer.Option("--stretch/--no-stretch", help="The official min-max contrast stretch of the output.")
    ] = True,
    faces: Annotated[
        bool, typer.Option("--faces/--no-faces", help="Enhance the faces after the global stage (official stages "
                           "2-4: detect, SPADE face generator, blend back).")
    ] = True,
    faces_only: Annotated[
        bool, typer.Option("--faces-only", help="Only enhance the faces: skip scratch repair and the global stage.")
    ] = False,
    face_detector: Annotated[
        str, typer.Option("--face-detector", metavar="NAME",
                          help="yunet (OpenCV, built in) or dlib (the official detector; "
                          "pip install 'imgforge[faces-dlib]'; its landmark model is not for commercial use).")
    ] = "yunet",
    save_faces: Annotated[
        bool, typer.Option("--save-faces", help="Also write the faces, as found and as enhanced, beside the "
                           "output (<name>_faces_aligned.png, <name>_faces_enhanced.png; side by side).")
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, metavar="N",
                          help="Images handed to a worker at a time (restored one by one).")
    ] = 1,
    recursive: options.Recursive = False,
    suffix: options.Suffix = "",
    output_format: options.OutputFormat = None,
    skip_existing: options.SkipExisting = False,
    **run_options,
) -> None:
    """Restore old photos: repair scratches, reduce noise, blur and fading, then enhance the faces.

    Bringing Old Photos Back to Life. Outputs keep the input's size, metadata and alpha; default name
    <name>_restored."""
    from ..pipelines.restore import restore as run_restore

    report = run_restore(
        inputs, output, scratches=scratches, mode=mode.lower(), hr=hr, mask=mask, mask_dilation=mask_dilation,
        save_mask=save_mask, stretch=stretch, faces=faces, faces_only=faces_only,
        face_detector=face_detector.lower(), save_faces=save_faces, recursive=recursive, suffix=suffix,
        output_format=output_format, skip_existing=skip_existing, batch_size=batch_size,
        **options.run_arguments(run_options),
    )
    options.finish_batch(report, json=run_options["json"], quiet=run_options["quiet"])
