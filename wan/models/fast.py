"""Opt-in exact speed-ups of the DiT, applied from outside: `enable_fast(dit)` / `disable_fast(dit)`.

The model in `dit.py` stays the reference (the original's precision layout, golden-tested). `enable_fast`
replaces the `forward` of each of its attention blocks by `fast_block_forward`, which computes the same function
with fewer roundings and copies:

* RoPE without the complex128 detour: the per-forward table (complex128 [S_real, 1, D/2] from
  `rope_freqs_for_grid`) becomes float32 cos/sin once per forward (its real and imaginary parts are exactly the
  float64 cos/sin, rounded once to float32; padding tokens get cos 1 / sin 0, i.e. stay unrotated), and q/k are
  rotated with real arithmetic on the consecutive-pair layout in float32.
* Norm -> modulation -> cast, RMS-norm -> RoPE -> cast, gate -> residual and the sum of the three cross-attention
  outputs each round to the model dtype ONCE, at the end, instead of after every op (the reference rounds to bf16
  after each of them, as the original does). The fp32 time embedding is untouched (it is outside the blocks).
* The residual stream between blocks is kept in float32 under autocast (`fp32_residual=True`, the default): the
  reference rounds it to bf16 three times per block, the largest avoidable error of the bf16 forward (about a third
  of its error against a float32 forward at tiny size), for ~1 % more memory traffic. Without autocast (a plain
  bf16 or fp32 model) the stream keeps the model dtype, since the head's Linear must see its own dtype.
* `torch.compile(dynamic=False)` of the block function: the 30 blocks share code, so there is one compilation per
  input-shape set (Python ints such as `num_groups` and the dtype are specialised constants); it fuses the
  elementwise work around the matmuls and attention. Off with `compile=False`; if compilation fails (no
  compiler / Triton on the machine) the eager fast path is used, with one warning.

Attention still goes through the one `wan.models.attention.attention()` entry point (on Hopper, torch's default
SDPA choice is already the fastest cuDNN kernel for every call shape of the DiT).

Exactness: the fast path computes the same function; it differs from the reference only in bf16 rounding (fewer
intermediate roundings), which `tests/test_fast.py` and `python -m wan.bench dit_precision` check against a float32
forward. In float32 it equals the reference to float32 rounding.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wan.models.attention import attention
from wan.models.layers import WanRMSNorm


# --- the block function (compiled as a whole) -------------------------------------------------------------

def _layer_norm_f32(norm: nn.Module, x: Tensor) -> Tensor:
    """The block's (Wan)LayerNorm in float32 on x, returned in float32 (no rounding); nn.Identity passes x."""
    if isinstance(norm, nn.Identity):
        return x.float()
    w = None if norm.weight is None else norm.weight.float()
    b = None if norm.bias is None else norm.bias.float()
    return F.layer_norm(x.float(), norm.normalized_shape, w, b, norm.eps)


def _rms_norm_f32(norm: nn.Module, x: Tensor) -> Tensor:
    """WanRMSNorm in float32 with its weight applied before any rounding (the reference rounds in between)."""
    xf = x.float()
    if not isinstance(norm, WanRMSNorm):
        return xf
    return xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + norm.eps) * norm.weight.float()


def rope_real(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: float32 [B, S, H, D] with channel pairs (2k, 2k+1) = complex number k; cos/sin: float32 [S, 1, D/2]
    -> float32 [B, S, H, D], x rotated by the angles (same as `rope_apply` up to float32 rounding)."""
    xr = x.unflatten(-1, (-1, 2))
    a, b = xr[..., 0], xr[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def fast_block_forward(block: nn.Module, x: Tensor, e0: Tensor, cos: Tensor, sin: Tensor, context: Tensor,
                       vocal_context: Tensor, num_groups: int, dtype: torch.dtype) -> Tensor:
    """The function of `WanAttentionBlock.forward` with fewer roundings; RoPE as float32 cos/sin tables.

    x: [B, S, dim] residual stream; e0: [B, 6, dim]; cos/sin: float32 [S, 1, head_dim/2] (padding rows 1 / 0);
    context: [B, clip_tokens + text_len, dim]; vocal_context: [B, G, K, dim] or [B, G*K, dim]; num_groups: G.
    """
    sa, ca = block.self_attn, block.cross_attn
    b, s = x.shape[:2]
    n, d = sa.num_heads, sa.head_dim
    # the reference's residual dtype: x + (bf16 branch) * (modulation + e0)
    res_dtype = torch.promote_types(x.dtype, torch.promote_types(block.modulation.dtype, e0.dtype))
    m = (block.modulation.float() + e0.float()).chunk(6, dim=1)  # each [B, 1, dim], float32

    # 1. self-attention (modulated, gated)
    h = (_layer_norm_f32(block.norm1, x) * (1 + m[1]) + m[0]).to(dtype)
    q = rope_real(_rms_norm_f32(sa.norm_q, sa.q(h)).view(b, s, n, d), cos, sin).to(dtype)
    k = rope_real(_rms_norm_f32(sa.norm_k, sa.k(h)).view(b, s, n, d), cos, sin).to(dtype)
    v = sa.v(h).view(b, s, n, d).to(dtype)
    # the model's sequence-parallel seam (`attention` itself on one process)
    y = sa.o(getattr(sa, "attention_fn", attention)(q, k, v).flatten(2).to(dtype))
    x = (x.float() + y.float() * m[2]).to(res_dtype)

    # 2. cross-attention: text, CLIP image tokens, audio (neither modulated nor gated)
    h = _layer_norm_f32(block.norm3, x).to(dtype)
    q = _rms_norm_f32(ca.norm_q, ca.q(h)).to(dtype).view(b, -1, n, d)
    ctx_img, ctx_txt = context[:, :ca.clip_tokens].to(dtype), context[:, ca.clip_tokens:].to(dtype)
    k = _rms_norm_f32(ca.norm_k, ca.k(ctx_txt)).to(dtype).view(b, -1, n, d)
    v = ca.v(ctx_txt).to(dtype).view(b, -1, n, d)
    k_img = _rms_norm_f32(ca.norm_k_img, ca.k_img(ctx_img)).to(dtype).view(b, -1, n, d)
    v_img = ca.v_img(ctx_img).to(dtype).view(b, -1, n, d)
    img_x = attention(q, k_img, v_img).flatten(2)
    txt_x = attention(q, k, v).flatten(2)
    if vocal_context.dim() == 4:
        if q.shape[1] % num_groups:
            raise ValueError(f"{q.shape[1]} tokens cannot be split into {num_groups} latent frames")
        k_a = ca.k_vocal(vocal_context).to(dtype).view(b * num_groups, -1, n, d)
        v_a = ca.v_vocal(vocal_context).to(dtype).view(b * num_groups, -1, n, d)
        aud_x = attention(q.view(b * num_groups, -1, n, d), k_a, v_a).reshape(b, -1, n * d)
    else:
        k_a = ca.k_vocal(vocal_context).to(dtype).view(b, -1, n, d)
        v_a = ca.v_vocal(vocal_context).to(dtype).view(b, -1, n, d)
        aud_x = attention(q, k_a, v_a).flatten(2)
    y = ca.o((txt_x.float() + img_x.float() + aud_x.float()).to(dtype))
    x = (x.float() + y.float()).to(res_dtype)

    # 3. feed-forward (modulated, gated)
    h = (_layer_norm_f32(block.norm2, x) * (1 + m[4]) + m[3]).to(dtype)
    y = block.ffn(h)
    return (x.float() + y.float() * m[5]).to(res_dtype)


# --- state and installation -------------------------------------------------------------------------------

class FastState:
    """What `enable_fast` attaches to the model: options, the compiled block function, the RoPE table cache."""

    def __init__(self, compile: bool, backend: str | object = "inductor", mode: str | None = None,
                 fp32_residual: bool = True):
        self.compile = compile
        self.fp32_residual = fp32_residual
        self.backend = backend
        self.mode = mode
        self.compiled = None
        self.compile_failed: str | None = None
        self._freqs: Tensor | None = None  # the last complex table seen (kept alive: `is` identifies it)
        self._tables: tuple[Tensor, Tensor] | None = None
        if compile:
            try:
                self.compiled = torch.compile(fast_block_forward, dynamic=False, backend=backend, mode=mode)
            except Exception as err:  # noqa: BLE001 - torch.compile unavailable: eager fast path
                self._fail(err)

    def _fail(self, err: Exception) -> None:
        self.compiled = None
        self.compile_failed = f"{type(err).__name__}: {err}"[:500]
        warnings.warn(f"wan.models.fast: torch.compile unavailable, using the eager fast path ({self.compile_failed})",
                      RuntimeWarning, stacklevel=3)

    def rope_tables(self, freqs: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
        """freqs: complex128 [S_real, 1, D/2] -> float32 (cos, sin) [seq_len, 1, D/2]; once per forward (the
        model builds one table per forward and hands the same tensor to every block)."""
        if self._freqs is not freqs or self._tables is None or self._tables[0].shape[0] != seq_len:
            ri = torch.view_as_real(freqs).float()  # float64 -> float32, one rounding
            cos, sin = ri[..., 0], ri[..., 1]
            pad = seq_len - cos.shape[0]
            if pad < 0:
                raise ValueError(f"RoPE table has {cos.shape[0]} rows for {seq_len} tokens")
            if pad:  # padding tokens are not rotated: angle 0
                cos = torch.cat([cos, cos.new_ones(pad, *cos.shape[1:])])
                sin = torch.cat([sin, sin.new_zeros(pad, *sin.shape[1:])])
            self._freqs, self._tables = freqs, (cos.contiguous(), sin.contiguous())
        return self._tables

    def run_block(self, block: nn.Module, *args) -> Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(block, *args)
            except Exception as err:  # noqa: BLE001 - compiler missing/broken; a real error re-raises below
                self._fail(err)
        return fast_block_forward(block, *args)


def _block_forward(state: FastState, block: nn.Module, x: Tensor, e0: Tensor, freqs: Tensor, context: Tensor,
                   vocal_context: Tensor, num_groups: int, dtype: torch.dtype) -> Tensor:
    """Drop-in for `WanAttentionBlock.forward` (same signature after `block`)."""
    cos, sin = state.rope_tables(freqs, x.shape[1])
    if state.fp32_residual and x.dtype != torch.float32 and torch.is_autocast_enabled(x.device.type):
        x = x.float()  # block 0 only; blocks return the stream in float32 from then on (one compiled graph)
    return state.run_block(block, x, e0, cos, sin, context, vocal_context, num_groups, dtype)


def enable_fast(dit: nn.Module, compile: bool = True, fp32_residual: bool = True,
                backend: str | object = "inductor", mode: str | None = None,
                state: FastState | None = None) -> FastState:
    """Switch `dit` (a WanTransformer3DFantasyModel) to the fast block forward; returns its FastState.

    compile: torch.compile the block function (one compilation for all blocks per input shape; falls back to
    eager with a warning where compilation is unavailable); fp32_residual: keep the residual stream in float32
    under autocast (more precise, ~1 % slower); backend/mode: passed to torch.compile; state: re-install a
    FastState returned earlier (keeps its compiled code, e.g. after a `disable_fast` for a reference run).
    Weights, state_dict and the reference forward are untouched; `disable_fast(dit)` undoes it.
    Inference only: `dit.gradient_checkpointing` still works, but training is not what this path is tested for.
    """
    disable_fast(dit)
    state = state if state is not None else FastState(compile, backend, mode, fp32_residual)
    for block in dit.blocks:
        # an instance attribute shadows the class's forward; nn.Module.__call__ (hooks included) calls it
        block.forward = functools.partial(_block_forward, state, block)
    dit._fast_state = state
    return state


def disable_fast(dit: nn.Module) -> None:
    """Back to the reference forward (no-op if `enable_fast` was never called)."""
    for block in dit.blocks:
        block.__dict__.pop("forward", None)
    dit.__dict__.pop("_fast_state", None)


def is_fast(dit: nn.Module) -> bool:
    return getattr(dit, "_fast_state", None) is not None
