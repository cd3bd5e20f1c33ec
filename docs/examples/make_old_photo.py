"""Make docs/examples/old_photo.jpg, the sample for `imgforge restore`: scikit-image's astronaut photograph
(Eileen Collins, NASA, public domain) aged by hand: faded to sepia, softened, grainy, with scratches, a crease
and dust. Deterministic (fixed seed).

    python docs/examples/make_old_photo.py            # writes old_photo.jpg beside this script
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from skimage import data

SEED = 1931
SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])


def faded_sepia(rgb: np.ndarray) -> np.ndarray:
    """Sepia tone, low contrast, lifted blacks and a brighter centre: how a print fades."""
    toned = np.clip(rgb.astype(np.float64) / 255 @ SEPIA.T, 0, 1)
    toned = 0.25 + 0.6 * toned
    height, width = toned.shape[:2]
    y, x = np.mgrid[0:height, 0:width]
    distance = np.hypot((x - width / 2) / width, (y - height / 2) / height)
    return toned * (1.05 - 0.35 * distance[:, :, None] ** 2)


def scratched(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Long thin light scratches, one crease and some dust specks."""
    height, width = image.shape[:2]
    out = image.copy()
    for _ in range(7):
        x = rng.uniform(0, width)
        points = []
        for y in np.linspace(0, height, 12):
            x += rng.normal(0, 6)
            points.append((x, y))
        start = rng.integers(0, 5)
        curve = np.array(points[start:start + rng.integers(5, 12)], np.int32)
        shade = rng.uniform(0.85, 1.0)
        cv2.polylines(out, [curve], False, (shade, shade, shade * 0.97), int(rng.integers(1, 3)), cv2.LINE_AA)
    cv2.line(out, (0, int(height * 0.62)), (width, int(height * 0.55)), (0.95, 0.94, 0.9), 2, cv2.LINE_AA)
    for _ in range(60):
        centre = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        value = rng.choice([0.15, 0.95])
        cv2.circle(out, centre, int(rng.integers(1, 3)), (value, value, value), -1, cv2.LINE_AA)
    return out


def make_old_photo(rng: np.random.Generator) -> np.ndarray:
    image = faded_sepia(data.astronaut())
    image = cv2.GaussianBlur(image, (0, 0), 1.2)
    image = scratched(image, rng)
    image = image + rng.normal(0, 0.035, image.shape[:2])[:, :, None]  # film grain, the same in each channel
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def main() -> None:
    target = Path(__file__).with_name("old_photo.jpg")
    photo = make_old_photo(np.random.default_rng(SEED))
    cv2.imwrite(str(target), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {target} ({target.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
