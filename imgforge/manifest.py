"""The model zoo as data: weights_manifest.toml -> validated, frozen ModelEntry objects.

The manifest read is imgforge/weights_manifest.toml (package data), or the file named by the environment
variable IMGFORGE_MANIFEST (a user's or a test's own zoo). Its format is described in its header comment and
in docs/models.md. Any problem is a one-line ManifestError naming the file and the table.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from .errors import ManifestError

DEFAULT_MANIFEST = Path(__file__).with_name("weights_manifest.toml")
TASKS = ("translate", "restore", "sample", "eval")
DIRECTIONS = ("AtoB", "BtoA")

_MODEL_KEYS = {"task", "arch", "description", "license", "homepage", "config", "direction", "files", "networks"}
_REQUIRED_MODEL_KEYS = ("task", "arch", "description", "files")
_FILE_KEYS = {"hub", "path", "revision", "urls", "member", "sha256", "size"}
_NETWORK_KEYS = {"family", "file", "config_file", "package_file", "parts", "options", "settings"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_COMMIT = re.compile(r"[0-9a-fA-F]{40}")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


@dataclass(frozen=True)
class FileSource:
    """Where one file of a model comes from. Unknown revision/sha256/size are None.

    Exactly one of `hub` (a Hugging Face repo id, `path` being the file inside it) and `urls` (official
    download addresses tried in order; `member` the file inside a zip archive) is set. For URL files `path` is
    the member's path, or else the last part of the first URL: the name looked up in a --weights-dir."""

    role: str
    path: str
    hub: str | None
    revision: str | None
    urls: tuple[str, ...]
    member: str | None
    sha256: str | None
    size: int | None

    @property
    def pinned(self) -> bool:
        """The bytes cannot change under us: a Hub file at a fixed commit, or any file with a known sha256."""
        return bool(self.revision if self.hub else self.sha256)

    @property
    def basename(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True)
class NetworkSpec:
    """One network of a model: its name (the role a pipeline knows it by), the registry family (or arch) its
    weights must be, the file role holding them, the role of a JSON config file read with them (a diffusers
    config.json), the exports of it the model uses (None: all), the load options (overrides of what the
    weights say), the test-time settings its `describe` takes (e.g. the face generator's size) and a weights
    file an installed Python package ships whose tensors complete the file's ("package/path/in/it": the lpips
    package's linear layers)."""

    name: str
    family: str
    file: str
    config_file: str | None = None
    parts: tuple[str, ...] | None = None
    options: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    package_file: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str
    arch: str
    description: str
    license: str
    homepage: str | None
    config: dict
    files: dict[str, FileSource]
    direction: str | None
    # None: no [networks] table; then every file that is not JSON is a network of `arch` (zoo.model_networks)
    networks: dict[str, NetworkSpec] | None = None


def manifest_path() -> Path:
    """The manifest in use: $IMGFORGE_MANIFEST if set, else the one shipped with imgforge."""
    override = os.environ.get("IMGFORGE_MANIFEST")
    return Path(override).expanduser() if override else DEFAULT_MANIFEST


def load_manifest(path: Path | None = None) -> dict[str, ModelEntry]:
    """All models of the manifest at `path` (default: manifest_path()), by name, in file order."""
    path = Path(path) if path is not None else manifest_path()
    try:
        stat = path.stat()
    except OSError as exc:
        raise ManifestError(f"cannot read the model manifest {path}: {exc.strerror or exc}") from None
    # Keyed on mtime and size too, so an edited manifest is re-read while an unchanged one is parsed once.
    return dict(_parse_manifest(str(path.resolve()), stat.st_mtime_ns, stat.st_size))


def get_model(name: str) -> ModelEntry:
    """The manifest entry called `name`; ManifestError naming close matches if there is none."""
    models = load_manifest()
    if name in models:
        return models[name]
    close = difflib.get_close_matches(name, list(models), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ManifestError(f"unknown model '{name}'{hint} ('imgforge models list' shows them all)")


def models_for_task(task: str) -> list[ModelEntry]:
    """The models of one task, in manifest order."""
    if task not in TASKS:
        raise ManifestError(f"unknown task '{task}'; tasks are {', '.join(TASKS)}")
    return [entry for entry in load_manifest().values() if entry.task == task]


@functools.lru_cache(maxsize=8)
def _parse_manifest(path: str, mtime_ns: int, size: int) -> dict[str, ModelEntry]:
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ManifestError(f"cannot read the model manifest {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not a model manifest (TOML is UTF-8 text; this file is not)") from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        duplicate = re.match(r"Cannot declare \('models', '([^']+)'\) twice \((.*)\)", message)
        if duplicate:
            message = f"model [models.{duplicate.group(1)}] is declared twice ({duplicate.group(2)})"
        raise ManifestError(f"{path}: {message}") from None
    unknown = set(document) - {"models"}
    if unknown:
        raise ManifestError(f"{path}: unknown top-level key(s) {_names(unknown)}; models go in [models.NAME] tables")
    models = document.get("models", {})
    if not isinstance(models, dict):
        raise ManifestError(f"{path}: 'models' must be a table of [models.NAME] tables")
    return {name: _parse_model(path, name, table) for name, table in models.items()}


def _parse_model(path: str, name: str, table: object) -> ModelEntry:
    where = f"{path}: [models.{name}]"
    if not _NAME.fullmatch(name):
        raise ManifestError(f"{where}: model names use letters, digits, '.', '_' and '-' only")
    if not isinstance(table, dict):
        raise ManifestError(f"{where}: must be a table")
    _check_keys(where, table, _MODEL_KEYS, _REQUIRED_MODEL_KEYS)
    task = _string(where, table, "task")
    if task not in TASKS:
        raise ManifestError(f"{where}: task '{task}' is not one of {', '.join(TASKS)}")
    direction = _optional_string(where, table, "direction")
    if direction is not None and (task != "translate" or direction not in DIRECTIONS):
        raise ManifestError(f"{where}: direction is for translate models only, and is AtoB or BtoA")
    config = table.get("config", {})
    if not isinstance(config, dict):
        raise ManifestError(f"{where}: config must be a table of constructor options")
    files = table["files"]
    if not isinstance(files, dict) or not files:
        raise ManifestError(f"{where}: files must be a table of files.ROLE = {{ ... }} entries")
    arch = _string(where, table, "arch")
    networks = table.get("networks")
    if networks is not None:
        if not isinstance(networks, dict):
            raise ManifestError(f"{where}: networks must be a table of networks.NAME = {{ ... }} entries")
        networks = {net: _parse_network(f"{where} networks.{net}", net, spec, arch, files)
                    for net, spec in networks.items()}
    return ModelEntry(
        name=name,
        task=task,
        arch=arch,
        description=_string(where, table, "description"),
        license=_optional_string(where, table, "license") or "",
        homepage=_optional_string(where, table, "homepage"),
        config=config,
        files={role: _parse_file(f"{where} files.{role}", role, spec) for role, spec in files.items()},
        direction=direction,
        networks=networks,
    )


def _parse_network(where: str, name: str, spec: object, arch: str, files: dict) -> NetworkSpec:
    if not isinstance(spec, dict):
        raise ManifestError(f"{where}: must be an inline table {{ family = ..., file = ... }}")
    _check_keys(where, spec, _NETWORK_KEYS, ())
    file = _optional_string(where, spec, "file") or name
    config_file = _optional_string(where, spec, "config_file")
    for key, role in (("file", file), ("config_file", config_file)):
        if role is not None and role not in files:
            raise ManifestError(f"{where}: {key} '{role}' is not one of the model's files ({_names(files)})")
    package_file = _optional_string(where, spec, "package_file")
    if package_file is not None and len(PurePosixPath(_relative_path(where, "package_file", package_file)).parts) < 2:
        raise ManifestError(f"{where}: package_file is a package's name and the file's path inside it")
    parts = spec.get("parts")
    if parts is not None and (not isinstance(parts, list) or not parts
                              or not all(isinstance(part, str) and part for part in parts)):
        raise ManifestError(f"{where}: parts must be a non-empty list of export names")
    for key in ("options", "settings"):
        if not isinstance(spec.get(key, {}), dict):
            raise ManifestError(f"{where}: {key} must be a table")
    return NetworkSpec(name, _optional_string(where, spec, "family") or arch, file, config_file,
                       tuple(parts) if parts is not None else None, dict(spec.get("options", {})),
                       dict(spec.get("settings", {})), package_file)


def _parse_file(where: str, role: str, spec: object) -> FileSource:
    if not isinstance(spec, dict):
        raise ManifestError(f"{where}: must be an inline table {{ hub = ..., path = ... }} or {{ urls = [...] }}")
    _check_keys(where, spec, _FILE_KEYS, ())
    if ("hub" in spec) == ("urls" in spec):
        raise ManifestError(f"{where}: give exactly one source, either hub (with path) or urls")
    sha256 = _optional_string(where, spec, "sha256")
    if sha256 is not None and not _SHA256.fullmatch(sha256):
        raise ManifestError(f"{where}: sha256 must be 64 hex digits (or empty when unknown)")
    size = spec.get("size", "")
    if size == "":
        size = None
    elif isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ManifestError(f"{where}: size must be a positive number of bytes (or empty when unknown)")
    if "hub" in spec:
        return _hub_file(where, role, spec, sha256, size)
    return _url_file(where, role, spec, sha256, size)


def _hub_file(where: str, role: str, spec: dict, sha256: str | None, size: int | None) -> FileSource:
    for key in ("urls", "member"):
        if key in spec:
            raise ManifestError(f"{where}: '{key}' belongs to URL sources, not to hub files")
    repo = _string(where, spec, "hub")
    if not _REPO_ID.fullmatch(repo):
        raise ManifestError(f"{where}: hub '{repo}' is not a repo id like 'owner/name'")
    if "path" not in spec:
        raise ManifestError(f"{where}: a hub file needs path, the file inside the repo")
    file_path = _relative_path(where, "path", _string(where, spec, "path"))
    revision = _optional_string(where, spec, "revision")
    if revision is not None and not _COMMIT.fullmatch(revision):
        raise ManifestError(f"{where}: revision must be a 40-hex commit hash (or empty when unknown)")
    return FileSource(role, file_path, repo, revision and revision.lower(), (), None,
                      sha256 and sha256.lower(), size)


def _url_file(where: str, role: str, spec: dict, sha256: str | None, size: int | None) -> FileSource:
    for key in ("path", "revision"):
        if key in spec:
            raise ManifestError(f"{where}: '{key}' belongs to hub files, not to URL sources")
    urls = spec["urls"]
    if not isinstance(urls, list) or not urls or not all(isinstance(url, str) for url in urls):
        raise ManifestError(f"{where}: urls must be a non-empty list of strings")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or not PurePosixPath(parts.path).name:
            raise ManifestError(f"{where}: '{url}' is not an http(s) URL of a file")
    member = _optional_string(where, spec, "member")
    if member is not None:
        member = _relative_path(where, "member", member)
    file_path = member or PurePosixPath(urlsplit(urls[0]).path).name
    return FileSource(role, file_path, None, None, tuple(urls), member, sha256 and sha256.lower(), size)


def _relative_path(where: str, key: str, value: str) -> str:
    parts = PurePosixPath(value).parts
    if not parts or value.startswith("/") or ".." in parts or "\\" in value:
        raise ManifestError(f"{where}: {key} '{value}' must be a relative path without '..'")
    return value


def _check_keys(where: str, table: dict, allowed: set[str], required: tuple[str, ...]) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {_names(unknown)}; allowed: {_names(allowed)}")
    missing = [key for key in required if key not in table]
    if missing:
        raise ManifestError(f"{where}: missing {_names(missing)}")


def _string(where: str, table: dict, key: str) -> str:
    value = table[key]
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: {key} must be a non-empty string")
    return value


def _optional_string(where: str, table: dict, key: str) -> str | None:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise ManifestError(f"{where}: {key} must be a string")
    return value or None


def _names(keys) -> str:
    return ", ".join(sorted(keys))
