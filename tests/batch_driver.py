"""A tiny batch command for the engine tests: inverts every image of a folder, slowly, so that a test can
kill or interrupt it mid-run. Usage: python batch_driver.py INPUT_FOLDER OUTPUT_FOLDER [--skip-existing]
[--ray ADDRESS]. Prints one JSON line per image on stdout; exits 3 if some image failed; Ctrl-C or SIGTERM
end it as they end imgforge's commands: one `interrupted: <summary>` line on stderr, exit 130."""

from __future__ import annotations

import sys

from engine_tasks import InvertTask
from imgforge.batch import plan_jobs
from imgforge.engine import EngineOptions, execute
from imgforge.errors import PartialFailure


def main(argv: list[str]) -> int:
    source, output, *flags = argv
    engine = None
    if "--ray" in flags:
        engine = EngineOptions("ray", {"address": flags[flags.index("--ray") + 1], "workers": 2})
    try:
        report = execute(InvertTask(batch_size=2 if engine else 1), plan_jobs([source], output), engine=engine,
                         skip_existing="--skip-existing" in flags, quiet=True, json_lines=True)
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    return PartialFailure.exit_code if report.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
