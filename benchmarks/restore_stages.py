"""Seconds each stage of `restore` takes on one photo, read from the progress events the pipeline reports (what
weighs the stages of the progress bar: STAGE_SECONDS in imgforge/pipelines/restore.py), with random full-size
weights in the official layout, and the face generator on one face.

    python benchmarks/restore_stages.py --size 512 --kinds quality scratch hr --threads 2

Prints one JSON object per kind: seconds per stage, and the seconds of each part of the mapping network run
alone (convolutions before its attention, the attention, the convolutions after it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_restore import make_inputs, random_checkpoints  # noqa: E402

from imgforge.nets.face_spade import build_face_generator  # noqa: E402
from imgforge.nets.mapping import build_mapping  # noqa: E402
from imgforge.nets.registry import get_family  # noqa: E402
from imgforge.imageio import Picture  # noqa: E402
from imgforge.pipelines.restore import STAGE_SECONDS, Restorer, Settings  # noqa: E402
from imgforge.plan import RunPlan  # noqa: E402
from imgforge.progress import listening_within_item  # noqa: E402
from imgforge.runtime import make_runner  # noqa: E402


STAGES = {*STAGE_SECONDS, "mapping"}


def stage_seconds(kind: str, size: int, weights: Path) -> dict[str, float]:
    settings = Settings(scratches=kind != "quality", hr=kind == "hr", faces=False)
    restorer = Restorer(settings, RunPlan.resolve(device="cpu", offline=True, weights_dir=weights, quiet=True))
    photo = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    events: list[tuple[float, str]] = []
    with listening_within_item(lambda fraction, stage: events.append((time.perf_counter(), stage))):
        restorer.run(Picture.from_array(photo))
    end = time.perf_counter()
    seconds: dict[str, float] = {}
    starts = []
    for t, stage in events:  # a stage begins where its bare name is first reported
        if stage in STAGES and stage not in {name for _, name in starts}:
            starts.append((t, stage))
    for (t, stage), (following, _) in zip(starts, [*starts[1:], (end, "")]):
        seconds[stage] = following - t
    return {stage: round(value, 2) for stage, value in seconds.items()}


def mapping_part_seconds(kind: str, size: int) -> dict[str, float]:
    """Seconds of each part of the mapping network alone (what MAPPING_SECONDS weighs), from its on_progress."""
    torch.manual_seed(1)
    mapping = make_runner(build_mapping(kind), device=torch.device("cpu"), memory_format=torch.channels_last,
                          policy=get_family("oldphoto_mapping").policy)
    latent = torch.randn(1, 64, size // 4, size // 4)
    _, mask = make_inputs(size, size)
    ends: dict[str, float] = {}
    start = time.perf_counter()
    mapping(latent, *([mask] if kind != "quality" else []),
            on_progress=lambda part, done, detail: ends.__setitem__(part, time.perf_counter()))
    seconds, previous = {}, start
    for part, end in ends.items():  # parts report in order; each ends where the next begins
        seconds[part], previous = round(end - previous, 2), end
    return seconds


def face_seconds(size: int = 256) -> float:
    torch.manual_seed(0)
    runner = make_runner(build_face_generator(), device=torch.device("cpu"), memory_format=torch.channels_last,
                         policy=get_family("face_spade").policy)
    face = torch.rand(1, 3, size, size).contiguous(memory_format=torch.channels_last) * 2 - 1
    runner(face)  # warm-up: oneDNN picks its kernels
    start = time.perf_counter()
    runner(face)
    return round(time.perf_counter() - start, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--kinds", nargs="+", default=["quality", "scratch", "hr"])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for kind in args.kinds:
        with tempfile.TemporaryDirectory() as folder:
            torch.manual_seed(1)
            random_checkpoints(Path(folder), kind)
            print(json.dumps({"kind": kind, "size": args.size, "threads": torch.get_num_threads(),
                              "seconds": stage_seconds(kind, args.size, Path(folder)),
                              "mapping parts": mapping_part_seconds(kind, args.size)}), flush=True)
    print(json.dumps({"face generator, one 256 px face": face_seconds()}), flush=True)


if __name__ == "__main__":
    main()
