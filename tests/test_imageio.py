"""read_image / write_image: every pixel layout in, metadata carried, bad files refused on one line, and no
half-written file ever left under a final name."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image, ImageCms, ImageOps

from helpers import make_image, stderr_lines
from imgforge.cli import main
from imgforge.errors import InputError, OutputError
from imgforge.imageio import Picture, read_image, write_image

RNG = np.random.default_rng(7)


def noise(height=24, width=32, channels=3, dtype=np.uint8):
    top = 65536 if dtype == np.uint16 else 256
    shape = (height, width) if channels == 1 else (height, width, channels)
    return RNG.integers(0, top, shape, dtype=dtype)


def smooth_rgb(height=48, width=64):
    """A gradient, so that lossy codecs stay close to it."""
    y, x = np.mgrid[0:height, 0:width]
    return np.dstack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)]).astype(
        np.uint8
    )


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_bytes(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "imgforge-test-camera"  # Make
    exif[0x0112] = orientation
    return exif.tobytes()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".partial"))


# ---- reading every layout -------------------------------------------------------------------------------


def test_rgb_png_reads_exactly(tmp_path):
    pixels = noise()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    picture = read_image(tmp_path / "a.png")
    assert picture.pixels.shape == (24, 32, 3) and picture.pixels.dtype == np.uint8
    assert np.array_equal(picture.pixels, pixels)
    assert picture.alpha is None and not picture.is_grey and picture.bit_depth == 8
    assert (picture.width, picture.height, picture.format) == (32, 24, "PNG")


def test_grey_and_one_bit_read_as_one_channel(tmp_path):
    grey = noise(channels=1)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    bits = grey > 127
    Image.fromarray(bits).convert("1").save(tmp_path / "bits.png")
    picture = read_image(tmp_path / "grey.png")
    assert picture.is_grey and np.array_equal(picture.pixels[:, :, 0], grey)
    picture = read_image(tmp_path / "bits.png")
    assert picture.is_grey and np.array_equal(picture.pixels[:, :, 0], np.where(bits, 255, 0))


def test_palette_with_and_without_transparency(tmp_path):
    rgb = Image.fromarray(smooth_rgb()).quantize(16)
    rgb.save(tmp_path / "p.png")
    picture = read_image(tmp_path / "p.png")
    assert picture.alpha is None and np.array_equal(picture.pixels, np.asarray(rgb.convert("RGB")))

    rgb.info["transparency"] = 0
    rgb.save(tmp_path / "pt.png", transparency=0)
    picture = read_image(tmp_path / "pt.png")
    expected = np.asarray(Image.open(tmp_path / "pt.png").convert("RGBA"))
    assert picture.alpha is not None and np.array_equal(picture.alpha, expected[:, :, 3])
    assert (picture.alpha == 0).any() and (picture.alpha == 255).any()


@pytest.mark.parametrize("extension", ["jpg", "tif"])
def test_cmyk_becomes_rgb(tmp_path, extension):
    cmyk = Image.fromarray(smooth_rgb()).convert("CMYK")
    cmyk.save(tmp_path / f"c.{extension}", quality=95)
    picture = read_image(tmp_path / f"c.{extension}")
    expected = np.asarray(Image.open(tmp_path / f"c.{extension}").convert("RGB")).astype(int)
    assert picture.pixels.shape == (48, 64, 3)
    assert np.abs(picture.pixels.astype(int) - expected).max() <= 1
    assert picture.icc_profile is None  # no CMYK profile may travel with RGB pixels


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_modes(tmp_path, mode):
    pixels = noise(channels=len(mode))
    Image.fromarray(pixels).save(tmp_path / "a.png")
    picture = read_image(tmp_path / "a.png")
    assert picture.is_grey == (mode == "LA")
    assert np.array_equal(picture.alpha, pixels[:, :, -1])
    assert np.array_equal(picture.pixels, pixels[:, :, :-1])


@pytest.mark.parametrize("extension", ["png", "tif"])
def test_sixteen_bit_grey(tmp_path, extension):
    grey = noise(channels=1, dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / f"g.{extension}")
    picture = read_image(tmp_path / f"g.{extension}")
    assert picture.pixels.dtype == np.uint16 and picture.bit_depth == 16 and picture.is_grey
    assert np.array_equal(picture.pixels[:, :, 0], grey)


@pytest.mark.parametrize("extension", ["png", "tif"])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_sixteen_bit_rgb_in_rgb_order(tmp_path, extension, with_alpha):
    rgb = noise(dtype=np.uint16)
    alpha = noise(channels=1, dtype=np.uint16)
    bgr = np.dstack([rgb[:, :, ::-1]] + ([alpha] if with_alpha else []))
    assert cv2.imwrite(str(tmp_path / f"c.{extension}"), bgr)
    picture = read_image(tmp_path / f"c.{extension}")
    assert picture.pixels.dtype == np.uint16 and np.array_equal(picture.pixels, rgb)
    assert (picture.alpha is not None) == with_alpha
    if with_alpha:
        assert np.array_equal(picture.alpha, alpha)


def test_32_bit_integer_tiff_is_clipped_to_16_bits_and_float_tiff_refused(tmp_path):
    values = np.array([[-5, 0, 1000, 65535, 70000]], dtype=np.int32)
    Image.fromarray(values).save(tmp_path / "i.tif")
    picture = read_image(tmp_path / "i.tif")
    assert picture.pixels.dtype == np.uint16 and picture.pixels[0, :, 0].tolist() == [0, 0, 1000, 65535, 65535]
    Image.fromarray(values.astype(np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(InputError, match="f.tif: 32-bit floating-point images are not supported"):
        read_image(tmp_path / "f.tif")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_sixteen_bit_grey_with_alpha(tmp_path):
    # neither Pillow nor OpenCV writes this layout: build the PNG by hand (colour type 4, 16 bits per sample)
    grey, alpha = noise(channels=1, dtype=np.uint16), noise(channels=1, dtype=np.uint16)
    samples = np.dstack([grey, alpha]).astype(">u2").reshape(grey.shape[0], -1).view(np.uint8)
    rows = b"".join(b"\x00" + row.tobytes() for row in samples)  # filter type 0 on each row
    ihdr = struct.pack(">IIBBBBB", grey.shape[1], grey.shape[0], 16, 4, 0, 0, 0)
    (tmp_path / "la16.png").write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
                                        + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))
    picture = read_image(tmp_path / "la16.png")
    assert picture.is_grey and picture.pixels.dtype == np.uint16
    assert np.array_equal(picture.pixels[:, :, 0], grey) and np.array_equal(picture.alpha, alpha)


def test_to_float_and_to_pil():
    pixels = np.array([[[0], [65535]], [[257], [32896]]], dtype=np.uint16)
    picture = Picture(pixels=pixels, alpha=None, icc_profile=None, exif=None, format="PNG", path=None)
    assert picture.to_float().dtype == np.float32
    assert np.allclose(picture.to_float()[:, :, 0], [[0, 1], [257 / 65535, 32896 / 65535]])
    image = picture.to_pil()
    assert image.mode == "RGB" and np.array_equal(np.asarray(image)[:, :, 1], [[0, 255], [1, 128]])
    assert picture.to_pil("L").mode == "L"
    rgba = Picture(pixels=noise(2, 2), alpha=np.full((2, 2), 9, np.uint8), icc_profile=None, exif=None, format="",
                   path=None).to_pil("RGBA")
    assert np.array_equal(np.asarray(rgba)[:, :, 3], np.full((2, 2), 9))


# ---- EXIF orientation ------------------------------------------------------------------------------------


def test_jpeg_orientation_six_is_applied_and_reset_on_write(tmp_path):
    pixels = smooth_rgb()
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif_bytes(6), quality=95)
    picture = read_image(tmp_path / "phone.jpg")
    assert picture.pixels.shape == (64, 48, 3)  # stored landscape, shown portrait
    stored = np.asarray(Image.open(tmp_path / "phone.jpg").convert("RGB"))
    assert np.array_equal(picture.pixels, np.rot90(stored, -1))  # 6 = rotate 90 degrees clockwise to view
    write_image(tmp_path / "out.jpg", picture.pixels, like=picture)
    written = Image.open(tmp_path / "out.jpg")
    assert written.size == (48, 64)
    assert written.getexif()[0x0112] == 1
    assert written.getexif()[0x010F] == "imgforge-test-camera"


@pytest.mark.parametrize("extension", ["png", "tif", "webp"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(tmp_path, orientation, extension):
    path = tmp_path / f"o.{extension}"
    Image.fromarray(noise(5, 7)).save(path, exif=exif_bytes(orientation), lossless=True)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert expected.shape == ((7, 5, 3) if orientation >= 5 else (5, 7, 3))
    assert np.array_equal(read_image(path).pixels, expected)


# ---- writing: formats, metadata, alpha, depth ------------------------------------------------------------


@pytest.mark.parametrize("extension,lossless", [("png", True), ("tif", True), ("bmp", True), ("webp", False),
                                                ("jpg", False), ("JPEG", False)])
def test_rgb_round_trip_each_format(tmp_path, extension, lossless):
    pixels = smooth_rgb()
    write_image(tmp_path / f"x.{extension}", pixels)
    back = read_image(tmp_path / f"x.{extension}").pixels.astype(int)
    error = np.abs(back - pixels).max() if lossless else np.abs(back - pixels).mean()
    assert error <= (0 if lossless else 3)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("extension", ["jpg", "png", "webp", "tif"])
def test_icc_and_exif_carried(tmp_path, extension):
    icc = srgb_icc()
    Image.fromarray(smooth_rgb()).save(tmp_path / "in.jpg", icc_profile=icc, exif=exif_bytes(3))
    source = read_image(tmp_path / "in.jpg")
    assert source.icc_profile == icc
    write_image(tmp_path / f"out.{extension}", source.pixels, like=source)
    written = Image.open(tmp_path / f"out.{extension}")
    assert written.info.get("icc_profile") == icc
    assert written.getexif().get(0x010F) == "imgforge-test-camera"
    assert written.getexif().get(0x0112) == 1


def test_icc_and_exif_carried_by_sixteen_bit_rgb_png(tmp_path):
    icc = srgb_icc()
    like = Picture(pixels=noise(dtype=np.uint16), alpha=None, icc_profile=icc, exif=exif_bytes(8), format="PNG",
                   path=None)
    write_image(tmp_path / "out.png", like.pixels, like=like)
    written = Image.open(tmp_path / "out.png")
    assert written.info.get("icc_profile") == icc
    assert written.getexif().get(0x010F) == "imgforge-test-camera" and written.getexif().get(0x0112) == 1
    assert np.array_equal(read_image(tmp_path / "out.png").pixels, like.pixels)


def exif_with_thumbnail_directory() -> bytes:
    """IFD0 (Make, orientation 6) linked to an IFD1, the thumbnail directory; little-endian, built by hand."""

    def entry(tag, kind, count, value):
        return struct.pack("<HHI", tag, kind, count) + value

    ifd0 = struct.pack("<H", 2) + entry(0x010F, 2, 4, b"cam\0") + entry(0x0112, 3, 1, struct.pack("<HH", 6, 0))
    ifd1 = struct.pack("<H", 1) + entry(0x0103, 3, 1, struct.pack("<HH", 6, 0)) + struct.pack("<I", 0)
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd0 + struct.pack("<I", 8 + len(ifd0) + 4) + ifd1


def test_thumbnail_of_the_original_is_not_carried(tmp_path):
    Image.fromarray(smooth_rgb()).save(tmp_path / "in.jpg", exif=exif_with_thumbnail_directory())
    assert Image.open(tmp_path / "in.jpg").getexif().get_ifd(ExifTags.IFD.IFD1)  # the test file has one
    source = read_image(tmp_path / "in.jpg")
    write_image(tmp_path / "out.jpg", source.pixels, like=source)
    written = Image.open(tmp_path / "out.jpg").getexif()
    assert dict(written) == {0x010F: "cam", 0x0112: 1}
    assert written.get_ifd(ExifTags.IFD.IFD1) == {}


def test_tiff_camera_tags_are_carried(tmp_path):
    tags = Image.Exif()
    tags[0x010F] = "scanner-maker"
    tags[0x8298] = "(c) someone"
    Image.fromarray(smooth_rgb()).save(tmp_path / "scan.tif", exif=tags)
    source = read_image(tmp_path / "scan.tif")
    write_image(tmp_path / "out.jpg", source.pixels, like=source)
    written = Image.open(tmp_path / "out.jpg").getexif()
    assert (written.get(0x010F), written.get(0x8298)) == ("scanner-maker", "(c) someone")
    assert 0x0111 not in written  # StripOffsets and the other layout tags stay behind


def test_icc_profile_of_the_wrong_colour_space_is_dropped(tmp_path):
    # Pillow creates no grey profile: relabel a LAB one (only the header's colour space matters here)
    lab_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    grey_icc = lab_icc[:16] + b"GRAY" + lab_icc[20:]
    grey_like = Picture(pixels=noise(channels=1)[:, :, None], alpha=None, icc_profile=grey_icc, exif=None,
                        format="PNG", path=None)
    write_image(tmp_path / "rgb.png", smooth_rgb(), like=grey_like)
    write_image(tmp_path / "grey.png", grey_like.pixels, like=grey_like)
    rgb_like = Picture(pixels=smooth_rgb(), alpha=None, icc_profile=srgb_icc(), exif=None, format="PNG", path=None)
    write_image(tmp_path / "grey-from-rgb.png", grey_like.pixels, like=rgb_like)
    assert "icc_profile" not in Image.open(tmp_path / "rgb.png").info
    assert Image.open(tmp_path / "grey.png").info.get("icc_profile") == grey_icc
    assert "icc_profile" not in Image.open(tmp_path / "grey-from-rgb.png").info


@pytest.mark.parametrize("extension,kept", [("png", True), ("webp", True), ("tif", True), ("jpg", False),
                                            ("bmp", False)])
@pytest.mark.parametrize("channels", [1, 3])
def test_alpha_kept_or_dropped(tmp_path, extension, kept, channels):
    alpha = noise(channels=1)
    write_image(tmp_path / f"a.{extension}", smooth_rgb(24, 32)[:, :, :channels], alpha=alpha)
    picture = read_image(tmp_path / f"a.{extension}")
    assert (picture.alpha is not None) == kept
    if kept:
        assert np.array_equal(picture.alpha, alpha)


@pytest.mark.parametrize("extension", ["png", "tif"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_sixteen_bit_kept(tmp_path, extension, channels, with_alpha):
    pixels = noise(channels=channels, dtype=np.uint16)
    alpha = noise(channels=1, dtype=np.uint16) if with_alpha else None
    write_image(tmp_path / f"s.{extension}", pixels, alpha=alpha)
    picture = read_image(tmp_path / f"s.{extension}")
    assert picture.pixels.dtype == np.uint16
    assert np.array_equal(picture.pixels[:, :, :1] if channels == 1 else picture.pixels,
                          pixels[:, :, None] if channels == 1 else pixels)
    if with_alpha:
        assert np.array_equal(picture.alpha, alpha)


def test_like_sixteen_bit_makes_float_output_sixteen_bit(tmp_path):
    like = Picture(pixels=noise(dtype=np.uint16), alpha=None, icc_profile=None, exif=None, format="PNG", path=None)
    values = np.linspace(0, 1, 24 * 32 * 3, dtype=np.float32).reshape(24, 32, 3)
    write_image(tmp_path / "f.png", values, like=like)
    write_image(tmp_path / "f.jpg", values, like=like)
    assert np.array_equal(read_image(tmp_path / "f.png").pixels, np.round(values * 65535).astype(np.uint16))
    assert read_image(tmp_path / "f.jpg").pixels.dtype == np.uint8


def test_float_pixels_are_clipped_and_rounded(tmp_path):
    values = np.array([[-0.5, 0.0, 0.6 / 255, 0.2, 1.0, 7.0]], dtype=np.float32)
    write_image(tmp_path / "f.png", values)
    assert read_image(tmp_path / "f.png").pixels[0, :, 0].tolist() == [0, 0, 1, 51, 255, 255]


def test_write_keeps_umask_permissions_and_replaces_existing(tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    write_image(target, smooth_rgb())
    assert read_image(target).pixels.shape == (48, 64, 3)
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_replaces_a_stale_temp_file_of_its_target_only(tmp_path):
    (tmp_path / ".x.png.partial").write_bytes(b"half, left by a killed run")
    (tmp_path / ".y.png.partial").write_bytes(b"half")
    write_image(tmp_path / "x.png", smooth_rgb())
    assert leftovers(tmp_path) == [".y.png.partial"]
    assert read_image(tmp_path / "x.png").width == 64


# ---- refusing bad inputs ---------------------------------------------------------------------------------


def png_header_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def encoded(pixels: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


BAD_INPUTS = {
    "zero-byte.png": (b"", "empty"),
    "truncated.jpg": (encoded(noise(64, 64), "JPEG")[:2000], "truncated"),
    "truncated.png": (encoded(noise(64, 64), "PNG")[:5000], "truncated"),
    "random.png": (bytes(RNG.integers(0, 256, 3000, dtype=np.uint8)), "not an image"),
    "text.jpg": (b"hello, I am a text file\n" * 20, "not an image"),
    "bomb.png": (png_header_claiming(100_000, 100_000), "over the limit"),
    "truncated16.png": (cv2.imencode(".png", noise(64, 64, dtype=np.uint16))[1].tobytes()[:9000], "truncated"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_naming_the_file(tmp_path, name):
    data, reason = BAD_INPUTS[name]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError) as error:
        read_image(tmp_path / name)
    message = str(error.value)
    assert "\n" not in message and name in message and reason in message


def test_folder_missing_file_and_unreadable_file(tmp_path, monkeypatch):
    (tmp_path / "folder.jpg").mkdir()
    locked = tmp_path / "locked.png"
    Image.fromarray(noise()).save(locked)
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads mode-000 files anyway: make the read fail the way it fails for users

        open_path = Path.open

        def refuse_locked(self, *args, **kwargs):
            if self.name == "locked.png":
                raise PermissionError(13, "Permission denied", str(self))
            return open_path(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", refuse_locked)
    for name, reason in [("folder.jpg", "it is a folder"), ("missing.png", "no such file"),
                         ("locked.png", "permission denied")]:
        with pytest.raises(InputError, match=f"cannot read .*{name}: {reason}"):
            read_image(tmp_path / name)


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    Image.fromarray(noise()).save(tmp_path / "a.png")
    monkeypatch.setenv("IMGFORGE_MAX_PIXELS", str(24 * 32 - 1))
    with pytest.raises(InputError, match="IMGFORGE_MAX_PIXELS"):
        read_image(tmp_path / "a.png")
    monkeypatch.setenv("IMGFORGE_MAX_PIXELS", str(24 * 32))
    assert read_image(tmp_path / "a.png").width == 32


@pytest.mark.parametrize("value", ["lots", "-4", "0"])
def test_a_bad_pixel_limit_stops_the_run_before_the_first_image(here, capfd, monkeypatch, value):
    make_image(here / "a.png")
    monkeypatch.setenv("IMGFORGE_MAX_PIXELS", value)
    assert main(["translate", "a.png", "-o", "out", "--model", "x"]) == 1
    assert stderr_lines(capfd) == [f"error: IMGFORGE_MAX_PIXELS must be a whole number of pixels, not '{value}'"]


def test_a_huge_sparse_file_costs_its_pixels_not_its_size(tmp_path):
    import tracemalloc

    path = tmp_path / "sparse.png"
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(path)
    os.truncate(path, 300 << 20)  # 300 MB of zeros after the image (sparse: no disk space)
    tracemalloc.start()
    try:
        picture = read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert picture.pixels.shape == (8, 8, 3) and int(picture.pixels.max()) == 7
    assert peak < 20 << 20


def test_a_16_bit_file_larger_than_its_pixels_can_be_is_refused_unread(tmp_path):
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), np.full((8, 8, 3), 4000, np.uint16))
    assert read_image(path).pixels.dtype == np.uint16
    os.truncate(path, 100 << 20)
    with pytest.raises(InputError, match=r"deep.png: the file is 104857600 bytes, more than a 8x8 image can hold"):
        read_image(path)


# ---- refusing bad outputs, leaving nothing behind --------------------------------------------------------


def test_unknown_extension(tmp_path):
    with pytest.raises(OutputError, match="unknown image extension '.xyz'"):
        write_image(tmp_path / "out.xyz", smooth_rgb())
    assert list(tmp_path.iterdir()) == []


def test_folder_under_a_file_is_unwritable(tmp_path):
    (tmp_path / "some_file.txt").write_text("not a folder")
    with pytest.raises(OutputError) as error:
        write_image(tmp_path / "some_file.txt" / "out.png", smooth_rgb())
    assert "\n" not in str(error.value) and "out.png" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["some_file.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into mode-555 folders; the file-as-folder case covers it")
def test_read_only_folder_is_unwritable(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o555)
    with pytest.raises(OutputError, match="Permission denied"):
        write_image(folder / "out.png", smooth_rgb())


def test_failed_encode_leaves_no_temp_file_and_the_old_output_intact(tmp_path, monkeypatch):
    target = tmp_path / "x.png"
    target.write_bytes(b"previous output")

    def broken_save(self, fp, format=None, **options):
        fp.write(b"half an image")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OutputError, match="disk full"):
        write_image(target, smooth_rgb())
    assert target.read_bytes() == b"previous output"
    assert leftovers(tmp_path) == []
