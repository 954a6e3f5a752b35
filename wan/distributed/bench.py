"""Multi-GPU timing and equality check on random weights (every rank seeds the same weights and inputs).

    python -m wan.distributed.bench --size 480x832 --seconds 15 --steps 3 --save $OUT/one.pt        # 1 GPU
    torchrun --nproc_per_node 2 -m wan.distributed.bench --window_parallel --compare $OUT/one.pt ...  # 2 GPUs
    torchrun --nproc_per_node 2 -m wan.distributed.bench --cfg_parallel --compare $OUT/one.pt ...
    torchrun --nproc_per_node 2 -m wan.distributed.bench --ulysses_degree 2 --compare $OUT/one.pt ...

Times the denoising loop (per step, after a 1-step warm-up generation), after building every
model of the pipeline at `--spec` size with random weights (wan.bench.build_random_pipeline). Rank 0 prints one
JSON line; with --compare it adds the difference of the final latents to the saved 1-GPU ones.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(args: argparse.Namespace) -> dict:
    from PIL import Image

    from wan.bench import build_random_pipeline
    from wan.configs import get_config
    from wan.distributed import apply_parallel, choose_layout, init_parallel
    from wan.memory import apply_memory_mode
    from wan.sliding_window import num_latent_frames, num_video_frames, plan_windows

    world = int(os.environ.get("WORLD_SIZE", "1"))
    width, height = (int(v) for v in args.size.split("x"))
    spec = get_config(args.spec)
    n_audio = int(args.seconds * 16000)
    windows = plan_windows(num_latent_frames(num_video_frames(n_audio)), num_latent_frames(args.frames),
                           args.overlap)
    layout = choose_layout(world, len(windows), spec.dit.num_heads, (height // 16) * (width // 16),
                           ulysses=args.ulysses_degree, ring=args.ring_degree,
                           window_parallel=args.window_parallel, cfg_parallel=args.cfg_parallel,
                           fsdp_dit=args.fsdp_dit)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ctx = init_parallel(layout, device_type=device.type) if world > 1 else None
    if ctx is not None:
        device = ctx.device
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    torch.manual_seed(0)  # the same random weights on every rank
    pipe = build_random_pipeline(args.spec, device, dtype, Path(tempfile.mkdtemp(prefix="wan_mgpu_")))
    apply_memory_mode(pipe, "model_full_load")  # as inference.py does
    if ctx is not None:
        apply_parallel(pipe, ctx, fsdp_dit=args.fsdp_dit)
    if args.fast:
        from wan.models.fast import enable_fast

        enable_fast(pipe.dit, compile=device.type == "cuda")
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(n_audio)).astype(np.float32)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))

    def generate(steps: int):
        return pipe.generate(image, audio, "a person is talking", width=width, height=height,
                             num_inference_steps=steps, overlap_window_length=args.overlap,
                             clip_length=args.frames, progress=False)

    generate(1)  # warm-up (kernel selection, allocator), not timed
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = generate(args.steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    res = {"what": "multi_gpu", "layout": str(layout), "world": world, "size_wxh": args.size, "frames": args.frames,
           "windows": len(windows), "steps": args.steps, "dtype": args.dtype, "fast": args.fast,
           "fsdp_dit": args.fsdp_dit, "dit_params": sum(p.numel() for p in pipe.dit.parameters()),
           "dit_params_here": sum((p.to_local() if hasattr(p, "to_local") else p).numel()
                                  for p in pipe.dit.parameters()), "denoise_s": out.timings["denoise_s"],
           "per_step_s": out.timings["per_step_s"], "generate_s": total}
    if device.type == "cuda":
        res["peak_vram_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["device"] = torch.cuda.get_device_name()
    if args.compare:
        ref = torch.load(args.compare)
        d = (out.latents - ref).abs()
        res.update(equal=bool(torch.equal(out.latents, ref)), max_abs_diff=d.max().item(),
                   frac_differing=(d > 0).float().mean().item(), max_abs_ref=ref.abs().max().item(),
                   rel_l2=((out.latents.float() - ref.float()).norm() / ref.float().norm()).item())
    if ctx is None or ctx.is_main:
        if args.save:
            torch.save(out.latents, args.save)
        print(json.dumps(res))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
    if ctx is not None:
        torch.distributed.destroy_process_group()
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="stableavatar-1.3b")
    p.add_argument("--size", default="480x832", help="W x H")
    p.add_argument("--seconds", type=float, default=15.0,
                   help="audio length (15 s at 81 frames / overlap 10: 8 windows)")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--overlap", type=int, default=10)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--device", default=None)
    p.add_argument("--ulysses_degree", type=int, default=1)
    p.add_argument("--ring_degree", type=int, default=1)
    p.add_argument("--window_parallel", action="store_true")
    p.add_argument("--cfg_parallel", action="store_true")
    p.add_argument("--fsdp_dit", action="store_true", help="shard the DiT over the CFG / sequence ranks (FSDP2)")
    p.add_argument("--fast", action="store_true", help="wan.models.fast.enable_fast on the DiT (compiled on a GPU)")
    p.add_argument("--save", default=None, help="save the final latents here (rank 0)")
    p.add_argument("--compare", default=None, help="compare the final latents with these")
    p.add_argument("--json", default=None)
    return p


if __name__ == "__main__":
    main(build_parser().parse_args())
