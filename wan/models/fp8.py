"""fp8 matmuls for the DiT blocks' big Linears: APPROXIMATE, opt-in (`enable_fp8(dit)` / `disable_fp8(dit)`).

Each chosen `nn.Linear` is replaced by an `Fp8Linear` that holds the SAME weight and bias Parameters (names, state
dict and `parameters()` unchanged) plus a float8_e4m3fn copy of the weight with one float32 scale per output channel
(non-persistent buffers: they move with the model, are not saved, and are made once, at `enable_fp8`). Its forward
quantizes the activations per token and multiplies with `torch._scaled_mm` (products summed in float32, rescaled,
returned in the input's dtype), which needs a GPU with fp8 tensor cores for speed (Hopper). Measured on an H200: only
1.02-1.05x faster than the fast bf16 path with 2.2x the reference layout's error (README "Speed options"; `python -m
wan.bench dit --fast --fp8 --precision`). The context-side k/v projections act on 512 + 257 + audio tokens and stay
in the model dtype. Call `enable_fp8` after the model has its final dtype and weights (a `.to(dtype)` afterwards
would cast the fp8 copies too).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn

# the Linears of a block that run in fp8: the token-wise ones (self-attention q/k/v/o, cross-attention q/o, FFN)
FP8_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.o",
               "ffn.0", "ffn.2")


def quantize_fp8_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """x: [M, K] -> (float8_e4m3fn [M, K], float32 scale [M, 1]) with x ~= q * scale, one scale per row
    (amax / 448; an all-zero row gets scale 1 and stays zero)."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


class Fp8Linear(nn.Linear):
    """An nn.Linear computed as an fp8 matmul (see the module docstring); made by `from_linear`."""

    weight_fp8: Tensor
    weight_scale: Tensor

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias  # the same Parameters
        with torch.no_grad():
            q, s = quantize_fp8_rows(linear.weight.detach())
        new.register_buffer("weight_fp8", q, persistent=False)
        new.register_buffer("weight_scale", s.view(1, -1), persistent=False)
        return new

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear holding the same Parameters."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        return lin

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., in] -> [..., out] in x's dtype."""
        assert self.weight_fp8.dtype == FP8_DTYPE, "the fp8 weight copy was cast: call enable_fp8 after .to(dtype)"
        lead = x.shape[:-1]
        q, s = quantize_fp8_rows(x.reshape(-1, x.shape[-1]))
        y = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=s, scale_b=self.weight_scale, out_dtype=x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*lead, -1)


def _swap(dit: nn.Module, make) -> None:
    for block in dit.blocks:
        for path in FP8_LINEARS:
            parent_path, name = path.rsplit(".", 1)
            parent = block.get_submodule(parent_path)
            setattr(parent, name, make(getattr(parent, name)))


def enable_fp8(dit: nn.Module) -> None:
    """Run the blocks' big Linears (`FP8_LINEARS`) of `dit` in fp8 (idempotent; weights and state dict untouched;
    ~1.2 GB more memory at 1.3B for the fp8 copies)."""
    _swap(dit, lambda m: m if isinstance(m, Fp8Linear) else Fp8Linear.from_linear(m))


def disable_fp8(dit: nn.Module) -> None:
    """Back to plain nn.Linears (no-op when fp8 is off)."""
    _swap(dit, lambda m: m.to_linear() if isinstance(m, Fp8Linear) else m)


def is_fp8(dit: nn.Module) -> bool:
    return isinstance(dit.blocks[0].self_attn.q, Fp8Linear)
