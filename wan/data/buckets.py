"""Resolution buckets and the resumable, rank-sharded epoch plan that mixes them.

The original trains `train_1B_square.py` on one 512x512 loader and `train_1B_rec_vec.py` on two loaders
(832x480 landscape "rec", 480x832 portrait "vec") whose batches it interleaves: every epoch it shuffles a
list holding `len(rec_loader)` zeros and `len(vec_loader)` ones and pulls the next batch of the named
loader (spec training.md §10). Here one plan per epoch lists `(bucket, index, sample_seed)` in that order:

* it is a pure function of `(seed, epoch)`, so a resumed run skips the micro-batches already consumed and
  sees exactly the samples the uninterrupted run would have seen (the original restarts the epoch);
* `sample_seed` drives the dataset's random choices (clip start), so they do not depend on which
  DataLoader worker loads the sample;
* with several processes each rank takes every `world_size`-th entry (what accelerate's sharding does).

Batches hold one sample (the original only works with batch size 1: clips differ in audio length), so a
batch never mixes resolutions.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Bucket", "SQUARE", "REC", "VEC", "BUCKET_SETS", "epoch_plan", "PlanSampler"]


@dataclass(frozen=True)
class Bucket:
    """One resolution (W x H, as the original's `width`/`height`) and the dataset list it reads."""

    name: str
    width: int
    height: int

    @property
    def list_file(self) -> str:
        """The original's list name under the data root: `video_<name>_path.txt`."""
        return f"video_{self.name}_path.txt"

    def scaled(self, width: int, height: int) -> "Bucket":
        return Bucket(self.name, width, height)


SQUARE = Bucket("square", 512, 512)
REC = Bucket("rec", 832, 480)  # landscape
VEC = Bucket("vec", 480, 832)  # portrait

# what each training script reads: the two 1.3B scripts differ only in this (STYLE §9)
BUCKET_SETS: dict[str, tuple[Bucket, ...]] = {"square": (SQUARE,), "rec_vec": (REC, VEC)}


def _shuffled(n: int, rng: random.Random) -> list[int]:
    order = list(range(n))
    rng.shuffle(order)
    return order


def epoch_plan(lengths: Sequence[int], seed: int, epoch: int) -> list[tuple[int, int, int]]:
    """The whole epoch as `(bucket_id, sample_index, sample_seed)` entries (all ranks' share).

    Each bucket's samples are shuffled (the original's `shuffle=True` loaders); with several buckets the
    order of buckets is a shuffled list of `lengths[i]` copies of `i` (the original's rec/vec mixing)."""
    if any(n < 0 for n in lengths) or not any(lengths):
        raise ValueError(f"every bucket needs a non-negative length and one at least a sample, got {list(lengths)}")
    rng = random.Random(f"plan-{seed}-{epoch}")
    per_bucket = [_shuffled(n, rng) for n in lengths]
    order = [b for b, n in enumerate(lengths) for _ in range(n)]
    if len(lengths) > 1:
        rng.shuffle(order)
    cursor = [0] * len(lengths)
    plan = []
    for b in order:
        plan.append((b, per_bucket[b][cursor[b]], rng.getrandbits(63)))
        cursor[b] += 1
    return plan


class PlanSampler(torch.utils.data.Sampler):
    """Yields this rank's `(bucket_id, index, sample_seed)` keys of one epoch, from micro-batch `start` on.

    `len(sampler)` is the number of micro-batches of this rank per epoch (the epoch is truncated to a
    multiple of `world_size`, so every rank takes the same number of steps)."""

    def __init__(self, lengths: Sequence[int], seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                 start: int = 0):
        self.lengths, self.seed, self.epoch = list(lengths), seed, epoch
        self.rank, self.world_size, self.start = rank, world_size, start
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")

    @staticmethod
    def steps_per_epoch(lengths: Sequence[int], world_size: int = 1) -> int:
        return sum(lengths) // world_size

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch(self.lengths, self.world_size) - self.start)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        plan = epoch_plan(self.lengths, self.seed, self.epoch)
        n = self.steps_per_epoch(self.lengths, self.world_size)
        mine = plan[self.rank: n * self.world_size: self.world_size]
        return iter(mine[self.start:])
