"""The command line of `train_1B_square.py` / `train_1B_rec_vec.py`: the original's flags that change a run,
plus a few of our own (marked "ours"). Flags the original parses but never reads are accepted where its .sh
files pass them, and do nothing (marked "(no effect)")."""

from __future__ import annotations

import argparse

from wan.data.buckets import Bucket

__all__ = ["build_parser", "run", "config_from_args", "parse_size"]


def parse_size(s: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {s!r} must be WIDTHxHEIGHT, e.g. 480x832") from None
    return w, h


def build_parser(description: str, buckets: tuple[Bucket, ...]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    # models and data
    a("--pretrained_model_name_or_path", required=True, help="the Wan2.1-Fun-V1.1-1.3B-InP folder")
    a("--pretrained_wav2vec_path", required=True, help="the wav2vec2-base-960h folder")
    a("--transformer_path", default=None, help="fine-tune from this DiT state dict (e.g. a released "
      "transformer3d-square.pt); default: the Wan-Fun weights with a fresh audio adapter")
    for b in buckets:
        a(f"--train_data_{b.name}_dir", required=True, help=f"the {b.list_file} list ({b.width}x{b.height} clips)")
    a("--bucket_sizes", nargs="+", type=parse_size, default=None,
      help="(ours) WIDTHxHEIGHT per bucket, default " + " ".join(f"{b.width}x{b.height}" for b in buckets))
    a("--video_sample_n_frames", type=int, default=81)
    a("--train_batch_size", type=int, default=1, help="must be 1 (as in the original)")
    a("--dataloader_num_workers", type=int, default=0)
    a("--tokenizer_max_length", type=int, default=226)
    a("--model_spec", default="stableavatar-1.3b", help="(ours) T5/CLIP/VAE sizes; 'tiny' for test trees")
    # optimisation
    a("--learning_rate", type=float, default=1e-4)
    a("--adam_beta1", type=float, default=0.9)
    a("--adam_beta2", type=float, default=0.999)
    a("--adam_weight_decay", type=float, default=1e-2)
    a("--adam_epsilon", type=float, default=1e-8)
    a("--lr_scheduler", default="constant", help="a diffusers scheduler name; the .sh: constant_with_warmup")
    a("--lr_warmup_steps", type=int, default=500)
    a("--max_train_steps", type=int, default=None, help="overrides --num_train_epochs")
    a("--num_train_epochs", type=int, default=100)
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--gradient_checkpointing", action="store_true")
    a("--max_grad_norm", type=float, default=1.0)
    a("--initial_grad_norm_ratio", type=float, default=5.0)
    a("--abnormal_norm_clip_start", type=int, default=1000)
    a("--mixed_precision", default="bf16", choices=["bf16", "no"])
    a("--param_dtype", default="bf16", choices=["bf16", "fp32"], help="(ours) bf16 = the original's pure-bf16 "
      "weights and AdamW states; fp32 = fp32 weights under bf16 autocast")
    a("--seed", type=int, default=42)
    a("--deepspeed_config", default=None, help="(ours) a deepspeed_config/*.json: DeepSpeed ZeRO through accelerate")
    a("--use_deepspeed", action="store_true", help="needs --deepspeed_config")
    # loss
    a("--uniform_sampling", action="store_true")
    a("--train_sampling_steps", type=int, default=1000)
    a("--weighting_scheme", default="none", choices=["sigma_sqrt", "logit_normal", "mode", "cosmap", "none"])
    a("--logit_mean", type=float, default=0.0)
    a("--logit_std", type=float, default=1.0)
    a("--mode_scale", type=float, default=1.29)
    a("--motion_sub_loss", action="store_true")
    a("--motion_sub_loss_ratio", type=float, default=0.25)
    # LoRA
    a("--train_lora", action="store_true", help="(ours; the original has a separate _lora script) LoRA on the DiT "
      "Linears + the full audio adapter")
    a("--rank", type=int, default=128)
    a("--network_alpha", type=float, default=64.0)
    # checkpoints, validation, logging
    a("--output_dir", default="sd-model-finetuned")
    a("--checkpointing_steps", type=int, default=500)
    a("--checkpoints_total_limit", type=int, default=None)
    a("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint-<step> folder")
    a("--validation_steps", type=int, default=2000)
    a("--validation_reference_path", default=None)
    a("--validation_driven_audio_path", default=None)
    a("--validation_sample_steps", type=int, default=50, help="(ours) denoising steps of the validation clip")
    a("--report_to", default="tensorboard", help="tensorboard, wandb, ... or none")
    a("--logging_dir", default="logs")
    # accepted for the original's command lines; they change nothing here
    for flag, kw in [("--config_path", {}), ("--vae_mini_batch", {"type": int}), ("--video_repeat", {"type": int}),
                     ("--low_vram", {"action": "store_true"}), ("--train_mode", {}), ("--allow_tf32", {"action": "store_true"})]:
        a(flag, help="(no effect; accepted for compatibility with the original)", **kw)
    return p


def run(args: argparse.Namespace, buckets: tuple[Bucket, ...]) -> list[float]:
    """Build the TrainConfig from the flags and train; returns the per-step losses of this process."""
    from wan.training.trainer import Trainer

    return Trainer(config_from_args(args, buckets)).train()


def config_from_args(args: argparse.Namespace, buckets: tuple[Bucket, ...]):
    """The TrainConfig of a command line (user errors are ValueErrors naming the flag)."""
    from wan.training.config import TrainConfig

    if args.use_deepspeed and not args.deepspeed_config:
        raise ValueError("--use_deepspeed needs --deepspeed_config deepspeed_config/zero_stage2_config.json (or zero3)")
    if args.train_mode == "normal":
        raise ValueError("--train_mode normal is not supported (the original crashes on it); use i2v")
    sizes = args.bucket_sizes or [(b.width, b.height) for b in buckets]
    if len(sizes) != len(buckets):
        raise ValueError(f"--bucket_sizes needs {len(buckets)} sizes ({[b.name for b in buckets]}), got {len(sizes)}")
    return TrainConfig.from_args(
        args,
        train_lists=tuple(getattr(args, f"train_data_{b.name}_dir") for b in buckets),
        buckets=tuple(sizes), bucket_names=tuple(b.name for b in buckets),
        validation_size=tuple(sizes[-1]),  # the original validates rec_vec at 480x832 (portrait), square at 512x512
        report_to=None if args.report_to in (None, "none") else args.report_to,
        max_train_steps=args.max_train_steps,
    )
