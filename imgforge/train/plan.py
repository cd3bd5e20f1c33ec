"""Which samples every step of a run trains on, decided by the seed alone.

The run is a sequence of steps; step s takes a global batch of `batch_size` samples. Samples are numbered
through the run: sample k is position k % size of data epoch k // size, whose order is a permutation drawn
from (seed, data epoch). Each process takes its contiguous share of the global batch, and every random
choice about a sample (crop, flip, noise, timestep, an unpaired partner) is drawn from
`sample_rng(seed, k)`: so the data of a step is the same for any number of processes or loader workers, and
a resumed run continues with exactly the batches the uninterrupted run would have taken.

Epoch-based methods (pix2pix, CycleGAN) never let a batch straddle two epochs: the last batch of an epoch
holds the remaining samples, and is dropped when they cannot be split evenly among the processes.
Step-based methods (DDPM) read the samples as one stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import numpy as np

from ..errors import ImgforgeError

_ORDER, _SAMPLE, _PREVIEW = 0, 1, 2  # the streams drawn from the seed


def sample_rng(seed: int, sample: int) -> np.random.Generator:
    """The random generator of run sample number `sample`: the same in any process."""
    return np.random.default_rng([seed, _SAMPLE, sample])


def preview_rng(seed: int) -> np.random.Generator:
    """The random generator of the fixed images a run shows in its sample grids."""
    return np.random.default_rng([seed, _PREVIEW])


@lru_cache(maxsize=4)
def _order(seed: int, size: int, data_epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, _ORDER, data_epoch]).permutation(size)


@dataclass(frozen=True)
class BatchPlan:
    """The steps of a run over a dataset of `size` samples: `epochs` epochs (epoch-based) or `steps` steps."""

    size: int
    batch_size: int  # the global batch, split among the processes
    seed: int
    epochs: int | None = None
    steps: int | None = None
    world: int = 1
    rank: int = 0

    def __post_init__(self):
        if self.size < 1:
            raise ImgforgeError("the dataset is empty")
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("a run is counted in epochs or in steps, not both")
        if self.batch_size % self.world:
            raise ImgforgeError(f"--batch-size {self.batch_size} cannot be split evenly among {self.world} "
                                "processes: give a multiple of their number")
        if self.epochs is not None and self.size < self.world:
            raise ImgforgeError(f"{self.size} samples cannot be shared among {self.world} processes")

    @property
    def epoch_based(self) -> bool:
        return self.epochs is not None

    @property
    def steps_per_epoch(self) -> int:
        """Steps in one pass over the data (step-based runs: rounded up)."""
        full, rest = divmod(self.size, self.batch_size)
        if not self.epoch_based:
            return math.ceil(self.size / self.batch_size)
        return full + (1 if rest and rest % self.world == 0 else 0)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch if self.epoch_based else self.steps

    def epoch_of(self, step: int) -> int:
        """The epoch (counted from 1) that step number `step` (counted from 0) belongs to."""
        return step // self.steps_per_epoch + 1

    def ends_epoch(self, step: int) -> bool:
        """Whether step number `step` (from 0) is the last of its epoch (always false when step-based)."""
        return self.epoch_based and (step + 1) % self.steps_per_epoch == 0

    def global_batch(self, step: int) -> list[tuple[int, int]]:
        """(dataset index, run sample number) of every sample of step number `step`, in order."""
        if self.epoch_based:
            data_epoch, within = divmod(step, self.steps_per_epoch)
            start = within * self.batch_size
            positions = range(start, min(start + self.batch_size, self.size))
            numbers = [data_epoch * self.size + p for p in positions]
        else:
            numbers = list(range(step * self.batch_size, (step + 1) * self.batch_size))
        return [(int(_order(self.seed, self.size, k // self.size)[k % self.size]), k) for k in numbers]

    def local_batch(self, step: int) -> list[tuple[int, int]]:
        """This process's contiguous share of the global batch."""
        batch = self.global_batch(step)
        share = len(batch) // self.world
        return batch[self.rank * share:(self.rank + 1) * share]

    def batches(self, start: int = 0) -> Iterator[list[tuple[int, int]]]:
        """This process's batches from step number `start` to the end of the run (a DataLoader batch_sampler)."""
        for step in range(start, self.total_steps):
            yield self.local_batch(step)
