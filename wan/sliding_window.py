"""Sliding-window plan, per-window audio slices and overlap blending ("Dynamic Weighted Sliding-window").

Pure functions reproducing the window loop of the original long pipeline (spec pipeline.md §2, §6, §8-10):
the latent video of `Ftot` frames is denoised window by window at every step; windows are
`Fpb = (clip_length−1)//4 + 1` latent frames long with stride `Fpb − L` (L = overlap), the last one
clipped to the end. After each window's Euler step (except at step 0 and for the first window) its
first L frames are cross-faded with the previous window's values for the same frames.

Lengths (all floors; sr 16 kHz, 25 fps → 640 samples per video frame):
    N audio samples → `num_video_frames(N) = int(N / 640)` → `num_latent_frames(T) = (T−1)//4 + 1`
    → `num_decoded_frames(F) = 4·(F−1) + 1` (the largest 4k+1 ≤ T).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the CLI checks a request before importing it
    import torch
    from torch import Tensor

__all__ = [
    "Window", "plan_windows", "audio_slice", "blend_weights", "fuse_overlap", "VideoPlan", "plan_video",
    "check_size", "num_video_frames", "num_latent_frames", "num_decoded_frames", "BLEND_SCHEMES",
]

BLEND_SCHEMES = ("uniform", "log")


# ------------------------------------------------------------------------------------------------
# lengths


def num_video_frames(num_samples: int, sample_rate: int = 16000, fps: int = 25) -> int:
    """Video frames driven by `num_samples` audio samples: `int(N / int(sr/fps))` (sub-frame remainder dropped).

    E.g. 80,000 → 125; 160,000 → 250; 641,985 → 1003 (spec pipeline.md §2).
    """
    # integer floor == the original's int(N / apf) for every N below 2**53
    return int(num_samples) // int(sample_rate / fps)


def num_latent_frames(num_frames: int, temporal: int = 4) -> int:
    """Latent frames of a `num_frames` video under the causal VAE: `(T−1)//4 + 1` (81 → 21, 250 → 63).

    Also gives the window length in latent frames from `clip_length`. T = 0 gives 0.
    """
    return (int(num_frames) - 1) // temporal + 1


def num_decoded_frames(num_latent: int, temporal: int = 4) -> int:
    """Video frames the VAE decodes from `num_latent` latent frames: `4·(F−1) + 1` (32 → 125, 63 → 249)."""
    return temporal * (int(num_latent) - 1) + 1


# ------------------------------------------------------------------------------------------------
# window plan


@dataclass(frozen=True)
class Window:
    """Latent frames `[start, end)` of one window; `is_last` ⇔ `end` is the end of the video.

    Every window but the first (`start > 0`) blends its first `overlap` frames with the previous
    window's values for the global frames `[start, start + overlap)` (from denoising step 1 on).
    """

    start: int
    end: int
    is_last: bool

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def blends(self) -> bool:
        """Whether this window cross-fades its first frames with the previous window's."""
        return self.start != 0


def plan_windows(num_latent_frames: int, frames_per_window: int, overlap: int) -> list[Window]:
    """The windows of one denoising step, in the order they run.

    num_latent_frames: `Ftot`, latent frames of the whole video; frames_per_window: `Fpb =
    (clip_length−1)//4 + 1` (21 at 81 frames); overlap: `L`, latent frames shared by consecutive
    windows (`--overlap_window_length`). Windows start at 0, Fpb−L, 2(Fpb−L), …; the first window
    whose full span would reach or pass `Ftot` is clipped to end at `Ftot` and is the last one
    (it is always longer than `overlap`). E.g. Ftot 32, Fpb 21, L 5 → [0,21), [16,32).

    This reproduces the original loop wherever it terminates (`Ftot > Fpb`). Where it does not, we
    generate properly instead:
      * `Ftot == Fpb` (81-84 video frames at the defaults): the original loops forever (its first
        window ends at `Ftot` without being marked last); here: one window `[0, Ftot)`, last.
      * `Ftot < Fpb` (audio shorter than one window): the original runs no window at all and
        decodes all-zero latents; here: one short window `[0, Ftot)`, last (the DiT pads it to the
        clip length like any short last window).
    Raises ValueError for `overlap < 2` (the original's uniform weights divide by L−1 = 0),
    `overlap >= frames_per_window` (stride ≤ 0: the original never terminates) and
    `num_latent_frames < 1`.
    """
    if num_latent_frames < 1:
        raise ValueError(f"num_latent_frames must be >= 1 (got {num_latent_frames}); "
                         "the audio must be at least one video frame (640 samples at 16 kHz / 25 fps) long")
    if frames_per_window < 1:
        raise ValueError(f"frames_per_window must be >= 1 (got {frames_per_window}); use (clip_length - 1)//4 + 1")
    if overlap < 2:
        raise ValueError(f"overlap_window_length must be >= 2 (got {overlap}): the blend weights divide by "
                         "overlap - 1; use e.g. 5 (the README recommends 5-15)")
    if overlap >= frames_per_window:
        raise ValueError(f"overlap_window_length must be < the window length {frames_per_window} latent frames "
                         f"(got {overlap}): the windows would never advance; lower it or raise clip_sample_n_frames")
    if num_latent_frames <= frames_per_window:
        return [Window(0, num_latent_frames, True)]
    stride = frames_per_window - overlap
    windows = []
    start = 0
    while start + frames_per_window < num_latent_frames:
        windows.append(Window(start, start + frames_per_window, False))
        start += stride
    windows.append(Window(start, num_latent_frames, True))
    return windows


@dataclass(frozen=True)
class VideoPlan:
    """Everything the audio's length decides, before any model runs.

    num_samples (16 kHz) -> num_video_frames -> num_latent_frames, windows of frames_per_window latent frames;
    the VAE decodes num_decoded_frames (4k+1, up to 3 fewer than num_video_frames)."""

    num_samples: int
    num_video_frames: int
    num_latent_frames: int
    frames_per_window: int
    windows: tuple[Window, ...]
    num_decoded_frames: int
    sample_rate: int = 16000

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate

    def describe(self, steps: int | None = None) -> str:
        s = (f"{self.seconds:.2f} s of audio -> {self.num_video_frames} video frames -> {self.num_latent_frames} "
             f"latent frames -> {len(self.windows)} window(s) of {self.frames_per_window}")
        if steps is not None:
            s += f" x {steps} steps = {len(self.windows) * steps} DiT calls"
        return s + f"; {self.num_decoded_frames} frames decoded"


def plan_video(num_samples: int, clip_length: int, overlap: int, scheme: str = "uniform",
               sample_rate: int = 16000, fps: int = 25, temporal: int = 4) -> VideoPlan:
    """Check the window settings against an audio of `num_samples` samples and plan the video (no torch needed).

    Raises ValueError naming the value and the fix for: clip_length not 4k+1 >= 5, an unknown blend scheme,
    audio shorter than one video frame, and the overlap rules of `plan_windows`."""
    if clip_length < temporal + 1 or (clip_length - 1) % temporal:
        raise ValueError(f"clip_sample_n_frames must be {temporal}k+1 and >= {temporal + 1} (got {clip_length}); "
                         "the default is 81")
    if scheme not in BLEND_SCHEMES:
        # the original silently keeps all-zero weights (the new window is discarded on the overlap)
        raise ValueError(f"unknown overlapping_weight_scheme {scheme!r}; use one of {BLEND_SCHEMES}")
    spf = int(sample_rate / fps)
    n_video = num_video_frames(num_samples, sample_rate, fps)
    if n_video < 1:
        raise ValueError(f"audio of {num_samples} samples ({num_samples / sample_rate:.3f} s) is shorter than one "
                         f"video frame ({spf} samples at {sample_rate} Hz / {fps} fps)")
    n_latent = num_latent_frames(n_video, temporal)
    fpw = num_latent_frames(clip_length, temporal)
    windows = plan_windows(n_latent, fpw, overlap)
    return VideoPlan(int(num_samples), n_video, n_latent, fpw, tuple(windows),
                     num_decoded_frames(n_latent, temporal), sample_rate)


def check_size(width: int, height: int, multiple: int = 16) -> None:
    """Video sizes must be positive multiples of 16 (8x VAE downsampling, then 2x2 patches)."""
    if width <= 0 or height <= 0 or width % multiple or height % multiple:
        raise ValueError(f"width and height must be positive multiples of {multiple} (got {width}x{height}); "
                         "512x512, 480x832 (portrait) or 832x480 (landscape) are what the released weights were "
                         "trained on")


def audio_slice(window: Window, num_audio_samples: int, clip_length: int,
                samples_per_frame: int = 640, temporal: int = 4) -> tuple[int, int]:
    """Sample range `[start, end)` of the waveform fed to wav2vec for `window` (the authors' original rule).

    Non-last window: `[s·4·640, s·4·640 + clip_length·640)` — `clip_length` video frames of audio
    (51,840 samples at 81 frames), the span of the clip the model treats the window as, as in
    training. Last window: `[s·4·640, N)`, all the remaining samples. (Not upstream HEAD's later
    third-party rule of `4·(end−start)` frames: spec pipeline.md §6.3.)
    """
    begin = window.start * temporal * samples_per_frame
    end = num_audio_samples if window.is_last else begin + clip_length * samples_per_frame
    if end > num_audio_samples or begin >= end:
        raise ValueError(f"audio slice [{begin}, {end}) of window [{window.start}, {window.end}) does not fit "
                         f"{num_audio_samples} audio samples; plan the windows from this audio's length "
                         "(num_latent_frames(num_video_frames(N))) with the same clip_length")
    return begin, end


# ------------------------------------------------------------------------------------------------
# overlap blending


def blend_weights(overlap: int, scheme: str = "uniform", dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """Weights `w` [1, 1, L, 1, 1] of the NEW window over the L overlapping latent frames.

    `uniform`: `w_j = j/(L−1)`; `log`: `u = linspace(0, 1, L)` (fp32), `g = log1p(u·(e−1))`,
    `w = (g − min g)/(max g − min g)` (fp32). Frame 0 keeps the previous window's value, frame L−1
    takes the new one's. `dtype` is the window latents' dtype, as in the original (bf16 at real
    inference, float32 in the goldens); each entry is rounded to it on its own, as the original
    assigns them one by one (L = 10 uniform in bf16: 0, 0.111328125, 0.22265625, …).
    """
    import torch

    if overlap < 2:
        raise ValueError(f"overlap must be >= 2 (got {overlap}): the weights divide by overlap - 1")
    dtype = torch.float32 if dtype is None else dtype
    if scheme == "uniform":
        values = [j / (overlap - 1) for j in range(overlap)]  # Python floats
    elif scheme == "log":
        u = torch.linspace(0, 1, overlap)
        g = torch.log1p(u * (torch.exp(torch.tensor(1.0)) - 1))
        values = list(((g - g.min()) / (g.max() - g.min())).unbind())  # 0-dim float32 tensors
    else:
        # the original silently keeps all-zero weights (the new window is discarded on the overlap)
        raise ValueError(f"unknown overlapping_weight_scheme {scheme!r}; use one of {BLEND_SCHEMES}")
    w = torch.zeros(1, 1, overlap, 1, 1, dtype=dtype, device=device)
    for j, value in enumerate(values):
        w[:, :, j] = value  # element-wise assignment: rounds each value to `dtype` like the original
    return w


def fuse_overlap(window_latents: Tensor, previous: Tensor, weights: Tensor) -> Tensor:
    """Cross-fade the first L frames of a window with the previous window's values for them.

    window_latents: [B, C, F, h, w] the window after its Euler step; previous: [B, C, L, h, w] the
    values already written for the same global frames `[start, start+L)`; weights: [1, 1, L, 1, 1]
    from `blend_weights`. Returns a new tensor (dtype of `window_latents`) with
    `z[:, :, :L] = z[:, :, :L]·w + previous·(1 − w)`, `1 − w` evaluated in the weights' dtype
    (in bf16 `w + (1 − w)` is not always 1; kept for parity). The caller casts the result to bf16
    afterwards, as the original does for every window.
    """
    L = weights.shape[2]
    if weights.shape != (1, 1, L, 1, 1):
        raise ValueError(f"weights must have shape [1, 1, L, 1, 1] (got {tuple(weights.shape)}); use blend_weights()")
    if previous.shape[2] != L or previous.shape[:2] != window_latents.shape[:2] \
            or previous.shape[3:] != window_latents.shape[3:]:
        raise ValueError(f"previous {tuple(previous.shape)} must be window_latents {tuple(window_latents.shape)} "
                         f"restricted to the {L} overlap frames")
    if window_latents.shape[2] <= L:
        raise ValueError(f"a blended window must be longer than the overlap {L} (got {window_latents.shape[2]} frames)")
    out = window_latents.clone()
    out[:, :, :L] = window_latents[:, :, :L] * weights + previous * (1 - weights)
    return out

