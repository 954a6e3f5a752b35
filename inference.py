"""Generate a talking-avatar video of the driving audio's length from a reference image, audio and a prompt.

    python inference.py --pretrained_model_name_or_path checkpoints/Wan2.1-Fun-V1.1-1.3B-InP \
        --transformer_path checkpoints/StableAvatar-1.3B/transformer3d-square.pt \
        --pretrained_wav2vec_path checkpoints/wav2vec2-base-960h \
        --validation_reference_path examples/case-2/reference.png \
        --validation_driven_audio_path examples/case-2/audio.wav --output_dir output_infer

Writes <output_dir>/video.mp4 (H.264 + the driving audio as AAC) and video_without_audio.mp4 (the original's
name). The original's command lines (inference.sh, multiple_gpu_inference.sh) run unchanged; flags it accepts
but that have no effect here are marked "(no effect)". Sizes are width x height (480x832 is portrait).

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

MEMORY_MODES = ("model_full_load", "model_cpu_offload", "sequential_cpu_offload", "model_cpu_offload_and_qfloat8")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--pretrained_model_name_or_path", required=True, help="the Wan2.1-Fun-V1.1-1.3B-InP folder")
    a("--transformer_path", default=None, help="StableAvatar DiT weights (.pt as released, or our .safetensors); "
      "without it the audio adapter is untrained and the audio has no effect")
    a("--lora_path", default=None, help="LoRA weights from training with --train_lora (lora-checkpoint-<step>.pt), "
      "merged into the DiT; pair it with that run's --transformer_path")
    a("--pretrained_wav2vec_path", required=True, help="the wav2vec2-base-960h folder")
    a("--validation_reference_path", required=True, help="reference image (any size; resized to width x height)")
    a("--validation_driven_audio_path", required=True, help="driving audio (wav/flac/mp3/m4a or a video's audio)")
    a("--validation_prompts", nargs="+", default=["The protagonist is singing"], help="prompt (words are joined)")
    a("--negative_prompt", default=None, help="default: the original's Chinese Wan negative prompt")
    a("--output_dir", default="output_infer")
    a("--seed", type=int, default=42, help="seed of the noise (the original crashes without one)")
    a("--sample_steps", type=int, default=50, help="denoising steps (README: 30-50)")
    a("--width", type=int, default=512)
    a("--height", type=int, default=512)
    a("--sample_text_guide_scale", type=float, default=5.0)
    a("--sample_audio_guide_scale", type=float, default=4.0)
    a("--overlap_window_length", type=int, default=10, help="overlap of consecutive windows in latent frames (2..)")
    a("--overlapping_weight_scheme", default="uniform", choices=["uniform", "log"])
    a("--clip_sample_n_frames", type=int, default=81, help="video frames per window (4k+1)")
    a("--GPU_memory_mode", default="model_full_load", choices=MEMORY_MODES)
    a("--device", default=None, help="cuda (default when available) or cpu")
    a("--dtype", default="bf16", choices=["bf16", "fp32"], help="DiT / T5 dtype (the original: bf16)")
    a("--ulysses_degree", type=int, default=1, help="sequence parallelism (torchrun): Ulysses all-to-all over this "
      "many ranks (must divide the 12 heads)")
    a("--ring_degree", type=int, default=1, help="sequence parallelism (torchrun): ring attention degree (needs "
      "xfuser: pip install -e .[multigpu])")
    a("--window_parallel", action="store_true", help="(torchrun) spread the windows of each step over the ranks "
      "left after ulysses x ring; exact")
    a("--cfg_parallel", action="store_true", help="(torchrun) compute the 3 guidance branches on 2 or 3 ranks; exact")
    a("--fsdp_dit", action="store_true", help="(torchrun) shard the DiT's weights (FSDP2) over the ranks that run the "
      "same forwards (CFG / Ulysses / Ring ranks); same numbers, less memory per GPU; model_full_load only")
    a("--fast", action="store_true", help="opt-in fast DiT forward (wan.models.fast: fp32 cos/sin RoPE, fewer casts, "
      "fp32 residual stream, torch.compile of the blocks): same function up to bf16 rounding, ~1.3x per forward on an "
      "H200 after a one-time compile; model_full_load / model_cpu_offload only")
    a("--fp8", action="store_true", help="APPROXIMATE: the DiT blocks' big matmuls in float8_e4m3fn (implies --fast; "
      "needs fp8 tensor cores, e.g. Hopper; see README 'Speed options' for its measured speed and error)")
    a("--enable_teacache", action="store_true", help="APPROXIMATE: TeaCache with per-window state (implies --fast); "
      "skips the blocks on steps whose time-step modulation barely changed")
    a("--teacache_threshold", type=float, default=0.10, help="TeaCache threshold (0 = never skip = exact fast path)")
    a("--num_skip_start_steps", type=int, default=5, help="TeaCache: the first steps always run")
    a("--teacache_offload", action="store_true", help="TeaCache: keep the cached residuals in CPU memory")
    a("--model_spec", default="stableavatar-1.3b", help="sizes of T5/CLIP/VAE (the released ones); 'tiny' for "
      "the test trees of `python -m wan.testing.tiny_checkpoints`")
    a("--timings_json", default=None, help="write stage timings / memory peaks to this JSON file")
    a("--no_progress", action="store_true", help="hide the progress bars")
    # accepted so the original's command lines run unchanged; none of these change anything
    for flag, kw in [("--config_path", {}), ("--motion_frame", {"type": int, "default": 25}),
                     ("--sample_shift", {"type": float}), ("--offload_model", {"action": "store_true"}),
                     ("--t5_fsdp", {"action": "store_true"}), ("--t5_cpu", {"action": "store_true"}),
                     ("--input_perturbation", {"type": float, "default": 0}), ("--revision", {}), ("--variant", {})]:
        p.add_argument(flag, help="(no effect; accepted for compatibility with the original)", **kw)
    return p


def parallel_layout(args: argparse.Namespace, world: int, num_samples: int, spec):
    """The ParallelLayout of `world` processes for this video (its window count decides the automatic choice)."""
    from wan.distributed import choose_layout
    from wan.sliding_window import num_latent_frames, num_video_frames, plan_windows

    pc, dit = spec.pipeline, spec.dit
    frames = num_latent_frames(num_video_frames(num_samples, pc.sample_rate, pc.fps), dit.temporal_compression)
    windows = plan_windows(frames, num_latent_frames(args.clip_sample_n_frames, dit.temporal_compression),
                           args.overlap_window_length)
    tokens_per_frame = (args.height // 16) * (args.width // 16)
    return choose_layout(world, len(windows), dit.num_heads, tokens_per_frame, ulysses=args.ulysses_degree,
                         ring=args.ring_degree, window_parallel=args.window_parallel, cfg_parallel=args.cfg_parallel,
                         fsdp_dit=args.fsdp_dit)


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from wan.io.audio import load_audio
    from wan.memory import apply_memory_mode
    from wan.pipeline import StableAvatarPipeline

    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    rank = int(os.environ.get("RANK", "0"))
    # one log and one set of progress bars: rank 0's
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    parallel = world > 1 or args.ulysses_degree * args.ring_degree > 1 or args.window_parallel or args.cfg_parallel
    if (args.fast or args.enable_teacache or args.fp8) and args.GPU_memory_mode not in ("model_full_load", "model_cpu_offload"):
        raise ValueError(f"--fast / --fp8 / --enable_teacache are tested with model_full_load and model_cpu_offload only, "
                         f"not {args.GPU_memory_mode}")
    if args.enable_teacache and (args.window_parallel or args.cfg_parallel or args.ulysses_degree * args.ring_degree > 1
                                 or world > 1):
        raise ValueError("--enable_teacache is single-process only (its per-window state assumes every window runs "
                         "here)")
    if args.fsdp_dit and (args.fp8 or args.GPU_memory_mode != "model_full_load"):
        raise ValueError("--fsdp_dit works with --GPU_memory_mode model_full_load and without --fp8")
    if args.fsdp_dit and not parallel:
        logging.warning("--fsdp_dit has no effect on one process")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if device.type == "cpu" and args.GPU_memory_mode != "model_full_load":
        raise ValueError(f"--GPU_memory_mode {args.GPU_memory_mode} needs a CUDA device")
    prompt = " ".join(args.validation_prompts)
    t0 = time.perf_counter()

    # 1. read the inputs first: a bad file fails before minutes of model loading
    audio = load_audio(args.validation_driven_audio_path)
    if not np.any(audio):
        logging.warning("the driving audio is silent: the avatar will not speak")
    from wan.pipeline import load_reference_image

    load_reference_image(args.validation_reference_path, args.width, args.height)
    from wan.configs import get_config

    ctx = None
    if parallel:  # join the other processes (same seed, same inputs on every rank)
        from wan.distributed import init_parallel

        ctx = init_parallel(parallel_layout(args, world, len(audio), get_config(args.model_spec)),
                            device_type=device.type)
        device = ctx.device
        logging.info("parallel layout: %s over %d processes", ctx.layout, world)

    # 2. models
    offload = args.GPU_memory_mode != "model_full_load"
    pipe = StableAvatarPipeline.from_checkpoints(
        args.pretrained_model_name_or_path, args.transformer_path, args.pretrained_wav2vec_path,
        device=device, dtype=dtype, load_device="cpu" if offload else device, spec=get_config(args.model_spec))
    if args.lora_path:  # merged before the memory mode, so qfloat8 quantises the merged weights
        from wan.training.lora import apply_lora

        apply_lora(pipe.dit, args.lora_path, merge=True)
    apply_memory_mode(pipe, args.GPU_memory_mode)
    if ctx is not None:
        from wan.distributed import apply_parallel

        apply_parallel(pipe, ctx, fsdp_dit=args.fsdp_dit)
    if args.fast or args.enable_teacache or args.fp8:
        from wan.models.fast import TeaCache, enable_fast

        tc = (TeaCache(args.teacache_threshold, args.sample_steps, num_skip_start_steps=min(args.num_skip_start_steps, args.sample_steps),
                       offload=args.teacache_offload) if args.enable_teacache else None)
        enable_fast(pipe.dit, compile=device.type == "cuda", teacache=tc, fp8=args.fp8)
    load_s = time.perf_counter() - t0

    # 3. generate and write
    result = pipe.generate(
        args.validation_reference_path, audio, prompt, negative_prompt=args.negative_prompt,
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
    if args.timings_json:
        Path(args.timings_json).write_text(json.dumps(result.timings, indent=2))
    print(f"wrote {paths['video']} ({result.num_frames} frames, {result.width}x{result.height}) "
          f"and {paths['video_without_audio']}")
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        return main(args)
    finally:  # also on errors, so that a failing rank does not leave the others waiting
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    parsed = build_parser().parse_args()
    where = f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    try:
        sys.exit(_run(parsed))
    except (ValueError, FileNotFoundError, ImportError) as e:
        sys.exit(f"error{where}: {e}")
    except Exception as e:  # checkpoint errors etc.: one clear line, no traceback, unless debugging
        if os.environ.get("STABLEAVATAR_DEBUG"):
            raise
        from wan.checkpoints import CheckpointError

        if isinstance(e, CheckpointError):
            sys.exit(f"error{where}: {e}")
        raise
