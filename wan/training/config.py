"""`TrainConfig`: every setting of a training run, and THE one place its defaults and flag help live.

Defaults = what the original's `train_1B_square.sh` passes (spec training.md §13), so `python train_1B_square.py`
with only paths trains as the original's launcher does; the original's argparse defaults (lr 1e-4, 17 frames,
batch 16, no seed...) describe no run anyone used, and several of them crash. docs/training.md has the table
(flag, default here, what the .sh passes, the original's value).

`wan.training.cli` builds the argparse flags from the fields below: name = flag, default, type and
`metadata["help"]`; fields with `metadata["flag"] = False` are set by the script (buckets, lists) or are the
original's hard-coded constants. Tests build the config directly with the tiny model spec. Paths are strings so
the config can be logged as JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["TrainConfig", "GROUPS"]

# argparse groups, in --help order
MODELS, OPTIM, LOSS, LORA, OUTPUT = "models and data", "optimisation", "loss", "LoRA", "checkpoints, validation, logging"
GROUPS = (MODELS, OPTIM, LOSS, LORA, OUTPUT)


def _flag(group: str, help: str, default=dataclasses.MISSING, **meta):
    """A field that is also a command-line flag `--<name>`; no default = a required flag."""
    return field(default=default, metadata={"group": group, "help": help, **meta})


def _fixed(why: str, default=dataclasses.MISSING):
    """A field that is not a flag: set by the script or a constant the original hard-codes."""
    return field(default=default, metadata={"flag": False, "why": why})


@dataclass(frozen=True)
class TrainConfig:
    # --- data and models ---------------------------------------------------------------------------------
    pretrained_model_name_or_path: str = _flag(MODELS, "the Wan2.1-Fun-V1.1-1.3B-InP folder (DiT base, umT5, CLIP, VAE)")
    pretrained_wav2vec_path: str = _flag(MODELS, "the wav2vec2-base-960h folder")
    output_dir: str = _flag(OUTPUT, "folder for checkpoint-<step>/, sample/ and logs/ (created if missing)")
    train_lists: tuple[str, ...] = _fixed("one video_*_path.txt per bucket, from --train_data_<bucket>_dir")
    buckets: tuple[tuple[int, int], ...] = _fixed("(width, height) per list: the script's buckets or --bucket_sizes",
                                                  ((512, 512),))
    bucket_names: tuple[str, ...] = _fixed("the script's bucket names", ("square",))
    transformer_path: str | None = _flag(MODELS, "fine-tune from this DiT state dict (e.g. a released "
                                         "transformer3d-square.pt); default: the Wan-Fun weights with a fresh audio "
                                         "adapter", None)
    model_spec: str = _flag(MODELS, "(ours) T5/CLIP/VAE sizes: the released ones, or 'tiny' for the trees of "
                            "`python -m wan.testing.tiny_checkpoints`", "stableavatar-1.3b")
    video_sample_n_frames: int = _flag(MODELS, "frames per training clip (4k+1)", 81)
    train_batch_size: int = _flag(MODELS, "clips per batch: must be 1, as in the original (use "
                                  "--gradient_accumulation_steps)", 1)
    dataloader_num_workers: int | None = _flag(MODELS, "DataLoader worker processes per GPU; default: the CPUs per "
                                               "process minus one, at most 4 (the original's .sh: 4)", None)
    tokenizer_max_length: int = _flag(MODELS, "text tokens in training (inference uses 512)", 226)

    # --- optimisation ------------------------------------------------------------------------------------
    learning_rate: float = _flag(OPTIM, "AdamW learning rate (the original's 64-GPU runs: 1e-4)", 2e-5)
    adam_beta1: float = _flag(OPTIM, "AdamW beta1", 0.9)
    adam_beta2: float = _flag(OPTIM, "AdamW beta2", 0.999)
    adam_weight_decay: float = _flag(OPTIM, "AdamW weight decay", 3e-2)
    adam_epsilon: float = _flag(OPTIM, "AdamW epsilon", 1e-10)
    lr_scheduler: str = _flag(OPTIM, "a diffusers schedule: constant, constant_with_warmup, linear, cosine, ...",
                              "constant_with_warmup")
    lr_warmup_steps: int = _flag(OPTIM, "optimizer steps of linear warm-up", 100)
    max_train_steps: int | None = _flag(OPTIM, "stop after this many optimizer steps; none given: "
                                        "--num_train_epochs epochs", None)
    num_train_epochs: int = _flag(OPTIM, "epochs when --max_train_steps is not given ('effectively infinite': stop "
                                  "by hand)", 1000)
    gradient_accumulation_steps: int = _flag(OPTIM, "micro-batches per optimizer step", 1)
    max_grad_norm: float = _flag(OPTIM, "gradient-norm limit of the adaptive clipping (DeepSpeed: its plain "
                                 "clipping)", 0.05)
    initial_grad_norm_ratio: float = _flag(OPTIM, "the clipping limit starts at this times --max_grad_norm and "
                                           "decays to it over --abnormal_norm_clip_start steps", 5.0)
    abnormal_norm_clip_start: int = _flag(OPTIM, "after this step, norms above 5x the limit are clipped harder", 1000)
    gradient_checkpointing: bool = _flag(OPTIM, "recompute each DiT block in backward (less memory)", True)
    mixed_precision: str = _flag(OPTIM, "bf16 (the original) or no (float32, e.g. CPU runs)", "bf16",
                                 choices=("bf16", "no"))
    # the original casts the DiT to bf16 BEFORE building AdamW: bf16 weights and states, no fp32 master
    # copy (quirk 1). "fp32" keeps fp32 weights and runs the forward under bf16 autocast instead.
    param_dtype: str = _flag(OPTIM, "(ours) bf16 = the original's pure-bf16 weights and AdamW states; fp32 = fp32 "
                             "weights under bf16 autocast", "bf16", choices=("bf16", "fp32"))
    allow_tf32: bool = _flag(OPTIM, "allow TF32 matmuls on Ampere+ GPUs", False)
    seed: int = _flag(OPTIM, "seed of every random choice (the original crashes without one)", 42)
    deepspeed_config: str | None = _flag(OPTIM, "(ours) a deepspeed_config/*.json: DeepSpeed ZeRO through "
                                         "accelerate; default: plain accelerate (DDP)", None)

    # --- loss ----------------------------------------------------------------------------------------------
    uniform_sampling: bool = _flag(LOSS, "timestep indices uniform over each rank's slice of the schedule (the "
                                   "original's DiscreteSampling); off: --weighting_scheme density", True)
    train_sampling_steps: int = _flag(LOSS, "length of the training noise schedule", 1000)
    weighting_scheme: str = _flag(LOSS, "loss weighting / timestep density without --uniform_sampling", "none",
                                  choices=("sigma_sqrt", "logit_normal", "mode", "cosmap", "none"))
    logit_mean: float = _flag(LOSS, "logit_normal density: mean", 0.0)
    logit_std: float = _flag(LOSS, "logit_normal density: std", 1.0)
    mode_scale: float = _flag(LOSS, "mode density: scale", 1.29)
    motion_sub_loss: bool = _flag(LOSS, "add the original's 'motion' term (differences of adjacent latent channels)",
                                  True)
    motion_sub_loss_ratio: float = _flag(LOSS, "weight of the motion term (loss = (1 - r) mse + r motion)", 0.25)
    audio_drop_prob: float = _fixed("the original's audio dropout (wav2vec features zeroed, training.md §4.7)", 0.1)
    clip_level_prob: float = _fixed("the original's share of clip-level audio attention", 0.3)
    scheduler_shift: float = _fixed("the schedule shift of wan_civitai.yaml", 5.0)

    # --- LoRA (the original's train_1B_rec_vec_lora.py) ---------------------------------------------------
    train_lora: bool = _flag(LORA, "(ours; the original has a separate _lora script) LoRA on the DiT Linears + the "
                             "full audio adapter", False)
    rank: int = _flag(LORA, "LoRA rank", 128)
    network_alpha: float = _flag(LORA, "LoRA alpha (scale alpha / rank)", 64.0)

    # --- checkpoints, validation, logging ---------------------------------------------------------------
    checkpointing_steps: int = _flag(OUTPUT, "save checkpoint-<step>/ every this many steps (and at the end)", 2000)
    checkpoints_total_limit: int | None = _flag(OUTPUT, "keep only the newest N checkpoints (none given: all)", None)
    resume_from_checkpoint: str | None = _flag(OUTPUT, "'latest' (the newest complete checkpoint in --output_dir; "
                                               "none: a fresh start) or a checkpoint-<step> folder", None)
    validation_steps: int = _flag(OUTPUT, "write sample/sample-<step>.mp4 every this many steps", 500)
    validation_reference_path: str | None = _flag(OUTPUT, "reference image of the validation clip (none: no "
                                                  "validation)", None)
    validation_driven_audio_path: str | None = _flag(OUTPUT, "driving audio of the validation clip (none: no "
                                                     "validation)", None)
    validation_prompt: str = _fixed("the original's validation prompt", "The protagonist is singing")
    validation_size: tuple[int, int] | None = _fixed("(width, height); the script sets its last bucket's", None)
    validation_sample_steps: int = _flag(OUTPUT, "(ours) denoising steps of the validation clip", 50)
    report_to: str | None = _flag(OUTPUT, "tracker: tensorboard, wandb, ... or none", "tensorboard")
    logging_dir: str = _flag(OUTPUT, "tracker folder under --output_dir", "logs")
    progress: bool = _flag(OUTPUT, "(ours) a progress bar with ETA, loss and learning rate (main process)", True)

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
        if self.dataloader_num_workers is not None and self.dataloader_num_workers < 0:
            raise ValueError(f"--dataloader_num_workers must be >= 0, got {self.dataloader_num_workers}")

    @classmethod
    def flag_fields(cls) -> list[dataclasses.Field]:
        """The fields that are command-line flags, in definition order."""
        return [f for f in dataclasses.fields(cls) if f.metadata.get("flag", True)]

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
