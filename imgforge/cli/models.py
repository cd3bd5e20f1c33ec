"""`imgforge models`: list the model zoo, download weights ahead of time, re-check them, print their paths.

imgforge.hub is imported inside the commands: it pulls in huggingface_hub (~0.1 s), which every other
`imgforge` command would otherwise pay at start-up."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from ..errors import ChecksumMismatch, ImgforgeError
from ..manifest import ModelEntry, get_model, load_manifest, models_for_task
from ..progress import console
from .app import app, fail
from .options import Offline, Quiet, WeightsDir

models_app = typer.Typer(help="List, download, verify and locate model weights.", no_args_is_help=True)
app.add_typer(models_app, name="models")

Names = Annotated[
    List[str], typer.Argument(help="Model names, as `imgforge models list` shows them.", show_default=False)
]


@models_app.command("list")
def list_models(
    task: Annotated[Optional[str], typer.Option("--task", metavar="TASK",
                                                help="Only this task: translate, restore or sample.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON array (one object per model).")] = False,
    weights_dir: WeightsDir = None,
) -> None:
    """List the models imgforge knows, where their weights come from, and whether they are cached."""
    from ..hub import cached_file

    entries = models_for_task(task) if task else list(load_manifest().values())
    rows = [_describe(entry, {role: cached_file(entry, role, weights_dir=weights_dir) for role in entry.files})
            for entry in entries]
    if json_output:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("task", "description", "source", "pinned", "verified", "cached", box=None)
    table.columns.insert(0, Column("name", no_wrap=True))
    for row in rows:  # a file is "verified" when the manifest knows its sha256
        table.add_row(row["name"], row["task"], row["description"], row["source"],
                      *(_count(row, key) for key in ("pinned", "sha256", "cached")))
    _stdout().print(table)


@models_app.command()
def pull(names: Names, offline: Offline = False, weights_dir: WeightsDir = None, quiet: Quiet = False) -> None:
    """Download models' weights into the cache (checking their sha256 where known), e.g. before going offline."""
    from ..hub import fetch_model

    entries = [get_model(name) for name in names]  # an unknown name fails before anything is downloaded
    for entry in entries:
        paths = fetch_model(entry, offline=offline, weights_dir=weights_dir, quiet=quiet)
        for role, path in paths.items():
            note = "" if entry.files[role].sha256 else " (no sha256 known: not verified)"
            console.print(f"{entry.name} {role}: {path}{note}", soft_wrap=True, markup=False)


@models_app.command()
def verify(
    names: Annotated[Optional[List[str]], typer.Argument(help="Model names; default: every model the lock file "
                                                         "records, else every cached model.",
                                                         show_default=False)] = None,
    weights_dir: WeightsDir = None,
) -> None:
    """Re-hash cached weights against the lock file's sha256 (else the manifest's); a mismatching cached file is
    deleted (exit 1)."""
    from ..hub import cached_file, expected_source, verify as verify_file
    from ..lock import lock_path, read_lock

    lock = lock_path()
    if names:
        entries = [get_model(name) for name in names]
    elif lock is not None:
        entries = [get_model(name) for name in read_lock(lock)]
    else:
        entries = [entry for entry in load_manifest().values()
                   if any(cached_file(entry, role, weights_dir=weights_dir) for role in entry.files)]
        if not entries:
            console.print("no model has cached files")
            return
    table = Table("model", "file", "status", "path", box=None)
    mismatches = []
    for entry in entries:
        for role in entry.files:
            source, authority = expected_source(entry, role)
            path = cached_file(entry, role, weights_dir=weights_dir)
            if path is None:
                status = "not cached"
            else:
                try:
                    status = "ok" if verify_file(entry, source, path, rehash=True, authority=authority) \
                        else "no sha256 known"
                except ChecksumMismatch as exc:
                    status = Text("MISMATCH", style="red")
                    mismatches.append(str(exc))
            table.add_row(entry.name, role, status, str(path or ""))
    _stdout().print(table)
    for mismatch in mismatches:
        console.print(f"mismatch: {mismatch}", soft_wrap=True, markup=False)
    if mismatches:
        against = f"the lock file {lock}" if lock is not None else "the manifest"
        fail(f"{len(mismatches)} file(s) did not match the sha256 of {against} (deleted from the cache where "
             "cached; 'imgforge models pull' downloads them again)")


@models_app.command("lock")
def lock_models(
    names: Annotated[Optional[List[str]], typer.Argument(help="Model names; default: the models the lock file "
                                                         "already records, else every model of the manifest.",
                                                         show_default=False)] = None,
    file: Annotated[
        Optional[Path],
        typer.Option("--file", metavar="FILE", show_default=False,
                     help="The lock file to write (default: --lock or IMGFORGE_LOCK, else imgforge.lock)."),
    ] = None,
    offline: Offline = False,
    weights_dir: WeightsDir = None,
    quiet: Quiet = False,
) -> None:
    """Pin the exact weights: record each file's Hub commit (or URL), sha256 and size in a lock file.

    Files are fetched as the manifest says, downloading what is missing. Every later run with the lock file
    (--lock FILE, IMGFORGE_LOCK, or imgforge.lock in the working folder) fetches those commits and refuses any
    file that differs."""
    from ..hub import lock_record
    from ..lock import LOCK_NAME, read_lock, write_lock

    target = file or Path(os.environ.get("IMGFORGE_LOCK") or LOCK_NAME)
    if not names and target.is_file():
        names = list(read_lock(target))
    entries = [get_model(name) for name in names] if names else list(load_manifest().values())
    records = {entry.name: {role: lock_record(entry, role, offline=offline, weights_dir=weights_dir, quiet=quiet)
                            for role in entry.files} for entry in entries}
    write_lock(target, records)
    if not quiet:
        count = sum(len(files) for files in records.values())
        console.print(f"locked {count} file(s) of {len(records)} model(s) in {target}", soft_wrap=True, markup=False)


@models_app.command("path")
def path_command(
    name: Annotated[str, typer.Argument(help="Model name.", show_default=False)],
    role: Annotated[Optional[str], typer.Option("--role", metavar="ROLE",
                                                help="Only this file (e.g. weights, generator).")] = None,
    weights_dir: WeightsDir = None,
) -> None:
    """Print the local paths of a model's cached files (`role<TAB>path`, or just the path with --role)."""
    from ..hub import cached_file, file_source

    entry = get_model(name)
    roles = [file_source(entry, role).role] if role else list(entry.files)
    found = {}
    for each in roles:
        local = cached_file(entry, each, weights_dir=weights_dir)
        if local is None:
            raise ImgforgeError(f"'{entry.files[each].path}' ({each}) of model '{name}' is not cached; "
                                f"run 'imgforge models pull {name}'")
        found[each] = local
    for each, local in found.items():
        typer.echo(str(local) if role else f"{each}\t{local}")


@models_app.command()
def inspect(
    path: Annotated[str, typer.Argument(help="A weights file, or a folder of them.", show_default=False)],
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON array (one object per file).")] = False,
) -> None:
    """Say what a weights file is: the network family, what its shapes tell (hyperparameters, parameter count,
    dtype) and the zoo models it matches (by sha256 where the manifest knows it, else by layout)."""
    from ..inspection import inspect_weights

    found = inspect_weights(path, skipped=lambda file, reason: console.print(
        f"skipped: {reason}" if str(file) in reason else f"skipped {file}: {reason}", soft_wrap=True,
        markup=False, highlight=False))
    if json_output:
        typer.echo(json.dumps([item.as_dict() for item in found], indent=2))
        return
    out = _stdout()
    for item in found:
        options = ", ".join(f"{key} {value}" for key, value in item.hyperparameters.items())
        matches = ([f"{name} (sha256)" for name in item.zoo_by_sha256]
                   + [f"{name} (layout)" for name in item.zoo_by_layout]) or ["none"]
        for label, value in (("file", item.path), ("family", f"{item.family} ({item.summary}), task {item.task}"),
                             ("options", options), ("parameters", f"{item.parameters:,} ({item.dtype})"),
                             ("channels", f"{item.in_channels} -> {item.out_channels}, sides multiples of "
                                          f"{item.size_multiple}, at least {item.min_side}"),
                             ("exports", ", ".join(item.exports)), ("zoo", ", ".join(matches))):
            out.print(f"{label:>10}  {value}", markup=False, highlight=False, soft_wrap=True)


def _stdout() -> Console:
    """Tables go to stdout, their cells printed as they are (no markup); piped, they keep long names and
    descriptions on one line."""
    out = Console(markup=False, highlight=False)
    return out if out.is_terminal else Console(width=200, markup=False, highlight=False)


def _describe(entry: ModelEntry, cached: dict) -> dict:
    """A model as `models list --json` prints it."""
    files = {}
    for role, source in entry.files.items():
        files[role] = {
            "hub": source.hub, "path": source.path, "revision": source.revision, "urls": list(source.urls),
            "member": source.member, "sha256": source.sha256, "size": source.size, "pinned": source.pinned,
            "cached": str(cached[role]) if cached[role] else None,
        }
    sources = {f"hub:{s.hub}" if s.hub else f"url:{s.urls[0].split('/')[2]}" for s in entry.files.values()}
    return {
        "name": entry.name, "task": entry.task, "arch": entry.arch, "description": entry.description,
        "license": entry.license, "homepage": entry.homepage, "direction": entry.direction,
        "source": ", ".join(sorted(sources)),
        "pinned": all(f["pinned"] for f in files.values()),
        "verified": all(f["sha256"] for f in files.values()),
        "cached": all(f["cached"] for f in files.values()),
        "files": files,
    }


def _count(row: dict, key: str) -> str:
    """'yes', 'no', or 'k/n' files, for one yes/no property of a model's files."""
    hits = sum(bool(f[key]) for f in row["files"].values())
    total = len(row["files"])
    return "yes" if hits == total else "no" if hits == 0 else f"{hits}/{total}"
