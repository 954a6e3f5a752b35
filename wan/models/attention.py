"""The one attention entry point of the project; the backend is chosen here and nowhere else.

The original DiT always calls `torch.nn.functional.scaled_dot_product_attention` without a mask
(flash-attn is force-disabled in its DiT file, and its vocal projector takes the same SDPA path
when flash-attn is absent, which is the reference behaviour). Padding (text slots, the short last
window's zero tokens) is therefore attended to, and we keep it that way for parity: every backend
here computes softmax(q k^T / sqrt(D)) v with no mask.

Backends (`set_backend`, the CLI's `--attention`):

* "sdpa": torch SDPA; torch picks its kernel per call shape (on Hopper, torch >= 2.9 picks cuDNN for the
  long self-attention and the short cross-attentions, the fastest of its kernels there).
* "fa3": FlashAttention-3, forward only: PyPI `fa3-fwd` (module `fa3_fwd_interface`, `pip install -e .[hopper]`)
  or the official hopper build of flash-attention (`flash_attn_interface`). Measured 730 vs 580 TFLOP/s (cuDNN)
  at the self-attention shape on an H100 (shared/gpu/README.md). Runs on sm90 GPUs, bf16 (and fp16 where the
  build has it), head dim a multiple of 8 up to 256.
* "auto" (default): FA3 where it can run, SDPA elsewhere (always SDPA on the CPU).

The choice is made per (device, dtype, head dim) at the first call and logged; FA3 is checked against SDPA once per
such key on a small problem before it is used (a kernel that does not load or computes something else falls back
to SDPA with one warning). An explicit "fa3" raises at `set_backend` when no FA3 package can be imported (an
explicit request that can never run is a user error); its calls that FA3 cannot take (CPU, another GPU, float32,
head dim) run on SDPA with one warning per reason. Under `torch.compile` the choice is a constant of the graph
(a change of `set_backend` recompiles).
"""

from __future__ import annotations

import importlib
import logging
import warnings
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

BACKENDS = ("auto", "fa3", "sdpa")
# the FA3 packages, in the order tried: PyPI's forward-only build, then the official hopper build
FA3_MODULES = ("fa3_fwd_interface", "flash_attn_interface")
FA3_INSTALL_HINT = "pip install -e .[hopper] (PyPI fa3-fwd), or build flash-attention's hopper/ (flash_attn_interface)"


class FA3(NamedTuple):
    """A loaded FlashAttention-3: `fn(q, k, v)` on [B, S, H, D] -> out (or (out, lse): both are handled)."""
    module: str
    fn: Callable
    fp16: bool  # False for builds without fp16 kernels (fa3-fwd 0.0.3)


_requested = "auto"
_fa3: FA3 | str | None = None  # None: not tried yet; str: why it cannot be imported
_choices: dict[tuple, str] = {}  # (requested, device, dtype, head dim) -> "fa3" | "sdpa"
_warned: set[str] = set()


def set_backend(name: str) -> None:
    """Select the attention backend for every later call: "auto", "fa3" or "sdpa" (see the module docstring).
    Call before the first forward; a compiled forward recompiles when the backend changes."""
    global _requested
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "fa3":
        fa3 = load_fa3()
        if isinstance(fa3, str):
            raise ImportError(f"--attention fa3: FlashAttention-3 cannot be imported ({fa3}); {FA3_INSTALL_HINT}, "
                              "or use --attention auto / sdpa")
    _requested = name
    _choices.clear()


def get_backend() -> str:
    """The requested backend ("auto", "fa3" or "sdpa"), not what a given call runs (`backend_for`)."""
    return _requested


def load_fa3() -> FA3 | str:
    """The first importable FA3 package (cached), or a string saying why none could be imported."""
    global _fa3
    if _fa3 is None:
        reasons = []
        for name in FA3_MODULES:
            try:
                mod = importlib.import_module(name)
            except Exception as err:  # noqa: BLE001 - ImportError, or an OSError/RuntimeError from its CUDA library
                reasons.append(f"{name}: {type(err).__name__}: {err}"[:200])
                continue
            fn = getattr(mod, "flash_attn_func", None)
            if fn is None:
                reasons.append(f"{name} has no flash_attn_func")
                continue
            _fa3 = FA3(name, fn, _has_fp16(name))
            break
        else:
            _fa3 = "; ".join(reasons)
    return _fa3


def _has_fp16(module: str) -> bool:
    """Whether the build has fp16 kernels (its generated config module says so; assume yes without one)."""
    config = "fa3_fwd_config" if module == "fa3_fwd_interface" else "flash_attn_config"
    try:
        flags = importlib.import_module(config).CONFIG["build_flags"]
    except Exception:  # noqa: BLE001 - no config module: a full build
        return True
    return not flags.get("FLASHATTENTION_DISABLE_FP16", False)


def _capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device, None elsewhere."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)


def fa3_unsupported(device: torch.device, dtype: torch.dtype, head_dim: int, fa3: FA3 | str) -> str | None:
    """Why FA3 cannot take calls on `device` in `dtype` with `head_dim`, or None when it can."""
    cap = _capability(device)
    if cap is None:
        return f"FlashAttention-3 needs a CUDA GPU, not {device.type}"
    if cap[0] != 9:
        return f"FlashAttention-3 needs an sm90 GPU (Hopper), this one is sm{cap[0]}{cap[1]}"
    if isinstance(fa3, str):
        return f"FlashAttention-3 not installed ({FA3_INSTALL_HINT})"
    if dtype not in ((torch.bfloat16, torch.float16) if fa3.fp16 else (torch.bfloat16,)):
        return f"{fa3.module} has no {str(dtype).removeprefix('torch.')} kernels"
    if head_dim % 8 or head_dim > 256:
        return f"FlashAttention-3 takes head dims that are multiples of 8 up to 256, not {head_dim}"
    return None


def _probe(fa3: FA3, device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Run FA3 once on a small problem against SDPA: None if it agrees, else what went wrong."""
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, head_dim, generator=g, device=device, dtype=dtype) for n in (80, 77, 77))
    try:
        with torch.no_grad():
            out = _unpack(fa3.fn(q, k, v)).float()
    except Exception as err:  # noqa: BLE001 - e.g. "no kernel image is available for execution on the device"
        return f"{fa3.module} failed: {type(err).__name__}: {err}"[:300]
    ref = _sdpa(q.float(), k.float(), v.float())
    err = (out - ref).abs().max().item() if out.shape == ref.shape else float("inf")
    if not err < 0.05:  # bf16 noise is ~1e-2 at most here; NaN fails too
        return f"{fa3.module} disagrees with SDPA (max abs difference {err:.3g} on a test problem)"
    return None


@torch.compiler.assume_constant_result
def _choose(requested: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """"fa3" or "sdpa" for calls on `device` in `dtype` with `head_dim` (cached; a constant under torch.compile)."""
    key = (requested, device, dtype, head_dim)
    if key not in _choices:
        choice, why = "sdpa", None
        if requested != "sdpa":
            fa3 = load_fa3()
            why = fa3_unsupported(device, dtype, head_dim, fa3)
            if why is None:
                why = _probe(fa3, device, dtype, head_dim)
                choice = "fa3" if why is None else "sdpa"
            cap = _capability(device)
            fa3_call = cap is not None and cap[0] == 9 and dtype in (torch.bfloat16, torch.float16)
            if why is not None and (requested == "fa3" or fa3_call):  # silent where FA3 was never an option
                _warn_once(why, f"attention: {why}; using torch SDPA for {_key_text(key)}")
        _choices[key] = choice
        log.info("attention for %s: %s", _key_text(key), _describe_choice(choice, why))
    return _choices[key]


def _key_text(key: tuple) -> str:
    _, device, dtype, head_dim = key
    return f"{str(dtype).removeprefix('torch.')} head dim {head_dim} on {device}"


def _describe_choice(choice: str, why: str | None) -> str:
    if choice == "fa3":
        return f"FlashAttention-3 ({load_fa3().module})"
    return "torch SDPA" + (f" ({why})" if why else "")


def _warn_once(reason: str, msg: str) -> None:
    """One warning per fallback reason (a missing package is one warning, not one per call shape)."""
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def backend_for(device: torch.device | str, dtype: torch.dtype, head_dim: int) -> str:
    """"fa3" or "sdpa": what `attention()` runs for such calls (choosing it now if it was not chosen yet)."""
    return _choose(_requested, torch.device(device), dtype, int(head_dim))


def _unpack(out: Tensor | tuple) -> Tensor:
    # older FA3 builds return (out, softmax_lse); fa3-fwd and newer official ones return out
    return out[0] if isinstance(out, (tuple, list)) else out


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """q: [B, Lq, H, D], k/v: [B, Lk, H, D] -> [B, Lq, H, D]; softmax scale 1/sqrt(D), no mask."""
    if _choose(_requested, q.device, q.dtype, q.shape[-1]) == "fa3":
        return _unpack(_fa3.fn(q, k, v))
    return _sdpa(q, k, v)


def describe_backend(device: torch.device | str) -> str:
    """One line for the log: what runs `attention()` on `device`, and why FA3 does not where it does not."""
    device = torch.device(device)
    sdpa = ("torch SDPA (kernel picked per shape by torch: cuDNN / flash / memory-efficient)"
            if device.type == "cuda" else f"torch SDPA ({device.type})")
    if _requested == "sdpa":
        return sdpa + " [--attention sdpa]"
    fa3 = load_fa3()
    why = fa3_unsupported(device, torch.bfloat16, 128, fa3)
    if why is not None:
        return f"{sdpa} [--attention {_requested}: {why}]"
    fell_back = [f"{_key_text(k)}" for k, c in _choices.items() if k[1] == device and c == "sdpa"]
    text = (f"FlashAttention-3 ({fa3.module}) for {'bf16/fp16' if fa3.fp16 else 'bf16'} with head dims up to 256, "
            f"torch SDPA for other calls [--attention {_requested}]")
    return text + (f"; SDPA so far for {', '.join(fell_back)}" if fell_back else "")


def _reset() -> None:
    """Forget the requested backend, the loaded FA3 and every choice (tests)."""
    global _requested, _fa3
    _requested, _fa3 = "auto", None
    _choices.clear()
    _warned.clear()
