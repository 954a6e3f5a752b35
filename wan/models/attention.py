"""The one attention entry point of the project; the backend is chosen here and nowhere else.

The original DiT always calls `torch.nn.functional.scaled_dot_product_attention` without a mask
(flash-attn is force-disabled in its DiT file, and its vocal projector takes the same SDPA path
when flash-attn is absent, which is the reference behaviour). Padding (text slots, the short last
window's zero tokens) is therefore attended to, and we keep it that way for parity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """q: [B, Lq, H, D], k/v: [B, Lk, H, D] -> [B, Lq, H, D]; softmax scale 1/sqrt(D), no mask.

    SDPA picks its kernel per call shape (on Hopper, torch >= 2.9 picks cuDNN for both the long
    self-attention and the short cross-attentions, the fastest there; see shared/gpu/README.md).
    """
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def describe_backend(device: torch.device | str) -> str:
    """One line for the log: what runs `attention()` on `device`."""
    device = torch.device(device)
    if device.type == "cuda":
        return "torch SDPA (kernel picked per shape by torch: cuDNN / flash / memory-efficient)"
    return "torch SDPA (CPU)"
