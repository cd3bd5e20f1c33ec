"""Face detectors behind one interface: `detect(rgb uint8 H x W x 3) -> list[Face]`, faces in the order the
detector reports them, each with a box and the five alignment points in the official order (image-left
eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner).

- dlib: the official detector of run.py (HOG frontal faces without upsampling, then the 68-point shape
  predictor); the five points come from the 68 as the official script takes them. Needs the `dlib` module
  (`pip install 'imgforge[faces-dlib]'`, prebuilt wheels) and the predictor file.
- yunet: OpenCV's FaceDetectorYN with the YuNet model; its five points are eye centres, nose tip and mouth
  corners directly. It finds faces of about 10-300 px, so large photos are searched on a copy scaled down
  to YUNET_MAX_SIDE and the points scaled back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ..errors import ImgforgeError, ModelError
from .align import five_points

DETECTORS = ("yunet", "dlib")
YUNET_MAX_SIDE = 1024  # faces of a 4000 px scan shrink ~4x: a portrait's stays under ~300 px, a group's above 10
# opencv_zoo's demo keeps scores >= 0.9; aged photos score lower (the sample old photo's face 0.85, the
# cameraman 0.89), while non-faces of scikit-image's sample photos stay at or below 0.6
YUNET_SCORE_THRESHOLD = 0.8
YUNET_NMS_THRESHOLD = 0.3  # opencv_zoo's demo defaults
YUNET_TOP_K = 5000


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # left, top, right, bottom in pixels
    points5: np.ndarray  # (5, 2) x, y; int64 from dlib (as the official code), float64 from YuNet
    landmarks68: np.ndarray | None = None  # (68, 2) int64, dlib only
    score: float | None = None


class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Face]: ...


class DlibDetector:
    name = "dlib"

    def __init__(self, predictor: Path):
        try:
            import dlib
        except ImportError:
            raise ImgforgeError("--face-detector dlib needs the dlib module: pip install 'imgforge[faces-dlib]' "
                                "(prebuilt wheels, no compiler), or use --face-detector yunet") from None
        self._detector = dlib.get_frontal_face_detector()
        try:
            self._predictor = dlib.shape_predictor(str(predictor))
        except RuntimeError as exc:
            raise ModelError(f"cannot read the dlib shape predictor {predictor}: {exc}") from None

    def detect(self, image: np.ndarray) -> list[Face]:
        faces = []
        for rect in self._detector(np.ascontiguousarray(image), 0):
            shape = self._predictor(image, rect)
            landmarks = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], np.int64)
            faces.append(Face(box=(rect.left(), rect.top(), rect.right(), rect.bottom()),
                              points5=five_points(landmarks), landmarks68=landmarks))
        return faces


class YuNetDetector:
    name = "yunet"

    def __init__(self, model: Path, max_side: int = YUNET_MAX_SIDE):
        self.max_side = max_side
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # the graph engine's notices
        try:
            self._detector = cv2.FaceDetectorYN.create(str(model), "", (320, 320), YUNET_SCORE_THRESHOLD,
                                                       YUNET_NMS_THRESHOLD, YUNET_TOP_K)
        except cv2.error as exc:
            raise ModelError(f"cannot load the YuNet model {model}: {str(exc).strip().splitlines()[-1]}") from None
        finally:
            cv2.utils.logging.setLogLevel(level)

    def detect(self, image: np.ndarray) -> list[Face]:
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        small = image if scale == 1.0 else cv2.resize(
            image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(small[:, :, ::-1])
        self._detector.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = self._detector.detect(bgr)
        faces = []
        for row in [] if rows is None else rows.astype(np.float64):
            x, y = (row[:2] + 0.5) / scale - 0.5  # pixel centres of the small copy -> of the photo
            w, h = row[2:4] / scale
            points = (row[4:14].reshape(5, 2) + 0.5) / scale - 0.5
            faces.append(Face(box=(x, y, x + w, y + h), points5=points, score=float(row[14])))
        return faces
