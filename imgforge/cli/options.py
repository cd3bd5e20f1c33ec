"""Options shared by several commands, declared once so that they read the same everywhere."""

from __future__ import annotations

import inspect
import json as json_module
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, List, Optional

import typer

from ..errors import PartialFailure
from ..progress import console

if TYPE_CHECKING:  # the engine pulls in OpenCV and Pillow, which commands that do not read images need not load
    from ..engine import BatchReport

Inputs = Annotated[List[str], typer.Argument(help="Input images, folders or glob patterns.", metavar="INPUT",
                                             show_default=False)]
Output = Annotated[
    Optional[str],
    typer.Option("-o", "--output", metavar="PATH", show_default=False,
                 help="Output file (one input) or folder (several inputs; a trailing / always means a folder)."),
]
Recursive = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders of input folders.")]
Suffix = Annotated[str, typer.Option("--suffix", metavar="TEXT",
                                     help="Appended to each output file's stem, e.g. '_restored'.")]
OutputFormat = Annotated[
    Optional[str],
    typer.Option("--format", metavar="EXT",
                 help="Output file extension (png, jpg, webp, tif); default: keep the input's."),
]
SkipExisting = Annotated[
    bool, typer.Option("--skip-existing", help="Skip inputs whose output exists (resume an interrupted run).")
]
JsonReport = Annotated[
    bool, typer.Option("--json", help="Write one JSON object per input on stdout, then a summary object.")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; errors only.")]
Device = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps.")]
Precision = Annotated[str, typer.Option("--precision", metavar="NAME",
                                        help="fp32 (default), bf16, fp16 (GPU only), or auto: bf16 where the "
                                        "device computes it natively (AMX/AVX512-BF16 CPUs, Ampere+ GPUs), "
                                        "else fp32.")]
Backend = Annotated[str, typer.Option("--backend", metavar="NAME",
                                      help="torch, or onnx (exported once, run with onnxruntime).")]
Offline = Annotated[
    bool, typer.Option("--offline", help="Never touch the network: use cached or local weights (also HF_HUB_OFFLINE=1).")
]
WeightsDir = Annotated[
    Optional[List[Path]],
    typer.Option(
        "--weights-dir",
        metavar="DIR",
        help="A folder holding weights files, whatever its name, looked up before the cache; give it several "
        "times for several folders (also IMGFORGE_WEIGHTS_DIR, a list separated by the system's path separator).",
        show_default=False,
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, metavar="N",
                                        help="Images per forward pass (and per Ray batch).")]
Engine = Annotated[
    Optional[str],
    typer.Option("--engine", metavar="local|ray", show_default=False,
                 help="local (default), or ray: a pool of Ray workers (also IMGFORGE_ENGINE)."),
]
RayAddress = Annotated[
    Optional[str],
    typer.Option("--ray-address", metavar="ADDR", show_default=False,
                 help="The Ray cluster for --engine ray (default: RAY_ADDRESS, else a Ray started on this "
                 "machine)."),
]
Workers = Annotated[Optional[int], typer.Option("--workers", min=1, metavar="N", show_default=False,
                                                help="Ray workers (actors), each loading the networks once "
                                                "[default: 1].")]
GpusPerWorker = Annotated[
    Optional[float], typer.Option("--gpus-per-worker", min=0.0, metavar="G", show_default=False,
                                  help="GPUs each Ray worker reserves; 0.5 lets two share one [default: 0].")
]
Threads = Annotated[
    Optional[int],
    typer.Option("--threads", min=1, metavar="N", show_default=False,
                 help="torch's intra-op threads in every worker (default: torch's own locally, 1 per Ray worker, "
                 "which reserves N CPUs). Outputs are byte-identical across engines at equal thread counts."),
]
Seed = Annotated[Optional[int], typer.Option("--seed", metavar="N", help="Random seed, for reproducible results.")]


def parameters(**declared: tuple) -> tuple[inspect.Parameter, ...]:
    """Options for `taking`, each as name=(annotation, default)."""
    return tuple(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
                 for name, (annotation, default) in declared.items())


def taking(*shared: inspect.Parameter):
    """Declares options several commands share once: the decorated command takes them after its own (typer reads
    the signature) and receives them in its ** parameter."""

    def decorate(command):
        own = inspect.signature(command, eval_str=True)
        named = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        command.__signature__ = own.replace(parameters=[*named, *shared])
        command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
        return command

    return decorate


# what the batch commands (restore, translate, sample) share: reporting, where and how the networks run
RUN_OPTIONS = parameters(
    json=(JsonReport, False), quiet=(Quiet, False), device=(Device, "auto"), precision=(Precision, "fp32"),
    backend=(Backend, "torch"), offline=(Offline, False), weights_dir=(WeightsDir, None), engine=(Engine, None),
    ray_address=(RayAddress, None), workers=(Workers, None), gpus_per_worker=(GpusPerWorker, None),
    threads=(Threads, None),
)


def run_arguments(given: dict) -> dict:
    """The Python API's keyword arguments for the shared options given: the engine and its own options become one
    EngineOptions (the chosen engine refuses options that are not its own)."""
    from ..engine import EngineOptions

    given = dict(given)
    engine_settings = {"address": given.pop("ray_address", None), "workers": given.pop("workers", None),
                       "gpus_per_worker": given.pop("gpus_per_worker", None)}
    engine = EngineOptions(name=given.pop("engine", None),
                           settings={key: value for key, value in engine_settings.items() if value is not None})
    return {**given, "engine": engine}


def finish_batch(report: BatchReport, *, json: bool = False, quiet: bool = False) -> None:
    """The end of every batch command: a summary line on stderr (unless --quiet), the summary object on stdout
    with --json, and PartialFailure (exit 3) if any input failed."""
    failed = len(report.failed)
    if not quiet:
        console.print(f"{report.done} done, {report.skipped} skipped, {failed} failed", markup=False, highlight=False)
    if json:
        summary = {"summary": report.summary()}
        sys.stdout.write(json_module.dumps(summary) + "\n")
        sys.stdout.flush()
    if failed:
        total = report.done + report.skipped + failed
        raise PartialFailure(f"{failed} of {total} inputs failed (listed above)")
