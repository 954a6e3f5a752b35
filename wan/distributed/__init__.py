"""Multi-GPU inference: window-parallel, CFG-parallel and sequence-parallel (Ulysses / Ring), combinable.

Parallelism is applied from outside to a built pipeline (`apply_parallel`), through two seams that are identity
on one process: `pipe.parallel` decides which windows of a step this rank computes and exchanges the results
(`window_parallel`), `pipe.dit.token_split` splits the guidance batch (`cfg_parallel`) and the token sequence
(`usp`) inside the one DiT forward, and every block's `self_attn.attention_fn` attends over the split sequence.

Ranks form a grid `window x cfg x sequence` (sequence fastest, the order xfuser uses for `sp`, `cfg` and `dp`):
global rank = (w·C + c)·S + s. Window-parallel and CFG-parallel give exactly the one-process latents (see their
modules for why); sequence parallelism gives them up to the order of the attention sums.

    torchrun --nproc_per_node 2 inference.py ...                       # automatic layout (window-parallel)
    torchrun --nproc_per_node 4 inference.py ... --window_parallel --cfg_parallel
    torchrun --nproc_per_node 4 inference.py ... --ulysses_degree 2 --ring_degree 2   # the original's USP
"""

from __future__ import annotations

import datetime
import itertools
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from wan.distributed.usp import DiTSplit, sequence_attention
from wan.distributed.window_parallel import WindowParallel

__all__ = ["ParallelLayout", "choose_layout", "ParallelContext", "init_parallel", "apply_parallel"]


@dataclass(frozen=True)
class ParallelLayout:
    """Degrees of the three kinds of parallelism; their product is the number of processes."""

    window: int = 1
    cfg: int = 1
    ulysses: int = 1
    ring: int = 1

    def __post_init__(self) -> None:
        for name in ("window", "cfg", "ulysses", "ring"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} degree must be >= 1 (got {getattr(self, name)})")
        if self.cfg > 3:
            raise ValueError(f"CFG-parallel degree {self.cfg} > 3: there are only 3 guidance branches")

    @property
    def sequence(self) -> int:
        return self.ulysses * self.ring

    @property
    def world(self) -> int:
        return self.window * self.cfg * self.sequence

    def coords(self, rank: int) -> tuple[int, int, int]:
        """Global rank -> (window, cfg, sequence) coordinates."""
        s, rest = rank % self.sequence, rank // self.sequence
        return rest // self.cfg, rest % self.cfg, s

    def check(self, num_heads: int, tokens_per_frame: int) -> None:
        """User errors of a layout for a model with `num_heads` and frames of `tokens_per_frame` tokens."""
        if num_heads % self.ulysses:
            raise ValueError(f"--ulysses_degree {self.ulysses} must divide the DiT's {num_heads} heads")
        if tokens_per_frame % self.sequence:
            raise ValueError(f"--ulysses_degree x --ring_degree = {self.sequence} must divide the {tokens_per_frame} "
                             "tokens of a latent frame (height/16 x width/16)")


# with the GPU count only, a sequence-parallel layout (not bit-exact) is chosen over the best exact one only if its
# estimated step time is at most this fraction of the exact one's
EXACT_PREFERENCE = 0.8


def _step_cost(layout: ParallelLayout, num_windows: int) -> float:
    """Relative time of one denoising step: forwards per rank x branches per rank / sequence share, with a toll on
    a sequence-parallel forward for its all-to-alls. Measured on 2 H200s at 480x832 (BENCHMARKS.md): window-parallel
    0.499 and CFG-parallel (2 ranks: 2 + 1 branches) 0.676 of the 1-GPU step, as this model says; Ulysses 2 0.520,
    i.e. a 4 % toll. More sequence ranks pay more (Wan2.1-1.3B: 2.3x on 8 GPUs), so the toll grows with the degree
    here (4 % per doubling, a guess beyond 2)."""
    branches = -(-3 // layout.cfg)
    seq = 1.0 if layout.sequence == 1 else (1.0 + 0.04 * math.log2(layout.sequence)) / layout.sequence
    return -(-num_windows // layout.window) * branches * seq


def choose_layout(world: int, num_windows: int, num_heads: int, tokens_per_frame: int, *, ulysses: int = 1,
                  ring: int = 1, window_parallel: bool = False, cfg_parallel: bool = False,
                  fsdp_dit: bool = False) -> ParallelLayout:
    """The layout of `world` processes for a video of `num_windows` windows.

    * Nothing asked (the GPU count only): the fastest exact layout by `_step_cost` (window- and CFG-parallel),
      unless a sequence-parallel one is estimated at most `EXACT_PREFERENCE` (0.8) of its step time.
    * ulysses x ring == world and no flag: the original's pure sequence parallelism.
    * Otherwise the processes left after ulysses x ring go to CFG-parallel (3 or 2 ranks, with --cfg_parallel)
      and window-parallel (the rest, with --window_parallel).
    * fsdp_dit: the DiT is sharded over the ranks that run the same forwards (CFG x sequence ranks of a window
      group), so the automatic choice keeps at least 2 of them, and an explicit layout without any is an error.
    """
    if world < 1:
        raise ValueError(f"world size must be >= 1 (got {world})")
    seq = ulysses * ring
    if world % seq:
        raise ValueError(f"--ulysses_degree x --ring_degree = {seq} must divide the number of processes {world}; "
                         f"launch with torchrun --nproc_per_node {seq} (or a multiple)")
    rest = world // seq
    if not (window_parallel or cfg_parallel):
        if seq > 1:
            if rest != 1:
                raise ValueError(f"--ulysses_degree x --ring_degree = {seq} but {world} processes: make it equal, or "
                                 "add --window_parallel / --cfg_parallel for the remaining processes")
            layout = ParallelLayout(ulysses=ulysses, ring=ring)
            layout.check(num_heads, tokens_per_frame)
            return layout
        best = {True: None, False: None}  # exact (no sequence split) / not
        for w, c in itertools.product(range(1, world + 1), range(1, 4)):
            if world % (w * c):
                continue
            u = world // (w * c)
            cand = ParallelLayout(window=w, cfg=c, ulysses=u)
            if u > 1 and (num_heads % u or tokens_per_frame % u):
                continue
            if fsdp_dit and world > 1 and c * u == 1:
                continue
            key = (_step_cost(cand, num_windows), u, c)  # ties: fewer sequence, then fewer CFG ranks
            if best[u == 1] is None or key < best[u == 1][0]:
                best[u == 1] = (key, cand)
        exact, approx = best[True], best[False]
        if exact is None and approx is None:
            raise ValueError(f"no layout of {world} processes fits {num_heads} heads and {tokens_per_frame} tokens "
                             "per frame; use --window_parallel")
        # the exact layouts give the 1-GPU video bit for bit: take one unless sequence parallelism is much faster
        if exact is not None and (approx is None or approx[0][0] > EXACT_PREFERENCE * exact[0][0]):
            return exact[1]
        return approx[1]
    layout = _explicit_layout(world, rest, ulysses, ring, window_parallel, cfg_parallel)
    layout.check(num_heads, tokens_per_frame)
    if fsdp_dit and world > 1 and layout.cfg * layout.sequence == 1:
        raise ValueError("--fsdp_dit shards the DiT over the ranks that run the same forwards (--cfg_parallel, "
                         "--ulysses_degree, --ring_degree); window-parallel ranks run different windows: add one of "
                         "those, or drop --fsdp_dit")
    return layout


def _explicit_layout(world: int, rest: int, ulysses: int, ring: int, window_parallel: bool,
                     cfg_parallel: bool) -> ParallelLayout:
    seq = ulysses * ring
    if cfg_parallel and window_parallel:
        cfg = 3 if rest % 3 == 0 else 2 if rest % 2 == 0 else 1
        if cfg == 1:
            raise ValueError(f"--cfg_parallel needs 2 or 3 ranks per group; {rest} processes are left after "
                             f"ulysses x ring = {seq}")
        layout = ParallelLayout(window=rest // cfg, cfg=cfg, ulysses=ulysses, ring=ring)
    elif cfg_parallel:
        if rest not in (2, 3):
            raise ValueError(f"--cfg_parallel alone splits the 3 guidance branches over 2 or 3 processes; {rest} are "
                             "left after ulysses x ring: add --window_parallel or change the degrees")
        layout = ParallelLayout(cfg=rest, ulysses=ulysses, ring=ring)
    else:
        layout = ParallelLayout(window=rest, ulysses=ulysses, ring=ring)
    return layout


@dataclass
class ParallelContext:
    """This process's place in the grid and its process groups (None for a degree of 1)."""

    layout: ParallelLayout
    rank: int
    device: torch.device
    window_group: dist.ProcessGroup | None
    cfg_group: dist.ProcessGroup | None
    seq_group: dist.ProcessGroup | None
    forward_group: dist.ProcessGroup | None = None  # the CFG x sequence ranks of this window group (FSDP's group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _groups(layout: ParallelLayout, rank: int, backend: str | None):
    """Create every group of each kind (all ranks must create all groups, in the same order); keep ours."""
    w_n, c_n, s_n = layout.window, layout.cfg, layout.sequence

    def g(w, c, s):
        return (w * c_n + c) * s_n + s

    mine = dict.fromkeys(("window", "cfg", "seq", "forward"))
    kinds = {
        "forward": ([[g(w, c, s) for c in range(c_n) for s in range(s_n)] for w in range(w_n)], c_n * s_n),
        "seq": ([[g(w, c, s) for s in range(s_n)] for w in range(w_n) for c in range(c_n)], s_n),
        "cfg": ([[g(w, c, s) for c in range(c_n)] for w in range(w_n) for s in range(s_n)], c_n),
        "window": ([[g(w, c, s) for w in range(w_n)] for c in range(c_n) for s in range(s_n)], w_n),
    }
    for kind, (lists, n) in kinds.items():
        if n == 1:
            continue
        for ranks in lists:
            pg = dist.new_group(ranks, backend=backend)
            if rank in ranks:
                mine[kind] = pg
    return mine["window"], mine["cfg"], mine["seq"], mine["forward"]


def init_parallel(layout: ParallelLayout, *, backend: str | None = None, device_type: str | None = None,
                  timeout_s: float = 1800.0) -> ParallelContext:
    """Join the process group (torchrun's env:// variables, or one already initialised) and build the groups.

    The timeout bounds every collective, so a rank that dies or stalls ends the others with an error instead of
    a hang (torchrun also stops every worker when one exits with an error)."""
    if not dist.is_initialized():
        device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
        backend = backend or ("nccl" if device_type == "cuda" else "gloo")
        # NCCL collectives raise after the timeout instead of blocking forever
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    world, rank = dist.get_world_size(), dist.get_rank()
    if layout.world != world:
        raise ValueError(f"the layout {layout} needs {layout.world} processes, not {world}")
    device_type = device_type or ("cuda" if dist.get_backend() == "nccl" else "cpu")
    if device_type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device(device_type)
    if layout.ring > 1:
        try:
            from xfuser.core.distributed import init_distributed_environment, initialize_model_parallel
        except ImportError as e:
            raise ImportError(f"--ring_degree > 1 needs xfuser (GPU only): pip install -e .[multigpu] ({e})") from e
        # xfuser's rank order (sp fastest, then cfg, then dp) is ours: its sequence groups are our seq groups
        init_distributed_environment(rank=rank, world_size=world)
        initialize_model_parallel(data_parallel_degree=layout.window, classifier_free_guidance_degree=layout.cfg,
                                  sequence_parallel_degree=layout.sequence, ulysses_degree=layout.ulysses,
                                  ring_degree=layout.ring)
    wg, cg, sg, fg = _groups(layout, rank, dist.get_backend())
    return ParallelContext(layout, rank, device, wg, cg, sg, fg)


def apply_parallel(pipe, ctx: ParallelContext, fsdp_dit: bool = False) -> None:
    """Install the seams on a built StableAvatarPipeline (its models already on `ctx.device`); fsdp_dit: shard the
    DiT's weights over `ctx.forward_group` (see `wan.distributed.fsdp`)."""
    layout = ctx.layout
    if fsdp_dit:
        if ctx.forward_group is None:
            raise ValueError(f"--fsdp_dit needs ranks that run the same forwards (CFG / sequence parallel); the "
                             f"layout {layout} has none")
        from wan.distributed.fsdp import shard_dit

        shard_dit(pipe.dit, ctx.forward_group, ctx.device.type)
    pipe.parallel = WindowParallel(ctx.window_group, ctx.is_main)
    if layout.cfg > 1 or layout.sequence > 1:
        pipe.dit.token_split = DiTSplit(ctx.cfg_group, layout.cfg, ctx.seq_group)
    if layout.sequence > 1:
        attn = sequence_attention(ctx.seq_group, layout.ring)
        for block in pipe.dit.blocks:
            block.self_attn.attention_fn = attn
