"""StableAvatarPipeline: reference image + speech + prompt -> talking-avatar video of the audio's length.

The long-video algorithm of the original (`WanI2VTalkingInferenceLongPipeline`, spec pipeline.md): overlapping
windows of `(clip_length-1)//4+1` latent frames are denoised one after the other at every step and their
overlaps cross-faded after every step but the first; a 3-branch text/audio guidance; flow-matching Euler steps.

Differences from the original, all documented in README.md:
* wav2vec2 runs once per window (the original re-runs it at every step for the same numbers);
* a latent length equal to or shorter than one window is generated as a single window (the original hangs or
  decodes zeros);
* the decode is streamed chunk by chunk into the mp4 (memory independent of the video length).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from wan.configs import ModelSpec, PipelineConfig, get_config
from wan.memory import forward_branches
from wan.sampling import euler_step, flow_sigmas, guidance
from wan.sliding_window import Window, audio_slice, blend_weights, check_size, fuse_overlap, plan_video

log = logging.getLogger(__name__)


@dataclass
class GenerationOutput:
    """latents: [1, 16, F, h, w] float32 final latents (CPU); num_frames: decoded video frames 4(F-1)+1;
    audio: the 16 kHz mono waveform that drove the video; width/height of the video."""

    latents: Tensor
    num_frames: int
    audio: np.ndarray
    width: int
    height: int
    timings: dict = field(default_factory=dict)


def load_reference_image(image, width: int, height: int) -> Tensor:
    """Path or PIL image -> [1, 3, H, W] float32 in [-1, 1], resized like the original:
    `PIL.Image.convert("RGB").resize([width, height])` (Pillow's default BICUBIC, aspect not kept: a warning says
    so when the aspect changes by more than 10 %), /255, (x-0.5)*2. RGBA inputs are converted to RGB (alpha
    dropped), as the original's `.convert("RGB")` does."""
    from PIL import Image

    from wan.io.image import open_image, warn_if_stretched

    if isinstance(image, (str, os.PathLike)):
        pil = open_image(image)
    elif isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        raise ValueError(f"reference image must be a path or a PIL image, got {type(image).__name__}")
    warn_if_stretched(pil.size, width, height)
    pil = pil.resize([width, height])
    x = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return ((x - 0.5) * 2)[None]


def first_frame_mask(num_latent: int, h: int, w: int, clip_length: int, temporal: int = 4) -> Tensor:
    """The 4-channel mask of `y`: [1, 4, F, h, w], ones on latent frame 0 (the reference), zeros elsewhere.

    Built as the original does: ones for frame 0 of `clip_length` pixel frames, frame 0 repeated 4x in front,
    viewed as [F, 4] groups and swapped to channels."""
    m = torch.zeros(1, clip_length, h, w)
    m[:, 0] = 1
    m = torch.cat([m[:, :1].repeat(1, temporal - 1, 1, 1), m], dim=1)  # clip_length + 3 frames
    return m.view(1, m.shape[1] // temporal, temporal, h, w).transpose(1, 2)[:, :, :num_latent]


class SequentialWindows:
    """How the windows of a step are scheduled, on one process: every window, in order. The seam of
    window-parallel inference (`wan.distributed.window_parallel.WindowParallel` spreads them over ranks)."""

    is_main = True  # shows progress bars and writes the video

    def owns(self, k: int, num_windows: int) -> bool:
        """Whether this process computes window k."""
        return True

    def map(self, fn: Callable[[int, Tensor], Tensor], inputs: Sequence[Tensor]) -> Iterator[tuple[int, Tensor]]:
        """Yield (k, fn(k, inputs[k])) for every window k in order, each computed when asked for."""
        for k, x in enumerate(inputs):
            yield k, fn(k, x)


class StableAvatarPipeline:
    """Holds the five models; `generate()` runs the long-video algorithm, `decode_frames()` streams frames.

    dit: WanTransformer3DFantasyModel; vae: wan.models.vae.WanVAE; text_encoder: .encode(list[str]) ->
    list of [L_i, 4096]; image_encoder: .encode([B, 3, H, W] in [-1, 1]) -> [B, 257, 1280];
    audio_encoder: .encode(float32 waveform [n]) -> [1, T_a, 768].
    """

    def __init__(self, dit, vae, text_encoder, image_encoder, audio_encoder, spec: ModelSpec | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16):
        self.dit, self.vae = dit, vae
        self.text_encoder, self.image_encoder, self.audio_encoder = text_encoder, image_encoder, audio_encoder
        self.spec = spec or get_config("stableavatar-1.3b")
        self.device = torch.device(device)
        self.dtype = dtype
        # memory modes (wan.memory) install a hook that moves a model to the GPU for its stage, and set how many
        # guidance branches one DiT forward carries (3, or 1: the branches one after the other) and how many latent
        # frames one decode step takes
        self.stage: Callable[[str], object] = lambda name: contextlib.nullcontext()
        self.guidance_batch = 3
        self.decode_chunk = 4
        # multi-GPU inference (wan.distributed.apply_parallel) replaces it
        self.parallel = SequentialWindows()

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_checkpoints(cls, pretrained_model_name_or_path: str | os.PathLike, transformer_path=None,
                         pretrained_wav2vec_path=None, *, device: str | torch.device = "cuda",
                         dtype: torch.dtype = torch.bfloat16, spec: ModelSpec | None = None,
                         load_device: str | torch.device | None = None) -> "StableAvatarPipeline":
        """Load every model from the released `checkpoints/` tree (see checkpoints/README.md).

        Dtypes as the original's inference.py: DiT and T5 in `dtype` (bf16), VAE, CLIP and wav2vec2 in float32.
        `load_device` (default `device`) is where the weights are put first; memory modes load on CPU.
        `spec` gives the sizes the original hard-codes for T5, CLIP and the VAE (the DiT's come from config.json);
        the tiny test trees of `wan.testing.tiny_checkpoints` need `get_config("tiny")`."""
        from wan.checkpoints.dit import load_dit
        from wan.models.audio import AudioEncoder
        from wan.models.clip import ImageEncoder
        from wan.models.t5 import TextEncoder
        from wan.models.vae import WanVAE

        wan_dir = Path(pretrained_model_name_or_path)
        if not wan_dir.is_dir():
            raise ValueError(f"--pretrained_model_name_or_path {wan_dir} is not a folder; expected "
                             "checkpoints/Wan2.1-Fun-V1.1-1.3B-InP (see checkpoints/README.md)")
        if pretrained_wav2vec_path is None:
            raise ValueError("--pretrained_wav2vec_path is required (checkpoints/wav2vec2-base-960h)")
        ld = torch.device(load_device or device)

        def timed(what: str, load: Callable[[], object]):
            t0 = time.perf_counter()
            model = load()
            log.info("loaded %s in %.1f s", what, time.perf_counter() - t0)
            return model

        dit = timed(f"the DiT ({str(dtype).removeprefix('torch.')}, {ld})", lambda: load_dit(wan_dir, transformer_path, dtype=dtype, device=ld))
        spec = spec or get_config("stableavatar-1.3b")
        spec = ModelSpec(dit=dit.cfg, vae=spec.vae, t5=spec.t5, clip=spec.clip, scheduler=spec.scheduler,
                         pipeline=spec.pipeline)
        text_encoder = timed(f"umT5 ({str(dtype).removeprefix('torch.')})", lambda: TextEncoder.from_checkpoints(wan_dir, spec.t5, dtype=dtype,
                                                                                      device=ld))
        image_encoder = timed("CLIP (float32)", lambda: ImageEncoder.from_checkpoints(
            wan_dir, spec.clip, dtype=torch.float32, device=ld))
        vae = timed("the VAE (float32)", lambda: WanVAE.from_checkpoints(wan_dir, spec.vae, dtype=torch.float32,
                                                                          device=ld))
        audio_encoder = timed("wav2vec2 (float32)", lambda: AudioEncoder.from_pretrained(
            pretrained_wav2vec_path, dtype=torch.float32, device=ld))
        return cls(dit, vae, text_encoder, image_encoder, audio_encoder, spec, device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------------- helpers
    def _autocast(self):
        # the original runs the DiT under autocast(bf16) on CUDA; in float32 (CPU goldens) it is off
        return torch.autocast(self.device.type, dtype=self.dtype,
                              enabled=self.dtype != torch.float32 and self.device.type == "cuda")

    # ------------------------------------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(self, reference_image, audio: np.ndarray, prompt: str, *, negative_prompt: str | None = None,
                 width: int | None = None, height: int | None = None, num_inference_steps: int | None = None,
                 seed: int | None = None, text_guide_scale: float | None = None,
                 audio_guide_scale: float | None = None, overlap_window_length: int | None = None,
                 overlapping_weight_scheme: str | None = None, clip_length: int | None = None,
                 latents: Tensor | None = None, progress: bool = True, cache_audio_features: bool = True,
                 start_step: int = 0, on_step: Callable[[int, Tensor], None] | None = None) -> GenerationOutput:
        """reference_image: path or PIL image; audio: float32 mono waveform at 16 kHz [N].
        Returns the final latents; `decode_frames` / `write_video` turn them into frames / an mp4.

        Every argument left at None takes its value from `self.spec.pipeline` (`wan.configs.PipelineConfig`: the
        settings of the original's inference.sh — 512x512, 50 steps, seed 42, text/audio guidance 3.0/5.0,
        overlap 5, uniform blending, 81-frame windows).
        `latents` replaces the seeded noise ([1, 16, F, H/8, W/8], e.g. a golden's initial noise).
        `cache_audio_features=False` re-runs wav2vec2 at every step like the original (same numbers, slower).
        Resuming (`wan.resume`): `latents` = the latents after `start_step` steps continue from there (the loop keeps
        no other state); `on_step(steps_done, latents)` is called after every step (main process only)."""
        from tqdm.auto import tqdm

        pc: PipelineConfig = self.spec.pipeline
        width = pc.width if width is None else width
        height = pc.height if height is None else height
        num_inference_steps = pc.sample_steps if num_inference_steps is None else num_inference_steps
        seed = pc.seed if seed is None else seed
        text_guide_scale = pc.text_guide_scale if text_guide_scale is None else text_guide_scale
        audio_guide_scale = pc.audio_guide_scale if audio_guide_scale is None else audio_guide_scale
        overlap_window_length = pc.overlap_window_length if overlap_window_length is None else overlap_window_length
        overlapping_weight_scheme = (pc.overlapping_weight_scheme if overlapping_weight_scheme is None
                                     else overlapping_weight_scheme)
        clip_length = pc.clip_sample_n_frames if clip_length is None else clip_length
        cfg = self.spec.dit
        temporal = cfg.temporal_compression
        timings: dict[str, float] = {}
        t_start = time.perf_counter()

        # 1. check inputs
        check_size(width, height)
        if num_inference_steps < 1:
            raise ValueError(f"sample_steps must be >= 1 (got {num_inference_steps})")
        if self.device.type == "cpu" and self.dtype != torch.float32:
            raise ValueError(f"{self.dtype} inference needs a CUDA device (CPU autocast does not run the original's "
                             "float32 norms and projections); use dtype float32 (--dtype fp32 or auto) on the CPU")
        if prompt is None:
            raise ValueError("prompt must be a string (it may be empty)")
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be a mono waveform [N], got shape {audio.shape}")
        if not np.isfinite(audio).all():
            raise ValueError("audio contains NaN or infinite samples")
        spf = pc.audio_samples_per_frame
        plan = plan_video(len(audio), clip_length, overlap_window_length, overlapping_weight_scheme,
                          pc.sample_rate, pc.fps, temporal)
        n_latent, fpw, windows = plan.num_latent_frames, plan.frames_per_window, list(plan.windows)
        log.debug("%dx%d: %s", width, height, plan.describe(num_inference_steps))  # the CLI logs it before loading
        h, w = height // 8, width // 8
        seq_len = math.ceil((h * w) / (cfg.patch_size[1] * cfg.patch_size[2]) * fpw)
        neg = pc.negative_prompt if negative_prompt is None else negative_prompt
        image = load_reference_image(reference_image, width, height)
        if not 0 <= start_step <= num_inference_steps or (start_step and latents is None):
            raise ValueError(f"start_step {start_step} needs the latents after that many of the "
                             f"{num_inference_steps} steps")
        if start_step == num_inference_steps:  # a resumed render whose denoising had finished: nothing to run
            return GenerationOutput(latents.float().cpu(), plan.num_decoded_frames, audio, width, height, timings)

        # 2. encode text, image, audio (each once)
        with self.stage("text_encoder"):
            neg_emb, pos_emb = self.text_encoder.encode([neg, prompt])
            context = [neg_emb.to(self.device), neg_emb.to(self.device), pos_emb.to(self.device)]
        with self.stage("image_encoder"):
            # the original hands CLIP the image already cast to the pipeline dtype (bf16 rounding, quirk kept)
            clip_fea = self.image_encoder.encode(image.to(self.device, self.dtype))
            clip_fea = clip_fea.to(self.device, torch.float32).expand(3, -1, -1)
        with self.stage("vae"):
            pixels = torch.cat([image[:, :, None], torch.zeros(1, 3, clip_length - 1, height, width)], dim=2)
            ref_latents = self.vae.encode(pixels).to(self.device, torch.float32)
        mask = first_frame_mask(fpw, h, w, clip_length, temporal).to(self.device)
        y = torch.cat([mask, ref_latents], dim=1).to(self.dtype).expand(3, -1, -1, -1, -1)
        timings["encode_s"] = time.perf_counter() - t_start

        def audio_features(win: Window) -> Tensor:
            a0, a1 = audio_slice(win, len(audio), clip_length, spf, temporal)
            return self.audio_encoder.encode(audio[a0:a1]).to(self.device, torch.float32)

        feats: dict[int, Tensor] = {}
        if cache_audio_features:
            with self.stage("audio_encoder"):
                for k, win in enumerate(windows):
                    if self.parallel.owns(k, len(windows)):
                        feats[k] = audio_features(win)

        # 3. noise, sigmas and timesteps
        shape = (1, cfg.out_dim, n_latent, h, w)
        if latents is None:
            gen = torch.Generator(device=self.device).manual_seed(seed)
            lat = torch.randn(shape, generator=gen, device=self.device, dtype=self.dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
            lat = latents.to(self.device)
        timesteps, sigmas = flow_sigmas(num_inference_steps, self.spec.scheduler.shift,
                                        self.spec.scheduler.num_train_timesteps, device=self.device)
        weights = None
        audio_null = [True, False, False]

        # 4. denoise: every window of a step reads the step's input `lat` (so `self.parallel` may compute them on
        # different processes); the overlap fusion runs on the results in window order and writes `out`
        t_loop = time.perf_counter()
        bar = tqdm(total=num_inference_steps * len(windows), initial=start_step * len(windows), desc="denoising",
                   unit="window", disable=not progress or not self.parallel.is_main)

        def denoise(k: int, z: Tensor) -> Tensor:  # window k's latents at step i -> after the Euler step
            win = windows[k]
            a = feats[k] if cache_audio_features else audio_features(win)
            dit = self.dit if self.guidance_batch == 3 else functools.partial(forward_branches, self.dit)
            with self._autocast():
                v = dit(x=z.expand(3, -1, -1, -1, -1), t=t.expand(3), context=context, seq_len=seq_len,
                        clip_fea=clip_fea, y=y[:, :, :win.length], vocal_embeddings=a,
                        audio_null=audio_null, video_sample_n_frames=clip_length, cache_key=(i, k))
            v = guidance(*v.chunk(3), audio_scale=audio_guide_scale, text_scale=text_guide_scale)
            return euler_step(v, sigmas[i], sigmas[i + 1], z)

        with self.stage("dit"):
            for i in range(start_step, num_inference_steps):
                t = timesteps[i]
                out = torch.zeros_like(lat)
                inputs = [lat[:, :, win.start:win.end] for win in windows]
                for k, z in self.parallel.map(denoise, inputs):
                    win = windows[k]
                    # the original never blends at step 0 (later windows overwrite the overlap); kept for parity
                    if win.blends and i != 0:
                        if weights is None or weights.dtype != z.dtype:
                            weights = blend_weights(overlap_window_length, overlapping_weight_scheme, z.dtype, z.device)
                        z = fuse_overlap(z, out[:, :, win.start:win.start + overlap_window_length], weights)
                    # hard-coded bf16 in the original, whatever the model dtype
                    out[:, :, win.start:win.end] = z.to(torch.bfloat16)
                    bar.update(1)
                lat = out
                if on_step is not None and self.parallel.is_main:
                    on_step(i + 1, lat)
        bar.close()
        timings["denoise_s"] = time.perf_counter() - t_loop
        timings["per_step_s"] = timings["denoise_s"] / (num_inference_steps - start_step)
        return GenerationOutput(lat.float().cpu(), plan.num_decoded_frames, audio, width, height,
                                timings)

    # ------------------------------------------------------------------------------------------- decode
    @torch.no_grad()
    def decode_frames(self, latents: Tensor, chunk: int | None = None) -> Iterator[Tensor]:
        """Final latents [1, 16, F, h, w] -> frames in [0, 1], float32 [1, 3, t, H, W] chunks of `chunk` latent
        frames (None: the memory mode's `self.decode_chunk`), streamed so that memory does not grow with the video
        length (`(x/2 + 0.5).clamp(0, 1)` of the clamped decode)."""
        chunk = self.decode_chunk if chunk is None else chunk
        with self.stage("vae"):
            for part in self.vae.decode_stream(latents.float(), chunk=chunk):
                yield (part.float() / 2 + 0.5).clamp(0, 1).cpu()

    def write_video(self, result: GenerationOutput, output_dir: str | os.PathLike, name: str = "video.mp4",
                    chunk: int | None = None, progress: bool = True,
                    source_audio: str | os.PathLike | None = None) -> dict[str, Path]:
        """Decode and write `<output_dir>/<name>` (H.264 + the driving audio as AAC, trimmed to the video) and
        `video_without_audio.mp4` (the original's output name), both atomically, 25 fps.

        source_audio: the driving audio file (or video); the mp4 then carries it at its own rate and channels,
        as the original's README muxes it with ffmpeg. None: the 16 kHz mono model input `result.audio`."""
        from tqdm.auto import tqdm

        from wan.io.video import Mp4Writer, copy_video_stream, source_audio_track

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        pc = self.spec.pipeline
        paths = {"video": out / name, "video_without_audio": out / "video_without_audio.mp4"}
        audio, rate = (source_audio_track(source_audio) if source_audio is not None
                       else (result.audio, pc.sample_rate))
        bar = tqdm(total=result.num_frames, desc="decoding", unit="frame", disable=not progress)
        with Mp4Writer(paths["video"], result.width, result.height, fps=pc.fps, audio=audio,
                       sample_rate=rate) as writer:
            for frames in self.decode_frames(result.latents, chunk=chunk):
                writer.write(frames[0], layout="CTHW")
                bar.update(frames.shape[2])
        bar.close()
        # the same H.264 stream without the audio (packets copied, not encoded twice)
        copy_video_stream(paths["video"], paths["video_without_audio"])
        return paths

