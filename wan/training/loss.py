"""Flow-matching training maths as the original computes it (spec training.md §5-8): pure functions.

* the timestep table is the scheduler's CONSTRUCTION-time schedule (1000 entries, never `set_timesteps`):
  `sigma_k = shift*s/(1+(shift-1)*s)`, `s = (1000-k)/1000`, `t_k = 1000*sigma_k`; index 0 is the noisiest;
* indices are uniform (with the original's per-rank slices when distributed), or drawn from diffusers'
  density for the non-uniform schemes;
* `x_t = (1-sigma)*x0 + sigma*eps` with sigma cast to the latents' dtype (bf16 in training: quirk 9),
  target `eps - x0`;
* the loss weights the squared error with face/lip masks by a uniform draw `r` (40 % full frame with face
  and lips up-weighted, 10 % face only, 50 % lips only) and mixes in the "motion" term, which differences
  adjacent LATENT CHANNELS, not frames (quirk 2, kept).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wan.sampling import _shift

__all__ = ["train_schedule", "timestep_index_range", "sample_timestep_indices", "add_noise", "resize_masks",
           "masked_flow_loss", "motion_loss", "grad_clip_target", "linear_decay", "loss_weighting"]


def train_schedule(num_train_timesteps: int = 1000, shift: float = 5.0) -> tuple[Tensor, Tensor]:
    """(timesteps [N], sigmas [N]) float32 of diffusers' FlowMatchEulerDiscreteScheduler as constructed:
    `timesteps = 1000*sigmas`, sigmas decreasing from 1 to ~0.005 (shift 5)."""
    n = num_train_timesteps
    s = torch.from_numpy(np.linspace(1, n, n, dtype=np.float32)[::-1].copy()) / n
    sigmas = _shift(s, shift)
    return sigmas * n, sigmas


def timestep_index_range(num_idx: int, rank: int = 0, world_size: int = 1) -> tuple[int, int]:
    """The original's `DiscreteSampling(uniform_sampling=True)`: with `world_size` ranks split into
    `group_num` groups, rank r draws from its group's contiguous slice of [0, num_idx)
    (4 ranks -> slices of 250; 64 ranks -> 8 groups of 8, slices of 125; 1 rank -> everything)."""
    if world_size <= 1:
        return 0, num_idx
    i = 1
    while world_size % i or num_idx % (world_size // i):
        i += 1
    group_num = world_size // i
    group_width = world_size // group_num
    interval = num_idx // group_num
    g = rank // group_width
    return g * interval, (g + 1) * interval


def sample_timestep_indices(n: int, index_range: tuple[int, int], generator: torch.Generator | None,
                            device: torch.device | str, weighting_scheme: str | None = None,
                            num_idx: int = 1000, logit_mean: float = 0.0, logit_std: float = 1.0,
                            mode_scale: float = 1.29) -> Tensor:
    """[n] long indices into `train_schedule`. `weighting_scheme=None` = the .sh files' `--uniform_sampling`
    (torch.randint on `generator`); otherwise diffusers' `compute_density_for_timestep_sampling` (CPU RNG)."""
    if weighting_scheme is None:
        lo, hi = index_range
        return torch.randint(lo, hi, (n,), generator=generator, device=device).long().cpu()
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(weighting_scheme=weighting_scheme, batch_size=n, logit_mean=logit_mean,
                                              logit_std=logit_std, mode_scale=mode_scale)
    return (u * num_idx).long()


def loss_weighting(weighting_scheme: str, sigmas: Tensor) -> Tensor:
    """diffusers' `compute_loss_weighting_for_sd3` ("none" -> ones)."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    return compute_loss_weighting_for_sd3(weighting_scheme=weighting_scheme, sigmas=sigmas)


def add_noise(latents: Tensor, noise: Tensor, sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """latents, noise: [B, C, F, h, w]; sigmas: [B] float32 -> (x_t, target), both in the latents' dtype.
    sigma is rounded to the latents' dtype first, as the original's `get_sigmas(..., dtype=latents.dtype)`."""
    s = sigmas.to(device=latents.device, dtype=latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
    return (1.0 - s) * latents + s * noise, noise - latents


def resize_masks(masks: Tensor, size: tuple[int, int, int]) -> Tensor:
    """Pixel masks [B, 1, T, H, W] -> [B, 1, F, h, w] (trilinear, align_corners=False), in their dtype."""
    return F.interpolate(masks, size=size, mode="trilinear", align_corners=False)


def masked_flow_loss(pred: Tensor, target: Tensor, face: Tensor, lip: Tensor, r: float,
                     weighting: Tensor | None = None) -> Tensor:
    """The original's `custom_mse_loss`. pred, target: [B, C, F, h, w]; face, lip: [B, 1, F, h, w] in [0, 1];
    r: a uniform draw in [0, 1): [0.4, 0.5) -> face only, >= 0.5 -> lips only, else (1 + face + lip) weights."""
    mse = (pred.float() - target.float()) ** 2
    if 0.4 <= r < 0.5:
        mse = mse * face
    elif r >= 0.5:
        mse = mse * lip
    else:
        mse = mse * (1 + face + lip)
    if weighting is not None:
        mse = mse * weighting.float().view(-1, *([1] * (mse.ndim - 1)))
    return mse.mean()


def motion_loss(pred: Tensor, target: Tensor) -> Tensor:
    """MSE of adjacent differences along dim 1 (the CHANNEL axis of [B, C, F, h, w]: the original's quirk)."""
    d_pred = pred[:, 1:].float() - pred[:, :-1].float()
    d_tgt = target[:, 1:].float() - target[:, :-1].float()
    return F.mse_loss(d_pred, d_tgt)


def linear_decay(initial: float, final: float, total_steps: int, step: int) -> float:
    if step >= total_steps:
        return final
    return initial + (final - initial) / total_steps * max(0, step)


def grad_clip_target(total_norm: float, step: int, max_grad_norm: float, initial_ratio: float,
                     abnormal_start: int) -> float:
    """The original's adaptive clipping norm: the limit decays linearly from max_grad_norm*initial_ratio to
    max_grad_norm over `abnormal_start` steps; after that an abnormal norm (> 5x the limit) is clipped harder,
    to limit / min(norm/limit, 10)."""
    m = linear_decay(max_grad_norm * initial_ratio, max_grad_norm, abnormal_start, step)
    if total_norm / m > 5 and step > abnormal_start:
        return m / min(total_norm / m, 10)
    return m
