"""Norms, sinusoidal timestep embedding and 3-D RoPE: one definition each, shared by the DiT and the adapter.

Precision follows the original (spec transformer.md §§3.3, 5, 7): norm statistics in float32 with the result
cast back to the input dtype; the timestep sinusoid in float64; RoPE tables in float64 (complex128) applied to
float32 q/k.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WanRMSNorm(nn.Module):
    """RMS norm over the last dim; statistic in fp32, weight applied after rounding back to x's dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 on x.float(), result cast back to x's dtype (affine optional)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


def sinusoidal_embedding_1d(dim: int, position: Tensor) -> Tensor:
    """position: [B] -> [B, dim] float64, `[cos, sin]` order (cos first), frequencies 10000^(-k/half)."""
    assert dim % 2 == 0
    half = dim // 2
    pos = position.to(torch.float64)
    sinusoid = torch.outer(pos, torch.pow(10000, -torch.arange(half, device=pos.device, dtype=torch.float64).div(half)))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per axis (time, height, width): c - 2*(c//3), c//3, c//3 with c = head_dim // 2."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def _rope_params(max_positions: int, dim: int, theta: float) -> Tensor:
    freqs = torch.outer(
        torch.arange(max_positions, dtype=torch.float64),
        1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64).div(dim)),
    )
    return torch.polar(torch.ones_like(freqs), freqs)  # complex128 [max_positions, dim // 2]


@functools.lru_cache(maxsize=8)
def rope_table(head_dim: int, max_positions: int = 1024, theta: float = 10000.0) -> Tensor:
    """The original's `freqs`: complex128 [max_positions, head_dim // 2] (time | height | width tables).

    Not a parameter or buffer (the released checkpoints have no `freqs` key, and a module `.to(bf16)`
    must never touch it), so it lives in this cache on the CPU.
    """
    d = head_dim
    return torch.cat([
        _rope_params(max_positions, d - 4 * (d // 6), theta),
        _rope_params(max_positions, 2 * (d // 6), theta),
        _rope_params(max_positions, 2 * (d // 6), theta),
    ], dim=1)


def rope_freqs_for_grid(grid: tuple[int, int, int], head_dim: int, device: torch.device | str,
                        max_positions: int = 1024, theta: float = 10000.0) -> Tensor:
    """Per-token multipliers for a (F, h', w') token grid, positions local to the call:
    complex128 [F*h'*w', 1, head_dim // 2], token order f-major then row then column.

    Cached per (grid, device, ...): built once on the device, so a forward does no host-to-device copy (33.5 MB and a
    stream sync per call at 480x832 otherwise). The returned tensor is shared: read it, never modify it."""
    return _rope_freqs_cached(tuple(int(v) for v in grid), int(head_dim), torch.device(device), int(max_positions),
                              float(theta))


@functools.lru_cache(maxsize=4)
def _rope_freqs_cached(grid: tuple[int, int, int], head_dim: int, device: torch.device, max_positions: int,
                       theta: float) -> Tensor:
    f, h, w = grid
    if max(f, h, w) > max_positions:
        raise ValueError(f"token grid {grid} exceeds the RoPE table of {max_positions} positions")
    # a normal tensor even when first asked for under torch.inference_mode (training may reuse it with autograd)
    with torch.inference_mode(False), torch.no_grad():
        ft, fh, fw = rope_table(head_dim, max_positions, theta).split(rope_split(head_dim), dim=1)
        freqs = torch.cat([
            ft[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
            fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
            fw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ], dim=-1).reshape(f * h * w, 1, -1)
        return freqs.to(device)


def rope_apply(x: Tensor, freqs: Tensor) -> Tensor:
    """x: [B, S, H, D]; freqs: complex128 [S_real, 1, D/2] from `rope_freqs_for_grid` -> float32 [B, S, H, D].

    Channels (2k, 2k+1) form complex number k (consecutive pairs). Only the first S_real tokens are rotated;
    padding tokens (a short last window padded to seq_len) pass through unrotated, as in the original.
    """
    b, s, n, d = x.shape
    s_real = freqs.shape[0]
    with torch.autocast(device_type=x.device.type, enabled=False):
        xr = torch.view_as_complex(x[:, :s_real].float().reshape(b, s_real, n, d // 2, 2))
        rot = torch.view_as_real(xr * freqs).flatten(3)  # complex128 product -> float64 pairs
        if s_real < s:
            rot = torch.cat([rot, x[:, s_real:].to(rot.dtype)], dim=1)
        return rot.float()
