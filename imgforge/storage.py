"""Where inputs and outputs live: local paths, or `s3://bucket/key` URLs in object storage, read and written
through pyarrow's filesystem layer (the one Ray Data itself reads with).

`location(spec)` gives a `pathlib.Path` for a local path and an `ObjectPath` for a URL. An ObjectPath is a
PurePosixPath of `bucket/key` that prints as its URL and answers the few Path calls that planning, reading
and writing make (is_file, is_dir, iterdir, rglob, relative_to, read_bytes, write_bytes), so that the naming
rules of imgforge.batch are the same code for both. An object is written with one PUT, which S3 makes
visible whole or not at all: the atomic-write rule needs no temp object.

The endpoint and credentials come from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION / AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL for S3-compatible servers such as
MinIO or Ceph; pyarrow does not read the endpoint variables itself).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Iterator, Union

from .errors import InputError

SCHEME = "s3://"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def location(spec: str | os.PathLike) -> Union[Path, "ObjectPath"]:
    """A local path as a Path, an s3:// URL as an ObjectPath; other URL schemes are an InputError."""
    if isinstance(spec, (Path, ObjectPath)):
        return spec
    text = os.fspath(spec)
    if text.startswith(SCHEME):
        return ObjectPath(text[len(SCHEME):])
    if _URL.match(text) and not Path(text).exists():
        raise InputError(f"unsupported URL {text}: use a local path or s3://bucket/key")
    return Path(text)


def is_url(spec: str | os.PathLike) -> bool:
    return isinstance(spec, ObjectPath) or os.fspath(spec).startswith(SCHEME)


def resolved(path: Path | ObjectPath) -> Path | ObjectPath:
    """The path with symlinks and '..' resolved (an ObjectPath as it is), to tell whether two name one file."""
    return path if isinstance(path, ObjectPath) else Path(os.path.realpath(path))


def existing(targets: list) -> set[str]:
    """The targets (Paths or ObjectPaths) that exist, as strings, found by listing each distinct folder once
    (one request per folder instead of one per file on object storage)."""
    folders: dict[str, object] = {}
    for target in targets:
        folders.setdefault(str(target.parent), target.parent)
    found: set[str] = set()
    for folder in folders.values():
        if folder.is_dir():
            found.update(str(child) for child in folder.iterdir())
    return found & {str(target) for target in targets}


@lru_cache(maxsize=1)
def _filesystem():
    import pyarrow.fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    return pyarrow.fs.S3FileSystem(endpoint_override=endpoint, region=region)


class ObjectPath(PurePosixPath):
    """`bucket/key` of an s3:// URL; str() gives the URL back."""

    __slots__ = ("_listed_as_file",)

    def __str__(self) -> str:
        return SCHEME + super().__str__()

    @property
    def key(self) -> str:
        """bucket/key, as pyarrow names the object."""
        return "/".join(self.parts)

    def _info(self):
        return _filesystem().get_file_info(self.key)

    def is_file(self) -> bool:
        import pyarrow.fs

        listed = getattr(self, "_listed_as_file", None)
        return listed if listed is not None else self._info().type == pyarrow.fs.FileType.File

    def is_dir(self) -> bool:
        import pyarrow.fs

        return len(self.parts) == 1 or self._info().type == pyarrow.fs.FileType.Directory

    def iterdir(self) -> Iterator[ObjectPath]:
        return self._list(recursive=False)

    def rglob(self, pattern: str) -> Iterator[ObjectPath]:
        if pattern != "*":
            raise InputError(f"cannot match {pattern!r} in {self}: object storage inputs take folders, not patterns")
        return self._list(recursive=True)

    def _list(self, recursive: bool) -> Iterator[ObjectPath]:
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self.key, recursive=recursive, allow_not_found=True)
        for info in _filesystem().get_file_info(selector):
            child = ObjectPath(info.path)
            child._listed_as_file = info.type == pyarrow.fs.FileType.File
            yield child

    def relative_to(self, other: ObjectPath) -> PurePosixPath:  # type: ignore[override]
        if self.parts[:len(other.parts)] != other.parts:
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(*self.parts[len(other.parts):])

    def read_bytes(self) -> bytes:
        import pyarrow.fs

        if self._info().type == pyarrow.fs.FileType.NotFound:
            raise FileNotFoundError(str(self))
        with _filesystem().open_input_stream(self.key) as stream:
            return stream.read()

    def write_bytes(self, data: bytes) -> None:
        with _filesystem().open_output_stream(self.key) as stream:
            stream.write(data)
