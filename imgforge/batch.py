"""From inputs (files, folders, glob patterns; local or s3:// URLs, see imgforge.storage) to jobs with output
paths, which imgforge.engine runs.

Naming rule (docs/usage.md): one input and `-o` with an image extension -> that file; otherwise `-o` is a
folder (always, with a trailing slash) and each output keeps the input's path relative to the folder it was
found in (or its file name), with the suffix before the extension and the extension replaced when asked;
without `-o`, next to the input with the suffix (default: `default_suffix`). A job's side outputs (a mask, saved
faces) are named `<output stem><side suffix>` beside its output.

Every output, main or side, is planned before any work (`claim_outputs`): it may never be an input (or another
file the run reads), two may never share a path, and with an `-o` folder each must resolve inside it. Each is
an InputError/OutputError raised before anything is written; the `-o` folder itself is created by the first
write, so a run that fails to start leaves nothing behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

from .errors import InputError, OutputError
from .imageio import WRITE_FORMATS, max_pixels, partial_path
from .storage import location, resolved

# what a folder listing picks up; a file named explicitly is always attempted
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"})
_GLOB_CHARACTERS = frozenset("*?[")
# inputs in a format imgforge reads but does not write (e.g. GIF) get this extension
_FALLBACK_EXTENSION = ".png"
_SEPARATORS = tuple({"/", "\\", os.sep, os.altsep or "/"})


@dataclass(frozen=True)
class Job:
    """One unit of work for imgforge.engine: its input (None for sample), every file written for it (Paths, or
    storage.ObjectPaths for s3://; no target when the result stays in memory), its seed and task-specific
    options (JSON-able, e.g. restore's mask file). Plain data, so that a job travels to a cluster worker."""

    source: Path | None
    target: Path | None
    side_outputs: tuple[tuple[str, Path], ...] = ()  # (side suffix, path), e.g. ("_mask.png", out/a_mask.png)
    seed: int | None = None
    options: dict = field(default_factory=dict, compare=False)

    def side_output(self, suffix: str) -> Path:
        """The path planned for the side output declared with `suffix`."""
        return dict(self.side_outputs)[suffix]

    @property
    def outputs(self) -> tuple[Path, ...]:
        main = (self.target,) if self.target is not None else ()
        return (*main, *(path for _, path in self.side_outputs))


def plan_jobs(inputs: Sequence[str], output: str | None, *, recursive: bool = False, suffix: str = "",
              extension: str | None = None, default_suffix: str = "_out", side_suffixes: Sequence[str] = (),
              also_read: Iterable[str | os.PathLike] = ()) -> list[Job]:
    """Expand inputs into jobs (sorted within each input, inputs in the order given, duplicates dropped) and
    give each its output path and one path per side suffix (e.g. "_mask.png": `<output stem>_mask.png`).
    `also_read`: other files the run reads (e.g. given masks), which no output may replace either.
    InputError for an input that matches nothing; InputError/OutputError for a plan that would overwrite an
    input, write two things to one path or leave the -o folder."""
    extension = _normalise_extension(extension)
    for text, option in ((suffix, "--suffix"), *((side, "a side output suffix") for side in side_suffixes)):
        _check_no_separator(text, option)
    max_pixels()  # a bad IMGFORGE_MAX_PIXELS would fail every input: refuse it now
    named = {resolved(source): (source, name) for source, name in expand_inputs(inputs, recursive)}

    folder = None
    if output is not None and _names_a_file(output):
        if len(named) > 1:
            raise InputError(f"-o {output} names one file but there are {len(named)} inputs; give a folder")
        targets = [(source, location(output)) for source, _ in named.values()]
    else:
        folder = location(output) if output is not None else None
        chosen = suffix or ("" if folder else default_suffix)
        targets = [(source, _target(source, name, folder, chosen, extension)) for source, name in named.values()]
    jobs = [Job(source, target, tuple((side, target.with_name(target.stem + side)) for side in side_suffixes))
            for source, target in targets]
    read = {path: source for path, (source, _) in named.items()}
    read.update((resolved(location(path)), location(path)) for path in also_read)
    claims = [(path, _owner(job, path)) for job in jobs for path in job.outputs]
    claim_outputs(claims, reads=read, folder=folder)
    return jobs


def expand_inputs(inputs: Sequence[str], recursive: bool = False) -> list[tuple[Path, Path]]:
    """(image, path used for naming its output) for each image the inputs name, sorted within each input,
    inputs in the order given, duplicates dropped; InputError for an input that matches nothing."""
    named: dict[Path, tuple[Path, Path]] = {}  # resolved source -> (source as given, path used for naming)
    for spec in inputs:
        for source, name in _expand(spec, recursive):
            named.setdefault(resolved(source), (source, name))
    if not named:
        raise InputError("no input images given")
    return list(named.values())


def paired_files(given: Path) -> list[Path]:
    """The files an option like --mask names: the file, or the images of the folder (inputs too, which no
    output may replace)."""
    if given.is_dir():
        return [path for path in given.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS]
    return [given]


def pair_inputs(jobs: list[Job], given: Path, what: str) -> list[Job]:
    """Each job with the file that goes with its input in options[what], decided at plan time: `given` itself
    (one input only), or the image of folder `given` named like the input, whatever its extension. A job
    without one carries options[what + "_error"]: that input fails, the others go on."""
    if given.is_dir():
        def find(source: Path) -> Path:
            for extension in sorted(IMAGE_EXTENSIONS):
                for candidate in (given / (source.stem + extension), given / (source.stem + extension.upper())):
                    if candidate.is_file():
                        return candidate
            raise InputError(f"no {what} named {source.stem}.* in {given}")
    elif not given.is_file():
        raise InputError(f"cannot read {what} {given}: no such file or folder")
    elif len(jobs) > 1:
        raise InputError(f"--{what} {given} is one file but there are {len(jobs)} inputs; give a folder of "
                         f"{what}s named like the inputs")
    else:
        def find(source: Path) -> Path:
            return given

    def paired(job: Job) -> Job:
        try:
            return replace(job, options={**job.options, what: str(find(job.source))})
        except InputError as exc:
            return replace(job, options={**job.options, f"{what}_error": str(exc)})

    return [paired(job) for job in jobs]


def claim_outputs(claims: Iterable[tuple[Path, str]], *, reads: dict[Path, Path] | None = None,
                  folder: Path | None = None) -> None:
    """Check a run's planned outputs before any work: `claims` are (path, what it is, e.g. "the output of
    a.png"); `reads` maps the resolved paths the run reads to their names as given. OutputError for a path
    outside `folder` (when given) or an output folder that cannot be made; InputError for an output that is
    one of `reads` or that two claims share."""
    reads = reads or {}
    inside = resolved(folder) if folder is not None else None
    owners: dict[Path, str] = {}
    parents: set[Path] = set()
    for path, owner in claims:
        parents.add(path.parent)
        real = resolved(path)
        if inside is not None and not real.is_relative_to(inside):
            raise OutputError(f"{owner} would be written to {path}, outside the output folder {folder}")
        if real in reads:
            raise InputError(f"{owner} would overwrite the input {reads[real]}; choose another -o folder or "
                             "a --suffix")
        if real in owners:
            raise InputError(f"{owners[real]} and {owner} would both be written to {path}")
        owners[real] = owner
    for parent in parents:
        check_folder_can_exist(parent)


def check_folder_can_exist(folder: Path) -> None:
    """OutputError if `folder` cannot be created because a file stands where it or one of its parents would
    be (the folder itself is made by the first write into it)."""
    for each in (folder, *folder.parents):
        if each.is_dir():
            return
        if os.path.lexists(each):
            what = "is a file" if each.is_file() else "is not a folder"
            raise OutputError(f"cannot create output folder {folder}: {each} {what}")


def output_exists(path: Path) -> bool:
    """True if `path` holds an output from an earlier run (for --skip-existing), whose leftover temp file
    from a killed overwrite is then removed. OutputError if a folder stands where the file should go."""
    if path.is_dir():
        raise OutputError(f"cannot write {path}: a folder is in the way")
    if not path.exists():
        return False
    partial_path(path).unlink(missing_ok=True)
    return True


def _owner(job: Job, path: Path) -> str:
    if path == job.target:
        return f"the output for {job.source}"
    side = next(side for side, each in job.side_outputs if each == path)
    return f"the {Path(side).stem.lstrip('_') or side} output for {job.source}"


def _check_no_separator(text: str, option: str) -> None:
    if any(separator in text for separator in _SEPARATORS) or "\0" in text:
        raise OutputError(f"{option} {text!r} may not contain a path separator: it names files, not folders")


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
        matches = _glob(spec)
        images = [(m, Path(m.name)) for m in matches if m.is_file() and m.suffix.lower() in IMAGE_EXTENSIONS]
        for match in matches:
            if match.is_dir():
                images.extend((image, Path(image.name)) for image in _list_folder(match, recursive))
        if not images:
            raise InputError(f"no images match {spec}")
        return images
    if os.path.lexists(spec):
        raise InputError(f"cannot read {spec}: not a file or folder")
    raise InputError(f"cannot read {spec}: no such file or folder")


def _glob(spec: str) -> list[Path]:
    """Matches of a glob pattern, sorted; `**` is any depth of folders but never follows a symlinked folder
    (two links to `..` would make it run forever). Hidden files and folders are left out unless the pattern
    names one."""
    parts = Path(spec).parts
    fixed = next(i for i, part in enumerate(parts) if _GLOB_CHARACTERS & set(part))
    root = Path(*parts[:fixed]) if fixed else Path()
    pattern = str(Path(*parts[fixed:]))
    try:
        matches = sorted(root.glob(pattern))
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot expand {spec}: {exc}") from None
    if any(part.startswith(".") for part in Path(pattern).parts):
        return matches
    return [m for m in matches if not any(part.startswith(".") for part in m.relative_to(root).parts)]


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
    if output.endswith(_SEPARATORS):
        return False
    path = location(output)
    return path.suffix.lower() in WRITE_FORMATS and not path.is_dir()


def _target(source: Path, name: Path, folder: Path | None, suffix: str, extension: str | None) -> Path:
    new_extension = extension or (name.suffix if name.suffix.lower() in WRITE_FORMATS else _FALLBACK_EXTENSION)
    file_name = name.stem + suffix + new_extension
    if folder is None:
        return source.parent / file_name
    return folder / name.parent / file_name
