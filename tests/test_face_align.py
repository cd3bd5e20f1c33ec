"""Alignment and blending beyond the fixtures: a face at the photo's edge gives the same result through the
face's window as through the whole photo, several faces blend in order, degenerate points are refused.
Exactness against the official scripts: the face.align / face.blend conformance fixtures."""

from __future__ import annotations

import numpy as np

from imgforge.faces import align

# five points of a ~100 px face (x, y): eyes, nose, mouth corners
FACE = np.array([[100, 90], [150, 90], [125, 120], [105, 150], [145, 150]], np.int64)


def _photo(height=200, width=260, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _enhanced(seed=1):
    return np.random.default_rng(seed).integers(0, 256, (256, 256, 3), dtype=np.uint8)


def test_window_equals_whole_photo_for_a_face_at_the_edge(monkeypatch):
    image = _photo()
    points = FACE - [95, 80]  # the face hangs over the top-left corner
    windowed = image.astype(np.float64)
    align.blend_face(windowed, image, points, _enhanced(), 256)
    monkeypatch.setattr(align, "face_window", lambda transform, size, h, w: align.Region(0, 0, h, w))
    whole = image.astype(np.float64)
    align.blend_face(whole, image, points, _enhanced(), 256)
    np.testing.assert_array_equal(windowed, whole)
    assert (windowed != image).any()


def test_faces_blend_in_order_and_only_near_the_face():
    image = _photo()
    second = FACE + [100, 10]
    out = align.blend(image, [(FACE, _enhanced(1)), (second, _enhanced(2))], 256)
    only_first = align.blend(image, [(FACE, _enhanced(1))], 256)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (out != only_first).any()
    near_faces = np.zeros(image.shape[:2], bool)
    for points in (FACE, second):
        transform = align.similarity_transform(256, points)
        near_faces[align.face_window(transform, 256, *image.shape[:2]).slices()] = True
    assert not near_faces.all()
    np.testing.assert_array_equal(out[~near_faces], image[~near_faces])


def test_degenerate_points_are_not_aligned():
    line = np.array([[0, 0], [10, 10], [20, 20], [30, 30], [40, 40]])
    assert align.similarity_transform(256, line) is None
    assert align.align(_photo(), line, 256) is None


def test_five_points_truncate_eye_midpoints():
    landmarks = np.zeros((68, 2), np.int64)
    landmarks[36], landmarks[39] = [10, 20], [13, 23]
    landmarks[42], landmarks[45] = [30, 20], [35, 21]
    landmarks[30], landmarks[48], landmarks[54] = [22, 30], [15, 40], [29, 40]
    np.testing.assert_array_equal(align.five_points(landmarks), [[11, 21], [32, 20], [22, 30], [15, 40], [29, 40]])
