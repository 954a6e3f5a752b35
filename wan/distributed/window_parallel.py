"""Window-parallel: the windows of one denoising step computed on different ranks, fused in order everywhere.

Every window of step i reads only the step's input latents (the original's `latents`, not the partly fused
output), so their DiT forwards and Euler steps are independent; only the overlap fusion reads the previous
window's result. Rank r of W computes windows r, r+W, r+2W, ..., the pre-fusion results are all-gathered, and
every rank runs the fusion and the bf16 cast in window order on identical tensors: the new `latents` are
bit-identical to the sequential loop's on every rank (same kernels, same shapes, same order of fusion).

Windows cost the same whatever their length (a short last window is padded to the full token count), so the
step time is ceil(num_windows / W) forwards plus one all-gather of the (small) latents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch.distributed as dist
from torch import Tensor

from wan.distributed.comm import all_gather_stack


class WindowParallel:
    """`pipe.parallel` (see `wan.pipeline.SequentialWindows`): spreads the windows of a step over `group`.

    group: the ranks that share the windows (same CFG and sequence coordinates); is_main: whether this process
    shows the progress bar and writes the video (global rank 0)."""

    def __init__(self, group: dist.ProcessGroup | None, is_main: bool):
        self.group = group
        self.size = dist.get_world_size(group) if group is not None else 1
        self.rank = dist.get_rank(group) if self.size > 1 else 0
        self.is_main = is_main

    def owns(self, k: int, num_windows: int) -> bool:
        """Whether this rank computes window k (round robin)."""
        return k % self.size == self.rank

    def map(self, fn: Callable[[int, Tensor], Tensor], inputs: Sequence[Tensor]) -> Iterator[tuple[int, Tensor]]:
        """fn(k, inputs[k]) -> a tensor of inputs[k]'s shape and dtype; yields (k, result) for every k in order.

        inputs: the windows' input latents [1, C, F_k, h, w] (views of the step input; F_k differs only for a
        short last window). This rank computes its windows; results travel padded to the longest window."""
        n = len(inputs)
        if self.size == 1:
            for k in range(n):
                yield k, fn(k, inputs[k])
            return
        slots = -(-n // self.size)
        numel = max(x.numel() for x in inputs)
        ref = inputs[0]
        buf = ref.new_zeros(slots, numel)
        for k in range(self.rank, n, self.size):
            z = fn(k, inputs[k])
            assert z.shape == inputs[k].shape and z.dtype == ref.dtype, (z.shape, z.dtype)
            buf[k // self.size, :z.numel()] = z.reshape(-1)
        parts = all_gather_stack(buf, self.group)  # [W, slots, numel]
        for k in range(n):
            x = inputs[k]
            yield k, parts[k % self.size, k // self.size, :x.numel()].view(x.shape)
