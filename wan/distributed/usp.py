"""Sequence parallelism of the one DiT forward (Ulysses; Ring through xfuser) and the DiT's parallel seam.

Where the sequence is split: after the patch embedding, the embeddings and the audio adapter (the adapter needs
every frame's tokens; it runs once, as on one process), and the head's output is gathered (the head is
per-token, and its output is 24x narrower than the residual stream at 1.3B: 64 vs 1536 channels).

How it is split, and why the audio attention stays right: the tokens are split by POSITION WITHIN EACH LATENT
FRAME. Rank r of P holds, for every one of the G frames, tokens `[r·T/P, (r+1)·T/P)` of that frame's T = h'·w'
tokens. Its local sequence is then G blocks of T/P tokens, frame-major, so the per-frame audio attention of
`dit.py` (`q.view(B·G, -1, ...)` against audio group g) pairs every local token with the audio of ITS frame with
no change to the model, and every rank holds the same number of tokens (T/P; an all-to-all and xfuser's ring need
equal shards). The original split the flat sequence into P contiguous chunks and then viewed each chunk as 21
frames: tokens were paired with the wrong audio groups (spec pipeline.md §12). Requirements: T divisible by P
(480x832: T = 1560, 512x512: 1024) and the heads by the Ulysses degree (12 heads: 2, 3, 4, 6).

RoPE uses each token's global position: the per-token table of the whole grid is split exactly like the tokens
(padding frames of a short last window stay unrotated: they are whole frames at the end, so on every rank they
are the tail of the local sequence, where `rope_apply` leaves tokens unrotated).

Self-attention over the split sequence (all other parts of a block are per-token or attend to un-split
contexts): Ulysses all-to-all over heads with `torch.distributed.all_to_all_single` (any backend; exact up to
the order of the key sum), or xfuser's `xFuserLongContextAttention` when a ring degree > 1 is asked (GPU only).
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

from wan.distributed.cfg_parallel import branch_ranges, gather_batch
from wan.distributed.comm import all_gather_stack, all_to_all_equal
from wan.models.attention import attention


# --- sharding by position within each latent frame -------------------------------------------------------------

def _frame_split(seq: int, num_groups: int, size: int) -> int:
    """Tokens per frame of a [., seq, .] sequence of `num_groups` frames, checked to split over `size` ranks."""
    if seq % num_groups:
        raise ValueError(f"sequence parallelism needs whole latent frames: {seq} tokens are not "
                         f"{num_groups} frames; pass seq_len = frames x h'w'")
    per_frame = seq // num_groups
    if per_frame % size:
        raise ValueError(f"sequence parallelism over {size} ranks needs the tokens per latent frame ({per_frame} = "
                         f"h/16 x w/16) divisible by {size}; change the size or the ulysses/ring degrees")
    return per_frame


def shard_frames(x: Tensor, num_groups: int, rank: int, size: int, dim: int = 1) -> Tensor:
    """x: [..., G·T, ...] (frames along `dim`) -> [..., G·T/P, ...]: slice `rank` of every frame, frame-major."""
    seq = x.shape[dim]
    t = _frame_split(seq, num_groups, size)
    v = x.unflatten(dim, (num_groups, size, t // size))
    return v.select(dim + 1, rank).flatten(dim, dim + 1)


def gather_frames(x: Tensor, num_groups: int, group: dist.ProcessGroup | None) -> Tensor:
    """Inverse of `shard_frames` along dim 1 on every rank of `group`: x [B, G·T/P, C] -> [B, G·T, C]."""
    p = dist.get_world_size(group)
    if p == 1:
        return x
    parts = all_gather_stack(x, group)  # [P, B, G*T/P, C]
    b, c = x.shape[0], x.shape[2]
    parts = parts.view(p, b, num_groups, -1, c).permute(1, 2, 0, 3, 4)  # [B, G, P, T/P, C]
    return parts.reshape(b, -1, c)


# --- attention over the split sequence -----------------------------------------------------------------------------

def ulysses_attention(q: Tensor, k: Tensor, v: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """Self-attention of a sequence split over the P ranks of `group`.

    q/k/v: [B, s, H, D] this rank's s tokens, all heads -> [B, s, H, D]. An all-to-all trades tokens for heads
    (every rank gets all P·s tokens of H/P heads), `attention` runs on that, a second all-to-all trades back.
    The key order of the gathered sequence is rank-major; attention does not depend on it (up to the order of
    the softmax sums)."""
    p = dist.get_world_size(group)
    if p == 1:
        return attention(q, k, v)
    b, s, h, d = q.shape
    if h % p:
        raise ValueError(f"Ulysses degree {p} must divide the {h} attention heads")

    def to_heads(x: Tensor) -> Tensor:  # [B, s, H, D] -> [B, P·s, H/P, D]
        x = all_to_all_equal(x.view(b, s, p, h // p, d).permute(2, 0, 1, 3, 4), group)  # [P(src), B, s, H/P, D]
        return x.permute(1, 0, 2, 3, 4).reshape(b, p * s, h // p, d)

    out = attention(to_heads(q), to_heads(k), to_heads(v))  # [B, P·s, H/P, D]
    out = all_to_all_equal(out.view(b, p, s, h // p, d).permute(1, 0, 2, 3, 4), group)  # [P(head chunk), B, s, H/P, D]
    return out.permute(1, 2, 0, 3, 4).reshape(b, s, h, d)


def xfuser_attention():
    """xfuser's Ulysses + Ring attention (`initialize_model_parallel` must have run): q/k/v [B, s, H, D] -> same."""
    try:
        from xfuser.core.long_ctx_attention import xFuserLongContextAttention
    except ImportError as e:
        raise ImportError(f"--ring_degree > 1 needs xfuser (GPU only): pip install -e .[multigpu] ({e})") from e
    attn = xFuserLongContextAttention()

    def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return attn(None, query=q, key=k, value=v)

    return fn


# --- the DiT's parallel seam --------------------------------------------------------------------------------------

class DiTSplit:
    """`dit.token_split` for CFG- and sequence-parallel inference (see `wan.models.dit.TokenSplit`).

    batch_group/batch_ranges: the CFG-parallel group and every member's contiguous branch range (this rank keeps
    `batch_ranges[batch_rank]`); seq_group: the sequence-parallel group (Ulysses x Ring). Either may be of size 1.
    """

    def __init__(self, batch_group: dist.ProcessGroup | None, batch_size: int,
                 seq_group: dist.ProcessGroup | None):
        self.batch_group, self.seq_group = batch_group, seq_group
        self.batch_ranges = branch_ranges(3, batch_size) if batch_size > 1 else [(0, 3)]
        self.batch_rank = dist.get_rank(batch_group) if batch_size > 1 else 0
        self.seq_size = dist.get_world_size(seq_group) if seq_group is not None else 1
        self.seq_rank = dist.get_rank(seq_group) if self.seq_size > 1 else 0

    def _batch(self, b: int) -> tuple[int, int]:
        if len(self.batch_ranges) == 1:
            return 0, b
        if b != 3:
            raise ValueError(f"CFG-parallel splits the 3-branch guidance batch; got a batch of {b}")
        return self.batch_ranges[self.batch_rank]

    def shard_batch(self, x: Tensor) -> Tensor:
        lo, hi = self._batch(x.shape[0])
        return x if (lo, hi) == (0, x.shape[0]) else x[lo:hi]

    def shard_tokens(self, tokens: Tensor, freqs: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
        """tokens: [B, S, dim]; freqs: [S_real, 1, D/2] -> this rank's ([b, S/P, dim], [S_real/P, 1, D/2])."""
        h = self.shard_batch(tokens)
        if self.seq_size == 1:
            return h, freqs
        per_frame = _frame_split(h.shape[1], num_groups, self.seq_size)
        if freqs.shape[0] % per_frame:
            raise ValueError(f"{freqs.shape[0]} real tokens are not whole frames of {per_frame}")
        h = shard_frames(h, num_groups, self.seq_rank, self.seq_size)
        freqs = shard_frames(freqs, freqs.shape[0] // per_frame, self.seq_rank, self.seq_size, dim=0)
        return h, freqs

    def gather(self, out: Tensor, num_groups: int) -> Tensor:
        """out: [b, S/P, C] this rank's head output -> [B, S, C] on every rank."""
        if self.seq_size > 1:
            out = gather_frames(out, num_groups, self.seq_group)
        return gather_batch(out, self.batch_group, self.batch_ranges)


def sequence_attention(seq_group: dist.ProcessGroup | None, ring_degree: int = 1):
    """The self-attention function for `WanSelfAttention.attention_fn` on a split sequence."""
    if ring_degree > 1:
        return xfuser_attention()
    if seq_group is None or dist.get_world_size(seq_group) == 1:
        return attention

    def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return ulysses_attention(q, k, v, seq_group)

    return fn
