"""Flow-matching sampling maths: sigma/timestep schedule, Euler step, 3-way text/audio guidance.

Stateless functions; the pipeline's denoising loop is a short loop over them (no scheduler object,
no `_step_index` resets). Everything reproduces diffusers 0.30.1 `FlowMatchEulerDiscreteScheduler`
as the original calls it (static shift 5, `mu` ignored) and the original pipeline's CFG line —
spec pipeline.md §7-8. The formula is pinned here, not the library: newer diffusers versions
compute the schedule differently.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["flow_sigmas", "euler_step", "guidance"]


def _shift(sigmas, shift: float):
    """Static time shift `shift·s / (1 + (shift−1)·s)`, in the dtype of `sigmas` (torch or numpy)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(num_steps: int, shift: float = 5.0, num_train_timesteps: int = 1000,
                device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Timesteps and sigmas of `num_steps` Euler steps, bit-identical to diffusers 0.30.1.

    Returns `(timesteps [S] float32, sigmas [S+1] float32)`; `sigmas[-1] == 0`,
    `timesteps == sigmas[:-1] · num_train_timesteps` (float32), `timesteps[0] == 1000` exactly.

    The shift is applied twice, as diffusers 0.30.1 does with `use_dynamic_shifting=False`:
    once at construction to the float32 training sigmas (which fixes `sigma_min`/`sigma_max`),
    and again to the float64 `linspace(1000·sigma_max, 1000·sigma_min, S)` of `set_timesteps`.
    The pipeline passes `mu=1`, which that path ignores.
    """
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer (got {num_steps!r}); pass e.g. --sample_steps 50")
    n = num_train_timesteps
    # construction: float32 torch maths on the 1000 training sigmas
    train = torch.from_numpy(np.linspace(1, n, n, dtype=np.float32)[::-1].copy()) / n
    train = _shift(train, shift)
    sigma_max, sigma_min = train[0].item(), train[-1].item()
    # set_timesteps: float64 numpy, shifted a second time, then float32
    sig = _shift(np.linspace(sigma_max * n, sigma_min * n, int(num_steps)) / n, shift)
    sig = torch.from_numpy(sig).to(dtype=torch.float32, device=device)
    timesteps = sig * n
    sigmas = torch.cat([sig, torch.zeros(1, dtype=torch.float32, device=sig.device)])
    return timesteps, sigmas


def euler_step(v: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, x: Tensor) -> Tensor:
    """One flow-matching Euler step `x + (sigma_next − sigma)·v`, with diffusers' dtype behaviour.

    v: [B, C, F, h, w] velocity (model output, any float dtype); x: same shape, the current sample.
    sigma, sigma_next: consecutive entries of `flow_sigmas(...)[1]` (float32; a Python float is
    taken as float32). Returns a tensor of `v.dtype`.

    Precision as in diffusers 0.30.1 `step()`: the sigma difference is a 0-dim float32 tensor, which
    does not promote a dimensioned tensor, so with a bf16 `v` the product `(σ' − σ)·v` is a bf16
    tensor — the difference itself is first rounded to bf16 (e.g. −0.0059040785 → −0.0058898926 for
    50 steps, k = 10); the product is added to `x` upcast to float32, and the sum is cast back to
    `v.dtype`. The sigmas are moved to `v`'s device, where diffusers keeps them.
    """
    s = torch.as_tensor(sigma, dtype=torch.float32, device=v.device)
    s_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=v.device)
    if s.dim() != 0 or s_next.dim() != 0:
        raise ValueError(f"sigma and sigma_next must be scalars (got shapes {tuple(s.shape)}, {tuple(s_next.shape)})")
    return (x.to(torch.float32) + (s_next - s) * v).to(v.dtype)


def guidance(v_uncond: Tensor, v_audio: Tensor, v_text: Tensor,
             audio_scale: float, text_scale: float) -> Tensor:
    """The released 3-branch classifier-free guidance: `u + A·(b1 − u) + T·(b2 − b1)`.

    The three DiT outputs of the CFG batch (each [B, C, F, h, w], same dtype), in batch order:
      * v_uncond (branch 0): negative prompt, no audio (zero audio context);
      * v_audio  (branch 1): negative prompt WITH audio (the original calls it "drop_audio", but
        it is the text-dropped branch);
      * v_text   (branch 2): positive prompt with audio.
    `audio_scale` (A, `--sample_audio_guide_scale`) scales the audio direction b1 − u;
    `text_scale` (T, `--sample_text_guide_scale`) the text direction b2 − b1.
    Operation order is the original's, so the result is bit-identical in any dtype (bf16 at
    real inference).
    """
    return v_uncond + audio_scale * (v_audio - v_uncond) + text_scale * (v_text - v_audio)
