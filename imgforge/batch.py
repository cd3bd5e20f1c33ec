"""From inputs (files, folders, glob patterns) to jobs with output paths, and the loop that runs them: one
failing file is reported on one line and the batch goes on; outputs that exist can be skipped to resume.

Naming rule (docs/usage.md): one input and `-o` with an image extension -> that file; otherwise `-o` is a
folder and each output keeps the input's path relative to the folder it was found in (or its file name), with
the suffix before the extension and the extension replaced when asked; without `-o`, next to the input with the
suffix (default: `default_suffix`). An output may never be one of the inputs, and two inputs may never share an
output: both are InputErrors raised before anything runs.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Sequence, TypeVar

from rich.progress import Progress, TaskID

from .errors import ImgforgeError, InputError, OutputError
from .imageio import WRITE_FORMATS, partial_path
from .progress import console, listening_within_item, make_progress

# what a folder listing picks up; a file named explicitly is always attempted
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"})
_GLOB_CHARACTERS = frozenset("*?[")
# inputs in a format imgforge reads but does not write (e.g. GIF) get this extension
_FALLBACK_EXTENSION = ".png"

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


@dataclass
class BatchReport:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)


def plan_jobs(inputs: Sequence[str], output: str | None, *, recursive: bool = False, suffix: str = "",
              extension: str | None = None, default_suffix: str = "_out") -> list[Job]:
    """Expand inputs into jobs (sorted within each input, inputs in the order given, duplicates dropped) and
    give each its output path; the -o folder is created once the plan is valid. InputError for an input that
    matches nothing, an output that would overwrite an input, or two inputs sharing an output."""
    extension = _normalise_extension(extension)
    found: list[tuple[Path, Path]] = []  # (source, path used for naming)
    for spec in inputs:
        found.extend(_expand(spec, recursive))
    named: dict[Path, tuple[Path, Path]] = {}  # resolved source -> (source as given, path used for naming)
    for source, name in found:
        named.setdefault(source.resolve(), (source, name))
    if not named:
        raise InputError("no input images given")

    if output is not None and _names_a_file(output):
        if len(named) > 1:
            raise InputError(f"-o {output} names one file but there are {len(named)} inputs; give a folder")
        jobs = [Job(source=source, target=Path(output)) for source, _ in named.values()]
    else:
        folder = Path(output) if output is not None else None
        jobs = [Job(source=source, target=_target(source, name, folder, suffix or ("" if folder else default_suffix),
                                                  extension))
                for source, name in named.values()]

    owners: dict[Path, Path] = {}
    for job in jobs:
        resolved = job.target.resolve()
        if resolved in named:
            raise InputError(f"the output for {job.source} would overwrite the input {named[resolved][0]}; "
                             "choose another -o folder or a --suffix")
        if resolved in owners:
            raise InputError(f"inputs {owners[resolved]} and {job.source} would both be written to {job.target}")
        owners[resolved] = job.source
    if output is not None and not _names_a_file(output):
        _make_folder(Path(output))
    return jobs


def _normalise_extension(extension: str | None) -> str | None:
    if not extension:
        return None
    extension = "." + extension.lower().lstrip(".")
    if extension not in WRITE_FORMATS:
        known = ", ".join(e.lstrip(".") for e in sorted(WRITE_FORMATS))
        raise OutputError(f"unknown output format {extension.lstrip('.')!r} (use one of {known})")
    return extension


def _expand(spec: str, recursive: bool) -> list[tuple[Path, Path]]:
    if not spec:
        raise InputError("an input path is empty")
    path = Path(spec)
    if path.is_file():
        return [(path, Path(path.name))]
    if path.is_dir():
        images = [(image, image.relative_to(path)) for image in _list_folder(path, recursive)]
        if not images:
            where = "in or under" if recursive else "in"
            hint = "" if recursive else " (use --recursive for sub-folders)"
            raise InputError(f"no images {where} folder {spec}{hint}")
        return images
    if _GLOB_CHARACTERS & set(spec):
        matches = sorted(glob.glob(spec, recursive=True))
        images = [(Path(m), Path(Path(m).name)) for m in matches
                  if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_EXTENSIONS]
        for match in matches:
            if Path(match).is_dir():
                images.extend((image, Path(image.name)) for image in _list_folder(Path(match), recursive))
        if not images:
            raise InputError(f"no images match {spec}")
        return images
    if os.path.lexists(spec):
        raise InputError(f"cannot read {spec}: not a file or folder")
    raise InputError(f"cannot read {spec}: no such file or folder")


def _list_folder(folder: Path, recursive: bool) -> list[Path]:
    """Images in `folder` (and its sub-folders), sorted; hidden files and folders (e.g. '._x.jpg' from macOS,
    '.x.png.partial' temp files) are left out."""
    try:
        return sorted(
            path for path in (folder.rglob("*") if recursive else folder.iterdir())
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        )
    except OSError as exc:
        raise InputError(f"cannot list folder {folder}: {exc.strerror or exc}") from None


def _names_a_file(output: str) -> bool:
    path = Path(output)
    return path.suffix.lower() in WRITE_FORMATS and not path.is_dir()


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None


def _target(source: Path, name: Path, folder: Path | None, suffix: str, extension: str | None) -> Path:
    new_extension = extension or (name.suffix if name.suffix.lower() in WRITE_FORMATS else _FALLBACK_EXTENSION)
    file_name = name.stem + suffix + new_extension
    if folder is None:
        return source.parent / file_name
    return folder / name.parent / file_name


def run_batch(jobs: Sequence[Job], *, load: Callable[[Job], T], compute: Callable[[list[T]], list[R]],
              save: Callable[[Job, T, R], dict | None], batch_size: int = 1,
              group_key: Callable[[T], Hashable] | None = None, skip_existing: bool = False, quiet: bool = False,
              label: str = "images", json_lines: bool = False) -> BatchReport:
    """Load each job, run `compute` on runs of consecutive loaded items that share `group_key` (at most
    `batch_size` of them), then `save` each result; `save` may return a dict of extra fields for the job's
    record. A failure in load/save fails that file, one in compute fails its group; each is printed as
    `failed: <path>: <reason>` on stderr as it happens. Records (and, with json_lines, one JSON object per
    job on stdout) come in the order jobs finish: input order, except that a failed load can overtake the
    group still being filled.
    Ctrl-C stops after a summary line and re-raises KeyboardInterrupt."""
    report = BatchReport()
    pending: list[tuple[Job, Any]] = []
    pending_key: Hashable = None
    with make_progress(quiet=quiet) as progress:
        task = progress.add_task(label, total=len(jobs))

        def record(job: Job, status: str, error: str | None = None, extra: dict | None = None) -> None:
            entry: dict[str, Any] = {"input": str(job.source), "output": str(job.target), "status": status}
            if error is not None:
                entry["error"] = error
                report.failed.append((job.source, error))
                reason = error.removeprefix(f"cannot read {job.source}: ")  # read_image names the file too
                console.print(f"failed: {job.source}: {reason}", markup=False, highlight=False, soft_wrap=True)
            elif status == "done":
                report.done += 1
            else:
                report.skipped += 1
            entry.update(extra or {})
            report.records.append(entry)
            if json_lines:
                sys.stdout.write(json.dumps(entry, default=str) + "\n")
                sys.stdout.flush()
            progress.advance(task)

        def flush() -> None:
            group = pending[:]
            pending.clear()
            try:
                with _bar_within(progress, task, len(report.records), len(group), label):
                    results = compute([item for _, item in group])
                if len(results) != len(group):
                    raise RuntimeError(f"compute returned {len(results)} results for {len(group)} inputs")
            except Exception as exc:
                error = _describe(exc)
                for job, _ in group:
                    record(job, "failed", error)
                return
            for (job, item), result in zip(group, results):
                try:
                    extra = save(job, item, result)
                except Exception as exc:
                    record(job, "failed", _describe(exc))
                else:
                    record(job, "done", extra=extra)

        try:
            for job in jobs:
                if skip_existing and job.target.exists():
                    partial_path(job.target).unlink(missing_ok=True)  # a temp file from a killed overwrite
                    record(job, "skipped")
                    continue
                try:
                    item = load(job)
                except Exception as exc:
                    record(job, "failed", _describe(exc))
                    continue
                key = group_key(item) if group_key is not None else None
                if pending and pending_key != key:
                    flush()
                pending.append((job, item))
                pending_key = key
                if len(pending) >= batch_size:
                    flush()
            if pending:
                flush()
        except KeyboardInterrupt:
            progress.stop()
            console.print(f"interrupted: {report.done} done, {report.skipped} skipped, {len(report.failed)} failed, "
                          f"{len(jobs) - len(report.records)} not run; outputs written so far are complete",
                          markup=False, highlight=False, soft_wrap=True)
            raise
    return report


@contextlib.contextmanager
def _bar_within(progress: Progress, task: TaskID, finished: int, size: int, label: str) -> Iterator[None]:
    """While a group computes, progress reported within it (progress.report_within_item) moves the bar
    between `finished` and `finished + size`, and names the stage; afterwards the bar is back at `finished`
    for the records to advance it."""
    def within_group(fraction: float, stage: str) -> None:
        progress.update(task, completed=finished + fraction * size, description=f"{label}: {stage}")

    try:
        with listening_within_item(within_group):
            yield
    finally:
        progress.update(task, completed=finished, description=label)


def _describe(exc: Exception) -> str:
    """One line for the report. Errors the user can cause carry their message; anything else is a bug,
    re-raised with IMGFORGE_DEBUG=1 so that its traceback can be seen."""
    message = " ".join(str(exc).split())
    if isinstance(exc, ImgforgeError):
        return message or type(exc).__name__
    if os.environ.get("IMGFORGE_DEBUG") == "1":
        raise exc
    if isinstance(exc, MemoryError):
        return "out of memory; try a smaller --batch-size or image"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
