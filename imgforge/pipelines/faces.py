"""The face stage of old-photo restoration (the official run.py stages 2-4) on one in-memory image: detect
the faces, align each to the generator's size, enhance them in batches, blend them back in detection order.

    detect   yunet (default) or dlib, see imgforge/faces/detect.py
    align    five points -> similarity to the official template (scale 1.3) -> bilinear warp to S x S,
             rounded (S = 256, or 512 with --hr: FaceSR_512 and the _HR scripts)
    enhance  the SPADE generator on batches of FACE_BATCH faces; outputs rounded to 8 bits as test_face.py
             writes them
    blend    histogram match to the truncated aligned face, bicubic warp back, eroded and blurred mask
A photo without faces passes through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import hub, manifest, runtime, zoo
from ..errors import ImgforgeError
from ..faces import align
from ..faces.detect import DETECTORS, DlibDetector, FaceDetector, YuNetDetector
from ..plan import RunPlan
from ..progress import console

GENERATORS = {256: "face-enhance-256", 512: "face-enhance-512"}
DETECTOR_MODELS = {"yunet": "face-detect-yunet", "dlib": "face-landmarks-dlib"}
FACE_BATCH = 4  # test_face.py --batchSize 4


@dataclass
class FaceCrop:
    """One face as the stage saw it: aligned from the photo, and after the generator (uint8 S x S x 3)."""

    aligned: np.ndarray
    enhanced: np.ndarray


def to_tensor(faces: list[np.ndarray]) -> torch.Tensor:
    """uint8 S x S x 3 RGB faces -> (N, 3, S, S) in [-1, 1], as FaceTestDataset reads the aligned PNGs
    (ToTensor, Normalize(0.5, 0.5), float32)."""
    pixels = torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2)
    return pixels.float().div(255).sub_(0.5).div_(0.5)


def to_uint8(generated: torch.Tensor) -> np.ndarray:
    """(N, 3, S, S) in [-1, 1] -> uint8 N x S x S x 3 as test_face.py saves them: ((g + 1) / 2) * 255 + 0.5,
    clamped and truncated (i.e. rounded), in float32."""
    values = ((generated.float() + 1) / 2).mul_(255).add_(0.5).clamp_(0, 255)
    return values.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class FaceEnhancer:
    """The detector and the generator of one face size, loaded once; `__call__` runs the stage on a photo."""

    def __init__(self, *, size: int = 256, detector: str = "yunet", plan: RunPlan = RunPlan()):
        if detector not in DETECTORS:
            raise ImgforgeError(f"unknown face detector {detector!r}: use {' or '.join(DETECTORS)}")
        self.size = size
        self.entry = manifest.get_model(GENERATORS[size])
        detector_entry = manifest.get_model(DETECTOR_MODELS[detector])
        detector_file = fetch_face_file(detector_entry, next(iter(detector_entry.files)), plan)
        self.detector: FaceDetector = (DlibDetector if detector == "dlib" else YuNetDetector)(detector_file)
        (generator,) = zoo.model_networks(self.entry, names=["generator"], offline=plan.offline,
                                          weights_dir=plan.weights_dir, quiet=plan.quiet)
        device = plan.torch_device()
        # channels-last convolutions: ~25% faster on the CPU (6.4 -> 4.8 s per 256 px face, 2 threads)
        self.memory_format = (torch.channels_last if plan.backend == "torch" and device.type in ("cpu", "cuda")
                              else None)
        self.generator = runtime.make_runner(generator.module, backend=plan.backend, device=device,
                                             dtype=plan.dtype(device), export=generator.exports()[0],
                                             memory_format=self.memory_format, policy=generator.family.policy)

    def __call__(self, image: np.ndarray,
                 on_progress: Callable[[float, str], None] | None = None) -> tuple[np.ndarray, list[FaceCrop]]:
        """(the photo with its faces enhanced, uint8 H x W x 3; the faces in detection order).
        `on_progress(fraction, detail)`: called after each batch of faces (the generator is nearly all the
        stage's time)."""
        placed, aligned = [], []
        for face in self.detector.detect(image):
            result = align.align(image, face.points5, self.size)
            if result is not None:  # collinear points: nothing to align
                placed.append(face.points5)
                aligned.append(result[0])
        if not aligned:
            return image, []
        enhanced = []
        for first in range(0, len(aligned), FACE_BATCH):
            faces = to_tensor(aligned[first:first + FACE_BATCH])
            if self.memory_format is not None:
                faces = faces.contiguous(memory_format=self.memory_format)
            enhanced.extend(to_uint8(self.generator(faces)))
            if on_progress is not None:
                on_progress(len(enhanced) / len(aligned), f"{len(enhanced)}/{len(aligned)}")
        blended = align.blend(image, list(zip(placed, enhanced)), self.size)
        return blended, [FaceCrop(a, e) for a, e in zip(aligned, enhanced)]


def fetch_face_file(entry: manifest.ModelEntry, role: str, plan: RunPlan) -> Path:
    """A face-stage file, as hub.fetch_file finds, downloads and verifies it: only in the folders given (the
    official repository, its Face_Enhancement/checkpoints or a flat folder) and the official layout below them,
    checked against the manifest's and the lock's sha256 like every weights file."""
    if not plan.quiet:
        console.print(f"loading {entry.name}", markup=False, highlight=False)
    return hub.fetch_file(entry, role, offline=plan.offline, weights_dir=plan.weights_dir, quiet=plan.quiet)
