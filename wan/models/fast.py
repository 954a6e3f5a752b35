"""`--fast`: the DiT's fast numerics plus `torch.compile` of its blocks, applied from outside (`enable_fast(dit)`).

There is one block forward (`wan.models.dit.WanAttentionBlock.forward`); this module only switches the model's
numerics policy to "fast" (`dit.set_numerics`: fewer roundings, float32 cos/sin RoPE, float32 residual stream; see
`wan/models/dit.py`) and compiles that forward:

* `torch.compile(dynamic=False)` of the block forward, called with the block as an argument: the 30 blocks share
  code, so there is one compilation per input-shape set (Python ints such as `num_groups`, the dtype and the
  numerics flag are specialised constants); it fuses the elementwise work around the matmuls and attention. Off
  with `compile=False`; if compilation fails (no compiler / Triton on the machine) the eager forward runs, with one
  warning.
* Attention goes through the one `wan.models.attention.attention()` entry point (`--attention`: FlashAttention-3 on
  Hopper where installed, else torch SDPA, which picks cuDNN there).

Options that change the numbers (APPROXIMATE, off by default), each in its own module, attached here for the CLI:
`teacache=TeaCache(...)` (`wan.models.teacache`: skips the blocks on steps whose time-step modulation barely
changed; threshold 0 is the exact path) and `fp8=True` (`wan.models.fp8`: the blocks' big Linears as
float8_e4m3fn matmuls).

Exactness: the fast numerics compute the same function; they differ from the reference only in rounding (fewer
intermediate roundings), which `tests/test_fast.py` and `python -m wan.bench dit_precision` check against a float32
forward. In float32 they equal the reference to float32 rounding.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from wan.models import fp8 as fp8_mod
from wan.models import teacache as teacache_mod
from wan.models.dit import WanAttentionBlock
from wan.models.teacache import TeaCache  # noqa: F401 - the CLI's import path (`from wan.models.fast import ...`)


class FastState:
    """What `enable_fast` attaches to the model (`dit._fast_state`): its options and the compiled block forward."""

    def __init__(self, compile: bool, backend: str | object = "inductor", mode: str | None = None,
                 fp32_residual: bool = True, teacache: TeaCache | None = None, fp8: bool = False):
        self.compile, self.backend, self.mode = compile, backend, mode
        self.fp32_residual, self.teacache, self.fp8 = fp32_residual, teacache, fp8
        self.compiled = None
        self.compile_failed: str | None = None
        if compile:
            try:
                self.compiled = torch.compile(WanAttentionBlock.forward, dynamic=False, backend=backend, mode=mode)
            except Exception as err:  # noqa: BLE001 - torch.compile unavailable: eager forward
                self._fail(err)

    def _fail(self, err: Exception) -> None:
        self.compiled = None
        self.compile_failed = f"{type(err).__name__}: {err}"[:500]
        warnings.warn(f"wan.models.fast: torch.compile unavailable, using the eager forward ({self.compile_failed})",
                      RuntimeWarning, stacklevel=3)

    def run_block(self, block: nn.Module, *args, **kwargs):
        """The block's own forward, compiled (eager once compilation has failed)."""
        if self.compiled is not None:
            try:
                return self.compiled(block, *args, **kwargs)
            except Exception as err:  # noqa: BLE001 - compiler missing/broken; a real error re-raises below
                self._fail(err)
        return WanAttentionBlock.forward(block, *args, **kwargs)


def enable_fast(dit: nn.Module, compile: bool = True, fp32_residual: bool = True,
                backend: str | object = "inductor", mode: str | None = None,
                state: FastState | None = None, teacache: TeaCache | None = None, fp8: bool = False) -> FastState:
    """Switch `dit` (a WanTransformer3DFantasyModel) to the fast numerics and compiled blocks; returns its FastState.

    compile: torch.compile the block forward (one compilation for all blocks per input shape; eager with a warning
    where compilation is unavailable); fp32_residual: keep the residual stream in float32 under autocast;
    backend/mode: passed to torch.compile; state: re-install a FastState returned earlier (keeps its compiled code
    and options, e.g. after a `disable_fast` for a reference run); teacache: an APPROXIMATE `TeaCache` put in the
    model's `block_cache` seam, None = exact; fp8: APPROXIMATE `wan.models.fp8.enable_fp8`.
    Weights and state_dict are untouched; `disable_fast(dit)` undoes it all. Inference only: training is not what
    this path is tested for.
    """
    disable_fast(dit)
    if state is None:
        state = FastState(compile, backend, mode, fp32_residual, teacache, fp8)
    dit.set_numerics("fast", fp32_residual=state.fp32_residual)
    if state.fp8:
        fp8_mod.enable_fp8(dit)
    teacache_mod.attach(dit, state.teacache)
    if state.compile:
        for block in dit.blocks:
            # an instance attribute shadows the class's forward; nn.Module.__call__ (hooks included) calls it
            block.forward = functools.partial(state.run_block, block)
    dit._fast_state = state
    return state


def disable_fast(dit: nn.Module) -> None:
    """Back to the reference: original numerics, eager blocks, no TeaCache, no fp8 (no-op if never enabled)."""
    for block in dit.blocks:
        block.__dict__.pop("forward", None)
    dit.__dict__.pop("_fast_state", None)
    dit.set_numerics("original")
    teacache_mod.attach(dit, None)
    fp8_mod.disable_fp8(dit)


def is_fast(dit: nn.Module) -> bool:
    return getattr(dit, "_fast_state", None) is not None
