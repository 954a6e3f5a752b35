"""`TrainConfig`: every setting of a training run, defaults = the original 1.3B `.sh` files (training.md §13).

The scripts build it from their argparse flags (`TrainConfig.from_args`); tests build it directly with
the tiny model spec. Paths are strings so the config can be logged as JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    # --- data and models ---------------------------------------------------------------------------------
    pretrained_model_name_or_path: str  # Wan2.1-Fun-V1.1-1.3B-InP folder (DiT base, T5, CLIP, VAE)
    pretrained_wav2vec_path: str
    output_dir: str
    train_lists: tuple[str, ...]  # one video_*_path.txt per bucket, in bucket order
    buckets: tuple[tuple[int, int], ...] = ((512, 512),)  # (width, height) per list
    bucket_names: tuple[str, ...] = ("square",)
    transformer_path: str | None = None  # fine-tune from a released transformer3d-*.pt
    model_spec: str = "stableavatar-1.3b"  # sizes of T5/CLIP/VAE; "tiny" for the test trees
    video_sample_n_frames: int = 81
    train_batch_size: int = 1
    dataloader_num_workers: int = 0
    tokenizer_max_length: int = 226  # the original's training text limit (512 at inference)

    # --- optimisation ------------------------------------------------------------------------------------
    learning_rate: float = 2e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 3e-2
    adam_epsilon: float = 1e-10
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 100
    max_train_steps: int | None = None
    num_train_epochs: int = 1000
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 0.05
    initial_grad_norm_ratio: float = 5.0
    abnormal_norm_clip_start: int = 1000
    gradient_checkpointing: bool = True
    mixed_precision: str = "bf16"  # "bf16" (the original) or "no" (float32, CPU tests)
    # the original casts the DiT to bf16 BEFORE building AdamW: bf16 weights and states, no fp32 master
    # copy (quirk 1). "fp32" keeps fp32 weights and runs the forward under bf16 autocast instead.
    param_dtype: str = "bf16"
    seed: int = 42
    deepspeed_config: str | None = None  # a deepspeed_config/*.json; None = plain accelerate (DDP)

    # --- loss ----------------------------------------------------------------------------------------------
    uniform_sampling: bool = True
    train_sampling_steps: int = 1000
    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    motion_sub_loss: bool = True
    motion_sub_loss_ratio: float = 0.25
    audio_drop_prob: float = 0.1  # wav2vec features zeroed (training.md §4.7)
    clip_level_prob: float = 0.3  # clip-level audio attention instead of per-frame
    scheduler_shift: float = 5.0  # wan_civitai.yaml

    # --- LoRA (train_1B_rec_vec_lora.py) ----------------------------------------------------------------
    train_lora: bool = False
    rank: int = 128
    network_alpha: float = 64.0

    # --- checkpoints, validation, logging ---------------------------------------------------------------
    checkpointing_steps: int = 2000
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint-<step> folder
    validation_steps: int = 500
    validation_reference_path: str | None = None
    validation_driven_audio_path: str | None = None
    validation_prompt: str = "The protagonist is singing"
    validation_size: tuple[int, int] | None = None  # (width, height); default: the first bucket
    validation_sample_steps: int = 50
    report_to: str | None = "tensorboard"
    logging_dir: str = "logs"

    def __post_init__(self) -> None:
        if len(self.train_lists) != len(self.buckets) or len(self.buckets) != len(self.bucket_names):
            raise ValueError(f"{len(self.train_lists)} train lists for {len(self.buckets)} buckets "
                             f"({self.bucket_names}); give one video_*_path.txt per bucket")
        if self.train_batch_size != 1:
            raise ValueError(f"--train_batch_size must be 1 (got {self.train_batch_size}): clips differ in audio "
                             "length, as in the original; use --gradient_accumulation_steps for larger batches")
        if self.mixed_precision not in ("bf16", "no"):
            raise ValueError(f"--mixed_precision must be bf16 or no, got {self.mixed_precision!r}")
        if self.param_dtype not in ("bf16", "fp32"):
            raise ValueError(f"--param_dtype must be bf16 or fp32, got {self.param_dtype!r}")
        if self.video_sample_n_frames < 5 or (self.video_sample_n_frames - 1) % 4:
            raise ValueError(f"--video_sample_n_frames must be 4k+1 (e.g. 81), got {self.video_sample_n_frames}")
        if self.seed is None:
            raise ValueError("--seed is required (the original crashes without one); the .sh files use 42")

    @classmethod
    def from_args(cls, args, **overrides) -> "TrainConfig":
        """From an argparse Namespace: every field whose name is an attribute of `args`."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in vars(args).items() if k in names and v is not None}
        kw.update(overrides)
        for k in ("train_lists", "buckets", "bucket_names"):
            if k in kw:
                kw[k] = tuple(tuple(x) if isinstance(x, list) else x for x in kw[k])
        return cls(**kw)

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

