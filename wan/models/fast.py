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

Approximate, off by default: `enable_fast(dit, teacache=TeaCache(threshold, num_steps))` skips the blocks on
steps whose time-step modulation barely changed, reusing per-window residuals (see `TeaCache`); threshold 0 is
the exact path (tested). `enable_fast(dit, fp8=True)` runs the blocks' big Linears as float8_e4m3fn matmuls
(per-output-channel weight scales, per-token activation scales, float32 sums via `torch._scaled_mm`); its error
against a float32 forward is measured by `python -m wan.bench dit --fast --fp8 --precision` (BENCHMARKS.md).

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


# --- fp8 (APPROXIMATE, opt-in): e4m3 weights per output channel, activations per token, torch._scaled_mm ----

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def quantize_fp8_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """x: [M, K] -> (float8_e4m3fn [M, K], float32 scale [M, 1]) with x ~= q * scale, one scale per row
    (amax / 448; an all-zero row gets scale 1 and stays zero)."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def fp8_copy(*linears: nn.Linear) -> tuple[Tensor, Tensor, Tensor | None]:
    """The fp8 copy of one or several Linears of the same input (concatenated along the output dim): (weight
    float8_e4m3fn [N, K], one float32 scale per output channel [1, N], bias in the original dtype or None). The
    model's weights stay as they are (the state dict and the reference forward are untouched)."""
    w = torch.cat([m.weight.detach() for m in linears])
    q, s = quantize_fp8_rows(w)
    bias = None if linears[0].bias is None else torch.cat([m.bias.detach() for m in linears])
    return q, s.view(1, -1), bias


def fp8_linear(x: Tensor, weight: Tensor, scale: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    """y = x @ W.T + b with x quantized per token and W per output channel to float8_e4m3fn, products summed in
    float32 by `torch._scaled_mm`, rescaled and returned in `dtype` (bf16 on the GPU)."""
    lead = x.shape[:-1]
    q, s = quantize_fp8_rows(x.reshape(-1, x.shape[-1]))
    y = torch._scaled_mm(q, weight.t(), scale_a=s, scale_b=scale, out_dtype=dtype)
    if bias is not None:
        y = y + bias.to(dtype)
    return y.view(*lead, -1)


# which Linears of a block the fp8 option quantizes: the big token-wise ones (the context-side k/v projections
# act on 512 + 257 + audio tokens and stay in the model dtype)
FP8_GROUPS = {
    "qkv": lambda b: (b.self_attn.q, b.self_attn.k, b.self_attn.v),
    "o": lambda b: (b.self_attn.o,),
    "cq": lambda b: (b.cross_attn.q,),
    "co": lambda b: (b.cross_attn.o,),
    "ffn1": lambda b: (b.ffn[0],),
    "ffn2": lambda b: (b.ffn[2],),
}


def _proj(x: Tensor, fp8: dict | None, key: str, dtype: torch.dtype, linear: nn.Linear) -> Tensor:
    """linear(x), or its fp8 copy (key in FP8_GROUPS) when fp8 is on."""
    return linear(x) if fp8 is None else fp8_linear(x.to(dtype), *fp8[key], dtype)


def fast_block_forward(block: nn.Module, x: Tensor, e0: Tensor, cos: Tensor, sin: Tensor, context: Tensor,
                       vocal_context: Tensor, num_groups: int, dtype: torch.dtype,
                       fp8: dict | None = None) -> Tensor:
    """The function of `WanAttentionBlock.forward` with fewer roundings; RoPE as float32 cos/sin tables.

    x: [B, S, dim] residual stream; e0: [B, 6, dim]; cos/sin: float32 [S, 1, head_dim/2] (padding rows 1 / 0);
    context: [B, clip_tokens + text_len, dim]; vocal_context: [B, G, K, dim] or [B, G*K, dim]; num_groups: G.
    fp8: None (exact), or this block's `fp8_copy` tuples by `FP8_GROUPS` key (approximate).
    """
    sa, ca = block.self_attn, block.cross_attn
    b, s = x.shape[:2]
    n, d = sa.num_heads, sa.head_dim
    # the reference's residual dtype: x + (bf16 branch) * (modulation + e0)
    res_dtype = torch.promote_types(x.dtype, torch.promote_types(block.modulation.dtype, e0.dtype))
    m = (block.modulation.float() + e0.float()).chunk(6, dim=1)  # each [B, 1, dim], float32

    # 1. self-attention (modulated, gated)
    h = (_layer_norm_f32(block.norm1, x) * (1 + m[1]) + m[0]).to(dtype)
    if fp8 is None:  # three matmuls: one fused q/k/v matmul measured slower on the H200 (BENCHMARKS.md)
        q, k, v = sa.q(h), sa.k(h), sa.v(h)
    else:
        q, k, v = fp8_linear(h, *fp8["qkv"], dtype).split(n * d, dim=-1)
    q = rope_real(_rms_norm_f32(sa.norm_q, q).view(b, s, n, d), cos, sin).to(dtype)
    k = rope_real(_rms_norm_f32(sa.norm_k, k).view(b, s, n, d), cos, sin).to(dtype)
    v = v.reshape(b, s, n, d).to(dtype)
    # the model's sequence-parallel seam (`attention` itself on one process)
    y = getattr(sa, "attention_fn", attention)(q, k, v).flatten(2).to(dtype)
    y = _proj(y, fp8, "o", dtype, sa.o)
    x = (x.float() + y.float() * m[2]).to(res_dtype)

    # 2. cross-attention: text, CLIP image tokens, audio (neither modulated nor gated)
    h = _layer_norm_f32(block.norm3, x).to(dtype)
    q = _rms_norm_f32(ca.norm_q, _proj(h, fp8, "cq", dtype, ca.q)).to(dtype).view(b, -1, n, d)
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
    y = _proj((txt_x.float() + img_x.float() + aud_x.float()).to(dtype), fp8, "co", dtype, ca.o)
    x = (x.float() + y.float()).to(res_dtype)

    # 3. feed-forward (modulated, gated)
    h = (_layer_norm_f32(block.norm2, x) * (1 + m[4]) + m[3]).to(dtype)
    if fp8 is None:
        y = block.ffn(h)
    else:
        y = fp8_linear(block.ffn[1](fp8_linear(h, *fp8["ffn1"], dtype)), *fp8["ffn2"], dtype)
    return (x.float() + y.float() * m[5]).to(res_dtype)


# --- state and installation -------------------------------------------------------------------------------

# The TeaCache rescaling polynomial the original uses for every 1.3B model (wan/models/cache_utils.py there).
WAN_1_3B_TEACACHE_COEFFICIENTS = (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02)


class TeaCache:
    """TeaCache (arXiv 2411.19108) for the sliding-window pipeline: APPROXIMATE, off unless passed to `enable_fast`.

    Once per denoising step (at its first window) the relative L1 change of the time-step modulation `e0` since the
    previous step, rescaled by `coefficients`, is accumulated; while the sum stays below `threshold` the step
    reuses, for EACH window, that window's own cached residual (output of the 30 blocks minus their input) instead
    of running the blocks. The original keys its state by forward call, so with several windows the step count and
    the residuals leak from one window to the next (upstream issues #31/#89); here a step starts when `e0` changes
    and the window index is the number of calls since then, which is how the pipeline's loop calls the DiT.
    threshold 0 never skips (the exact path). First, last and the first `num_skip_start_steps` steps always run.
    offload: keep the residuals in CPU memory (one per window: ~0.3 GB each at 480x832 in bf16), as the original.
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
        self.reset()

    def reset(self) -> None:
        """Forget everything (call between generations if one was interrupted)."""
        self.step, self.window = -1, 0
        self._last_e0: Tensor | None = None
        self._acc = 0.0
        self.compute = True
        self._residuals: dict[int, Tensor] = {}
        self._x_in: Tensor | None = None
        self.calls = self.skipped = 0

    def _rescale(self, x: float) -> float:
        return sum(c * x ** (len(self.coefficients) - 1 - i) for i, c in enumerate(self.coefficients))

    def begin(self, x: Tensor, e0: Tensor) -> bool:
        """At block 0 of every DiT call: x the block input, e0 [B, 6, dim]. Returns whether the blocks run."""
        self.calls += 1
        rel = None
        if self._last_e0 is not None and self._last_e0.shape == e0.shape:
            prev = self._last_e0.float()
            rel = ((e0.float() - prev).abs().mean() / prev.abs().mean()).item()  # one sync per call
        if rel is None or rel != 0.0:  # a new denoising step
            self.step, self.window = self.step + 1, 0
            if self.step >= self.num_steps:  # a new generation
                self.reset()
                self.calls, self.step = 1, 0
            always = (self.step == 0 or self.step == self.num_steps - 1 or self.step < self.num_skip_start_steps
                      or rel is None or self.threshold <= 0)
            if always:
                self.compute, self._acc = True, 0.0
            else:
                self._acc += self._rescale(rel)
                self.compute = self._acc >= self.threshold
                if self.compute:
                    self._acc = 0.0
            self._last_e0 = e0.detach().clone()
        else:
            self.window += 1
        run = self.compute or self.window not in self._residuals
        if not run:
            self.skipped += 1
        self._x_in = x if run else None
        return run

    def cached(self, x: Tensor) -> Tensor:
        """x + this window's residual (block 0 when skipping)."""
        r = self._residuals[self.window].to(x.device, non_blocking=True)
        return (x.float() + r.float()).to(x.dtype)

    def store(self, out: Tensor) -> None:
        """After the last block of a computed call."""
        r = (out.float() - self._x_in.float()).to(out.dtype)
        self._residuals[self.window] = r.to("cpu", non_blocking=False) if self.offload else r
        self._x_in = None


class FastState:
    """What `enable_fast` attaches to the model: options, the compiled block function, the RoPE table cache."""

    def __init__(self, compile: bool, backend: str | object = "inductor", mode: str | None = None,
                 fp32_residual: bool = True, teacache: TeaCache | None = None, fp8: bool = False):
        self.compile = compile
        self.fp8 = fp8
        self._fp8: dict[int, dict[str, tuple]] = {}  # block index -> its fp8 weights (built on first use)
        self.teacache = teacache
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

    def fp8_weights(self, index: int, block: nn.Module) -> dict | None:
        """The fp8 copies of block `index`'s big Linears (None unless fp8), made on the weights' device the first
        time and again if the block moved (offload modes)."""
        if not self.fp8:
            return None
        dev = block.self_attn.q.weight.device
        cached = self._fp8.get(index)
        if cached is None or cached["qkv"][0].device != dev:
            with torch.no_grad():
                cached = {k: fp8_copy(*get(block)) for k, get in FP8_GROUPS.items()}
            self._fp8[index] = cached
        return cached

    def run_block(self, block: nn.Module, *args, fp8: dict | None = None) -> Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(block, *args, fp8=fp8)
            except Exception as err:  # noqa: BLE001 - compiler missing/broken; a real error re-raises below
                self._fail(err)
        return fast_block_forward(block, *args, fp8=fp8)


def _block_forward(state: FastState, index: int, last: bool, block: nn.Module, x: Tensor, e0: Tensor,
                   freqs: Tensor, context: Tensor, vocal_context: Tensor, num_groups: int,
                   dtype: torch.dtype) -> Tensor:
    """Drop-in for `WanAttentionBlock.forward` (same signature after `block`); index: the block's position."""
    if state.fp32_residual and x.dtype != torch.float32 and torch.is_autocast_enabled(x.device.type):
        # block 0 only; blocks return the stream in float32 from then on (one compiled graph)
        x = x.to(torch.float32, memory_format=torch.contiguous_format)
    elif not x.is_contiguous():
        # `patchify` hands over a transposed view ([B, dim, S] in memory) when there is no padding; elementwise ops
        # would carry that layout through every block (strided norms, a copy before each Linear)
        x = x.contiguous()
    tc = state.teacache
    if tc is not None:
        if index == 0 and not tc.begin(x, e0):
            return tc.cached(x)
        if not tc.compute and tc._x_in is None:  # a skipped call: blocks 1.. pass the stream through
            return x
    cos, sin = state.rope_tables(freqs, x.shape[1])
    out = state.run_block(block, x, e0, cos, sin, context, vocal_context, num_groups, dtype,
                          fp8=state.fp8_weights(index, block))
    if tc is not None and last:
        tc.store(out)
    return out


def enable_fast(dit: nn.Module, compile: bool = True, fp32_residual: bool = True,
                backend: str | object = "inductor", mode: str | None = None,
                state: FastState | None = None, teacache: TeaCache | None = None, fp8: bool = False) -> FastState:
    """Switch `dit` (a WanTransformer3DFantasyModel) to the fast block forward; returns its FastState.

    compile: torch.compile the block function (one compilation for all blocks per input shape; falls back to
    eager with a warning where compilation is unavailable); fp32_residual: keep the residual stream in float32
    under autocast (more precise, ~1 % slower); backend/mode: passed to torch.compile; state: re-install a
    FastState returned earlier (keeps its compiled code, e.g. after a `disable_fast` for a reference run);
    teacache: an APPROXIMATE TeaCache (see the class), None = exact; fp8: APPROXIMATE, the blocks' big Linears
    (q/k/v, o, cross q/o, FFN) as float8_e4m3fn matmuls (`torch._scaled_mm`, per-channel weight and per-token
    activation scales; needs a GPU with fp8 tensor cores for speed, e.g. Hopper; ~1.2 GB more memory at 1.3B).
    Weights, state_dict and the reference forward are untouched; `disable_fast(dit)` undoes it.
    Inference only: `dit.gradient_checkpointing` still works, but training is not what this path is tested for.
    """
    disable_fast(dit)
    state = state if state is not None else FastState(compile, backend, mode, fp32_residual, teacache, fp8)
    n = len(dit.blocks)
    for i, block in enumerate(dit.blocks):
        # an instance attribute shadows the class's forward; nn.Module.__call__ (hooks included) calls it
        block.forward = functools.partial(_block_forward, state, i, i == n - 1, block)
    dit._fast_state = state
    return state


def disable_fast(dit: nn.Module) -> None:
    """Back to the reference forward (no-op if `enable_fast` was never called)."""
    for block in dit.blocks:
        block.__dict__.pop("forward", None)
    dit.__dict__.pop("_fast_state", None)


def is_fast(dit: nn.Module) -> bool:
    return getattr(dit, "_fast_state", None) is not None
