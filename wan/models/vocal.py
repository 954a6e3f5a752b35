"""StableAvatar's Time-step-aware Audio Adapter ("vocal projector"), original parameter names.

wav2vec2 tokens [B, T_a, 768] -> projection -> grouped per latent frame (21 groups for an 81-frame clip) ->
2 adapter blocks modulated by the DiT's timestep embedding and cross-attending to the noisy video tokens of
their latent frame -> modulated final head -> `vocal_context` [B, G, K, dim] for the DiT's audio attention.
Spec: transformer.md §6.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wan.configs import DiTConfig
from wan.models.attention import attention
from wan.models.layers import WanLayerNorm, WanRMSNorm


def split_audio_sequence(num_tokens: int, num_frames: int = 81, temporal: int = 4) -> list[list[int]]:
    """Inclusive token ranges [start, end] of each latent frame's audio window (before widening).

    Reproduces the original's float operation order exactly: `tpf = T_a / n`, centres at the middle of each
    latent frame's 4 video frames, group 0 special-cased to end where group 1 starts.
    """
    tpf = num_tokens / num_frames
    half = int(tpf * temporal / 2)
    centres = [0]
    for i in range(1, int((num_frames - 1) / temporal) + 1):
        a = tpf * ((i - 1) * temporal + 1)
        b = tpf * (i * temporal + 1)
        centres.append(int((a + b) / 2) - 1)
    ranges = [[c - half, c + half] for c in centres]
    if len(ranges) < 2:
        raise ValueError(f"video_sample_n_frames={num_frames} gives fewer than 2 latent frames; need >= 5")
    ranges[0] = [ranges[1][0] - 2 * half, ranges[1][0]]
    return ranges


def split_tensor_with_padding(tokens: Tensor, ranges: list[list[int]], expand_length: int = 0) -> tuple[Tensor, Tensor]:
    """tokens: [B, T, C] -> groups [B, G, K, C] and valid lengths int64 [G].

    Each range is widened by `expand_length` on both sides; out-of-range positions are zero vectors, ALL appended
    at the end of the group (front padding too: the original's quirk, the group is shifted, not centred).
    """
    b, t, c = tokens.shape
    groups, lens = [], []
    for start, end in ranges:
        start, end = start - expand_length, end + expand_length
        lo, hi = max(start, 0), min(end, t - 1)
        valid = tokens[:, lo:hi + 1] if lo <= hi else tokens.new_zeros(b, 0, c)
        pad = max(-start, 0) + max(end - (t - 1), 0)
        groups.append(torch.cat([valid, tokens.new_zeros(b, pad, c)], dim=1))
        lens.append(valid.shape[1])
    return torch.stack(groups, dim=1), torch.tensor(lens, dtype=torch.long)


class VocalProjModel(nn.Module):
    """Linear(audio_in_dim -> width, no bias) + nn.LayerNorm (PyTorch default eps 1e-5)."""

    def __init__(self, audio_in_dim: int, width: int, eps: float = 1e-5):
        super().__init__()
        self.proj = nn.Linear(audio_in_dim, width, bias=False)
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, audio: Tensor) -> Tensor:
        return self.norm(self.proj(audio))


class VocalCrossAttention(nn.Module):
    """Per latent frame: the K audio tokens of group g attend to the h'*w' video tokens of latent frame g."""

    def __init__(self, width: int, dit_dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(dit_dim, width)
        self.v = nn.Linear(dit_dim, width)
        self.o = nn.Linear(width, width)
        self.norm_q = WanRMSNorm(width, eps=eps)
        self.norm_k = WanRMSNorm(width, eps=eps)

    def forward(self, x: Tensor, context: Tensor, dtype: torch.dtype, num_groups: int) -> Tensor:
        """x: [B, G*K, width] audio tokens; context: [B, S, dit_dim] video tokens with S = G * h'w'."""
        b, n, d = x.shape[0], self.num_heads, self.head_dim
        if context.shape[1] % num_groups:
            raise ValueError(f"{context.shape[1]} video tokens cannot be split into {num_groups} latent frames")
        q = self.norm_q(self.q(x.to(dtype))).view(b * num_groups, -1, n, d)
        k = self.norm_k(self.k(context.to(dtype))).view(b * num_groups, -1, n, d)
        v = self.v(context.to(dtype)).view(b * num_groups, -1, n, d)
        out = attention(q.to(dtype), k.to(dtype), v.to(dtype)).to(dtype)
        return self.o(out.reshape(b, -1, n * d))


class VocalAttentionBlock(nn.Module):
    def __init__(self, width: int, dit_dim: int, ffn_dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = WanLayerNorm(width, eps)
        self.norm3 = WanLayerNorm(width, eps, elementwise_affine=True)
        self.cross_attn = VocalCrossAttention(width, dit_dim, num_heads, eps)
        self.norm2 = WanLayerNorm(width, eps)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, width))
        self.modulation = nn.Parameter(torch.randn(1, 6, width) / width**0.5)

    def forward(self, x: Tensor, e0: Tensor, context: Tensor, num_groups: int,
                dtype: torch.dtype = torch.float32) -> Tensor:
        """x: [B, G*K, width] (float32 stream, as the original calls the block with its default dtype);
        e0: [B, 6, dim] DiT timestep projection; context: [B, S, dit_dim]."""
        m = (self.modulation + e0).chunk(6, dim=1)
        # the original's "self" step has no attention at all: an adaLN-modulated gated residual (kept for parity)
        x = x + (self.norm1(x) * (1 + m[1]) + m[0]).to(dtype) * m[2]
        x = x + self.cross_attn(self.norm3(x), context, dtype, num_groups)
        x = x + self.ffn((self.norm2(x) * (1 + m[4]) + m[3]).to(dtype)) * m[5]
        return x


class FinalHead(nn.Module):
    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.norm = WanLayerNorm(width, eps)
        self.final_proj = nn.Linear(width, width)
        self.modulation = nn.Parameter(torch.randn(1, 2, width) / width**0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        m = (self.modulation + e.unsqueeze(1)).chunk(2, dim=1)
        return self.final_proj(self.norm(x) * (1 + m[1]) + m[0])


class VocalProjector(nn.Module):
    """`vocal_projector` of the DiT (upstream class FantasyTalkingVocalCondition1BModel)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        width = cfg.audio_proj_dim
        self.expand_length = cfg.expand_length
        self.temporal = cfg.temporal_compression
        self.proj_model = VocalProjModel(cfg.audio_in_dim, width, cfg.vocal_proj_eps)
        self.blocks = nn.ModuleList([
            VocalAttentionBlock(width, cfg.dim, cfg.vocal_ffn_mult * width, cfg.vocal_num_heads, cfg.vocal_eps)
            for _ in range(cfg.vocal_num_layers)
        ])
        self.final_head = FinalHead(width, cfg.vocal_eps)

    def forward(self, vocal_embeddings: Tensor, video_sample_n_frames: int, latents: Tensor, e0: Tensor,
                e: Tensor) -> tuple[Tensor, Tensor]:
        """vocal_embeddings: [B, T_a, audio_in_dim]; latents: [B, S, dim] DiT tokens right after patch embedding
        and zero padding (S = G * h'w'); e0: [B, 6, dim]; e: [B, dim].
        Returns (context tokens [B, G, K, width], valid group lengths int64 [G] — computed, never used as a mask)."""
        a = self.proj_model(vocal_embeddings)
        ranges = split_audio_sequence(a.shape[1], video_sample_n_frames, self.temporal)
        groups, lens = split_tensor_with_padding(a, ranges, self.expand_length)
        b, g, k, c = groups.shape
        x = groups.reshape(b, g * k, c)
        for block in self.blocks:
            x = block(x, e0, latents, g)
        return self.final_head(x, e).view(b, g, k, -1), lens
