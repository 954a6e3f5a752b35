"""One real-size training step with random weights: step time and peak GPU memory.

    python -m wan.training.bench_step --size 512x512 --frames 81 --zero 2 --steps 3 --json bench_train.json
    accelerate launch --num_processes 2 -m wan.training.bench_step --size 512x512 --frames 81 --zero 2

What a step of `train_1B_*.py` computes, minus data loading: the (random) Wan VAE encodes the clip and the
first-frame-only clip to posterior samples (`--no_vae`: random latents instead), then the DiT forward with
gradient checkpointing under bf16 autocast, the masked flow-matching loss, backward and the AdamW step over
the original's trainable selection (all blocks + audio adapter, 1.72 B parameters). CLIP, T5 and wav2vec2
outputs are random tensors of their real shapes (they run without gradients and cost little next to the
VAE). `--zero 0` is the original's non-DeepSpeed path (pure bf16 weights and AdamW states); `--zero 2|3`
runs DeepSpeed ZeRO through accelerate (`deepspeed_config/zero_stage*_config.json`; fp32 master weights).
No weight files are needed. Prints one JSON line (and writes it to --json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def main(args: argparse.Namespace) -> dict:
    from accelerate import Accelerator

    from wan.configs import get_config
    from wan.models.dit import WanTransformer3DFantasyModel
    from wan.training.config import TrainConfig
    from wan.training.loss import timestep_index_range, train_schedule
    from wan.training.trainer import Conditioning, deepspeed_plugin, diffusion_loss, set_trainable

    w, h = (int(v) for v in args.size.lower().split("x"))
    n = args.frames
    if (n - 1) % 4 or w % 16 or h % 16:
        raise ValueError(f"--frames must be 4k+1 and --size multiples of 16 (got {n}, {args.size})")
    spec = get_config(args.model_spec)
    tmp = tempfile.mkdtemp(prefix="bench_step_")
    ds_path = None
    if args.zero:
        # single process without a launcher: DeepSpeed still wants a process group
        for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517", "RANK": "0", "LOCAL_RANK": "0",
                     "WORLD_SIZE": "1"}.items():
            os.environ.setdefault(k, v)
        try:
            import deepspeed
        except ImportError as e:
            raise ImportError("--zero 2/3 needs deepspeed: pip install -e '.[train]' (or run with --zero 0)") from e
        if not torch.cuda.is_available():  # CPU smoke runs: skip the 67 s JIT build of the shm comm op
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        ds_path = str(ROOT / "deepspeed_config" / f"zero_stage{args.zero}_config.json")
    mp = "bf16" if args.bf16 else "no"
    cfg = TrainConfig(pretrained_model_name_or_path="", pretrained_wav2vec_path="", output_dir=tmp, train_lists=("",),
                      video_sample_n_frames=n, deepspeed_config=ds_path, mixed_precision=mp, max_grad_norm=0.05,
                      learning_rate=2e-5, report_to=None, gradient_checkpointing=not args.no_checkpointing)
    acc = Accelerator(mixed_precision=mp, deepspeed_plugin=deepspeed_plugin(cfg, int(os.environ.get("WORLD_SIZE", "1")))
                      if ds_path else None)
    dev = acc.device
    dtype = torch.bfloat16 if args.bf16 else torch.float32

    # 1. random models on the device
    torch.manual_seed(0)
    with torch.device(dev):
        dit = WanTransformer3DFantasyModel(spec.dit)
    dit = dit.to(dtype).train()
    dit.gradient_checkpointing = cfg.gradient_checkpointing
    params = set_trainable(dit)
    n_train = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(0.9, 0.999), weight_decay=3e-2, eps=1e-10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    model, optimizer, scheduler = acc.prepare(dit, optimizer, scheduler)
    vae = None
    if not args.no_vae:
        from wan.models.vae import WanVAE, build_autoencoder

        with torch.device(dev):
            vae = WanVAE(spec.vae, build_autoencoder(spec.vae)).to(dtype).eval().requires_grad_(False)
    timesteps, sigmas = train_schedule()
    gen = torch.Generator(dev).manual_seed(42)
    index_range = timestep_index_range(1000, acc.process_index, acc.num_processes)
    f, lh, lw = (n - 1) // 4 + 1, h // 8, w // 8
    t_audio = math.ceil(n / 25 * 16000 / 320) - 1  # wav2vec2 tokens of the clip's audio at 25 fps (161 for 81)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    weights_gib = torch.cuda.memory_allocated() / 2**30 if dev.type == "cuda" else 0.0

    def one_step() -> dict:
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            if vae is not None:
                video = torch.rand(1, 3, n, h, w, device=dev, dtype=dtype) * 2 - 1
                latents = vae.encode_posterior(video).sample()
                masked = video.clone()
                masked[:, :, 1:] = 0
                masked_latents = vae.encode_posterior(masked).sample()
            else:
                latents = torch.randn(1, 16, f, lh, lw, device=dev, dtype=dtype)
                masked_latents = torch.randn_like(latents)
        sync()
        t1 = time.perf_counter()
        mask = torch.zeros(1, 4, f, lh, lw, device=dev, dtype=dtype)
        mask[:, :, 0] = 1
        c = Conditioning(latents=latents, y=torch.cat([mask, masked_latents], 1),
                         clip_fea=torch.randn(1, spec.dit.clip_tokens, spec.dit.clip_dim, device=dev, dtype=dtype),
                         context=[torch.randn(12, spec.dit.text_dim, device=dev, dtype=dtype)],
                         vocal_embeddings=torch.randn(1, t_audio, spec.dit.audio_in_dim, device=dev),
                         is_clip_level_modeling=False)
        face = (torch.rand(1, 1, n, h, w, device=dev) > 0.5).to(dtype)
        lip = face * (torch.rand_like(face) > 0.5)
        loss = diffusion_loss(model, c, face, lip, cfg, timesteps, sigmas, index_range, gen, spec.dit.patch_size)
        acc.backward(loss)
        if acc.distributed_type.value != "DEEPSPEED":
            acc.clip_grad_norm_(params, 0.25)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        sync()
        t2 = time.perf_counter()
        return {"vae_s": t1 - t0, "dit_s": t2 - t1, "step_s": t2 - t0, "loss": loss.item()}

    steps = [one_step() for _ in range(args.steps)]
    timed = steps[1:] or steps  # the first step includes kernel selection and allocator warm-up
    out = {
        "size": f"{w}x{h}", "frames": n, "tokens": f * lh * lw // 4, "zero": args.zero, "processes": acc.num_processes,
        "gradient_checkpointing": cfg.gradient_checkpointing, "dtype": str(dtype), "vae": vae is not None,
        "trainable_params": n_train, "weights_gib": round(weights_gib, 2),
        "step_s": round(sum(s["step_s"] for s in timed) / len(timed), 3),
        "dit_fwd_bwd_opt_s": round(sum(s["dit_s"] for s in timed) / len(timed), 3),
        "vae_encode_s": round(sum(s["vae_s"] for s in timed) / len(timed), 3),
        "first_step_s": round(steps[0]["step_s"], 3), "losses": [round(s["loss"], 4) for s in steps],
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
    }
    if dev.type == "cuda":
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    if acc.is_main_process:
        print(json.dumps(out))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
    acc.end_training()
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="512x512", help="WIDTHxHEIGHT (512x512, 480x832, 832x480)")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--zero", type=int, default=2, choices=[0, 2, 3], help="0 = plain accelerate (the original 1.3B path)")
    p.add_argument("--steps", type=int, default=3, help="steps to run; the first is not timed")
    p.add_argument("--no_vae", action="store_true", help="random latents instead of a (random) VAE encode")
    p.add_argument("--no_checkpointing", action="store_true")
    p.add_argument("--fp32", dest="bf16", action="store_false", help="float32 (CPU smoke runs)")
    p.add_argument("--model_spec", default="stableavatar-1.3b", help="'tiny' for a CPU smoke run")
    p.add_argument("--json", default=None)
    return p


if __name__ == "__main__":
    main(build_parser().parse_args())
