"""Running the pipeline for a user: the model flags, every check that needs no model, loading, and one render.

Shared by `inference.py` (one video or a jobs file) and `app.py` (the web UI), so that all three take the same model
flags, fail the same way before loading, and write the same files. Nothing here imports torch at module level: the
checks of a request (flags, sizes, windows, the image, the audio, the output folder) run in a fraction of a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from wan.configs import MEMORY_MODES, ORIGINAL_CLI_DEFAULTS, PipelineConfig

log = logging.getLogger("stableavatar")
DEFAULTS = PipelineConfig()
VIDEO_NAME = "video.mp4"


def cli_default(field: str):
    """The CLI default of a generation setting: the original's argparse value, else PipelineConfig's."""
    return ORIGINAL_CLI_DEFAULTS.get(field, getattr(DEFAULTS, field))


# ------------------------------------------------------------------------------------------------ arguments


def add_model_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """Weights, device, memory mode and speed flags (inference.py and app.py)."""
    g = p.add_argument_group("weights")
    g.add_argument("--pretrained_model_name_or_path", required=required,
                   default=None if required else "checkpoints/Wan2.1-Fun-V1.1-1.3B-InP",
                   help="the Wan2.1-Fun-V1.1-1.3B-InP folder (DiT base, umT5, CLIP, VAE)")
    g.add_argument("--transformer_path", default=None if required else
                   "checkpoints/StableAvatar-1.3B/transformer3d-square.pt",
                   help="StableAvatar DiT weights (.pt as released, or our .safetensors); without it the audio "
                        "adapter is untrained and the audio has no effect")
    g.add_argument("--lora_path", default=None,
                   help="LoRA weights from training with --train_lora (lora-checkpoint-<step>.pt), merged into the "
                        "DiT; pair it with that run's --transformer_path")
    g.add_argument("--pretrained_wav2vec_path", required=required,
                   default=None if required else "checkpoints/wav2vec2-base-960h",
                   help="the wav2vec2-base-960h folder")
    g.add_argument("--model_spec", default="stableavatar-1.3b",
                   help="sizes of T5/CLIP/VAE (the released ones); 'tiny' for the test trees of "
                        "`python -m wan.testing.tiny_checkpoints`")

    g = p.add_argument_group("device and memory")
    g.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cuda, cuda:N or cpu")
    g.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="DiT / T5 dtype: auto = bf16 on CUDA (as the original), float32 on the CPU")
    g.add_argument("--GPU_memory_mode", default="model_full_load", choices=MEMORY_MODES,
                   help="where the models live (README: GPU memory modes); the offload modes need CUDA")

    g = p.add_argument_group("speed (opt-in)")
    g.add_argument("--attention", default="auto", choices=["auto", "fa3", "sdpa"],
                   help="attention kernel: auto = FlashAttention-3 where it can run (Hopper, bf16, `pip install -e "
                        "'.[hopper]'`), else torch SDPA; fa3 = require it; sdpa = torch's SDPA only")
    g.add_argument("--fast", action="store_true",
                   help="fast DiT forward (wan.models.fast: fp32 cos/sin RoPE, fewer casts, fp32 residual stream, "
                        "torch.compile of the blocks): same function up to bf16 rounding, ~1.3x per forward on an "
                        "H200 after a one-time compile; model_full_load / model_cpu_offload only")
    g.add_argument("--fp8", action="store_true",
                   help="APPROXIMATE: the DiT blocks' big matmuls in float8_e4m3fn (implies --fast; needs fp8 tensor "
                        "cores, e.g. Hopper; see README 'Speed options' for its measured speed and error)")
    g.add_argument("--enable_teacache", action="store_true",
                   help="APPROXIMATE: TeaCache with per-window state (implies --fast); skips the blocks on steps "
                        "whose time-step modulation barely changed")
    g.add_argument("--teacache_threshold", type=float, default=0.10,
                   help="TeaCache threshold (0 = never skip = exact fast path)")
    g.add_argument("--num_skip_start_steps", type=int, default=5, help="TeaCache: the first steps always run")
    g.add_argument("--teacache_offload", action="store_true", help="TeaCache: keep the cached residuals in CPU "
                   "memory")


def add_generation_arguments(p: argparse.ArgumentParser, title: str = "generation") -> None:
    """Per-video settings; defaults: the original's argparse values (`cli_default`)."""
    g = p.add_argument_group(title)
    g.add_argument("--width", type=int, default=cli_default("width"), help="video width, a multiple of 16")
    g.add_argument("--height", type=int, default=cli_default("height"), help="video height, a multiple of 16")
    g.add_argument("--seed", type=int, default=cli_default("seed"), help="seed of the noise (the original crashes "
                   "without one)")
    g.add_argument("--sample_steps", type=int, default=cli_default("sample_steps"), help="denoising steps (the "
                   "original's README: 30-50)")
    g.add_argument("--sample_text_guide_scale", type=float, default=cli_default("text_guide_scale"),
                   help="text guidance scale")
    g.add_argument("--sample_audio_guide_scale", type=float, default=cli_default("audio_guide_scale"),
                   help="audio guidance scale")
    g.add_argument("--overlap_window_length", type=int, default=cli_default("overlap_window_length"),
                   help="overlap of consecutive windows in latent frames (2 .. window length - 1)")
    g.add_argument("--overlapping_weight_scheme", default=cli_default("overlapping_weight_scheme"),
                   choices=["uniform", "log"], help="cross-fade weights over the overlap")
    g.add_argument("--clip_sample_n_frames", type=int, default=cli_default("clip_sample_n_frames"),
                   help="video frames per window (4k+1)")
    g.add_argument("--negative_prompt", default=None, help="negative prompt; default: the original's Chinese Wan "
                   "negative prompt (wan.configs.PipelineConfig.negative_prompt)")


def add_resume_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("resuming (docs: README 'Long renders')")
    g.add_argument("--restart", action="store_true", help="discard a saved render state and start over (by "
                   "default a rerun with the same inputs continues where the last one stopped)")
    g.add_argument("--no_resume", action="store_true", help="neither read nor write a render state")
    g.add_argument("--resume_every", type=float, default=60.0, help="save the render state after a step at most "
                   "every this many seconds (0: after every step); the final latents are always saved")


# ------------------------------------------------------------------------------------------------ checks (no torch)


def check_model_flags(args: argparse.Namespace, parallel: bool) -> None:
    """Flag values and combinations that need neither files nor torch."""
    from wan.configs import CONFIGS

    if (args.fast or args.enable_teacache or args.fp8) and args.GPU_memory_mode not in ("model_full_load",
                                                                                         "model_cpu_offload", "auto"):
        raise ValueError(f"--fast / --fp8 / --enable_teacache work with --GPU_memory_mode model_full_load or "
                         f"model_cpu_offload, not {args.GPU_memory_mode}")
    if args.enable_teacache and parallel:
        raise ValueError("--enable_teacache is single-process only (its per-window state assumes every window runs "
                         "here)")
    if args.teacache_threshold < 0:
        raise ValueError(f"--teacache_threshold must be >= 0 (got {args.teacache_threshold})")
    if args.model_spec not in CONFIGS:
        raise ValueError(f"unknown --model_spec {args.model_spec!r}; choose one of {sorted(CONFIGS)}")


def check_output_dir(path: str | os.PathLike) -> None:
    """`path` is, or can be created as, a writable folder (nothing is created here)."""
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"output folder {out} is a file; choose another --output_dir")
        if not os.access(out, os.W_OK | os.X_OK):
            raise ValueError(f"output folder {out} is not writable")
        return
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"output folder {out} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {out} cannot be created: {parent} is not writable")


@dataclass(frozen=True)
class Request:
    """One video to render: inputs, settings and where it goes (`output_dir/video.mp4`)."""

    reference: str
    audio: str
    prompt: str
    output_dir: str
    negative_prompt: str | None = None
    width: int = DEFAULTS.width
    height: int = DEFAULTS.height
    seed: int = DEFAULTS.seed
    steps: int = DEFAULTS.sample_steps
    text_guide_scale: float = DEFAULTS.text_guide_scale
    audio_guide_scale: float = DEFAULTS.audio_guide_scale
    overlap: int = DEFAULTS.overlap_window_length
    scheme: str = DEFAULTS.overlapping_weight_scheme
    clip_length: int = DEFAULTS.clip_sample_n_frames

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides) -> "Request":
        """From inference.py's flags (`overrides` replace fields, e.g. a jobs-file line's)."""
        kw = dict(reference=args.validation_reference_path, audio=args.validation_driven_audio_path,
                  prompt=" ".join(args.validation_prompts), output_dir=args.output_dir,
                  negative_prompt=args.negative_prompt, width=args.width, height=args.height, seed=args.seed,
                  steps=args.sample_steps, text_guide_scale=args.sample_text_guide_scale,
                  audio_guide_scale=args.sample_audio_guide_scale, overlap=args.overlap_window_length,
                  scheme=args.overlapping_weight_scheme, clip_length=args.clip_sample_n_frames)
        kw.update(overrides)
        return cls(**kw)

    @property
    def video_path(self) -> Path:
        return Path(self.output_dir) / VIDEO_NAME


def check_request(req: Request):
    """Everything about one video that needs no model: sizes, steps, the window plan, the image, the audio, the
    output folder. Returns (16 kHz mono audio, VideoPlan); raises ValueError / FileNotFoundError."""
    import numpy as np

    from wan.io.audio import load_audio
    from wan.io.image import open_image, warn_if_stretched
    from wan.sliding_window import check_size, plan_video

    check_size(req.width, req.height)
    if req.steps < 1:
        raise ValueError(f"--sample_steps must be >= 1 (got {req.steps})")
    check_output_dir(req.output_dir)
    image = open_image(req.reference)
    audio = load_audio(req.audio)
    plan = plan_video(len(audio), req.clip_length, req.overlap, req.scheme, DEFAULTS.sample_rate, DEFAULTS.fps)
    if not np.any(audio):
        log.warning("the driving audio %s is silent: the avatar will not speak", req.audio)
    warn_if_stretched(image.size, req.width, req.height)
    return audio, plan


# ------------------------------------------------------------------------------------------------ device, weights


def check_weights(args: argparse.Namespace) -> None:
    """Every weight file the run will read is there (`wan.checkpoints.fetch.pieces`: the loaders' own file names),
    else one error naming each missing file, its source and the command that gets it — before anything loads."""
    from wan.checkpoints.fetch import pieces, report

    missing = [p for p in pieces(args.pretrained_model_name_or_path, args.transformer_path,
                                 args.pretrained_wav2vec_path) if not p.present()]
    problems = [] if not missing else [f"weight files missing:\n{report(missing)}"]
    if args.lora_path and not Path(args.lora_path).is_file():
        problems.append(f"--lora_path {args.lora_path} does not exist (a lora-checkpoint-<step>.pt of a "
                        "--train_lora run)")
    if problems:
        raise ValueError("\n".join(problems))


def resolve_device(args: argparse.Namespace):
    """(torch.device, torch.dtype) from --device / --dtype, or a ValueError that says what is missing."""
    import torch

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            raise ValueError(f"--device {args.device!r} is not a device ({e}); use auto, cuda, cuda:N or cpu") \
                from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
                raise ValueError(f"--device {args.device}: CUDA is not available here (torch {torch.__version__}, "
                                 f"{build}); use --device cpu, or install the CUDA build of torch (bash setup.sh)")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise ValueError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s)")
        elif device.type != "cpu":
            raise ValueError(f"--device {args.device}: only cuda and cpu are supported")
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if device.type == "cpu" and dtype != torch.float32:
        raise ValueError("--dtype bf16 needs a CUDA device (CPU autocast cannot run the original's float32 norms); "
                         "use --dtype auto or fp32 on the CPU")
    if device.type == "cpu" and args.GPU_memory_mode not in ("model_full_load", "auto"):
        raise ValueError(f"--GPU_memory_mode {args.GPU_memory_mode} needs a CUDA device")
    from wan.models.attention import set_backend

    set_backend(getattr(args, "attention", "auto"))  # ImportError with the install hint when fa3 is forced but absent
    return device, dtype


def log_environment(device, dtype, args: argparse.Namespace) -> None:
    import torch

    from wan.models.attention import describe_backend

    where = str(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where += f" ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    log.info("torch %s (CUDA %s), device %s, dtype %s%s, memory mode %s, attention: %s", torch.__version__,
             torch.version.cuda or "none", where, str(dtype).removeprefix("torch."),
             " (auto)" if args.dtype == "auto" else "", args.GPU_memory_mode, describe_backend(device))
    if device.type == "cpu" and torch.cuda.is_available():
        log.warning("running on the CPU although CUDA is available (--device cpu)")
    elif device.type == "cpu" and (Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi")):
        log.warning("an NVIDIA GPU seems present but this torch (%s) cannot use it (%s): running on the CPU. "
                    "Install the CUDA build: TORCH_DEVICE=cuda FORCE_TORCH=1 bash setup.sh", torch.__version__,
                    "a CPU-only build" if not torch.version.cuda else "driver/CUDA mismatch?")
    elif device.type == "cpu":
        log.info("no CUDA device: running on the CPU (fine for the tiny test models; the real model needs a GPU)")


# ------------------------------------------------------------------------------------------------ loading


def load_pipeline(args: argparse.Namespace, device, dtype, ctx=None, keep_text_encoder: bool = True):
    """Build the pipeline from the weights, merge a LoRA, apply the memory mode, the parallel layout (`ctx`) and the
    speed options — everything `inference.py` and `app.py` share. `--GPU_memory_mode auto` is resolved here (and
    `args.GPU_memory_mode` set to the mode chosen). keep_text_encoder=False (one-shot runs) frees umT5 once the
    prompts are encoded; a process that generates more than once keeps it."""
    from wan.configs import get_config
    from wan.memory import FASTEST_FIRST, apply_memory_mode, resolve_memory_mode
    from wan.pipeline import StableAvatarPipeline

    if args.GPU_memory_mode == "auto":
        fast = args.fast or args.enable_teacache or args.fp8
        args.GPU_memory_mode, why = resolve_memory_mode(
            "auto", device, getattr(args, "width", DEFAULTS.width), getattr(args, "height", DEFAULTS.height),
            getattr(args, "clip_sample_n_frames", DEFAULTS.clip_sample_n_frames),
            allowed=FASTEST_FIRST[:2] if fast else FASTEST_FIRST)
        log.info("--GPU_memory_mode auto: %s (%s)", args.GPU_memory_mode, why)
    # every model loads on the CPU (memory-mapped where the file allows) and the memory mode places it: umT5 never
    # sits on the GPU whole, not even while loading
    pipe = StableAvatarPipeline.from_checkpoints(
        args.pretrained_model_name_or_path, args.transformer_path, args.pretrained_wav2vec_path,
        device=device, dtype=dtype, load_device="cpu", spec=get_config(args.model_spec))
    if args.lora_path:  # merged before the memory mode, so qfloat8 quantises the merged weights
        from wan.checkpoints.lora import apply_lora

        apply_lora(pipe.dit, args.lora_path, merge=True)
    apply_memory_mode(pipe, args.GPU_memory_mode, keep_text_encoder=keep_text_encoder)
    if ctx is not None:
        from wan.distributed import apply_parallel

        apply_parallel(pipe, ctx, fsdp_dit=getattr(args, "fsdp_dit", False))
    if args.fast or args.enable_teacache or args.fp8:
        from wan.models.fast import TeaCache, enable_fast

        tc = (TeaCache(args.teacache_threshold, args.sample_steps,
                       num_skip_start_steps=min(args.num_skip_start_steps, args.sample_steps),
                       offload=args.teacache_offload) if args.enable_teacache else None)
        compile_ = device.type == "cuda"
        enable_fast(pipe.dit, compile=compile_, teacache=tc, fp8=args.fp8)
        if compile_:
            log.info("--fast: the DiT blocks are compiled on the first step (a one-time cost)")
    return pipe


# ------------------------------------------------------------------------------------------------ rendering


def fingerprint(req: Request, args: argparse.Namespace, device, dtype) -> dict[str, str]:
    """Everything that changes the numbers of a render, by name (what a resume state must match)."""
    from wan.resume import file_digest, weights_identity

    fp = {"reference image": file_digest(req.reference), "audio": file_digest(req.audio)}
    fp.update({f.name: str(getattr(req, f.name)) for f in dataclasses.fields(req)
               if f.name not in ("reference", "audio", "output_dir")})
    fp.update({"device": device.type, "dtype": str(dtype), "model_spec": args.model_spec,
               "DiT base": weights_identity(args.pretrained_model_name_or_path),
               "--transformer_path": weights_identity(args.transformer_path),
               "--lora_path": weights_identity(args.lora_path),
               "wav2vec2": weights_identity(args.pretrained_wav2vec_path),
               "qfloat8": str(args.GPU_memory_mode == "model_cpu_offload_and_qfloat8"),
               "--fast": str(args.fast or args.fp8 or args.enable_teacache), "--fp8": str(args.fp8),
               "sequence parallel": f"{getattr(args, 'ulysses_degree', 1)}x{getattr(args, 'ring_degree', 1)}"})
    return fp


def _remove_leftovers(out: Path, names: list[str]) -> None:
    """Temporary files of a killed run (atomic writes leave `.<name>.*` behind on SIGKILL)."""
    for name in names:
        for p in out.glob(f".{name}.*"):
            p.unlink(missing_ok=True)


def render(pipe, req: Request, audio, args: argparse.Namespace, *, progress: bool = True, is_main: bool = True,
           device=None, dtype=None, on_step=None) -> dict:
    """Generate `req` and write its mp4s, resumably (see `wan.resume`): returns the pipeline's timings plus `paths`.
    Non-main ranks of a parallel run compute and return without writing. `on_step(steps_done, latents)` is called
    after every denoising step (the app's progress bar)."""
    from wan.resume import ResumeState

    out = Path(req.output_dir)
    t0 = time.perf_counter()
    state = None
    start, latents = 0, None
    use_state = not getattr(args, "no_resume", False) and not getattr(args, "enable_teacache", False)
    if getattr(args, "enable_teacache", False) and not getattr(args, "no_resume", False):
        log.info("--enable_teacache: renders are not resumable (the cache is not saved)")
    if use_state:
        state = ResumeState(out / (Path(VIDEO_NAME).stem + ".resume.pt"),
                            fingerprint(req, args, device or pipe.device, dtype or pipe.dtype),
                            every_s=getattr(args, "resume_every", 60.0))
        if getattr(args, "restart", False):
            state.discard()
        else:
            loaded = state.load(req.steps)
            if loaded is not None:
                start, latents = loaded
    teacache = getattr(getattr(pipe.dit, "_fast_state", None), "teacache", None)
    if teacache is not None:  # built for --sample_steps; a jobs-file line or an app request may ask for other steps
        teacache.num_steps = req.steps
        teacache.num_skip_start_steps = min(getattr(args, "num_skip_start_steps", 0), req.steps)
        teacache.reset()

    def step_done(done: int, lat) -> None:
        if state is not None and is_main:
            out.mkdir(parents=True, exist_ok=True)
            state.save(done, lat, req.steps, force=done == req.steps)
        if on_step is not None:
            on_step(done, lat)

    result = pipe.generate(
        req.reference, audio, req.prompt, negative_prompt=req.negative_prompt, width=req.width, height=req.height,
        num_inference_steps=req.steps, seed=req.seed, text_guide_scale=req.text_guide_scale,
        audio_guide_scale=req.audio_guide_scale, overlap_window_length=req.overlap,
        overlapping_weight_scheme=req.scheme, clip_length=req.clip_length, progress=progress,
        latents=latents, start_step=start, on_step=step_done)
    if not is_main:  # every rank holds the same latents; rank 0 writes them
        return result.timings
    out.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out, [VIDEO_NAME, "video_without_audio.mp4", Path(VIDEO_NAME).stem + ".resume.pt"])
    log.info("decoding %d frames into %s", result.num_frames, req.video_path)
    t_dec = time.perf_counter()
    paths = pipe.write_video(result, req.output_dir, progress=progress, source_audio=req.audio)
    if state is not None:
        state.discard()  # the video exists: the latents are no longer needed
    result.timings.update(decode_write_s=time.perf_counter() - t_dec, render_s=time.perf_counter() - t0,
                          frames=result.num_frames, paths={k: str(v) for k, v in paths.items()})
    return result.timings
