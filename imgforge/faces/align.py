"""Face alignment and blending back, as the official Face_Detection scripts compute them (detect_all_dlib.py,
align_warp_back_multiple_dlib.py and their _HR variants), in plain NumPy and OpenCV.

The arithmetic follows the scikit-image calls of the official scripts step by step (float64, same order of
operations, same rounding), so the aligned faces and blended photos equal theirs to the last bit; the
`face.align` and `face.blend` conformance fixtures check it. Coordinates: a 3x3 `transform` maps aligned
(x, y, 1) to image (x, y, 1), pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FACE_SCALE = 1.3  # run.py's target_face_scale: the aligned crop shows a little more than the face
# the five template points on the official 512 canvas (x, y): eye centres, nose tip, mouth corners
_TEMPLATE_512 = np.array([196.0, 226.0, 316.0, 226.0, 256.0, 286.0, 220.0, 360.4, 292.0, 360.4], np.float32)
ERODE_KERNEL, ERODE_ITERATIONS = np.ones((9, 9), np.uint8), 3  # blur_blending_cv2
BLUR_SIZE = 25
BLUR_MARGIN = BLUR_SIZE // 2  # how far the blurred mask reaches past the warped face
BICUBIC_REACH = 2  # a bicubic sample reads pixels up to 2 away


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """The official five points from dlib's 68 (int64 (5, 2), x, y): the eye centres as truncated midpoints
    of the eye corners 36/39 and 42/45, the nose tip 30 and the mouth corners 48 and 54."""
    p = np.asarray(landmarks68, dtype=np.int64)
    eyes = [np.trunc((p[a] + p[b]) / 2).astype(np.int64) for a, b in ((36, 39), (42, 45))]
    return np.stack([*eyes, p[30], p[48], p[54]])


def template(size: int) -> np.ndarray:
    """float32 (5, 2): where the five points land in a size x size aligned face (float32 throughout, as the
    official script computes it)."""
    points = _TEMPLATE_512 / 256 - 1
    return ((points * FACE_SCALE + 1) / 2 * size).reshape(5, 2)


def similarity_transform(size: int, points5: np.ndarray) -> np.ndarray | None:
    """The least-squares similarity (Umeyama) taking the template to `points5`, as a 3x3 float64 matrix
    aligned -> image; None when the points are degenerate (collinear). Precision follows scikit-image under
    NumPy 2: the float32 template's mean and variance stay float32."""
    src = template(size)
    dst = np.asarray(points5)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_centred, dst_centred = src - src_mean, dst - dst_mean
    covariance = dst_centred.T @ src_centred / len(src)
    if np.linalg.matrix_rank(covariance) < 2:
        return None
    signs = np.ones(2)
    if np.linalg.det(covariance) < 0:
        signs[1] = -1
    u, singular, vt = np.linalg.svd(covariance)
    rotation = u @ np.diag(signs) @ vt
    scale = 1.0 / src_centred.var(axis=0).sum() * (singular @ signs)
    matrix = np.eye(3)
    matrix[:2, 2] = dst_mean - scale * (rotation @ src_mean.T)
    matrix[:2, :2] = rotation * scale
    return matrix


@dataclass(frozen=True)
class Region:
    """A window of rows/columns of an output grid: sample positions for just that part."""

    top: int
    left: int
    height: int
    width: int

    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def _positions(transform: np.ndarray, region: Region) -> tuple[np.ndarray, np.ndarray]:
    """Source (x, y) of every output pixel (row r, column c) of the region: x = M00 c + M01 r + M02."""
    rows, cols = np.meshgrid(np.arange(region.top, region.top + region.height, dtype=np.float64),
                             np.arange(region.left, region.left + region.width, dtype=np.float64), indexing="ij")
    x = transform[0, 0] * cols + transform[0, 1] * rows + transform[0, 2]
    y = transform[1, 0] * cols + transform[1, 1] * rows + transform[1, 2]
    return x, y


def _gather(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """image[rows, cols] as float64, 0 where the position lies outside the image (constant mode, cval 0)."""
    height, width = image.shape[:2]
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    values = image[np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)].astype(np.float64)
    values[~inside] = 0.0
    return values


def warp_bilinear(image: np.ndarray, transform: np.ndarray, region: Region) -> np.ndarray:
    """skimage.transform.warp order 1, constant 0 outside: (1-dc, dc) along the row, then (1-dr, dr)."""
    x, y = _positions(transform, region)
    r0, c0 = np.floor(y), np.floor(x)
    r1, c1 = np.ceil(y).astype(np.int64), np.ceil(x).astype(np.int64)
    dr, dc = (y - r0)[..., None], (x - c0)[..., None]
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    top = (1 - dc) * _gather(image, r0, c0) + dc * _gather(image, r0, c1)
    bottom = (1 - dc) * _gather(image, r1, c0) + dc * _gather(image, r1, c1)
    return (1 - dr) * top + dr * bottom


def warp_nearest(image: np.ndarray, transform: np.ndarray, region: Region) -> np.ndarray:
    """warp order 0 (scipy map_coordinates, grid-constant): the pixel at floor(x + 0.5), 0 outside."""
    x, y = _positions(transform, region)
    return _gather(image, np.floor(y + 0.5).astype(np.int64), np.floor(x + 0.5).astype(np.int64))


def _cubic(t: np.ndarray, f0, f1, f2, f3) -> np.ndarray:
    """Catmull-Rom through f0..f3 at t in [0, 1) past f1, in scikit-image's order of operations."""
    return f1 + 0.5 * t * (f2 - f0 + t * (2.0 * f0 - 5.0 * f1 + 4.0 * f2 - f3 + t * (3.0 * (f1 - f2) + f3 - f0)))


def warp_bicubic(image: np.ndarray, transform: np.ndarray, region: Region) -> np.ndarray:
    """warp order 3 without the final clip: cubic along each of the 4 rows around floor(y), then down."""
    x, y = _positions(transform, region)
    r0, c0 = np.floor(y), np.floor(x)
    tr, tc = (y - r0)[..., None], (x - c0)[..., None]
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    rows = [_cubic(tc, *(_gather(image, r0 + dr, c0 + dc) for dc in (-1, 0, 1, 2))) for dr in (-1, 0, 1, 2)]
    return _cubic(tr, *rows)


def align(image: np.ndarray, points5: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(aligned face uint8 size x size x 3, transform) as detect_all_dlib.py writes it: bilinear on
    image / 255, rounded half to even; None for degenerate points."""
    transform = similarity_transform(size, points5)
    if transform is None:
        return None
    scaled = image * (1.0 / 255)
    aligned = warp_bilinear(scaled, transform, Region(0, 0, size, size))
    return np.rint(aligned * 255).astype(np.uint8), transform


def match_histograms(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per channel: each source level goes to the first reference level whose cumulative share reaches the
    source level's (the official match_histograms, 256 bins)."""
    matched = np.empty_like(source)
    for channel in range(source.shape[2]):
        src_cdf = np.bincount(source[..., channel].ravel(), minlength=256).cumsum()
        ref_cdf = np.bincount(reference[..., channel].ravel(), minlength=256).cumsum()
        lookup = np.searchsorted(ref_cdf / float(ref_cdf.max()), src_cdf / float(src_cdf.max()), side="left")
        matched[..., channel] = lookup.astype(np.uint8)[source[..., channel]]
    return matched


def face_window(transform: np.ndarray, size: int, height: int, width: int) -> Region:
    """The part of the photo a face can change: where the aligned square (plus the bicubic reach) lands,
    widened by the blur's reach, within the photo. Outside it the warped face and the mask are exactly 0."""
    reach = BICUBIC_REACH + 1
    corners = np.array([[-reach, -reach, 1], [size + reach, -reach, 1], [-reach, size + reach, 1],
                        [size + reach, size + reach, 1]], np.float64)
    image_xy = corners @ transform.T
    left = max(0, int(np.floor(image_xy[:, 0].min())) - BLUR_MARGIN)
    top = max(0, int(np.floor(image_xy[:, 1].min())) - BLUR_MARGIN)
    right = min(width, int(np.ceil(image_xy[:, 0].max())) + BLUR_MARGIN + 1)
    bottom = min(height, int(np.ceil(image_xy[:, 1].max())) + BLUR_MARGIN + 1)
    return Region(top, left, max(0, bottom - top), max(0, right - left))


def blend_face(blended: np.ndarray, image: np.ndarray, points5: np.ndarray, enhanced: np.ndarray,
               size: int) -> np.ndarray | None:
    """One face of align_warp_back_multiple_dlib.py, written into `blended` (float64 H x W x 3, the running
    result) in place: the enhanced face histogram-matched to the truncated aligned face, warped back bicubic
    and blended with the eroded, blurred mask of where the aligned face saw the photo. Returns the blend
    weight (float64 over the face's window) or None when the points are degenerate."""
    transform = similarity_transform(size, points5)
    if transform is None:
        return None
    height, width = image.shape[:2]
    face_region = Region(0, 0, size, size)
    reference = warp_bilinear(image, transform, face_region).astype(np.uint8)
    seen = warp_nearest(np.ones((height, width, 1), np.uint8), transform, face_region).astype(np.uint8)
    matched = match_histograms(enhanced, reference)
    window = face_window(transform, size, height, width)
    if window.height == 0 or window.width == 0:
        return None
    inverse = np.linalg.inv(transform)
    warped = warp_bicubic(matched, inverse, window)
    _clip_like_skimage(warped, matched, whole_output_has_zero=(window.height, window.width) != (height, width))
    mask = warp_nearest(seen, inverse, window)[..., 0] * 255.0
    mask = cv2.erode(mask, ERODE_KERNEL, iterations=ERODE_ITERATIONS)
    weight = cv2.GaussianBlur(mask, (BLUR_SIZE, BLUR_SIZE), 0) / 255.0
    rows, cols = window.slices()
    w = weight[..., None]
    blended[rows, cols] = np.clip((warped * w + (1 - w) * blended[rows, cols]) / 255.0, 0.0, 1.0) * 255.0
    return weight


def _clip_like_skimage(warped: np.ndarray, source: np.ndarray, *, whole_output_has_zero: bool) -> None:
    """scikit-image's warp clip: to the source's [min, max], widened to take in the fill value 0 when 0 is
    outside that range but inside the range of the whole output (which holds 0s beyond the window)."""
    low, high = float(source.min()), float(source.max())
    out_low, out_high = float(warped.min()), float(warped.max())
    if whole_output_has_zero:
        out_low, out_high = min(out_low, 0.0), max(out_high, 0.0)
    if not low <= 0.0 <= high and out_low <= 0.0 <= out_high:
        low, high = min(low, 0.0), max(high, 0.0)
    np.clip(warped, low, high, out=warped)


def blend(image: np.ndarray, faces: list[tuple[np.ndarray, np.ndarray]], size: int) -> np.ndarray:
    """The photo with every (points5, enhanced face) blended in, in order, over a float64 running result;
    rounded to uint8 at the end as the official script writes it."""
    blended = image.astype(np.float64)
    for points5, enhanced in faces:
        blend_face(blended, image, points5, enhanced, size)
    return np.rint(blended / 255 * 255).astype(np.uint8)
