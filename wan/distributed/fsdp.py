"""`--fsdp_dit`: the DiT's parameters sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`) for inference.

Each of the 30 blocks is one FSDP unit and the rest of the model (embeddings, adapter, head) the root unit, as the
original wraps it (`wan/distributed/fsdp.py` there, FSDP1 with the blocks auto-wrapped). Each rank stores 1/N of
the weights; a unit's full weights are all-gathered just before it runs and freed after it. The all-gathered
weights are the same tensors as unsharded ones, so the numbers do not change.

FSDP's all-gathers are collectives: every rank of the sharding group must run the same forwards in the same
order. So the group is the ranks that share a window (the CFG-parallel x sequence-parallel ranks of one window
group); window-parallel ranks run different windows and cannot share one FSDP group. The 1.3B DiT (3.5 GB in
bf16) fits any GPU: this saves memory (≈3.5 GB x (1 - 1/N)) at the price of the all-gathers.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn


def shard_dit(dit: nn.Module, group: dist.ProcessGroup, device_type: str) -> None:
    """Shard `dit` (on its device already) over `group` in place: every block, then the root."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    mesh = DeviceMesh.from_group(group, device_type)
    for block in dit.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(dit, mesh=mesh, reshard_after_forward=True)
