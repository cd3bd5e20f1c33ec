"""Errors a user can cause. Each has a one-line message and the exit code the CLI returns for it."""


class ImgforgeError(Exception):
    """A problem the user can fix; the CLI prints the message on one line, without a traceback."""

    exit_code = 1


class RunWideError(ImgforgeError):
    """A fault that would fail every input (a missing backend, a bad setting): a batch stops at once instead of
    reporting it once per file."""


class UsageError(ImgforgeError):
    """Options that cannot work (a value out of range, a setting the chosen engine does not have, options that
    cannot run together): exit 2, as for the usage errors the command-line parser finds itself."""

    exit_code = 2


class InputError(ImgforgeError):
    """An input image (or other input file) cannot be read or is not acceptable."""


class OutputError(ImgforgeError):
    """An output cannot be written where it was asked for."""


class ModelError(ImgforgeError):
    """A model cannot be built or its weights do not fit the architecture."""


class ManifestError(ImgforgeError):
    """weights_manifest.toml (or a user's manifest) is malformed."""


class DownloadError(ImgforgeError):
    """A weights file could not be fetched or failed verification."""


class ChecksumMismatch(DownloadError):
    """A downloaded or cached file does not have the sha256 the manifest pins."""


class WeightsUnavailable(DownloadError):
    """Offline, and the weights are not in the cache."""

    exit_code = 4


class PartialFailure(ImgforgeError):
    """A batch ran to the end but some inputs failed."""

    exit_code = 3
