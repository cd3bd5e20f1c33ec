"""The face stage: time per face of the full-size SPADE generator (random weights, official width ngf 64) at
256 px (batch 4, as test_face.py) and 512 px (FaceSR_512, batch 1), and how far the default YuNet alignment
lies from the official dlib one on the test photographs.

    python benchmarks/bench_faces.py --threads 2 [--repeats 3] [--predictor PATH] [--yunet PATH]

--predictor: dlib's shape_predictor_68_face_landmarks.dat (default: the copy face-recognition-models ships);
--yunet: face_detection_yunet_2023mar.onnx (default: tests/data). Prints one line per measurement.
Alignment difference: for each photo, both detectors' five points, then the aligned 256 px crop of each; the
figure is how far apart the two crops' pixels land in the photo, in aligned-face pixels (mean and max over the
crop), with the relative scale and the rotation between the two similarity transforms.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from skimage import data

from imgforge.faces import align
from imgforge.faces.detect import DlibDetector, YuNetDetector
from imgforge.nets.face_spade import build_face_generator
from imgforge.pipelines.faces import FACE_BATCH

ROOT = Path(__file__).resolve().parent.parent


def time_generator(size: int, batch: int, repeats: int) -> float:
    """Seconds per face, the best of `repeats` batches after one warm-up."""
    net = build_face_generator(ngf=64).to(memory_format=torch.channels_last)  # as the face stage runs it
    faces = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    faces = faces.contiguous(memory_format=torch.channels_last)
    best = math.inf
    with torch.inference_mode():
        net(faces)
        for _ in range(repeats):
            start = time.perf_counter()
            net(faces)
            best = min(best, time.perf_counter() - start)
    return best / batch


def test_photos() -> dict[str, np.ndarray]:
    astronaut = data.astronaut()
    rotation = cv2.getRotationMatrix2D((256, 256), 12, 1.0)
    return {
        "astronaut 512": astronaut,
        "astronaut mirrored": np.ascontiguousarray(astronaut[:, ::-1]),
        "astronaut rotated 12 deg": cv2.warpAffine(astronaut, rotation, (512, 512), borderMode=cv2.BORDER_REFLECT),
        "astronaut 1024 (bicubic x2)": cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC),
        "docs/examples/old_photo.jpg": np.asarray(Image.open(ROOT / "docs" / "examples" / "old_photo.jpg").convert("RGB")),
    }


def alignment_difference(points_a: np.ndarray, points_b: np.ndarray, size: int = 256) -> dict[str, float]:
    first, second = align.similarity_transform(size, points_a), align.similarity_transform(size, points_b)
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).reshape(-1, 2).astype(np.float64)
    grid = np.hstack([grid, np.ones((len(grid), 1))])
    in_photo = (grid @ first.T)[:, :2] - (grid @ second.T)[:, :2]
    scale = math.hypot(*first[:2, 0])  # photo pixels per aligned pixel
    shift = np.hypot(*in_photo.T) / scale
    angle = math.degrees(math.atan2(first[1, 0], first[0, 0]) - math.atan2(second[1, 0], second[0, 0]))
    return {"mean_px": float(shift.mean()), "max_px": float(shift.max()),
            "scale_ratio": scale / math.hypot(*second[:2, 0]), "rotation_deg": angle,
            "points_max_px": float(np.abs(points_a - points_b).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    default_predictor = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0])
    parser.add_argument("--predictor", type=Path,
                        default=default_predictor / "models" / "shape_predictor_68_face_landmarks.dat")
    parser.add_argument("--yunet", type=Path, default=ROOT / "tests" / "data" / "face_detection_yunet_2023mar.onnx")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU")
    for size, batch in ((256, FACE_BATCH), (512, 1)):
        print(f"generator ngf 64, {size} px, batch {batch}: {time_generator(size, batch, args.repeats):.3f} s per face")

    dlib_detector, yunet_detector = DlibDetector(args.predictor), YuNetDetector(args.yunet)
    for name, photo in test_photos().items():
        timings, found = {}, {}
        for detector in (dlib_detector, yunet_detector):
            start = time.perf_counter()
            found[detector.name] = detector.detect(photo)
            timings[detector.name] = time.perf_counter() - start
        counts = {key: len(faces) for key, faces in found.items()}
        line = f"{name}: faces dlib {counts['dlib']} yunet {counts['yunet']}; detection dlib " \
               f"{timings['dlib']:.3f} s yunet {timings['yunet']:.3f} s"
        if counts["dlib"] and counts["yunet"]:
            diff = alignment_difference(found["yunet"][0].points5, found["dlib"][0].points5)
            line += (f"; yunet vs dlib: five points up to {diff['points_max_px']:.1f} px apart, aligned crops "
                     f"{diff['mean_px']:.1f} px apart on average (max {diff['max_px']:.1f}), scale x"
                     f"{diff['scale_ratio']:.3f}, rotation {diff['rotation_deg']:+.2f} deg")
        print(line)


if __name__ == "__main__":
    main()
