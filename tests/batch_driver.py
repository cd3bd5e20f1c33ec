"""A tiny batch command for tests/test_batch.py: inverts every image of a folder, slowly, so that a test can
kill it mid-run. Usage: python batch_driver.py INPUT_FOLDER OUTPUT_FOLDER [--skip-existing]
Prints one JSON line per image on stdout; exits 3 if some image failed."""

from __future__ import annotations

import sys
import time

from imgforge.batch import plan_jobs, run_batch
from imgforge.errors import PartialFailure
from imgforge.imageio import read_image, write_image

SECONDS_PER_IMAGE = 0.2


def invert(pictures):
    time.sleep(SECONDS_PER_IMAGE)
    return [255 - picture.pixels for picture in pictures]


def main(argv: list[str]) -> int:
    source, output, *flags = argv
    jobs = plan_jobs([source], output)
    report = run_batch(
        jobs,
        load=lambda job: read_image(job.source),
        compute=invert,
        save=lambda job, picture, inverted: write_image(job.target, inverted, like=picture),
        skip_existing="--skip-existing" in flags,
        quiet=True,
        json_lines=True,
    )
    return PartialFailure.exit_code if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
