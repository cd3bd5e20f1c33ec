"""A model's files -> verified local paths.

Lookup order for each file (docs/models.md says the same):
  1. the weights folders (`weights_dir` / --weights-dir, repeatable, else $IMGFORGE_WEIGHTS_DIR, an os.pathsep
     list), each whatever its name: the trailing components of the file's path (Hub path or zip member), longest
     first, under the folder and then under the official repository's folders below it (OFFICIAL_FOLDERS; the
     bare file name only if no other file of the manifest shares it), then `<dir>/<model name>/<file name>`.
     Nothing above a folder given, and no other folder beside or below it, is looked in;
  2. Hub files: `hf_hub_download` into the standard Hugging Face cache (a pinned, cached file costs no request);
     URL files: `<HF hub cache>/imgforge-urls/<sha256(url)[:16]>/<file name>`, zip members extracted beside the
     archive under `members/<member path>`;
  3. offline (`offline=True` or HF_HUB_OFFLINE=1) and not found: WeightsUnavailable (exit code 4).
A lock file in effect (imgforge/lock.py) pins each file it names to its recorded Hub commit, sha256 and size.
Every file whose sha256 (or size) the manifest or the lock knows is checked before it is returned, after a
download and on cache hits; a hash already checked is remembered (by size and mtime) under
`<HF hub cache>/imgforge-verified/`, so large files are hashed once. A bad cached file is deleted; a bad file in
the user's weights folder is not.

Progress: Hub downloads show huggingface_hub's own bar, URL downloads a rich bar; quiet=True shows neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

from huggingface_hub import errors as hf_errors
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.utils import silent_tqdm

from . import __version__, lock
from .errors import ChecksumMismatch, DownloadError, ModelError, WeightsUnavailable
from .manifest import FileSource, ModelEntry, load_manifest
from .progress import make_progress

DEFAULT_ENDPOINT = "https://huggingface.co"
_URL_TIMEOUT_S = 60
_CHUNK = 1 << 20
_MANIFEST = "the manifest"

WeightsDirs = Path | str | Sequence[Path | str] | None  # one weights folder or several, in lookup order
# where the official Bringing-Old-Photos-Back-to-Life repository keeps checkpoints, relative to a weights folder
# that is the repository (Global/checkpoints/restoration/...; the face zip unpacks in Face_Enhancement/) or
# its Global/ folder (checkpoints/restoration/...)
OFFICIAL_FOLDERS = ("checkpoints", "Global", "Global/checkpoints", "Face_Enhancement")


def fetch_model(
    entry: ModelEntry, *, offline: bool | None = None, weights_dir: WeightsDirs = None, quiet: bool = False
) -> dict[str, Path]:
    """Local, verified paths of all the model's files, by role (downloading what is missing)."""
    return {
        role: fetch_file(entry, role, offline=offline, weights_dir=weights_dir, quiet=quiet) for role in entry.files
    }


def fetch_file(
    entry: ModelEntry, role: str, *, offline: bool | None = None, weights_dir: WeightsDirs = None,
    quiet: bool = False, locked: bool = True,
) -> Path:
    """Local, verified path of one file of the model (downloading it if it is missing), as the lock file in
    effect pins it (`locked=False`: as the manifest alone says, for writing a new lock)."""
    source, authority = expected_source(entry, role, locked=locked)
    local = _in_weights_dir(entry, source, weights_dir)
    if local is not None:
        verify(entry, source, local, authority=authority)
        return local
    if source.hub:
        return _fetch_hub_file(entry, source, is_offline(offline), quiet, authority)
    return _fetch_url_file(entry, source, is_offline(offline), quiet, authority)


def expected_source(entry: ModelEntry, role: str, *, locked: bool = True) -> tuple[FileSource, str]:
    """One file's source with what is expected of it (commit, sha256, size), from the lock in effect if it
    names the file, else from the manifest; and which of the two vouches for it."""
    source = file_source(entry, role)
    return lock.pinned(entry, source) if locked else (source, _MANIFEST)


def lock_record(entry: ModelEntry, role: str, *, offline: bool | None = None, weights_dir: WeightsDirs = None,
                quiet: bool = False) -> lock.LockedFile:
    """What a lock file records for one file: fetched as the manifest says (downloading what is missing), then
    described by its Hub commit (or the URL it came from), sha256 and size."""
    source = file_source(entry, role)
    path = fetch_file(entry, role, offline=offline, weights_dir=weights_dir, quiet=quiet, locked=False)
    digest, size = sha256_of(path), path.stat().st_size
    if source.hub:
        return lock.LockedFile(digest, size, hub=source.hub, path=source.path, revision=_snapshot_commit(path))
    used = next((url for url in source.urls if _url_target(url, source) == path), source.urls[0])
    return lock.LockedFile(digest, size, url=used, member=source.member)


def cached_file(entry: ModelEntry, role: str, *, weights_dir: WeightsDirs = None) -> Path | None:
    """The local copy of one file (weights folder or cache) without any network access or hashing; None if
    there is none."""
    source, _ = expected_source(entry, role)
    local = _in_weights_dir(entry, source, weights_dir)
    if local is not None:
        return local
    if source.hub:
        return _hub_cached(source)
    for url in source.urls:
        target = _url_target(url, source)
        if target.is_file():
            return target
    return None


def verify(entry: ModelEntry, source: FileSource, path: Path, *, rehash: bool = False,
           authority: str = _MANIFEST) -> bool:
    """Check `path` against the size and sha256 of `source` (which `authority`, the manifest or a lock file,
    vouches for); True if a sha256 was checked, False if none is known.

    A mismatching file inside the cache is deleted (for Hub files, the blob and the snapshot link) and
    ChecksumMismatch raised; a file elsewhere (the user's weights folder) is left in place. `rehash` ignores
    the record of earlier checks."""
    size = path.stat().st_size
    wrong_size = source.size is not None and size != source.size
    if source.sha256 is None:
        if wrong_size:
            _reject(entry, source, path, f"is {size} bytes, {authority} says {source.size}")
        return False
    record = _verified_record(path)
    stamp = _stamp(path, source.sha256)
    if not rehash and not wrong_size and _read(record) == stamp:
        return True
    actual = sha256_of(path)
    if wrong_size or actual != source.sha256:
        sizes = f" ({size} bytes)", f" ({source.size} bytes)" if source.size is not None else ""
        _reject(entry, source, path, f"has sha256 {actual}{sizes[0] if wrong_size else ''}, {authority} says "
                f"{source.sha256}{sizes[1] if wrong_size else ''}")
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(stamp)
    except OSError:
        pass  # a read-only cache (e.g. mounted on an air-gapped machine) only costs re-hashing next time
    return True


def file_source(entry: ModelEntry, role: str) -> FileSource:
    try:
        return entry.files[role]
    except KeyError:
        raise ModelError(
            f"model '{entry.name}' has no '{role}' file; its files are {', '.join(entry.files)}"
        ) from None


def is_offline(offline: bool | None = None) -> bool:
    """Offline if asked (`offline=True`, e.g. --offline) or if HF_HUB_OFFLINE is set now: a CLI flag that
    defaults to False must not switch off the environment's choice."""
    if offline:
        return True
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment as it is now (huggingface_hub reads it at import)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.path.expandvars(os.environ[variable])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(cache_home).expanduser() / "huggingface" / "hub"


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weights_folders(weights_dir: WeightsDirs = None) -> list[Path]:
    """The weights folders to look in, in order: those given (--weights-dir, repeatable), else the os.pathsep
    separated list in $IMGFORGE_WEIGHTS_DIR."""
    if weights_dir is None or weights_dir == []:
        given = [part for part in os.environ.get("IMGFORGE_WEIGHTS_DIR", "").split(os.pathsep) if part]
    elif isinstance(weights_dir, (str, os.PathLike)):
        given = [weights_dir]
    else:
        given = list(weights_dir)
    return [Path(folder).expanduser() for folder in given]


def _in_weights_dir(entry: ModelEntry, source: FileSource, weights_dir: WeightsDirs) -> Path | None:
    """The file in a weights folder, whatever the folder is called: an official folder renamed or moved, the
    official repository or its Global/ folder, or a flat folder of the files themselves."""
    parts = PurePosixPath(source.path).parts
    # down to the bare name only when no other file of the manifest shares it (e.g. latest_net_G.pth)
    shortest = 1 if _shared_basenames().count(parts[-1]) <= 1 else 2
    tails = [Path(*parts[start:]) for start in range(len(parts) - shortest + 1)] or [Path(*parts)]
    for folder in weights_folders(weights_dir):
        roots = [folder, *(folder / below for below in OFFICIAL_FOLDERS)]
        for candidate in [root / tail for tail in tails for root in roots] + [folder / entry.name / parts[-1]]:
            if candidate.is_file():
                return candidate
    return None


def _shared_basenames() -> list[str]:
    """The file name of every file of every model in the manifest (a name listed twice is ambiguous)."""
    return [source.basename for entry in load_manifest().values() for source in entry.files.values()]


def _snapshot_commit(path: Path) -> str | None:
    """The Hub commit of a file in the Hugging Face cache (`.../snapshots/<commit>/<path>`); None elsewhere."""
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def _hub_cached(source: FileSource) -> Path | None:
    found = try_to_load_from_cache(
        source.hub, source.path, cache_dir=hub_cache_dir(), revision=source.revision or "main"
    )
    return Path(found) if isinstance(found, str) else None


def _fetch_hub_file(entry: ModelEntry, source: FileSource, offline: bool, quiet: bool, authority: str) -> Path:
    # A file at a pinned commit, or any file offline, is a plain cache lookup: hf_hub_download may contact the
    # endpoint (its user-agent telemetry) even for a cached file or with local_files_only.
    if offline or source.revision:
        path = _hub_cached(source)
        if path is not None:
            verify(entry, source, path, authority=authority)
            return path
        if offline:
            raise _unavailable(entry, source)
    what = f"'{source.path}' of model '{entry.name}' (from {source.hub})"
    try:
        with _hf_warnings_silenced(quiet):
            found = hf_hub_download(
                source.hub,
                filename=source.path,
                revision=source.revision,
                cache_dir=hub_cache_dir(),
                endpoint=os.environ.get("HF_ENDPOINT") or None,
                tqdm_class=silent_tqdm if quiet else None,
            )
    except hf_errors.OfflineModeIsEnabled:
        raise _unavailable(entry, source) from None
    except hf_errors.LocalEntryNotFoundError:
        raise DownloadError(
            f"cannot download {what}: {hub_endpoint()} cannot be reached and the file is not cached; check the "
            "connection, or put the file in --weights-dir"
        ) from None
    except hf_errors.GatedRepoError:
        raise DownloadError(
            f"cannot download {what}: the repo is gated; log in (HF_TOKEN) after accepting its terms"
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise DownloadError(f"cannot download {what}: repo {source.hub} not found on {hub_endpoint()}") from None
    except hf_errors.RevisionNotFoundError:
        raise DownloadError(f"cannot download {what}: revision {source.revision} not found in the repo") from None
    except hf_errors.RemoteEntryNotFoundError:
        raise DownloadError(f"cannot download {what}: the repo has no such file at that revision") from None
    except (OSError, getattr(hf_errors, "HTTPError", OSError)) as exc:
        raise DownloadError(f"cannot download {what}: {_first_line(exc)}") from None
    path = Path(found)
    verify(entry, source, path, authority=authority)
    return path


def _fetch_url_file(entry: ModelEntry, source: FileSource, offline: bool, quiet: bool, authority: str) -> Path:
    for url in source.urls:  # a copy from any of the addresses will do
        target = _url_target(url, source)
        if not target.is_file() and source.member and _archive_path(url).is_file():
            _extract(url, source.member, target)
        if target.is_file():
            verify(entry, source, target, authority=authority)
            return target
    if offline:
        raise _unavailable(entry, source)
    failures = []
    for url in source.urls:
        try:
            _download(url, _archive_path(url), quiet, f"{entry.name}: {_url_name(url)}")
        except DownloadError as exc:
            failures.append(str(exc))
            continue
        target = _url_target(url, source)
        if source.member:
            _extract(url, source.member, target)
        verify(entry, source, target, authority=authority)
        return target
    raise DownloadError(f"cannot download {source.basename} of model '{entry.name}': {'; '.join(failures)}")


@contextlib.contextmanager
def _hf_warnings_silenced(quiet: bool) -> Iterator[None]:
    """With quiet, hide huggingface_hub's own warnings (e.g. its 'Retrying in 4s' lines on a bad network)."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _url_folder(url: str) -> Path:
    return hub_cache_dir() / "imgforge-urls" / hashlib.sha256(url.encode()).hexdigest()[:16]


def _url_name(url: str) -> str:
    return url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def _archive_path(url: str) -> Path:
    """Where the URL's download is kept: the file itself, or the zip archive holding the member."""
    return _url_folder(url) / _url_name(url)


def _url_target(url: str, source: FileSource) -> Path:
    if source.member:
        return _url_folder(url) / "members" / source.member
    return _archive_path(url)


def _download(url: str, target: Path, quiet: bool, label: str) -> None:
    """Download `url` to `target` atomically (temp file, then rename) with a progress bar."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    request = urllib.request.Request(url, headers={"User-Agent": f"imgforge/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=_URL_TIMEOUT_S) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with make_progress(quiet=quiet, transient=True, transfer=True) as progress:
                task = progress.add_task(label, total=total)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    progress.advance(task, len(chunk))
        if total is not None and received != total:
            raise DownloadError(f"{url}: the transfer stopped after {received} of {total} bytes")
        os.replace(partial, target)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"{url}: {_first_line(exc.reason)}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"{url}: {_first_line(exc)}") from None
    finally:
        partial.unlink(missing_ok=True)


def _extract(url: str, member: str, target: Path) -> None:
    archive = _archive_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with zipfile.ZipFile(archive) as zipped, zipped.open(member) as packed, open(partial, "wb") as out:
            shutil.copyfileobj(packed, out, _CHUNK)
        os.replace(partial, target)
    except KeyError:
        raise DownloadError(f"the archive from {url} has no member '{member}'") from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        archive.unlink(missing_ok=True)
        raise DownloadError(f"the download from {url} is not a valid zip archive ({_first_line(exc)}); "
                            "it was deleted, run again to download it afresh") from None
    finally:
        partial.unlink(missing_ok=True)


def _unavailable(entry: ModelEntry, source: FileSource) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"offline, and '{source.path}' ({source.role}) of model '{entry.name}' is not cached: on a connected "
        f"machine run 'imgforge models pull {entry.name}' and copy its Hugging Face cache folder "
        f"({hub_cache_dir()}) to this one, or put the file at DIR/{source.path} for --weights-dir DIR "
        f"(IMGFORGE_WEIGHTS_DIR)"
    )


def _reject(entry: ModelEntry, source: FileSource, path: Path, problem: str) -> None:
    cache = hub_cache_dir().resolve()
    real = path.resolve()
    in_cache = real.is_relative_to(cache)
    if in_cache:
        real.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        _verified_record(real).unlink(missing_ok=True)
        if source.member:  # the archive it came from is bad too
            for url in source.urls:
                if real == _url_target(url, source).resolve():
                    _archive_path(url).unlink(missing_ok=True)
    action = "it was deleted, run again to download it afresh" if in_cache else "replace it"
    raise ChecksumMismatch(f"'{source.path}' ({source.role}) of model '{entry.name}' at {path} {problem}; {action}")


def _verified_record(path: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
    return hub_cache_dir() / "imgforge-verified" / key


def _stamp(path: Path, sha256: str) -> str:
    """What a checked file looked like: a byte changed in place and the mtime set back (touch -r) still moves
    the ctime, and a file swapped in by rename has another inode."""
    stat = path.stat()
    return f"{stat.st_ino} {stat.st_size} {stat.st_mtime_ns} {stat.st_ctime_ns} {sha256}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _first_line(value: object) -> str:
    text = str(value).strip().splitlines()
    return text[0] if text else type(value).__name__
