"""From inputs (files, folders, glob patterns; local or s3:// URLs) to jobs with output paths, which
imgforge.engine runs.

Naming rule (docs/usage.md): one input and `-o` with an image extension -> that file; otherwise `-o` is a
folder and each output keeps the input's path relative to the folder it was found in (or its file name), with
the suffix before the extension and the extension replaced when asked; without `-o`, next to the input with the
suffix (default: `default_suffix`). An output may never be one of the inputs, and two inputs may never share an
output: both are InputErrors raised before anything runs.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import InputError, OutputError
from .imageio import WRITE_FORMATS
from .storage import location

# what a folder listing picks up; a file named explicitly is always attempted
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"})
_GLOB_CHARACTERS = frozenset("*?[")
# inputs in a format imgforge reads but does not write (e.g. GIF) get this extension
_FALLBACK_EXTENSION = ".png"


@dataclass(frozen=True)
class Job:
    """One unit of work for imgforge.engine: where its input is (None for sample), where its output goes
    (a Path, or a storage.ObjectPath for s3://; None when kept in memory), its seed, and task-specific
    options (JSON-able, e.g. restore's mask file)."""

    source: Path | None
    target: Path | None
    seed: int | None = None
    options: dict = field(default_factory=dict, compare=False)


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
        jobs = [Job(source=source, target=location(output)) for source, _ in named.values()]
    else:
        folder = location(output) if output is not None else None
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
        _make_folder(location(output))
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
    path = location(spec)
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
    path = location(output)
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
