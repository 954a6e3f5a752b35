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

A killed or interrupted render continues where it stopped when rerun with the same inputs (--restart discards
the saved state). `--jobs jobs.jsonl` renders many videos with the models loaded once (wan/jobs.py: the format).

Several GPUs (docs/multi_gpu.md): `torchrun --nproc_per_node N inference.py ...` picks a layout by itself
(window-parallel while the video has windows to share); or combine --window_parallel, --cfg_parallel and
--ulysses_degree U --ring_degree R. Only rank 0 writes the video. With --jobs, each process renders its share of
the jobs on its own GPU instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from wan.runner import (
    Request, add_generation_arguments, add_model_arguments, add_resume_arguments, check_model_flags, check_request,
    check_weights, load_pipeline, log_environment, render, resolve_device,
)

log = logging.getLogger("stableavatar")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    add_model_arguments(p)
    g = p.add_argument_group("inputs and output")
    g.add_argument("--validation_reference_path", default=None,
                   help="reference image (any size; resized to width x height, a warning if that stretches it); "
                        "required unless --jobs")
    g.add_argument("--validation_driven_audio_path", default=None,
                   help="driving audio (wav/flac/mp3/m4a or a video's audio track); its length sets the video's; "
                        "required unless --jobs")
    g.add_argument("--validation_prompts", nargs="+", default=["The protagonist is singing"],
                   help="prompt (several words are joined with spaces)")
    g.add_argument("--output_dir", default="output_infer", help="folder for video.mp4 and video_without_audio.mp4 "
                   "(created if missing); with --jobs, the folder of the jobs' output folders")
    g.add_argument("--jobs", default=None, help="a JSON-lines file of videos to render with the models loaded once "
                   "(one object per line: reference, audio, prompt, output [, seed, width, height, steps, ...]; "
                   "wan/jobs.py); the flags give the defaults of every job")
    add_generation_arguments(p, "generation (defaults: the original's inference.py; inference.sh passes overlap 5, "
                                "text 3.0, audio 5.0)")
    add_resume_arguments(p)

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


def is_parallel(args: argparse.Namespace, world: int) -> bool:
    """One video split over several processes (not a jobs file, whose processes work alone)."""
    return not args.jobs and (world > 1 or args.ulysses_degree * args.ring_degree > 1 or args.window_parallel
                              or args.cfg_parallel)


def check_flags(args: argparse.Namespace, world: int) -> None:
    check_model_flags(args, is_parallel(args, world))
    if args.fsdp_dit and (args.fp8 or args.GPU_memory_mode != "model_full_load"):
        raise ValueError("--fsdp_dit works with --GPU_memory_mode model_full_load and without --fp8")
    if args.ulysses_degree < 1 or args.ring_degree < 1:
        raise ValueError("--ulysses_degree and --ring_degree must be >= 1")
    if args.jobs and (args.ulysses_degree * args.ring_degree > 1 or args.window_parallel or args.cfg_parallel):
        raise ValueError("--jobs renders each video on one process: drop --ulysses_degree / --ring_degree / "
                         "--window_parallel / --cfg_parallel (under torchrun the jobs are shared among the processes)")
    if args.jobs and args.timings_json:
        raise ValueError("--timings_json is for one video; the jobs' times are in the log")
    if not args.jobs:
        for flag in ("validation_reference_path", "validation_driven_audio_path"):
            if getattr(args, flag) is None:
                raise ValueError(f"--{flag} is required (or --jobs)")
    if args.resume_every < 0:
        raise ValueError(f"--resume_every must be >= 0 (got {args.resume_every})")


def parallel_layout(args: argparse.Namespace, world: int, plan, spec):
    """The ParallelLayout of `world` processes for this video (its window count decides the automatic choice)."""
    from wan.distributed import choose_layout

    tokens_per_frame = (args.height // 16) * (args.width // 16)
    return choose_layout(world, len(plan.windows), spec.dit.num_heads, tokens_per_frame, ulysses=args.ulysses_degree,
                         ring=args.ring_degree, window_parallel=args.window_parallel, cfg_parallel=args.cfg_parallel,
                         fsdp_dit=args.fsdp_dit)


def log_times(tm: dict) -> None:
    log.info("times: encode %.1f s, denoise %.1f s (%.2f s/step), decode+write %.1f s%s", tm.get("encode_s", 0.0),
             tm.get("denoise_s", 0.0), tm.get("per_step_s", 0.0), tm.get("decode_write_s", 0.0),
             f"; peak VRAM {tm['peak_vram_gib']:.1f} GiB" if "peak_vram_gib" in tm else "")


def main(args: argparse.Namespace) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    rank = int(os.environ.get("RANK", "0"))
    # one log and one set of progress bars: rank 0's (with --jobs every process logs its own jobs)
    logging.basicConfig(level=logging.WARNING if args.quiet or (rank != 0 and not args.jobs) else logging.INFO,
                        format=f"%(asctime)s {f'[{rank}] ' if args.jobs and world > 1 else ''}%(levelname)s "
                               "%(message)s", datefmt="%H:%M:%S")
    t0 = time.perf_counter()
    check_flags(args, world)
    if args.jobs:
        return run_jobs(args, world, rank, t0)

    # 1. every check that needs no model: flags, inputs, output folder, weight files, device
    req = Request.from_args(args)
    audio, plan = check_request(req)
    check_weights(args)
    device, dtype = resolve_device(args)
    log_environment(device, dtype, args)
    log.info("%dx%d, %s", req.width, req.height, plan.describe(req.steps))
    if args.fsdp_dit and not is_parallel(args, world):
        log.warning("--fsdp_dit has no effect on one process")

    # 2. models
    ctx = None
    if is_parallel(args, world):  # join the other processes (same seed, same inputs on every rank)
        from wan.configs import get_config
        from wan.distributed import init_parallel

        ctx = init_parallel(parallel_layout(args, world, plan, get_config(args.model_spec)), device_type=device.type)
        device = ctx.device
        log.info("parallel layout: %s over %d processes", ctx.layout, world)
    pipe = load_pipeline(args, device, dtype, ctx, keep_text_encoder=False)  # one video: umT5 freed after the prompts
    load_s = time.perf_counter() - t0
    log.info("checks and model loading took %.1f s", load_s)

    # 3. generate and write (resumable)
    is_main = ctx is None or ctx.is_main
    tm = render(pipe, req, audio, args, progress=not args.no_progress, is_main=is_main, device=device, dtype=dtype)
    if not is_main:
        return 0
    import torch

    tm.update(load_s=load_s, total_s=time.perf_counter() - t0)
    if device.type == "cuda":
        tm["peak_vram_gib"] = torch.cuda.max_memory_allocated() / 2**30
    try:
        import resource

        tm["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except ImportError:  # not on Windows
        pass
    log_times(tm)
    log.info("total %.1f s (checks and loading %.1f s)", tm["total_s"], load_s)
    if args.timings_json:
        Path(args.timings_json).write_text(json.dumps(tm, indent=2))
    paths = tm["paths"]
    print(f"wrote {paths['video']} ({tm['frames']} frames, {req.width}x{req.height}) and "
          f"{paths['video_without_audio']}")
    return 0


def run_jobs(args: argparse.Namespace, world: int, rank: int, t0: float) -> int:
    """Every job of the jobs file (this process's share under torchrun), models loaded once."""
    from wan.jobs import read_jobs, summary

    jobs = read_jobs(args.jobs, args)[rank::world]
    todo = []
    for job in jobs:  # 1. checks: a bad job is reported, the others go on
        if job.status == "failed":
            continue
        if job.request.video_path.exists():
            job.status = "skipped"
            log.info("job %s: %s exists, skipped", job.name, job.request.video_path)
            continue
        try:
            check_request(job.request)  # decoded again when its turn comes: a long jobs file's audio is not all held
            todo.append(job)
        except (ValueError, FileNotFoundError) as e:
            job.status, job.reason = "failed", str(e)
    if todo:
        check_weights(args)
        if world > 1 and args.device == "auto":
            import torch

            if torch.cuda.is_available():  # one GPU per process
                args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
        device, dtype = resolve_device(args)
        log_environment(device, dtype, args)
        pipe = load_pipeline(args, device, dtype)  # 2. once for every job
        log.info("models loaded once for %d job(s) in %.1f s", len(todo), time.perf_counter() - t0)
        for n, job in enumerate(todo, 1):  # 3. render
            try:
                audio, plan = check_request(job.request)  # the inputs may have changed since the first check
                log.info("job %d/%d %s: %dx%d, %s", n, len(todo), job.name, job.request.width, job.request.height,
                         plan.describe(job.request.steps))
                tm = render(pipe, job.request, audio, args, progress=not args.no_progress, device=device,
                            dtype=dtype)
                job.status = "done"
                log_times(tm)
                print(f"wrote {tm['paths']['video']}")
            except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
                job.status, job.reason = "failed", str(e)
                log.error("job %s failed: %s", job.name, e)
    text = summary(jobs)
    print(text if world == 1 else text.replace("jobs:", f"jobs of process {rank}:", 1))
    return 1 if any(j.status == "failed" for j in jobs) else 0


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
    under temporary names, so nothing partial is left; the render state is kept for a rerun).
    STABLEAVATAR_DEBUG=1 shows tracebacks."""
    args = build_parser().parse_args(argv)
    where = f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"interrupted{where} (Ctrl-C): stopped; no partial files are left (rerun the same command to continue)",
              file=sys.stderr)
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
