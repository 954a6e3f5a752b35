"""TeaCache (arXiv 2411.19108) for the sliding-window pipeline: APPROXIMATE, off unless attached to a DiT.

`attach(dit, TeaCache(threshold, num_steps))` puts it in the DiT's `block_cache` seam; the pipeline then tells
every DiT call which (denoising step, window) it is: `dit(..., cache_key=(step, window))`. At the first call of a
step, the relative L1 change of the time-step modulation `e0` since the previous step, rescaled by `coefficients`,
is added to a running sum; while the sum stays below `threshold` the step skips the 30 blocks and reuses, for
EACH window, that window's own residual (blocks' output minus their input) from the last computed step. The
original keys its state by forward call, so with several windows the step count and the residuals leak from one
window to the next (upstream issues #31/#89); here the pipeline's key says which window a call is, whatever the
order the calls come in. Threshold 0 never skips (the exact path, tested). The first step, the last step, the
first `num_skip_start_steps` steps, and a step that does not follow the previous one (a resumed render) always
run; step 0 (or a step before the previous one) starts a new generation.

A DiT call without a key (a caller that does not pass one) falls back to inferring the key from the call order:
a step starts when `e0` changes and the window is the number of calls since then (one warning).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from torch import Tensor, nn

# The TeaCache rescaling polynomial the original uses for every 1.3B model (wan/models/cache_utils.py there).
WAN_1_3B_TEACACHE_COEFFICIENTS = (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02)


class TeaCache:
    """The DiT's `block_cache`: `__call__(run_blocks, x, e0, cache_key)` -> the blocks' output for x.

    threshold: skip while the accumulated rescaled change stays below it (0 = never skip; the original suggests
    0.1); num_steps: the denoising steps of a generation (its last step always runs); offload: keep the residuals
    in CPU memory (one per window, ~0.3 GB each at 480x832 in bf16), as the original.
    Counters: `calls` (DiT calls seen), `skipped` (calls that reused a residual).
    """

    def __init__(self, threshold: float, num_steps: int, coefficients=WAN_1_3B_TEACACHE_COEFFICIENTS,
                 num_skip_start_steps: int = 0, offload: bool = True):
        if threshold < 0:
            raise ValueError(f"TeaCache threshold must be >= 0 (0 = off), got {threshold}")
        if num_steps < 1 or not 0 <= num_skip_start_steps <= num_steps:
            raise ValueError(f"need num_steps >= 1 and 0 <= num_skip_start_steps <= num_steps, got {num_steps}, "
                             f"{num_skip_start_steps}")
        self.threshold, self.num_steps, self.num_skip_start_steps = threshold, num_steps, num_skip_start_steps
        self.coefficients, self.offload = tuple(coefficients), offload
        self._warned_no_key = False
        self.reset()

    def reset(self) -> None:
        """Forget everything (between generations; a call at step 0 does it too)."""
        self._new_generation()
        self._inferred = (-1, 0)  # the key of the last call that came without one

    def _new_generation(self) -> None:
        self.step = -1
        self.compute = True
        self._acc = 0.0
        self._last_e0: Tensor | None = None
        self._residuals: dict[tuple[int, int], Tensor] = {}
        self._key: tuple[int, int] | None = None
        self._slot = 0  # calls with the same key in a row (the guidance branches run one at a time)
        self.calls = self.skipped = 0

    def _rescale(self, x: float) -> float:
        return sum(c * x ** (len(self.coefficients) - 1 - i) for i, c in enumerate(self.coefficients))

    def _rel_change(self, e0: Tensor) -> float | None:
        """Relative L1 change of e0 since the last step's, None without a comparable one (one sync)."""
        prev = self._last_e0
        if prev is None or prev.shape != e0.shape:
            return None
        prev = prev.float()
        return ((e0.float() - prev).abs().mean() / prev.abs().mean()).item()

    def _begin_step(self, step: int, e0: Tensor) -> None:
        """Decide whether `step` runs the blocks (at its first call)."""
        if step == 0 or step < self.step:
            self._new_generation()
        follows = step == self.step + 1
        self.step = step
        rel = self._rel_change(e0) if follows else None
        if (rel is None or self.threshold <= 0 or step == 0 or step >= self.num_steps - 1
                or step < self.num_skip_start_steps):
            self.compute, self._acc = True, 0.0
        else:
            self._acc += self._rescale(rel)
            self.compute = self._acc >= self.threshold
            if self.compute:
                self._acc = 0.0
        self._last_e0 = e0.detach().clone()

    def _infer_key(self, e0: Tensor) -> tuple[int, int]:
        """The key of a call that came without one: a new step when e0 changed, else the next window."""
        if not self._warned_no_key:
            self._warned_no_key = True
            warnings.warn("TeaCache: the DiT was called without cache_key=(step, window); inferring them from the "
                          "call order (pass cache_key to be independent of it)", RuntimeWarning, stacklevel=4)
        step, window = self._inferred
        rel = self._rel_change(e0) if step >= 0 else None
        if rel is None or rel != 0.0:
            step, window = step + 1, 0
            if step >= self.num_steps:  # a new generation
                step = 0
        else:
            window += 1
        self._inferred = (step, window)
        return step, window

    def __call__(self, run_blocks: Callable[[Tensor], Tensor], x: Tensor, e0: Tensor,
                 cache_key: tuple[int, int] | None) -> Tensor:
        """x: [B, S, dim] the first block's input; e0: [B, 6, dim]; cache_key: (step, window) or None."""
        step, window = cache_key if cache_key is not None else self._infer_key(e0)
        if step != self.step:
            self._begin_step(step, e0)
        self._slot = self._slot + 1 if self._key == (step, window) else 0
        self._key = (step, window)
        self.calls += 1
        slot = (window, self._slot)
        if not self.compute and slot in self._residuals:
            self.skipped += 1
            r = self._residuals[slot].to(x.device, non_blocking=True)
            return (x.float() + r.float()).to(x.dtype)
        out = run_blocks(x)
        r = (out.float() - x.float()).to(out.dtype)
        self._residuals[slot] = r.to("cpu") if self.offload else r
        return out


def attach(dit: nn.Module, cache: TeaCache | None) -> None:
    """Put `cache` in `dit.block_cache` (None detaches); the pipeline passes `cache_key=(step, window)`."""
    dit.block_cache = cache
