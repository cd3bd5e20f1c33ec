"""Reading and writing images: EXIF orientation, grey / palette / CMYK / alpha / 16-bit inputs, ICC and EXIF
carried to the output, a decompression-bomb limit checked from the header, and atomic writes.

Pillow decodes everything except 16-bit colour PNG/TIFF, which it silently reduces to 8 bits: those go through
OpenCV (`IMREAD_UNCHANGED`, BGR order) and are written back through OpenCV too (PNG keeps ICC + EXIF through
`imencodeWithMetadata`; OpenCV's TIFF encoder takes no metadata, so 16-bit colour TIFF outputs carry none).
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageCms

from .errors import InputError, OutputError, RunWideError
from .storage import ObjectPath, location

# Pillow's own error threshold (2 x MAX_IMAGE_PIXELS); IMGFORGE_MAX_PIXELS overrides it.
DEFAULT_MAX_PIXELS = 178_956_970

# extension -> Pillow format name, for the formats imgforge writes
WRITE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
                 ".bmp": "BMP"}
_ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}
_SIXTEEN_BIT_FORMATS = {"PNG", "TIFF"}
_ORIENTATION_TAG = 0x0112
# ImageDescription, Make, Model, DateTime, Artist, Copyright
_TIFF_DESCRIPTIVE_TAGS = (0x010E, 0x010F, 0x0110, 0x0132, 0x013B, 0x8298)
_PARTIAL_SUFFIX = ".partial"
_METADATA_ALLOWANCE = 64 << 20  # bytes of ICC, EXIF and other chunks a 16-bit file may carry besides its pixels
# Image.open consults the module-global MAX_IMAGE_PIXELS; we lift it only around our own header parse.
_pil_limit_lock = threading.Lock()


@dataclass
class Picture:
    """Decoded pixels, upright (EXIF orientation applied), with the metadata worth carrying to the output."""

    pixels: np.ndarray  # H x W x C, C = 1 (grey) or 3 (RGB), uint8 or uint16
    alpha: np.ndarray | None  # H x W, same dtype as pixels
    icc_profile: bytes | None
    exif: bytes | None  # orientation already reset to 1: it describes the upright pixels
    format: str
    path: Path | None

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def is_grey(self) -> bool:
        return self.pixels.shape[2] == 1

    def to_float(self) -> np.ndarray:
        """float32 H x W x C in [0, 1]."""
        scale = 65535.0 if self.bit_depth == 16 else 255.0
        return self.pixels.astype(np.float32) / np.float32(scale)

    def to_pil(self, mode: str = "RGB") -> Image.Image:
        """An 8-bit Pillow image (16-bit values rounded to 8 bits), converted to `mode` ("RGB", "L", "RGBA"...)."""
        pixels = _to_depth(self.pixels, 8)
        base = _pil_image(pixels)
        if self.alpha is not None and mode in ("RGBA", "LA"):
            base.putalpha(_pil_image(_to_depth(self.alpha, 8)))
        return base if base.mode == mode else base.convert(mode)

    @classmethod
    def from_array(cls, array: np.ndarray) -> Picture:
        """An image in memory (H x W [x 1|3|4], uint8, uint16 or float in [0, 1]) as a Picture without metadata;
        a fourth channel is its alpha."""
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
            raise InputError(f"an image array must be H x W, H x W x 1, 3 or 4, not {array.shape}")
        if array.dtype not in (np.uint8, np.uint16):
            array = as_uint8(array)
        alpha = array[:, :, 3] if array.shape[2] == 4 else None
        return cls(pixels=np.ascontiguousarray(array[:, :, :3]), alpha=alpha, icc_profile=None, exif=None,
                   format="", path=None)


def as_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 as it is, uint16 rounded to 8 bits, float in [0, 1] scaled and rounded; other dtypes refused."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    raise InputError(f"image arrays must be uint8, uint16 or float in [0, 1], not {array.dtype}")


def binary_mask(mask: Picture | np.ndarray) -> np.ndarray:
    """A user's mask -> bool H x W, True = marked: a picture or uint8 array where its grey value is >= 128
    (white marks), a bool array as it is, a float array where >= 0.5."""
    if isinstance(mask, Picture):
        mask = np.asarray(mask.to_pil("L"))
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    elif mask.ndim == 3:
        mask = np.asarray(Image.fromarray(as_uint8(mask[:, :, :3])).convert("L"))
    if mask.ndim != 2:
        raise InputError(f"a mask must be H x W (or an image), not {mask.shape}")
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.floating):
        return mask >= 0.5
    return as_uint8(mask) >= 128


def max_pixels() -> int:
    value = os.environ.get("IMGFORGE_MAX_PIXELS", "")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise RunWideError(f"IMGFORGE_MAX_PIXELS must be a whole number of pixels, not {value!r}")
    return limit


def read_image(path: str | os.PathLike) -> Picture:
    """Decode any image Pillow reads (first frame). InputError, one line, naming the file, for anything else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the pixels still decode, or we raise
        return _read(location(path))


def _read(path: Path | ObjectPath) -> Picture:
    """The header is parsed and the size limits checked before the body is read: the decoders then read only
    what the first frame needs from the open file, so a huge file costs its pixels, not its size."""
    with _open(path) as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(0)
        if not size:
            raise InputError(f"cannot read {path}: empty file")
        try:
            with _pil_limit_lock:
                saved_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    image = Image.open(handle)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved_limit
        except Image.UnidentifiedImageError:
            raise InputError(f"cannot read {path}: not an image (or a format Pillow does not read)") from None
        except Exception as exc:  # Pillow raises many types for headers it cannot parse
            raise InputError(f"cannot read {path}: not a valid image ({_reason(exc)})") from None
        width, height = image.size
        limit = max_pixels()
        if width * height > limit:
            raise InputError(
                f"cannot read {path}: {width}x{height} is {width * height} pixels, over the limit of {limit} "
                "(a decompression bomb?); set IMGFORGE_MAX_PIXELS to allow it"
            )
        # decoders of damaged files raise OSError, SyntaxError, ValueError, struct.error, zlib.error, ...
        try:
            return _decode(image, handle, size, path)
        except Exception as exc:
            raise InputError(f"cannot read {path}: {_reason(exc)}") from None


def _open(path: Path | ObjectPath):
    """The file, open for reading (an object in storage is read whole into memory)."""
    try:
        return io.BytesIO(path.read_bytes()) if isinstance(path, ObjectPath) else path.open("rb")
    except FileNotFoundError:
        raise InputError(f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"cannot read {path}: it is a folder, not an image") from None
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or _reason(exc)}") from None


def _whole_file(handle, size: int, width: int, height: int) -> bytes:
    """The file's bytes, for OpenCV's 16-bit decoder, if the file is no larger than its pixels could need
    (8 bytes each: 16-bit RGBA, uncompressed) plus room for metadata."""
    if size > 8 * width * height + _METADATA_ALLOWANCE:
        raise InputError(f"the file is {size} bytes, more than a {width}x{height} image can hold (damaged, or "
                         "padded with junk)")
    handle.seek(0)
    return handle.read()


def _decode(image: Image.Image, handle, size: int, path: Path | ObjectPath) -> Picture:
    icc = image.info.get("icc_profile") or None
    exif = image.info.get("exif") or (_tiff_exif(image) if image.format == "TIFF" else None)
    layout = _sixteen_bit_layout(image, handle)
    if layout is not None:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)  # OpenCV ignores it with IMREAD_UNCHANGED
        data = _whole_file(handle, size, image.width, image.height)
        pixels, alpha = _decode_with_opencv(data, grey=layout == "grey")
    else:
        image.load()  # the full decode: with Pillow's default LOAD_TRUNCATED_IMAGES=False a cut file raises here
        # read after load: Pillow's TIFF decoder applies the orientation itself and then drops the tag
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
        pixels, alpha, icc = _pil_to_arrays(image, icc)
    pixels = _orient(pixels, orientation)
    alpha = None if alpha is None else _orient(alpha, orientation)
    return Picture(pixels=np.ascontiguousarray(pixels), alpha=None if alpha is None else np.ascontiguousarray(alpha),
                   icc_profile=icc, exif=_upright_exif(exif) if exif else None, format=image.format or "",
                   path=path)


def _sixteen_bit_layout(image: Image.Image, handle) -> str | None:
    """"grey" or "colour" for the 16-bit files with more than one channel, which Pillow would cut to 8 bits
    (16-bit grey alone, Pillow's I;16, returns None)."""
    if image.format == "PNG":  # IHDR: bit depth at byte 24 of the file, colour type at 25
        handle.seek(24)
        depth, colour = handle.read(2)
        if depth == 16 and colour in (2, 4, 6):
            return "grey" if colour == 4 else "colour"
    elif image.format == "TIFF":
        bits = image.tag_v2.get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        if 16 in bits and len(bits) > 1:
            return "grey" if image.tag_v2.get(262) in (0, 1) else "colour"  # PhotometricInterpretation
    return None


def _decode_with_opencv(data: bytes, *, grey: bool) -> tuple[np.ndarray, np.ndarray | None]:
    with _opencv_quiet():
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint16:
        raise InputError("OpenCV could not decode the 16-bit image (damaged or truncated?)")
    if array.ndim == 2:
        return array[:, :, None], None
    if array.shape[2] == 2:  # grey + alpha
        return array[:, :, :1], array[:, :, 1]
    rgb = array[:, :, :1] if grey else array[:, :, 2::-1]  # OpenCV expands grey + alpha to BGRA
    return rgb, (array[:, :, 3] if array.shape[2] == 4 else None)


def _pil_to_arrays(image: Image.Image, icc: bytes | None) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
    mode = image.mode
    if mode == "1":
        return np.asarray(image.convert("L"))[:, :, None], None, icc
    if mode == "L":
        return np.asarray(image)[:, :, None], None, icc
    if mode in ("LA", "La"):
        la = np.asarray(image.convert("LA"))
        return la[:, :, :1], la[:, :, 1], icc
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)[:, :, None], None, icc
    if mode == "I":
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)[:, :, None], None, icc
    if mode == "F":
        raise InputError("32-bit floating-point images are not supported")
    if mode == "CMYK":
        return np.asarray(_cmyk_to_rgb(image, icc)), None, _srgb_profile() if icc else None
    if mode == "P" and "transparency" not in image.info:
        return np.asarray(image.convert("RGB")), None, icc
    if mode in ("RGBA", "RGBa", "PA", "P"):
        rgba = np.asarray(image.convert("RGBA"))
        return rgba[:, :, :3], rgba[:, :, 3], icc
    return np.asarray(image.convert("RGB")), None, icc


def _cmyk_to_rgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """Through the file's own CMYK profile to sRGB when it has one; else Pillow's plain formula."""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken embedded profile: the plain conversion is still a correct reading
    return image.convert("RGB")


def _srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """The EXIF orientation transforms (same results as PIL.ImageOps.exif_transpose), on H x W [x C] arrays."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(array, -1)
    if orientation == 7:
        return array.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(array, 1)
    return array


def _upright_exif(exif: bytes) -> bytes:
    """The same EXIF bytes, patched in place so that nothing else is re-encoded or lost: the IFD0 orientation
    set to 1 (the pixels are upright) and the thumbnail directory unlinked (it shows the unprocessed image)."""
    prefix = 6 if exif.startswith(b"Exif\x00\x00") else 0
    block = bytearray(exif)
    try:
        order = {b"II": "<", b"MM": ">"}[bytes(block[prefix:prefix + 2])]
        (ifd_offset,) = struct.unpack_from(order + "I", block, prefix + 4)
        (count,) = struct.unpack_from(order + "H", block, prefix + ifd_offset)
        for index in range(count):
            entry = prefix + ifd_offset + 2 + 12 * index
            tag, kind = struct.unpack_from(order + "HH", block, entry)
            if tag == _ORIENTATION_TAG and kind == 3:  # SHORT, value stored inline
                struct.pack_into(order + "H", block, entry + 8, 1)
        struct.pack_into(order + "I", block, prefix + ifd_offset + 2 + 12 * count, 0)  # no next IFD
    except (KeyError, struct.error):
        return exif  # not a TIFF-structured block: carry it as it is
    return bytes(block)


def _tiff_exif(image: Image.Image) -> bytes | None:
    """TIFF files keep camera facts as tags of their own directory, not as an EXIF block: copy the descriptive
    ones (not the layout tags, nor Software: imgforge writes the output)."""
    tags = image.getexif()
    carried = Image.Exif()
    for tag in _TIFF_DESCRIPTIVE_TAGS:
        if tag in tags:
            carried[tag] = tags[tag]
    return carried.tobytes() if len(carried) else None


def _icc_fits(icc: bytes, channels: int) -> bool:
    """An ICC profile describes one colour space (header bytes 16-19): a grey profile on RGB pixels, or the
    other way round, would make readers misread or refuse the file."""
    return icc[16:20] == (b"GRAY" if channels == 1 else b"RGB ")


def _to_depth(array: np.ndarray, bits: int) -> np.ndarray:
    """uint8 / uint16 / float in [0, 1] -> uint8 or uint16."""
    top = 65535 if bits == 16 else 255
    dtype = np.uint16 if bits == 16 else np.uint8
    if array.dtype == dtype:
        return array
    if array.dtype == np.uint8:
        return array.astype(np.uint16) * 257
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return np.round(np.clip(np.nan_to_num(array), 0.0, 1.0) * top).astype(dtype)
    raise ValueError(f"pixels must be uint8, uint16 or float, not {array.dtype}")


def write_image(path: str | os.PathLike, pixels: np.ndarray, *, alpha: np.ndarray | None = None,
                like: Picture | None = None, quality: int = 95) -> None:
    """Write pixels (H x W, H x W x 1 or H x W x 3; uint8, uint16 or float32 in [0, 1]) in the format the
    extension names. `like` gives the ICC profile, EXIF (orientation 1) and 16-bit depth to keep. Alpha is
    dropped for JPEG and BMP. The file appears complete or not at all (temp file + os.replace; one PUT for an
    s3:// URL)."""
    path = location(path)
    image_format = WRITE_FORMATS.get(path.suffix.lower())
    if image_format is None:
        known = ", ".join(sorted(WRITE_FORMATS))
        raise OutputError(f"cannot write {path}: unknown image extension {path.suffix!r} (use one of {known})")
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"pixels must be H x W, H x W x 1 or H x W x 3, not {pixels.shape}")
    if alpha is not None and alpha.shape != pixels.shape[:2]:
        raise ValueError(f"alpha must be {pixels.shape[:2]}, not {alpha.shape}")
    wants_16 = pixels.dtype == np.uint16 or (like is not None and like.bit_depth == 16)
    bits = 16 if wants_16 and image_format in _SIXTEEN_BIT_FORMATS else 8
    pixels = _to_depth(pixels, bits)
    alpha = _to_depth(alpha, bits) if alpha is not None and image_format in _ALPHA_FORMATS else None
    through_opencv = bits == 16 and (pixels.shape[2] == 3 or alpha is not None)  # Pillow's one 16-bit mode is grey
    icc = like.icc_profile if like is not None and like.icc_profile else None
    icc = icc if icc and _icc_fits(icc, 3 if through_opencv else pixels.shape[2]) else None
    exif = _upright_exif(like.exif) if like is not None and like.exif else None
    if through_opencv:
        encode = _opencv_encoder(path.suffix.lower(), pixels, alpha, icc, exif)
    else:
        encode = _pil_encoder(image_format, pixels, alpha, icc, exif, quality)
    _write_atomically(path, encode)


def _pil_encoder(image_format, pixels, alpha, icc, exif, quality):
    image = _pil_image(pixels)
    if alpha is not None:
        image.putalpha(_pil_image(alpha))
    options = {"icc_profile": icc} if icc and image_format != "BMP" else {}
    if exif and image_format != "BMP":
        options["exif"] = exif
    if image_format in ("JPEG", "WEBP"):
        options["quality"] = quality
    if image_format == "TIFF":
        options["compression"] = "tiff_lzw"

    def encode(file) -> None:
        image.save(file, format=image_format, **options)

    return encode


def _pil_image(array: np.ndarray) -> Image.Image:
    """uint8 H x W [x 1] -> L, H x W x 3 -> RGB; uint16 H x W [x 1] -> I;16."""
    return Image.fromarray(np.ascontiguousarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array))


def _opencv_encoder(extension, pixels, alpha, icc, exif):
    channels = [pixels[:, :, 0]] * 3 if pixels.shape[2] == 1 else [pixels[:, :, 2], pixels[:, :, 1], pixels[:, :, 0]]
    bgr = np.dstack(channels + ([alpha] if alpha is not None else []))
    kinds, blocks = [], []
    if extension == ".png":
        if exif:
            kinds.append(cv2.IMAGE_METADATA_EXIF)
            blocks.append(np.frombuffer(exif[6:] if exif.startswith(b"Exif\x00\x00") else exif, np.uint8))
        if icc:
            kinds.append(cv2.IMAGE_METADATA_ICCP)
            blocks.append(np.frombuffer(icc, np.uint8))

    def encode(file) -> None:
        with _opencv_quiet():
            ok, buffer = cv2.imencodeWithMetadata(extension, bgr, kinds, blocks)
        if not ok:
            raise OSError(f"OpenCV could not encode a 16-bit {extension} image")
        file.write(buffer.tobytes())

    return encode


@contextmanager
def _opencv_quiet():
    """OpenCV logs codec warnings (e.g. about the ExtraSamples tag of its own 16-bit RGBA TIFFs) on stderr;
    a failure reaches the user as our one-line error instead."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def write_file(path: Path, data: bytes) -> None:
    """Any file's bytes (a graph, a sidecar), as images are written: complete or not at all, never through a
    symlink standing at `path` (the link itself is replaced), no temp file left; OutputError in one line."""
    def copy(file) -> None:
        file.write(data)

    _write_atomically(path, copy)


def _write_atomically(path: Path | ObjectPath, encode) -> None:
    if isinstance(path, ObjectPath):
        buffer = io.BytesIO()
        try:
            encode(buffer)
            path.write_bytes(buffer.getvalue())
        except (OSError, ValueError) as exc:
            raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
        return
    temp = partial_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp.unlink(missing_ok=True)  # left by a killed run
        # 0o666 so that the final file gets the user's umask, as a plain open() would
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or _reason(exc)}") from None
    try:
        with os.fdopen(descriptor, "wb") as file:
            encode(file)
        os.replace(temp, path)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, ValueError)):
            raise OutputError(f"cannot write {path}: {getattr(exc, 'strerror', None) or _reason(exc)}") from None
        raise


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Write any file (weights, JSON) the way images are written: whole or not at all."""
    _write_atomically(path, lambda file: file.write(data))


def partial_path(target: Path) -> Path:
    """Where `target` is encoded before it is renamed into place: hidden, in the same folder (so that the
    rename is atomic), one fixed name per target (so that a temp file a SIGKILL left behind is found and
    replaced by the next write; two processes writing the same output at once are not supported)."""
    return target.parent / f".{target.name}{_PARTIAL_SUFFIX}"


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
