"""Where inputs and outputs live: local paths, or `s3://bucket/key` URLs in object storage, read and written
through pyarrow's filesystem layer (the one Ray Data itself reads with).

`location(spec)` gives a `pathlib.Path` for a local path and an `ObjectPath` for a URL. An ObjectPath is a
PurePosixPath of `bucket/key` that prints as its URL and answers the few Path calls that planning, reading
and writing make (is_file, is_dir, iterdir, rglob, relative_to, read_bytes, write_bytes), so that the naming
rules of imgforge.batch are the same code for both. An object is written with one PUT, which S3 makes
visible whole or not at all: the atomic-write rule needs no temp object.

The endpoint and credentials come from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION / AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL for S3-compatible servers such as
MinIO or Ceph; pyarrow does not read the endpoint variables itself). A server that cannot be reached or that
refuses the credentials fails the run (StorageError, a RunWideError) with one line naming the endpoint.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path, PurePosixPath
from contextlib import contextmanager
from typing import Iterator, Union

from .errors import InputError, RunWideError

SCHEME = "s3://"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
CONNECT_TIMEOUT_S = 5.0
_UNREACHABLE = re.compile(r"NETWORK_CONNECTION|curlCode|Could not resolve host|Couldn't connect")
_REFUSED = re.compile(r"ACCESS_DENIED|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|HTTP status 403|"
                      r"credentials", re.IGNORECASE)


class StorageError(RunWideError):
    """Object storage cannot be used at all (endpoint unreachable, credentials refused, bucket missing)."""


def location(spec: str | os.PathLike) -> Union[Path, "ObjectPath"]:
    """A local path as a Path, an s3:// URL as an ObjectPath; other URL schemes are an InputError."""
    if isinstance(spec, (Path, ObjectPath)):
        return spec
    text = os.fspath(spec)
    if text.startswith(SCHEME):
        key = text[len(SCHEME):]
        if not key.split("/")[0]:
            raise InputError(f"{text} names no bucket: use s3://bucket/key")
        if any(part in (".", "..") for part in key.split("/")):
            raise InputError(f"{text}: '.' and '..' are not allowed in s3:// URLs (object keys are not folders "
                             "that can be walked up)")
        return ObjectPath(key)
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


def check_buckets(targets: list) -> None:
    """StorageError unless the bucket of every ObjectPath in `targets` exists (one request per bucket), so that
    a run writing to a missing bucket stops before its first image. A local run never needs pyarrow."""
    for bucket in sorted({target.parts[0] for target in targets if isinstance(target, ObjectPath)}):
        with _translated(SCHEME + bucket):
            kind = _filesystem().get_file_info(bucket).type
        if kind == _pyarrow_fs().FileType.NotFound:
            raise StorageError(f"the bucket {bucket} does not exist at {endpoint()}; create it first")


def endpoint() -> str:
    """The S3 endpoint in use, as a user would recognise it."""
    url = _endpoint_url()
    if url:
        return url
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return f"AWS S3 ({region})" if region else "AWS S3"


def _endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _pyarrow_fs():
    """pyarrow's filesystem layer, which only s3:// inputs and outputs need (the s3 and ray extras bring it)."""
    try:
        import pyarrow.fs
    except ImportError:
        raise StorageError("s3:// inputs and outputs need pyarrow: pip install 'imgforge[s3]'") from None
    return pyarrow.fs


@lru_cache(maxsize=1)
def _filesystem():
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    return _pyarrow_fs().S3FileSystem(endpoint_override=_endpoint_url(), region=region,
                                   connect_timeout=CONNECT_TIMEOUT_S)


@contextmanager
def _translated(url: str) -> Iterator[None]:
    """pyarrow's OSError for a server that cannot be reached or refuses us, as a StorageError naming the
    endpoint and what to check; other errors (a missing key) are left to the caller."""
    try:
        yield
    except OSError as exc:
        text = " ".join(str(exc).split())
        if _UNREACHABLE.search(text):
            detail = text.rpartition("Details: ")[2] if "Details: " in text else text
            raise StorageError(f"cannot reach the S3 endpoint {endpoint()} (for {url}): {detail}; check "
                               "AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 and that the server is up") from None
        if _REFUSED.search(text):
            if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"):
                what = "the credentials given (AWS_ACCESS_KEY_ID / AWS_PROFILE) were refused"
            else:
                what = ("no credentials are set: give AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                        "AWS_PROFILE)")
            raise StorageError(f"the S3 endpoint {endpoint()} denied access to {url}: {what}") from None
        raise


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
        with _translated(str(self)):
            return _filesystem().get_file_info(self.key)

    def is_file(self) -> bool:
        listed = getattr(self, "_listed_as_file", None)
        return listed if listed is not None else self._info().type == _pyarrow_fs().FileType.File

    def is_dir(self) -> bool:
        return len(self.parts) == 1 or self._info().type == _pyarrow_fs().FileType.Directory

    def iterdir(self) -> Iterator[ObjectPath]:
        return self._list(recursive=False)

    def rglob(self, pattern: str) -> Iterator[ObjectPath]:
        if pattern != "*":
            raise InputError(f"cannot match {pattern!r} in {self}: object storage inputs take folders, not patterns")
        return self._list(recursive=True)

    def _list(self, recursive: bool) -> Iterator[ObjectPath]:
        fs = _pyarrow_fs()
        selector = fs.FileSelector(self.key, recursive=recursive, allow_not_found=True)
        with _translated(str(self)):
            found = _filesystem().get_file_info(selector)
        for info in found:
            child = ObjectPath(info.path)
            child._listed_as_file = info.type == fs.FileType.File
            yield child

    def relative_to(self, other: ObjectPath) -> PurePosixPath:  # type: ignore[override]
        if self.parts[:len(other.parts)] != other.parts:
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(*self.parts[len(other.parts):])

    def read_bytes(self) -> bytes:
        if self._info().type == _pyarrow_fs().FileType.NotFound:
            raise FileNotFoundError(str(self))
        with _translated(str(self)), _filesystem().open_input_stream(self.key) as stream:
            return stream.read()

    def write_bytes(self, data: bytes) -> None:
        with _translated(str(self)), _filesystem().open_output_stream(self.key) as stream:
            stream.write(data)
