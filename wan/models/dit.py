"""The StableAvatar DiT: Wan2.1-Fun-1.3B-InP (VideoX-Fun flavour) with per-block audio cross-attention.

Parameter names are the original's (`blocks.3.cross_attn.k_vocal.weight`, ...), so the released
`transformer3d-*.pt` files load unchanged. Spec: /shared/spec/transformer.md.

Precision: the model is meant to run like the original, i.e. bf16 weights under
`torch.autocast("cuda", dtype=torch.bfloat16)`; the fp32 islands are explicit and local (timestep MLP,
norm statistics, RoPE in float64). In float32 without autocast (the golden fixtures) every cast is a no-op.

Numerics policy (`set_numerics`), the same blocks either way:
* "original" (default): the original's layout, golden-tested: every op of a block rounds to the model dtype
  (bf16 on the GPU), RoPE through complex128.
* "fast": the same function with fewer roundings: norm -> modulation, RMS-norm -> RoPE, gate -> residual and the
  sum of the three cross-attention outputs each round ONCE, at the end, in float32 before that; RoPE with float32
  cos/sin tables (the float64 table rounded once; padding rows cos 1 / sin 0, i.e. unrotated) in real arithmetic;
  under autocast the residual stream stays float32 between blocks (`fp32_residual`, the reference's three bf16
  roundings per block are the largest avoidable error of its bf16 forward), and the stream is made contiguous
  once before block 0 (`patchify` hands over a transposed view). In float32 it equals "original" up to float32
  rounding; in bf16 it is more precise (tests/test_fast.py). `wan.models.fast.enable_fast` sets it and compiles
  the blocks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wan.configs import DiTConfig
from wan.models.attention import attention
from wan.models.layers import WanLayerNorm, WanRMSNorm, rope_apply, rope_freqs_for_grid, sinusoidal_embedding_1d
from wan.models.vocal import VocalProjector

NUMERICS = ("original", "fast")


# --- the two precision layouts of one block forward (`fast`: see the module docstring) ----------------------------

def _norm(norm: nn.Module, x: Tensor, fast: bool) -> Tensor:
    """A block's (Wan)LayerNorm or Identity: rounded to x's dtype (original) or float32, unrounded (fast)."""
    if not fast:
        return norm(x)
    if isinstance(norm, nn.Identity):
        return x.float()
    w = None if norm.weight is None else norm.weight.float()
    b = None if norm.bias is None else norm.bias.float()
    return F.layer_norm(x.float(), norm.normalized_shape, w, b, norm.eps)


def _rms(norm: nn.Module, x: Tensor, fast: bool) -> Tensor:
    """WanRMSNorm (or Identity); fast: float32 with the weight applied before any rounding."""
    if not fast:
        return norm(x)
    xf = x.float()
    if not isinstance(norm, WanRMSNorm):
        return xf
    return xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + norm.eps) * norm.weight.float()


def rope_real(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: float32 [B, S, H, D] with channel pairs (2k, 2k+1) = complex number k; cos/sin: float32 [S, 1, D/2]
    -> float32 [B, S, H, D], x rotated by the angles (`rope_apply` up to float32 rounding)."""
    xr = x.unflatten(-1, (-1, 2))
    a, b = xr[..., 0], xr[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def rope_cos_sin(freqs: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """freqs: complex128 [S_real, 1, D/2] -> float32 (cos, sin) [seq_len, 1, D/2]: the float64 values rounded once,
    padding tokens (seq_len > S_real) at angle 0."""
    with torch.inference_mode(False), torch.no_grad():  # may be cached and reused by a training forward
        ri = torch.view_as_real(freqs).float()
        cos, sin = ri[..., 0], ri[..., 1]
        pad = seq_len - cos.shape[0]
        if pad < 0:
            raise ValueError(f"RoPE table has {cos.shape[0]} rows for {seq_len} tokens")
        if pad:
            cos = torch.cat([cos, cos.new_ones(pad, *cos.shape[1:])])
            sin = torch.cat([sin, sin.new_zeros(pad, *sin.shape[1:])])
        return cos.contiguous(), sin.contiguous()


def _rope(x: Tensor, rope: Tensor | tuple[Tensor, Tensor], fast: bool) -> Tensor:
    """x: [B, S, H, D]; rope: complex128 freqs (original) or float32 (cos, sin) (fast) -> float32, rotated."""
    return rope_real(x.float(), *rope) if fast else rope_apply(x, rope)


def _add(x: Tensor, y: Tensor, gate: Tensor | None, stream: torch.dtype | None) -> Tensor:
    """The residual update x + y * gate: rounded after each op (original, stream None) or summed in float32 and
    rounded once to the stream's dtype (fast)."""
    if stream is None:
        return x + y if gate is None else x + y * gate
    return (x.float() + (y.float() if gate is None else y.float() * gate)).to(stream)


class WanSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        # seam for sequence parallelism (wan.distributed.usp sets an all-to-all attention over the split
        # sequence); only the self-attention uses it, cross-attention contexts are never split
        self.attention_fn = attention

    def forward(self, x: Tensor, rope: Tensor | tuple[Tensor, Tensor], dtype: torch.dtype,
                fast: bool = False) -> Tensor:
        """x: [B, S, dim]; rope: complex128 freqs [S_real, 1, head_dim/2] (original) or float32 (cos, sin)
        [S, 1, head_dim/2] (fast) -> [B, S, dim]."""
        b, s, n, d = *x.shape[:2], self.num_heads, self.head_dim
        x = x.to(dtype)
        q = _rope(_rms(self.norm_q, self.q(x), fast).view(b, s, n, d), rope, fast).to(dtype)
        k = _rope(_rms(self.norm_k, self.k(x), fast).view(b, s, n, d), rope, fast).to(dtype)
        v = self.v(x).view(b, s, n, d).to(dtype)
        return self.o(self.attention_fn(q, k, v).to(dtype).flatten(2))


class WanI2VTalkingCrossAttention(WanSelfAttention):
    """One shared query against three contexts: text, CLIP image tokens, and per-frame audio tokens."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6, clip_tokens: int = 257):
        super().__init__(dim, num_heads, qk_norm, eps)
        self.clip_tokens = clip_tokens
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_k_img = WanRMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.k_vocal = nn.Linear(dim, dim)
        self.v_vocal = nn.Linear(dim, dim)
        # fresh audio keys/values are zero (the original's init), so an untrained adapter adds nothing
        for p in (self.k_vocal.weight, self.k_vocal.bias, self.v_vocal.weight, self.v_vocal.bias):
            nn.init.zeros_(p)

    def forward(self, x: Tensor, context: Tensor, dtype: torch.dtype, vocal_context: Tensor,
                num_groups: int, fast: bool = False) -> Tensor:
        """x: [B, S, dim]; context: [B, clip_tokens + text_len, dim] (image tokens first);
        vocal_context: [B, G, K, dim] (per-frame audio) or [B, G*K, dim] (clip-level); num_groups: G."""
        b, n, d = x.shape[0], self.num_heads, self.head_dim
        ctx_img, ctx_txt = context[:, :self.clip_tokens].to(dtype), context[:, self.clip_tokens:].to(dtype)
        q = _rms(self.norm_q, self.q(x.to(dtype)), fast).to(dtype).view(b, -1, n, d)
        k = _rms(self.norm_k, self.k(ctx_txt), fast).to(dtype).view(b, -1, n, d)
        v = self.v(ctx_txt).to(dtype).view(b, -1, n, d)
        k_img = _rms(self.norm_k_img, self.k_img(ctx_img), fast).to(dtype).view(b, -1, n, d)
        v_img = self.v_img(ctx_img).to(dtype).view(b, -1, n, d)
        img_x = attention(q, k_img, v_img).to(dtype).flatten(2)
        txt_x = attention(q, k, v).to(dtype).flatten(2)
        if vocal_context.dim() == 4:
            # per latent frame: the tokens of frame g attend to audio group g only (no norm on audio keys)
            if q.shape[1] % num_groups:
                raise ValueError(f"{q.shape[1]} tokens cannot be split into {num_groups} latent frames")
            k_a = self.k_vocal(vocal_context).to(dtype).view(b * num_groups, -1, n, d)
            v_a = self.v_vocal(vocal_context).to(dtype).view(b * num_groups, -1, n, d)
            aud_x = attention(q.view(b * num_groups, -1, n, d), k_a, v_a).reshape(b, -1, n * d)
        else:
            k_a = self.k_vocal(vocal_context).to(dtype).view(b, -1, n, d)
            v_a = self.v_vocal(vocal_context).to(dtype).view(b, -1, n, d)
            aud_x = attention(q, k_a, v_a).flatten(2)
        if fast:  # one rounding of the sum
            return self.o((txt_x.float() + img_x.float() + aud_x.float()).to(dtype))
        return self.o(txt_x + img_x + aud_x)


class WanAttentionBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim, eps = cfg.dim, cfg.eps
        self.norm1 = WanLayerNorm(dim, eps)
        self.self_attn = WanSelfAttention(dim, cfg.num_heads, cfg.qk_norm, eps)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = WanI2VTalkingCrossAttention(dim, cfg.num_heads, cfg.qk_norm, eps, cfg.clip_tokens)
        self.norm2 = WanLayerNorm(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: Tensor, e0: Tensor, rope: Tensor | tuple[Tensor, Tensor], context: Tensor,
                vocal_context: Tensor, num_groups: int, dtype: torch.dtype, fast: bool = False) -> Tensor:
        """x: [B, S, dim] residual stream (in the model dtype, bf16 at inference, as in VideoX-Fun; float32 in the
        fast layout under autocast); e0: [B, 6, dim] ordered (shift, scale, gate) for self-attention then
        (shift, scale, gate) for the FFN; rope: see `WanSelfAttention.forward`; fast: the numerics policy."""
        if fast:  # the modulation in float32; residual updates rounded once, to the stream's dtype
            stream = torch.promote_types(x.dtype, torch.promote_types(self.modulation.dtype, e0.dtype))
            m = (self.modulation.float() + e0.float()).chunk(6, dim=1)
        else:
            stream, m = None, (self.modulation + e0).chunk(6, dim=1)
        h = (_norm(self.norm1, x, fast) * (1 + m[1]) + m[0]).to(dtype)
        x = _add(x, self.self_attn(h, rope, dtype, fast), m[2], stream)
        # the cross-attention branch is neither modulated nor gated
        h = _norm(self.norm3, x, fast).to(dtype)
        x = _add(x, self.cross_attn(h, context, dtype, vocal_context, num_groups, fast), None, stream)
        h = (_norm(self.norm2, x, fast) * (1 + m[4]) + m[3]).to(dtype)
        return _add(x, self.ffn(h), m[5], stream)


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float = 1e-6):
        super().__init__()
        self.norm = WanLayerNorm(dim, eps)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x: [B, S, dim]; e: [B, dim] (the time embedding itself, not the 6-way projection)."""
        m = (self.modulation + e.unsqueeze(1)).chunk(2, dim=1)
        return self.head(self.norm(x) * (1 + m[1]) + m[0])


class MLPProj(nn.Module):
    """CLIP token projector `img_emb`: LayerNorm -> Linear -> GELU(erf) -> Linear -> LayerNorm (eps 1e-5)."""

    def __init__(self, in_dim: int, out_dim: int, eps: float = 1e-5):
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(in_dim, eps=eps), nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim),
            nn.LayerNorm(out_dim, eps=eps),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def _linear_fp32(layer: nn.Linear, x: Tensor) -> Tensor:
    return F.linear(x.float(), layer.weight.float(), None if layer.bias is None else layer.bias.float())


class TokenSplit:
    """The DiT's seam for parallel inference, identity on one process: how the guidance batch and the token
    sequence of one forward are split across processes after the audio adapter, and gathered after the head.
    `wan.distributed` replaces it from outside (`dit.token_split = DiTSplit(...)`)."""

    def shard_tokens(self, tokens: Tensor, freqs: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
        """tokens: [B, S, dim]; freqs: [S_real, 1, head_dim/2] -> this process's share of both."""
        return tokens, freqs

    def shard_batch(self, x: Tensor) -> Tensor:
        """x: [B, ...] (time embeddings, contexts) -> this process's guidance branches."""
        return x

    def gather(self, out: Tensor, num_groups: int) -> Tensor:
        """out: this process's head output -> [B, S, prod(patch)*out_dim] on every process."""
        return out


class WanTransformer3DFantasyModel(nn.Module):
    """The DiT. `forward` takes batched tensors; see its docstring for the guidance-batch convention."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList([WanAttentionBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(dim, cfg.out_dim, cfg.patch_size, cfg.eps)
        self.img_emb = MLPProj(cfg.clip_dim, dim, cfg.img_emb_eps)
        self.vocal_projector = VocalProjector(cfg)
        self.gradient_checkpointing = False
        self.token_split = TokenSplit()
        # numerics policy (`set_numerics`; plain attributes: the state dict is the original's either way)
        self.numerics = "original"
        self.fp32_residual = True
        # seam for step caching (wan.models.teacache.TeaCache): None runs every block; otherwise called as
        # `block_cache(run_blocks, h, e0, cache_key)` and returns what `run_blocks(h)` would, or an approximation
        self.block_cache = None
        self._cos_sin: tuple | None = None  # (freqs, seq_len, cos, sin) of the last fast forward

    def set_numerics(self, numerics: str, fp32_residual: bool = True) -> None:
        """The precision layout of the blocks: "original" (the reference, golden-tested) or "fast" (fewer
        roundings, see the module docstring); fp32_residual: in "fast" under autocast, keep the residual stream
        in float32 (more precise, ~1 % more memory traffic)."""
        if numerics not in NUMERICS:
            raise ValueError(f"unknown numerics {numerics!r}: choose one of {', '.join(NUMERICS)}")
        self.numerics, self.fp32_residual = numerics, fp32_residual
        self._cos_sin = None

    def _rope_tables(self, freqs: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
        """`rope_cos_sin` once per table: the model builds one `freqs` per grid and hands the same tensor over."""
        c = self._cos_sin
        if c is None or c[0] is not freqs or c[1] != seq_len:
            c = self._cos_sin = (freqs, seq_len, *rope_cos_sin(freqs, seq_len))
        return c[2], c[3]

    # --- pieces of the forward, separate so that parallel/caching wrappers can reuse them ---------------

    def time_embed(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """t: [B] in [0, 1000] -> (e [B, dim], e0 [B, 6, dim]) computed in fp32 (the original nests an fp32
        autocast here), returned in fp32; the caller casts them to the model dtype."""
        with torch.autocast(device_type=t.device.type, enabled=False):
            sin = sinusoidal_embedding_1d(self.cfg.freq_dim, t).float()
            e = _linear_fp32(self.time_embedding[2], F.silu(_linear_fp32(self.time_embedding[0], sin)))
            e0 = _linear_fp32(self.time_projection[1], F.silu(e)).unflatten(1, (6, self.cfg.dim))
        return e, e0

    def embed_context(self, context: Sequence[Tensor] | Tensor, clip_fea: Tensor) -> Tensor:
        """context: list of B tensors [L_i, text_dim] (or an already padded [B, text_len, text_dim]);
        clip_fea: [B, clip_tokens, clip_dim] -> [B, clip_tokens + text_len, dim] (image tokens first).
        Text is zero-padded to text_len and the padding rows ARE attended later (no mask), as in Wan2.1."""
        if isinstance(context, Tensor) and context.dim() == 3:
            if context.shape[1] != self.cfg.text_len:
                raise ValueError(f"padded text context must have {self.cfg.text_len} tokens, got {context.shape[1]}")
            padded = context
        else:
            for u in context:
                if u.shape[0] > self.cfg.text_len:
                    raise ValueError(f"text context of {u.shape[0]} tokens exceeds text_len {self.cfg.text_len}")
            padded = torch.stack([torch.cat([u, u.new_zeros(self.cfg.text_len - u.shape[0], u.shape[1])]) for u in context])
        return torch.cat([self.img_emb(clip_fea), self.text_embedding(padded)], dim=1)

    def patchify(self, x: Tensor, y: Tensor, seq_len: int) -> tuple[Tensor, tuple[int, int, int]]:
        """x: [B, 16, F, h, w] noisy latents, y: [B, 20, F, h, w] (4 mask + 16 reference-latent channels)
        -> tokens [B, seq_len, dim] zero-padded after the F*h'*w' real tokens, and the grid (F, h', w')."""
        u = self.patch_embedding(torch.cat([x, y], dim=1))
        grid = tuple(u.shape[2:])
        u = u.flatten(2).transpose(1, 2)
        if u.shape[1] > seq_len:
            raise ValueError(f"{u.shape[1]} tokens exceed seq_len {seq_len}")
        if u.shape[1] < seq_len:  # a short last window: zero tokens that take part in attention (no mask)
            u = torch.cat([u, u.new_zeros(u.shape[0], seq_len - u.shape[1], u.shape[2])], dim=1)
        return u, grid

    def unpatchify(self, x: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """x: [B, S, prod(patch)*out_dim] -> [B, out_dim, F, h, w] (first F*h'*w' tokens; 'fhwpqrc->cfphqwr')."""
        f, h, w = grid
        p, q, r = self.cfg.patch_size
        c = self.cfg.out_dim
        u = x[:, : f * h * w].reshape(x.shape[0], f, h, w, p, q, r, c)
        u = torch.einsum("bfhwpqrc->bcfphqwr", u)
        return u.reshape(x.shape[0], c, f * p, h * q, w * r)

    def audio_context(self, vocal_embeddings: Tensor, tokens: Tensor, e: Tensor, e0: Tensor,
                      video_sample_n_frames: int, audio_null: Sequence[bool] | Tensor | None) -> Tensor:
        """Run the adapter and lay its output out over the batch -> vocal_context [B, G, K, dim].

        * vocal_embeddings with batch 1 and B > 1: one audio track shared by the whole (guidance) batch; the
          adapter runs once, against the LAST element's tokens and timestep (the original's choice; in a
          guidance batch all elements share x and t).
        * vocal_embeddings with batch B: the adapter runs per element (training).
        * audio_null: elements whose audio context is exactly zero AFTER the adapter (the original's
          unconditional guidance branch; its keys/values are then the k_vocal/v_vocal biases).
        """
        b = tokens.shape[0]
        if vocal_embeddings.shape[0] == 1 and b > 1:
            vc, _ = self.vocal_projector(vocal_embeddings, video_sample_n_frames, tokens[-1:], e0[-1:], e[-1:])
            vc = vc.expand(b, *vc.shape[1:])
        elif vocal_embeddings.shape[0] == b:
            vc, _ = self.vocal_projector(vocal_embeddings, video_sample_n_frames, tokens, e0, e)
        else:
            raise ValueError(f"vocal_embeddings batch {vocal_embeddings.shape[0]} must be 1 or the batch size {b}")
        if audio_null is not None:
            if isinstance(audio_null, Tensor):
                keep = (~audio_null.to(device=vc.device, dtype=torch.bool)).to(vc.dtype)
            else:  # a list of bools (the pipeline's guidance batch): a cached device mask, no copy per call
                keep = _keep_mask(tuple(bool(v) for v in audio_null), vc.device, vc.dtype)
            if keep.numel() != b:
                raise ValueError(f"audio_null has {keep.numel()} entries for a batch of {b}")
            vc = vc * keep.view(b, 1, 1, 1)
        return vc

    def forward(self, x: Tensor, t: Tensor, context: Sequence[Tensor] | Tensor, seq_len: int, clip_fea: Tensor,
                y: Tensor, vocal_embeddings: Tensor, audio_null: Sequence[bool] | Tensor | None = None,
                is_clip_level_modeling: bool = False, video_sample_n_frames: int = 81,
                cache_key: tuple[int, int] | None = None) -> Tensor:
        """Predict the flow velocity of one window.

        x: [B, 16, F, h, w] noisy latents; t: [B] timesteps (1000 * sigma); context: B text embeddings
        [L_i, text_dim]; seq_len: padded token count (the full window's, 21*h'w' at the defaults);
        clip_fea: [B, 257, clip_dim]; y: [B, 20, F, h, w]; vocal_embeddings: [1 or B, T_a, audio_in_dim];
        audio_null: see `audio_context`; video_sample_n_frames: the clip length (81) that fixes the audio
        grouping, G = (n-1)//4 + 1 groups, independent of this window's F.
        Returns [B, 16, F, h, w] in the model dtype.

        The original's guidance batch `[neg text + no audio, neg text + audio, pos text + audio]` is
        `context=[neg, neg, pos]`, `vocal_embeddings=a[None]`, `audio_null=[True, False, False]`
        (`original_guidance_audio` converts the original's `[zeros, a, a]` tensor).
        cache_key: (denoising step, window index) of this call, for `block_cache` (ignored without one).
        """
        dtype = x.dtype
        tokens, grid = self.patchify(x, y, seq_len)
        e, e0 = self.time_embed(t)
        e0, e = e0.to(dtype), e.to(dtype)
        ctx = self.embed_context(context, clip_fea)
        num_groups = (video_sample_n_frames - 1) // self.cfg.temporal_compression + 1
        vc = self.audio_context(vocal_embeddings, tokens, e, e0, video_sample_n_frames, audio_null)
        if is_clip_level_modeling:
            vc = vc.flatten(1, 2)
        freqs = rope_freqs_for_grid(grid, self.cfg.head_dim, tokens.device, self.cfg.rope_max_positions,
                                    self.cfg.rope_theta)
        # parallel inference splits the batch / sequence here, after the adapter (identity on one process)
        split = self.token_split
        h, freqs = split.shard_tokens(tokens, freqs, num_groups)
        e, e0, ctx, vc = (split.shard_batch(u) for u in (e, e0, ctx, vc))
        fast = self.numerics == "fast"
        rope = self._rope_tables(freqs, h.shape[1]) if fast else freqs
        if fast and self.fp32_residual and torch.is_autocast_enabled(h.device.type):
            h = h.to(torch.float32, memory_format=torch.contiguous_format)
        elif fast:
            h = h.contiguous()

        def run_blocks(h: Tensor) -> Tensor:
            for block in self.blocks:
                if self.gradient_checkpointing and torch.is_grad_enabled():
                    h = torch.utils.checkpoint.checkpoint(block, h, e0, rope, ctx, vc, num_groups, dtype, fast,
                                                          use_reentrant=False)
                else:
                    h = block(h, e0, rope, ctx, vc, num_groups, dtype, fast)
            return h

        h = run_blocks(h) if self.block_cache is None else self.block_cache(run_blocks, h, e0, cache_key)
        return self.unpatchify(split.gather(self.head(h, e), num_groups), grid)


@functools.lru_cache(maxsize=16)
def _keep_mask(audio_null: tuple[bool, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """1 where the element keeps its audio context, 0 where it is zeroed: [B] on `device` (built once)."""
    with torch.inference_mode(False), torch.no_grad():
        return (~torch.tensor(audio_null, dtype=torch.bool)).to(device=device, dtype=dtype)


def original_guidance_audio(vocal_embeddings: Tensor) -> tuple[Tensor, list[bool] | None]:
    """Map the original's `vocal_embeddings` convention to ours: for B > 1 the original uses only the last
    element and zeroes element 0's context after the adapter (3-way guidance `[zeros, a, a]`)."""
    b = vocal_embeddings.shape[0]
    if b == 1:
        return vocal_embeddings, None
    if b != 3:
        raise ValueError(f"the original only supports the 3-way guidance batch, got batch {b}")
    return vocal_embeddings[-1:], [True, False, False]
