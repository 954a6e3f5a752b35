"""CFG-parallel: the three guidance branches of one DiT forward computed on different ranks.

The branches `[neg text + no audio, neg text + audio, pos text + audio]` share x, y, t and the audio track, so the
split happens inside the one forward, AFTER the patch embedding, time/context embeddings and the audio adapter
(which runs once on the shared audio, as on one process): every rank keeps a contiguous range of the batch
through the blocks and the head, and the head outputs are all-gathered in batch order. Splitting the batch
before the forward instead would change the patch embedding's batch size, and batch size changes the numbers of
some kernels (oneDNN's Conv3d on CPU: batch 1 and batch 3 differ in the last bit); splitting after the embeddings
keeps every per-element kernel call the same as on one process, so the result is exact on CPU.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from wan.distributed.comm import all_gather_stack


def branch_ranges(batch: int, size: int) -> list[tuple[int, int]]:
    """Contiguous batch ranges `[lo, hi)` of `size` ranks, the first ones one larger: 3 over 2 -> (0,2), (2,3)."""
    if not 1 <= size <= batch:
        raise ValueError(f"cannot split a batch of {batch} guidance branches over {size} ranks; "
                         f"use a CFG-parallel degree between 1 and {batch}")
    q, r = divmod(batch, size)
    bounds = [0]
    for i in range(size):
        bounds.append(bounds[-1] + q + (i < r))
    return list(zip(bounds[:-1], bounds[1:]))


def gather_batch(x: Tensor, group: dist.ProcessGroup | None, ranges: list[tuple[int, int]]) -> Tensor:
    """x: [hi - lo, ...] this rank's branches -> [B, ...] all branches in batch order (on every rank).
    Ranks with fewer branches pad to the largest range so that one all_gather of equal sizes suffices."""
    if len(ranges) == 1:
        return x
    most = max(hi - lo for lo, hi in ranges)
    if x.shape[0] < most:
        x = torch.cat([x, x.new_zeros(most - x.shape[0], *x.shape[1:])])
    parts = all_gather_stack(x, group)  # [size, most, ...]
    return torch.cat([parts[i, :hi - lo] for i, (lo, hi) in enumerate(ranges)])
