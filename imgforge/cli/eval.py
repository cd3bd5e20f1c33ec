"""`imgforge eval`: FID, KID, IS, reference statistics and pairwise metrics, see docs/eval.md."""

from __future__ import annotations

import json as json_module
import math
import sys
from typing import Annotated, List, Optional

import typer

from . import options
from .app import app
from ..errors import PartialFailure
from ..progress import console, printable

eval_app = typer.Typer(
    help="Metrics: FID, KID and IS on Inception features; PSNR, SSIM, LPIPS and L1 between pairs of images.",
    no_args_is_help=True, rich_markup_mode=None, context_settings={"max_content_width": 120},
)
app.add_typer(eval_app, name="eval")

Dims = Annotated[int, typer.Option("--dims", metavar="N",
                                   help="Inception features: 2048 (pool3, the standard), or 768, 192, 64.")]
Clean = Annotated[bool, typer.Option(
    "--clean", help="Resize as clean-fid (antialiased bicubic) instead of pytorch-fid's bilinear: not comparable "
    "with published FIDs.")]
FeatureBatch = Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Images per Inception call.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]


# what every metric command shares: where the Inception/LPIPS networks run and how they are found
RUN_OPTIONS = options.parameters(
    quiet=(options.Quiet, False), device=(options.Device, "auto"), offline=(options.Offline, False),
    weights_dir=(options.WeightsDir, None), engine=(options.Engine, None), ray_address=(options.RayAddress, None),
    workers=(options.Workers, None), gpus_per_worker=(options.GpusPerWorker, None),
)


def _finish(result, json: bool, text: str) -> None:
    """The result on stdout (a JSON object or one line), then exit 3 if some images could not be read."""
    sys.stdout.write((json_module.dumps(result.as_dict()) if json else text) + "\n")
    sys.stdout.flush()
    _check_failed(result.failed)


def _check_failed(failed) -> None:
    if failed:
        raise PartialFailure(f"{len(failed)} image(s) could not be read and were left out (listed above)")


@eval_app.command("fid")
@options.taking(*RUN_OPTIONS)
def fid_command(
    sets: Annotated[List[str], typer.Argument(
        metavar="REAL FAKE", help="Two image sets (folders, globs, s3:// URLs) or statistics .npz files; "
        "with --stats, only FAKE.", show_default=False)],
    stats: Annotated[Optional[str], typer.Option(
        "--stats", metavar="FILE.npz", show_default=False,
        help="Reference statistics (from 'imgforge eval fid-stats' or pytorch-fid --save-stats) instead of REAL.")
    ] = None,
    dims: Dims = 2048, clean: Clean = False, batch_size: FeatureBatch = 50, recursive: options.Recursive = False,
    json: Json = False, **run_options,
) -> None:
    """Fréchet Inception Distance between two image sets (pytorch-fid's numbers with the same weights)."""
    from ..eval.set_metrics import fid

    real, fake = _two_sets(sets, stats)
    result = fid(real, fake, dims=dims, clean=clean, batch_size=batch_size, recursive=recursive,
                 **options.run_arguments(run_options))
    _finish(result, json, f"FID {result.value:.4f} ({result.counts[0]} and {result.counts[1]} images)")


def _two_sets(sets: list[str], stats: str | None) -> tuple[str, list[str]]:
    if stats is not None:
        if len(sets) != 1:
            raise typer.BadParameter("with --stats give one image set (FAKE)")
        return stats, sets
    if len(sets) != 2:
        raise typer.BadParameter("give two image sets, REAL and FAKE (or --stats FILE.npz and FAKE)")
    return sets[0], [sets[1]]


@eval_app.command("fid-stats")
@options.taking(*RUN_OPTIONS)
def fid_stats_command(
    inputs: options.Inputs,
    output: Annotated[str, typer.Option("-o", "--output", metavar="FILE.npz", show_default=False,
                                        help="The statistics file to write (mu, sigma, count).")],
    dims: Dims = 2048, clean: Clean = False, batch_size: FeatureBatch = 50, recursive: options.Recursive = False,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore the partial sums of an interrupted run.")]
    = False,
    json: Json = False, **run_options,
) -> None:
    """Write the Inception statistics of an image set, for 'eval fid --stats'. Resumable: run it again after an
    interruption and it continues."""
    from ..eval.set_metrics import fid_stats

    result = fid_stats(inputs, output, dims=dims, clean=clean, batch_size=batch_size, recursive=recursive,
                       resume=not restart, **options.run_arguments(run_options))
    if json:
        sys.stdout.write(json_module.dumps({"output": output, "images": result.count,
                                            "dims": int(result.statistics.mu.shape[0]),
                                            "failed": len(result.failed)}) + "\n")
    elif not run_options["quiet"]:
        console.print(f"{printable(output)}: statistics of {result.count} images", markup=False, highlight=False)
    _check_failed(result.failed)


@eval_app.command("kid")
@options.taking(*RUN_OPTIONS)
def kid_command(
    real: Annotated[str, typer.Argument(metavar="REAL", help="Reference images (folder, glob, s3://).")],
    fake: Annotated[List[str], typer.Argument(metavar="FAKE", help="Images to score.")],
    subsets: Annotated[int, typer.Option("--subsets", min=1, metavar="N", help="Random subsets averaged.")] = 100,
    subset_size: Annotated[int, typer.Option("--subset-size", min=2, metavar="N",
                                             help="Images per subset (at most the smaller set).")] = 1000,
    seed: options.Seed = None,
    dims: Dims = 2048, clean: Clean = False, batch_size: FeatureBatch = 50, recursive: options.Recursive = False,
    json: Json = False, **run_options,
) -> None:
    """Kernel Inception Distance (torch-fidelity's defaults: cubic polynomial kernel, 100 subsets of 1000)."""
    from ..eval.set_metrics import kid

    result = kid(real, fake, subsets=subsets, subset_size=subset_size, seed=seed or 0, dims=dims, clean=clean,
                 batch_size=batch_size, recursive=recursive, **options.run_arguments(run_options))
    _finish(result, json, f"KID {result.value:.6f} ± {result.std:.6f} ({result.counts[0]} and {result.counts[1]} "
                          f"images, subsets of {result.details['subset_size']})")


@eval_app.command("is")
@options.taking(*RUN_OPTIONS)
def is_command(
    inputs: options.Inputs,
    splits: Annotated[int, typer.Option("--splits", min=1, metavar="N", help="Parts the score is averaged over.")]
    = 10,
    clean: Clean = False, batch_size: FeatureBatch = 50, recursive: options.Recursive = False,
    json: Json = False, **run_options,
) -> None:
    """Inception Score of an image set (softmax of the 1008 logits, 10 splits)."""
    from ..eval.set_metrics import inception_score_of

    result = inception_score_of(inputs, splits=splits, clean=clean, batch_size=batch_size, recursive=recursive,
                                **options.run_arguments(run_options))
    _finish(result, json, f"IS {result.value:.4f} ± {result.std:.4f} ({result.counts[0]} images)")


@eval_app.command("pairs")
@options.taking(*RUN_OPTIONS)
def pairs_command(
    predictions: Annotated[str, typer.Argument(metavar="PRED", help="Predicted images (folder, glob, s3://).")],
    references: Annotated[str, typer.Argument(metavar="REF", help="Reference images, paired by name.")],
    metrics: Annotated[str, typer.Option("--metrics", metavar="LIST",
                                         help="Comma-separated: psnr, ssim, lpips, l1.")] = "psnr,ssim,lpips,l1",
    by_order: Annotated[bool, typer.Option("--by-order", help="Pair the sorted files by position, not name.")]
    = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Pairs per LPIPS call.")] = 8,
    recursive: options.Recursive = False, json: Json = False, **run_options,
) -> None:
    """PSNR, SSIM, LPIPS and L1 of each prediction against its reference, and their mean."""
    from ..eval.pairwise import pairs

    result = pairs(predictions, references, metrics=metrics.split(","), by_order=by_order, recursive=recursive,
                   batch_size=batch_size, **options.run_arguments(run_options))
    names = list(result.mean)
    if json:
        lines = [json_module.dumps({k: _finite(v) for k, v in row.items()}) for row in result.rows]
        lines.append(json_module.dumps({"mean": True, "pairs": len(result.rows),
                                        **{k: _finite(v) for k, v in result.mean.items()}}))
    else:
        width = max([len("mean")] + [len(row["prediction"]) for row in result.rows])
        lines = [f"{'prediction':<{width}}  " + "  ".join(f"{n:>9}" for n in names)]
        lines += [f"{row['prediction']:<{width}}  " + "  ".join(_cell(row[n]) for n in names) for row in result.rows]
        lines.append(f"{'mean':<{width}}  " + "  ".join(_cell(result.mean[n]) for n in names))
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    if result.failed:
        raise PartialFailure(f"{len(result.failed)} pair(s) could not be compared (listed above)")


def _finite(value):
    """JSON has no infinity: an identical pair's PSNR is written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _cell(value: float) -> str:
    return f"{value:>9.4f}" if math.isfinite(value) else f"{'inf':>9}"
