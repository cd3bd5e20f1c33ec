"""What a run tells while it trains: the progress bar (iterations/s, ETA, current losses; one bar per epoch
for epoch-based methods), `log.jsonl` in the run folder (one JSON object per logged step, per epoch end and
per evaluation), TensorBoard event files when TensorBoard is installed, `--json` (the same objects on
stdout, instead of the bar) and the sample grids. Only rank 0 has an enabled log."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from ..imageio import write_image
from ..progress import console

LOG_FILE = "log.jsonl"
GRID_GAP = 4  # pixels between the images of a sample grid


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- it/s" if speed is None else f"{speed:.2f} it/s")


class RunLog:
    """Context manager around the loop; inert in processes other than rank 0 (`enabled` false)."""

    def __init__(self, run_dir: Path, *, total: int, steps_per_epoch: int, epoch_based: bool, enabled: bool,
                 json_lines: bool, quiet: bool, resumed_at: int):
        self.run_dir = Path(run_dir)
        self.total, self.steps_per_epoch, self.epoch_based = total, steps_per_epoch, epoch_based
        self.enabled, self.json_lines, self.resumed_at = enabled, json_lines, resumed_at
        self.progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
            _Rate(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[losses]}", markup=False),
            console=console, disable=not enabled or quiet or json_lines,
        )
        self._task = None
        self._epoch = None
        self._file = None
        self._board = None
        self._last = (resumed_at, time.perf_counter())

    def __enter__(self) -> "RunLog":
        if not self.enabled:
            return self
        path = self.run_dir / LOG_FILE
        if self.resumed_at and path.exists():  # records a killed run wrote after its last save are redone
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= self.resumed_at]
            path.write_text("".join(line + "\n" for line in kept))
        self._file = open(path, "a", encoding="utf-8")
        self._board = _tensorboard(self.run_dir / "tensorboard", self.resumed_at)
        self.progress.start()
        if not self.epoch_based:
            self._task = self.progress.add_task("training", total=self.total, completed=self.resumed_at, losses="")
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        self.progress.stop()
        self._file.close()
        if self._board is not None:
            self._board.close()

    def advance(self, step: int, epoch: int | None) -> None:
        if not self.enabled:
            return
        if self.epoch_based and epoch != self._epoch:
            if self._task is not None:
                self.progress.remove_task(self._task)
            epochs = self.total // self.steps_per_epoch
            done = (step - 1) - (epoch - 1) * self.steps_per_epoch
            self._task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=self.steps_per_epoch,
                                                completed=done, losses="")
            self._epoch = epoch
        self.progress.advance(self._task)

    def record(self, step: int, epoch: int | None, losses: dict[str, float], lrs: dict[str, float]) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        steps, since = step - self._last[0], now - self._last[1]
        self._last = (step, now)
        record = {"step": step, "epoch": epoch, "losses": {k: round(v, 6) for k, v in losses.items()}, "lr": lrs,
                  "it_per_s": round(steps / since, 3) if since > 0 else None}
        self._write(record)
        if self._board is not None:
            for name, value in losses.items():
                self._board.add_scalar(f"loss/{name}", value, step)
            for name, value in lrs.items():
                self._board.add_scalar(f"lr/{name}", value, step)
        text = "  ".join(f"{k} {v:.4g}" for k, v in losses.items())
        self.progress.update(self._task, losses=text)

    def event(self, record: dict) -> None:
        """An epoch end or evaluation: logged as it is (numbers also to TensorBoard)."""
        if not self.enabled or len(record) <= 2:
            return
        self._write(record)
        if self._board is not None:
            for name, value in record.get("eval", {}).items():
                self._board.add_scalar(f"eval/{name}", value, record["step"])

    def write_grid(self, path: Path, rows: list[list[np.ndarray]]) -> None:
        write_image(path, tile(rows))

    def _write(self, record: dict) -> None:
        line = json.dumps(record)
        self._file.write(line + "\n")
        self._file.flush()
        if self.json_lines:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


def tile(rows: list[list[np.ndarray]]) -> np.ndarray:
    """One uint8 image of `rows` of uint8 H x W x 3 images, separated by white gaps."""
    height = max(image.shape[0] for row in rows for image in row)
    width = max(sum(image.shape[1] for image in row) + GRID_GAP * (len(row) - 1) for row in rows)
    grid = np.full((len(rows) * height + GRID_GAP * (len(rows) - 1), width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        x = 0
        for image in row:
            top = r * (height + GRID_GAP)
            grid[top:top + image.shape[0], x:x + image.shape[1]] = image
            x += image.shape[1] + GRID_GAP
    return grid


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 0


def _tensorboard(folder: Path, resumed_at: int):
    """A SummaryWriter when TensorBoard is installed (an optional extra), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder), purge_step=resumed_at or None)
