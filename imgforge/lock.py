"""Lock files: the exact bytes of every weights file a project uses, pinned the way package managers pin
dependencies (docs/models.md, "Lock files").

`imgforge models lock` records, for each file of each model, the Hub commit it was resolved to (or the URL it
came from), its sha256 and its size in a TOML file. Every later run with that lock in effect (`--lock FILE`,
else $IMGFORGE_LOCK, else `imgforge.lock` in the working folder when there is one) fetches Hub files at the
recorded commit and refuses any file whose sha256 or size differs from the record.

    [models."oldphoto-quality".files."vae_a"]
    hub = "leonelhs/zeroscratches"
    path = "restoration/VAE_A_quality/latest_net_G.pth"
    revision = "<40 hex>"
    sha256 = "<64 hex>"
    size = 123456
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ImgforgeError
from .manifest import FileSource, ModelEntry, tomllib

LOCK_NAME = "imgforge.lock"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class LockedFile:
    """What the lock says about one file: its source (hub + path, or the url used and the zip member), the Hub
    commit, sha256 and size."""

    sha256: str
    size: int
    hub: str | None = None
    path: str | None = None
    revision: str | None = None
    url: str | None = None
    member: str | None = None

    def describes(self, source: FileSource) -> bool:
        if source.hub:
            return (self.hub, self.path) == (source.hub, source.path)
        return self.url in source.urls and self.member == source.member


def lock_path() -> Path | None:
    """The lock file in effect: $IMGFORGE_LOCK (set by --lock; it must exist), else imgforge.lock in the
    working folder if there is one, else None."""
    chosen = os.environ.get("IMGFORGE_LOCK")
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise ImgforgeError(f"lock file {path} not found (from --lock or IMGFORGE_LOCK); "
                                "'imgforge models lock --file FILE' writes one")
        return path
    default = Path(LOCK_NAME)
    return default if default.is_file() else None


def pinned(entry: ModelEntry, source: FileSource) -> tuple[FileSource, str]:
    """`source` as the lock in effect pins it (its commit, sha256 and size), and who vouches for the expected
    sha256: "the lock file <path>" or "the manifest" when no lock names this file."""
    path = lock_path()
    locked = read_lock(path).get(entry.name, {}).get(source.role) if path is not None else None
    if locked is None:
        return source, "the manifest"
    if not locked.describes(source):
        now = f"{source.hub}/{source.path}" if source.hub else ", ".join(source.urls)
        raise ImgforgeError(f"{path}: model '{entry.name}' file {source.role} is locked from another source than "
                            f"the manifest's ({now}); run 'imgforge models lock {entry.name}' to lock it again")
    revision = locked.revision if source.hub else source.revision
    return dataclasses.replace(source, revision=revision, sha256=locked.sha256, size=locked.size), \
        f"the lock file {path}"


def read_lock(path: Path) -> dict[str, dict[str, LockedFile]]:
    """model -> role -> LockedFile, from the lock file at `path` (re-read when it changes)."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise ImgforgeError(f"cannot read the lock file {path}: {exc.strerror or exc}") from None
    return _parse(str(path), stat.st_mtime_ns, stat.st_size)


def write_lock(path: Path, records: dict[str, dict[str, LockedFile]]) -> None:
    """Write `records` into the lock file at `path`, keeping the models it already locks that `records` does
    not name; atomic (a temp file renamed into place)."""
    models = dict(read_lock(path)) if path.is_file() else {}
    models.update(records)
    lines = ["# Written by `imgforge models lock`: the exact weights files this project runs with.",
             "# Every imgforge run with this lock refuses a file whose sha256 or size differs.", ""]
    for name in sorted(models):
        for role in sorted(models[name]):
            locked = models[name][role]
            lines.append(f"[models.{json.dumps(name)}.files.{json.dumps(role)}]")
            for key in ("hub", "path", "revision", "url", "member", "sha256"):
                if getattr(locked, key):
                    lines.append(f"{key} = {json.dumps(getattr(locked, key))}")
            lines += [f"size = {locked.size}", ""]
    temp = path.with_name(f".{path.name}.partial")
    try:
        temp.write_text("\n".join(lines), encoding="utf-8")
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise ImgforgeError(f"cannot write the lock file {path}: {exc.strerror or exc}") from None


@functools.lru_cache(maxsize=4)
def _parse(path: str, mtime_ns: int, size: int) -> dict[str, dict[str, LockedFile]]:
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ImgforgeError(f"cannot read the lock file {path}: {' '.join(str(exc).split())}") from None
    models = document.get("models", {})
    if not isinstance(models, dict):
        raise ImgforgeError(f"{path}: 'models' must be a table of [models.NAME.files.ROLE] tables")
    return {name: {role: _locked(f"{path}: [models.{name}.files.{role}]", spec)
                   for role, spec in _files(path, name, table).items()}
            for name, table in models.items()}


def _files(path: str, name: str, table: object) -> dict:
    files = table.get("files") if isinstance(table, dict) else None
    if not isinstance(files, dict):
        raise ImgforgeError(f"{path}: [models.{name}] must hold files.ROLE tables")
    return files


def _locked(where: str, spec: object) -> LockedFile:
    fields = {f.name for f in dataclasses.fields(LockedFile)}
    if not isinstance(spec, dict) or set(spec) - fields:
        raise ImgforgeError(f"{where}: a table of {', '.join(sorted(fields))}")
    if not all(isinstance(value, str) for key, value in spec.items() if key != "size"):
        raise ImgforgeError(f"{where}: every field but size is a string")
    if not _SHA256.fullmatch(spec.get("sha256", "")):
        raise ImgforgeError(f"{where}: sha256 must be 64 hex digits")
    size = spec.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ImgforgeError(f"{where}: size must be a number of bytes")
    if spec.get("revision") and not _COMMIT.fullmatch(spec["revision"]):
        raise ImgforgeError(f"{where}: revision must be a 40-hex commit hash")
    if bool(spec.get("hub") and spec.get("path")) == bool(spec.get("url")):
        raise ImgforgeError(f"{where}: give hub and path, or url")
    return LockedFile(**spec)
