"""Collectives on raw bytes, so that every dtype (bf16 included) travels over gloo (CPU tests) and NCCL alike.

Inference only: nothing here carries gradients.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _bytes(x: Tensor) -> Tensor:
    """x (any dtype) -> its bytes as a flat uint8 tensor (a copy only if x is not contiguous)."""
    return x.contiguous().view(-1).view(torch.uint8)


def all_gather_stack(x: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """x: the same shape and dtype on every rank of `group` -> [group size, *x.shape], ordered by group rank."""
    n = dist.get_world_size(group)
    if n == 1:
        return x[None]
    buf = _bytes(x)
    parts = [torch.empty_like(buf) for _ in range(n)]
    dist.all_gather(parts, buf, group=group)
    return torch.stack(parts).view(x.dtype).view(n, *x.shape)


def all_to_all_equal(x: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """x: [P, ...] with P the group size: chunk j goes to group rank j; returns [P, ...] where chunk j came
    from group rank j (torch.distributed.all_to_all_single with equal splits)."""
    n = dist.get_world_size(group)
    assert x.shape[0] == n, f"first dim {x.shape[0]} must be the group size {n}"
    buf = _bytes(x)
    out = torch.empty_like(buf)
    dist.all_to_all_single(out, buf, group=group)
    return out.view(x.dtype).view(x.shape)
