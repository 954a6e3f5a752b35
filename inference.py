"""Generate a talking-avatar video of the driving audio's length from a reference image, audio and a prompt.

    python inference.py --pretrained_model_name_or_path checkpoints/Wan2.1-Fun-V1.1-1.3B-InP \
        --transformer_path checkpoints/StableAvatar-1.3B/transformer3d-square.pt \
        --pretrained_wav2vec_path checkpoints/wav2vec2-base-960h \
        --validation_reference_path examples/case-2/reference.png \
        --validation_driven_audio_path examples/case-2/audio.wav --output_dir output_infer

Writes <output_dir>/video.mp4 (H.264 + the driving audio as AAC) and video_without_audio.mp4 (the original's
name). The original's command lines (inference.sh, multiple_gpu_inference.sh) run unchanged: defaults are the
original's argparse defaults (inference.sh passes the authors' recommended values: overlap 5, text/audio guidance
3.0/5.0); its flags that have no effect here are listed under "accepted for compatibility". Sizes are width x
height (480x832 is portrait). Every check that needs no model (flags, sizes, window settings, the image and the
audio, the weight files, the output folder, the device) runs before the first model loads.

Several GPUs (docs/multi_gpu.md): `torchrun --nproc_per_node N inference.py ...` picks a layout by itself
(window-parallel while the video has windows to share); or combine --window_parallel, --cfg_parallel and
--ulysses_degree U --ring_degree R. Only rank 0 writes the video.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from wan.configs import MEMORY_MODES, ORIGINAL_CLI_DEFAULTS, PipelineConfig

log = logging.getLogger("stableavatar")
_DEFAULTS = PipelineConfig()


def _default(field: str):
    """The CLI default of a generation setting: the original's argparse value, else the pipeline's."""
    return ORIGINAL_CLI_DEFAULTS.get(field, getattr(_DEFAULTS, field))


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    g = p.add_argument_group("weights")
    g.add_argument("--pretrained_model_name_or_path", required=True,
                   help="the Wan2.1-Fun-V1.1-1.3B-InP folder (DiT base, umT5, CLIP, VAE)")
    g.add_argument("--transformer_path", default=None,
                   help="StableAvatar DiT weights (.pt as released, or our .safetensors); without it the audio "
                        "adapter is untrained and the audio has no effect")
    g.add_argument("--lora_path", default=None,
                   help="LoRA weights from training with --train_lora (lora-checkpoint-<step>.pt), merged into the "
                        "DiT; pair it with that run's --transformer_path")
    g.add_argument("--pretrained_wav2vec_path", required=True, help="the wav2vec2-base-960h folder")
    g.add_argument("--model_spec", default="stableavatar-1.3b",
                   help="sizes of T5/CLIP/VAE (the released ones); 'tiny' for the test trees of "
                        "`python -m wan.testing.tiny_checkpoints`")

    g = p.add_argument_group("inputs and output")
    g.add_argument("--validation_reference_path", required=True,
                   help="reference image (any size; resized to width x height, a warning if that stretches it)")
    g.add_argument("--validation_driven_audio_path", required=True,
                   help="driving audio (wav/flac/mp3/m4a or a video's audio track); its length sets the video's")
    g.add_argument("--validation_prompts", nargs="+", default=["The protagonist is singing"],
                   help="prompt (several words are joined with spaces)")
    g.add_argument("--negative_prompt", default=None, help="negative prompt; default: the original's Chinese Wan "
                   "negative prompt (wan.configs.PipelineConfig.negative_prompt)")
    g.add_argument("--output_dir", default="output_infer", help="folder for video.mp4 and video_without_audio.mp4 "
                   "(created if missing)")

    g = p.add_argument_group("generation (defaults: the original's inference.py; inference.sh passes overlap 5, "
                             "text 3.0, audio 5.0)")
    g.add_argument("--width", type=int, default=_default("width"), help="video width, a multiple of 16")
    g.add_argument("--height", type=int, default=_default("height"), help="video height, a multiple of 16")
    g.add_argument("--seed", type=int, default=_default("seed"), help="seed of the noise (the original crashes "
                   "without one)")
    g.add_argument("--sample_steps", type=int, default=_default("sample_steps"), help="denoising steps (the "
                   "original's README: 30-50)")
    g.add_argument("--sample_text_guide_scale", type=float, default=_default("text_guide_scale"),
                   help="text guidance scale")
    g.add_argument("--sample_audio_guide_scale", type=float, default=_default("audio_guide_scale"),
                   help="audio guidance scale")
    g.add_argument("--overlap_window_length", type=int, default=_default("overlap_window_length"),
                   help="overlap of consecutive windows in latent frames (2 .. window length - 1)")
    g.add_argument("--overlapping_weight_scheme", default=_default("overlapping_weight_scheme"),
                   choices=["uniform", "log"], help="cross-fade weights over the overlap")
    g.add_argument("--clip_sample_n_frames", type=int, default=_default("clip_sample_n_frames"),
                   help="video frames per window (4k+1)")

    g = p.add_argument_group("device and memory")
    g.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cuda, cuda:N or cpu")
    g.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="DiT / T5 dtype: auto = bf16 on CUDA (as the original), float32 on the CPU")
    g.add_argument("--GPU_memory_mode", default="model_full_load", choices=MEMORY_MODES,
                   help="where the models live (README: GPU memory modes); the offload modes need CUDA")

    g = p.add_argument_group("speed (opt-in)")
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

    g = p.add_argument_group("several GPUs (torchrun; docs/multi_gpu.md)")
    g.add_argument("--ulysses_degree", type=int, default=1,
                   help="sequence parallelism: Ulysses all-to-all over this many ranks (must divide the 12 heads)")
    g.add_argument("--ring_degree", type=int, default=1,
                   help="sequence parallelism: ring attention degree (needs xfuser: pip install -e .[multigpu])")
    g.add_argument("--window_parallel", action="store_true",
                   help="spread the windows of each step over the ranks left after ulysses x ring; exact")
    g.add_argument("--cfg_parallel", action="store_true", help="compute the 3 guidance branches on 2 or 3 ranks; "
                   "exact")
    g.add_argument("--fsdp_dit", action="store_true",
                   help="shard the DiT's weights (FSDP2) over the ranks that run the same forwards (CFG / Ulysses / "
                        "Ring ranks); same numbers, less memory per GPU; model_full_load only")

    g = p.add_argument_group("logging")
    g.add_argument("--quiet", action="store_true", help="warnings and errors only (no INFO log)")
    g.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    g.add_argument("--timings_json", default=None, help="write stage timings / memory peaks to this JSON file")

    g = p.add_argument_group("accepted for compatibility with the original's command lines (no effect)")
    for flag, kw in [("--config_path", {}), ("--motion_frame", {"type": int, "default": 25}),
                     ("--sample_shift", {"type": float}), ("--offload_model", {"action": "store_true"}),
                     ("--t5_fsdp", {"action": "store_true"}), ("--t5_cpu", {"action": "store_true"}),
                     ("--input_perturbation", {"type": float, "default": 0}), ("--revision", {}), ("--variant", {})]:
        g.add_argument(flag, help="no effect", **kw)
    return p


# ----------------------------------------------------------------------------------------------------- checks
# Everything below up to `resolve_device` runs without torch, so a bad request fails in a fraction of a second.


def check_flags(args: argparse.Namespace, world: int) -> None:
    """Flag values and combinations that need neither files nor torch."""
    from wan.sliding_window import check_size

    check_size(args.width, args.height)
    if args.sample_steps < 1:
        raise ValueError(f"--sample_steps must be >= 1 (got {args.sample_steps})")
    if (args.fast or args.enable_teacache or args.fp8) and args.GPU_memory_mode not in ("model_full_load",
                                                                                         "model_cpu_offload"):
        raise ValueError(f"--fast / --fp8 / --enable_teacache work with --GPU_memory_mode model_full_load or "
                         f"model_cpu_offload, not {args.GPU_memory_mode}")
    if args.enable_teacache and is_parallel(args, world):
        raise ValueError("--enable_teacache is single-process only (its per-window state assumes every window runs "
                         "here)")
    if args.teacache_threshold < 0:
        raise ValueError(f"--teacache_threshold must be >= 0 (got {args.teacache_threshold})")
    if args.fsdp_dit and (args.fp8 or args.GPU_memory_mode != "model_full_load"):
        raise ValueError("--fsdp_dit works with --GPU_memory_mode model_full_load and without --fp8")
    if args.ulysses_degree < 1 or args.ring_degree < 1:
        raise ValueError("--ulysses_degree and --ring_degree must be >= 1")
    from wan.configs import CONFIGS

    if args.model_spec not in CONFIGS:
        raise ValueError(f"unknown --model_spec {args.model_spec!r}; choose one of {sorted(CONFIGS)}")


def is_parallel(args: argparse.Namespace, world: int) -> bool:
    return world > 1 or args.ulysses_degree * args.ring_degree > 1 or args.window_parallel or args.cfg_parallel


def check_output_dir(path: str | os.PathLike) -> None:
    """`path` is, or can be created as, a writable folder (nothing is created here)."""
    out = Path(path)
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"--output_dir {out} is a file, not a folder; choose another --output_dir")
        if not os.access(out, os.W_OK | os.X_OK):
            raise ValueError(f"--output_dir {out} is not writable")
        return
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--output_dir {out} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--output_dir {out} cannot be created: {parent} is not writable")


def check_inputs(args: argparse.Namespace):
    """Decode the audio, open the image, plan the windows: returns (16 kHz mono audio, VideoPlan)."""
    import numpy as np

    from wan.io.audio import load_audio
    from wan.io.image import open_image, warn_if_stretched
    from wan.sliding_window import plan_video

    image = open_image(args.validation_reference_path)
    audio = load_audio(args.validation_driven_audio_path)
    plan = plan_video(len(audio), args.clip_sample_n_frames, args.overlap_window_length,
                      args.overlapping_weight_scheme, _DEFAULTS.sample_rate, _DEFAULTS.fps)
    if not np.any(audio):
        log.warning("the driving audio is silent: the avatar will not speak")
    warn_if_stretched(image.size, args.width, args.height)
    return audio, plan


def check_weights(args: argparse.Namespace) -> None:
    """Every weight file the run will read is there (named, with where to get it) before anything loads."""
    from wan.checkpoints.layout import missing_weights

    missing = missing_weights(args.pretrained_model_name_or_path, args.transformer_path,
                              args.pretrained_wav2vec_path)
    if args.lora_path and not Path(args.lora_path).is_file():
        missing.append(f"--lora_path {args.lora_path}")
    if missing:
        raise ValueError("weight files missing:\n  " + "\n  ".join(missing) +
                         "\n(layout and downloads: checkpoints/README.md; `bash inference.sh` fetches the released "
                         "weights)")


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
    if device.type == "cpu" and args.GPU_memory_mode != "model_full_load":
        raise ValueError(f"--GPU_memory_mode {args.GPU_memory_mode} needs a CUDA device")
    return device, dtype


def log_environment(device, dtype, args: argparse.Namespace) -> None:
    import torch

    from wan.models.attention import describe_backend

    cuda = torch.version.cuda or "none"
    where = str(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where += f" ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    log.info("torch %s (CUDA %s), device %s, dtype %s%s, memory mode %s, attention: %s", torch.__version__, cuda,
             where, str(dtype).removeprefix("torch."), " (auto)" if args.dtype == "auto" else "",
             args.GPU_memory_mode, describe_backend(device))
    if device.type == "cpu" and torch.cuda.is_available():
        log.warning("running on the CPU although CUDA is available (--device cpu)")
    elif device.type == "cpu":
        log.info("no CUDA device: running on the CPU (fine for the tiny test models; the real model needs a GPU)")


# ----------------------------------------------------------------------------------------------------- main


def parallel_layout(args: argparse.Namespace, world: int, plan, spec):
    """The ParallelLayout of `world` processes for this video (its window count decides the automatic choice)."""
    from wan.distributed import choose_layout

    tokens_per_frame = (args.height // 16) * (args.width // 16)
    return choose_layout(world, len(plan.windows), spec.dit.num_heads, tokens_per_frame, ulysses=args.ulysses_degree,
                         ring=args.ring_degree, window_parallel=args.window_parallel, cfg_parallel=args.cfg_parallel,
                         fsdp_dit=args.fsdp_dit)


def main(args: argparse.Namespace) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    rank = int(os.environ.get("RANK", "0"))
    # one log and one set of progress bars: rank 0's
    logging.basicConfig(level=logging.WARNING if args.quiet or rank != 0 else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    t0 = time.perf_counter()

    # 1. every check that needs no model: flags, inputs, output folder, weight files, device
    check_flags(args, world)
    check_output_dir(args.output_dir)
    audio, plan = check_inputs(args)
    check_weights(args)
    device, dtype = resolve_device(args)
    log_environment(device, dtype, args)
    log.info("%dx%d, %s", args.width, args.height, plan.describe(args.sample_steps))
    if args.fsdp_dit and not is_parallel(args, world):
        log.warning("--fsdp_dit has no effect on one process")

    import torch

    from wan.configs import get_config
    from wan.memory import apply_memory_mode
    from wan.pipeline import StableAvatarPipeline

    spec = get_config(args.model_spec)
    ctx = None
    if is_parallel(args, world):  # join the other processes (same seed, same inputs on every rank)
        from wan.distributed import init_parallel

        ctx = init_parallel(parallel_layout(args, world, plan, spec), device_type=device.type)
        device = ctx.device
        log.info("parallel layout: %s over %d processes", ctx.layout, world)

    # 2. models
    offload = args.GPU_memory_mode != "model_full_load"
    pipe = StableAvatarPipeline.from_checkpoints(
        args.pretrained_model_name_or_path, args.transformer_path, args.pretrained_wav2vec_path,
        device=device, dtype=dtype, load_device="cpu" if offload else device, spec=spec)
    if args.lora_path:  # merged before the memory mode, so qfloat8 quantises the merged weights
        from wan.training.lora import apply_lora

        apply_lora(pipe.dit, args.lora_path, merge=True)
    apply_memory_mode(pipe, args.GPU_memory_mode)
    if ctx is not None:
        from wan.distributed import apply_parallel

        apply_parallel(pipe, ctx, fsdp_dit=args.fsdp_dit)
    if args.fast or args.enable_teacache or args.fp8:
        from wan.models.fast import TeaCache, enable_fast

        tc = (TeaCache(args.teacache_threshold, args.sample_steps,
                       num_skip_start_steps=min(args.num_skip_start_steps, args.sample_steps),
                       offload=args.teacache_offload) if args.enable_teacache else None)
        compile_ = device.type == "cuda"
        enable_fast(pipe.dit, compile=compile_, teacache=tc, fp8=args.fp8)
        if compile_:
            log.info("--fast: the DiT blocks are compiled on the first step (a one-time cost)")
    load_s = time.perf_counter() - t0
    log.info("checks and model loading took %.1f s", load_s)

    # 3. generate and write
    result = pipe.generate(
        args.validation_reference_path, audio, " ".join(args.validation_prompts), negative_prompt=args.negative_prompt,
        width=args.width, height=args.height, num_inference_steps=args.sample_steps, seed=args.seed,
        text_guide_scale=args.sample_text_guide_scale, audio_guide_scale=args.sample_audio_guide_scale,
        overlap_window_length=args.overlap_window_length, overlapping_weight_scheme=args.overlapping_weight_scheme,
        clip_length=args.clip_sample_n_frames, progress=not args.no_progress)
    if ctx is not None and not ctx.is_main:  # every rank holds the same latents; rank 0 writes them
        return 0
    t_dec = time.perf_counter()
    paths = pipe.write_video(result, args.output_dir, progress=not args.no_progress)
    result.timings.update(load_s=load_s, decode_write_s=time.perf_counter() - t_dec,
                          total_s=time.perf_counter() - t0, frames=result.num_frames)
    if device.type == "cuda":
        result.timings["peak_vram_gib"] = torch.cuda.max_memory_allocated() / 2**30
    try:
        import resource

        result.timings["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except ImportError:  # not on Windows
        pass
    tm = result.timings
    log.info("times: checks+loading %.1f s, encode %.1f s, denoise %.1f s (%.2f s/step), decode+write %.1f s, "
             "total %.1f s%s", tm["load_s"], tm.get("encode_s", 0.0), tm.get("denoise_s", 0.0),
             tm.get("per_step_s", 0.0), tm["decode_write_s"], tm["total_s"],
             f"; peak VRAM {tm['peak_vram_gib']:.1f} GiB" if "peak_vram_gib" in tm else "")
    if args.timings_json:
        Path(args.timings_json).write_text(json.dumps(result.timings, indent=2))
    print(f"wrote {paths['video']} ({result.num_frames} frames, {result.width}x{result.height}) "
          f"and {paths['video_without_audio']}")
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        return main(args)
    finally:  # also on errors, so that a failing rank does not leave the others waiting
        if "torch" in sys.modules:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()


def cli(argv: list[str] | None = None) -> int:
    """Run with one `error:` line (exit 1) for a user or weight error, and exit 130 on Ctrl-C (the mp4s are written
    under temporary names, so nothing partial is left). STABLEAVATAR_DEBUG=1 shows tracebacks."""
    args = build_parser().parse_args(argv)
    where = f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"interrupted{where} (Ctrl-C): stopped; no partial files are left", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ImportError) as e:
        if os.environ.get("STABLEAVATAR_DEBUG"):
            raise
        print(f"error{where}: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # checkpoint errors: one clear line; anything else is a bug: traceback
        if os.environ.get("STABLEAVATAR_DEBUG") or "wan.checkpoints" not in sys.modules:
            raise
        from wan.checkpoints import CheckpointError

        if isinstance(e, CheckpointError):
            print(f"error{where}: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(cli())
