"""One trainer for `train_1B_square.py`, `train_1B_rec_vec.py` and their LoRA variant (spec training.md).

Per optimizer step, as the original:

1. a batch of one clip (resumable epoch plan over the resolution buckets, `wan.data.buckets`);
2. conditioning without gradients: VAE posterior SAMPLES of the clip and of the first-frame-only video,
   the 4-channel first-frame mask, CLIP of the reference frame (bf16, uint8-truncated), T5 of the fixed
   prompt (cached: three sentences), wav2vec2 of the clip's audio; audio zeroed with p = 0.1 and
   clip-level audio attention with p = 0.3 (Python `random`);
3. flow-matching noising at a uniformly drawn index of the construction-time schedule;
4. DiT forward under bf16 autocast, masked MSE + motion term (`wan.training.loss`);
5. backward, the original's adaptive gradient clipping, AdamW, LR schedule;
6. every `checkpointing_steps`: `checkpoint-<step>/` = accelerate state (model, optimizer, scheduler, RNG),
   the per-rank noise generator, `transformer3d-checkpoint-<step>.pt` (the full DiT state dict with the
   original key names, what `inference.py --transformer_path` loads) and, for LoRA,
   `lora-checkpoint-<step>.pt`; written to a temporary folder and renamed (atomic);
7. every `validation_steps`: one generated window with its audio, `sample/sample-<step>.mp4` (a failed sample
   is one warning; training goes on).

A resumed run (`resume_from_checkpoint`) restores all of that plus the position in the epoch plan, so it
continues exactly as the uninterrupted run would have (tested on CPU). Multi-GPU: `accelerate launch`
(DDP) or DeepSpeed ZeRO-2/3 with `deepspeed_config` (docs/training.md).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from wan.training.config import TrainConfig
from wan.training.loss import (
    add_noise, grad_clip_target, loss_weighting, masked_flow_loss, motion_loss, resize_masks,
    sample_timestep_indices, timestep_index_range, train_schedule,
)

log = logging.getLogger(__name__)

__all__ = ["Trainer", "Conditioning", "diffusion_loss", "deepspeed_plugin", "trainable_parameter_names", "set_trainable",
           "CachedTextEncoder", "latest_checkpoint", "TRAINED_KEYWORDS"]

# a DiT parameter trains when its name contains one of these (the original's full-training filter): all
# blocks and the audio adapter; patch/text/time embeddings, head and img_emb stay frozen
TRAINED_KEYWORDS = ("vocal_projector", "audio_projector", "vocal", "audio", "attn", "blocks")
LORA_TRAINED_KEYWORDS = ("vocal", "audio")  # + the LoRA layers
CHECKPOINT_PREFIX = "checkpoint-"
MAX_AUTO_WORKERS = 4  # the original's .sh value: enough to keep a GPU fed, and each worker holds ~2 clips in memory
# --report_to value -> the package accelerate needs for it
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet_ml": "comet_ml", "mlflow": "mlflow",
                    "clearml": "clearml", "aim": "aim", "dvclive": "dvclive"}


def default_num_workers(processes_per_node: int) -> int:
    """DataLoader workers per process when --dataloader_num_workers is not given: this process's share of the CPUs
    minus one (the process itself), at most MAX_AUTO_WORKERS."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(MAX_AUTO_WORKERS, cpus // max(1, processes_per_node) - 1))


def trainable_parameter_names(dit: nn.Module, lora: bool = False) -> list[str]:
    keys = LORA_TRAINED_KEYWORDS if lora else TRAINED_KEYWORDS
    return [n for n, _ in dit.named_parameters() if (lora and ".lora_" in n) or any(k in n for k in keys)]


def set_trainable(dit: nn.Module, lora: bool = False) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze the original's selection; returns the trainable parameters."""
    names = set(trainable_parameter_names(dit, lora))
    params = []
    for n, p in dit.named_parameters():
        p.requires_grad_(n in names)
        if n in names:
            params.append(p)
    return params


class CachedTextEncoder:
    """Stands in for the T5 encoder once the few prompts a run needs are encoded (the training prompts are
    three fixed sentences), so the 11 GB umT5-XXL leaves the GPU. `encode(prompts)` like `TextEncoder`."""

    def __init__(self, embeddings: dict[str, Tensor]):
        self.embeddings = embeddings

    def encode(self, prompts: list[str]) -> list[Tensor]:
        missing = [p for p in prompts if p not in self.embeddings]
        if missing:
            raise KeyError(f"prompts not encoded before the text encoder was released: {missing}")
        return [self.embeddings[p] for p in prompts]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete `checkpoint-<step>` folder with the highest step (temporary folders are ignored)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
            and p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), default=None)


@dataclass
class Conditioning:
    """One step's inputs. latents [B, 16, F, h, w]; y [B, 20, F, h, w]; clip_fea [B, 257, clip_dim];
    context: B text embeddings [L, text_dim]; vocal_embeddings [B, T_a, audio_dim]."""

    latents: Tensor
    y: Tensor
    clip_fea: Tensor
    context: list[Tensor]
    vocal_embeddings: Tensor
    is_clip_level_modeling: bool


def diffusion_loss(model: nn.Module, c: Conditioning, face: Tensor, lip: Tensor, cfg: TrainConfig, timesteps: Tensor,
                   sigmas: Tensor, index_range: tuple[int, int], generator: torch.Generator,
                   patch_size: tuple[int, int, int] = (1, 2, 2)) -> Tensor:
    """Steps 3-4 of the module docstring for one conditioned batch: noise (on `generator`), a timestep index,
    the DiT forward under bf16 autocast, the masked MSE (+ motion term). face, lip: pixel masks [B, 1, T, H, W];
    timesteps, sigmas: `train_schedule()`. Returns the scalar loss."""
    latents = c.latents
    dev = latents.device
    b, _, f, h, w = latents.shape
    noise = torch.randn(latents.shape, generator=generator, device=dev, dtype=latents.dtype)
    idx = sample_timestep_indices(b, index_range, generator, dev, None if cfg.uniform_sampling else cfg.weighting_scheme,
                                  cfg.train_sampling_steps, cfg.logit_mean, cfg.logit_std, cfg.mode_scale)
    t = timesteps[idx].to(dev)
    x_t, target = add_noise(latents, noise, sigmas[idx])
    seq_len = math.ceil(h * w / (patch_size[1] * patch_size[2]) * f)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
        pred = model(x=x_t, t=t, context=c.context, seq_len=seq_len, clip_fea=c.clip_fea, y=c.y,
                     vocal_embeddings=c.vocal_embeddings, is_clip_level_modeling=c.is_clip_level_modeling,
                     video_sample_n_frames=cfg.video_sample_n_frames)
    face = resize_masks(face, (f, h, w))
    lip = resize_masks(lip, (f, h, w))
    weighting = None if cfg.weighting_scheme == "none" else loss_weighting(cfg.weighting_scheme, sigmas[idx].to(dev))
    r = torch.rand(1).item()  # the global torch RNG, as the original
    loss = masked_flow_loss(pred, target, face, lip, r, weighting)
    if cfg.motion_sub_loss and pred.shape[1] > 2:
        loss = loss * (1 - cfg.motion_sub_loss_ratio) + motion_loss(pred, target) * cfg.motion_sub_loss_ratio
    return loss


def deepspeed_plugin(cfg: TrainConfig, world_size: int | None = None):
    """accelerate's DeepSpeedPlugin from `cfg.deepspeed_config` with its "auto" values filled from the run
    (no DataLoader is handed to accelerate, so it could not fill them itself)."""
    from accelerate.utils import DeepSpeedPlugin

    ds = json.loads(Path(cfg.deepspeed_config).read_text())
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    fill = {
        "train_micro_batch_size_per_gpu": cfg.train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": cfg.train_batch_size * cfg.gradient_accumulation_steps * world,
        "gradient_clipping": cfg.max_grad_norm,
    }
    for k, v in fill.items():
        if ds.get(k, "auto") == "auto":
            ds[k] = v
    ds.setdefault("bf16", {})
    if ds["bf16"].get("enabled", "auto") == "auto":
        ds["bf16"]["enabled"] = cfg.mixed_precision == "bf16"
    if "optimizer" in ds or "scheduler" in ds:
        raise ValueError(f"{cfg.deepspeed_config}: remove the optimizer/scheduler sections; the trainer builds "
                         "AdamW and the LR schedule from its own flags")
    ds.setdefault("zero_allow_untested_optimizer", True)
    if cfg.mixed_precision == "bf16":
        # DeepSpeed >= 0.17 switches an outer torch.autocast OFF inside engine.forward unless its own
        # `torch_autocast` section is on; the DiT needs autocast (fp32 islands feed bf16 Linears), as the
        # original's training (older DeepSpeed, outer autocast) ran it.
        ds.setdefault("torch_autocast", {"enabled": True, "dtype": "bfloat16"})
    return DeepSpeedPlugin(hf_ds_config=ds)


class Trainer:
    """`Trainer(cfg).train()`; `on_step(trainer, global_step, loss)` is called after every optimizer step."""

    def __init__(self, cfg: TrainConfig, on_step: Callable[["Trainer", int, float], None] | None = None):
        self.cfg = cfg
        self.on_step = on_step
        self.history: list[float] = []  # the loss of every optimizer step of this process
        self.global_step = 0
        self.micro_batches = 0  # batches consumed, for the position in the epoch plan

    # ----------------------------------------------------------------------------------------- set-up
    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        cfg = self.cfg
        kw = {}
        if cfg.deepspeed_config:
            kw["deepspeed_plugin"] = deepspeed_plugin(cfg)
        project = ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=os.path.join(cfg.output_dir, cfg.logging_dir))
        report_to = cfg.report_to
        package = TRACKER_PACKAGES.get(report_to)
        if package and importlib.util.find_spec(package) is None:
            log.warning("--report_to %s: %s is not installed, so the losses go to the console only; install it with "
                        "`pip install %s`%s (or pass --report_to none)", report_to, package, package,
                        " or `pip install -e '.[train]'`" if package == "tensorboard" else "")
            report_to = None
        return Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                           mixed_precision=cfg.mixed_precision, log_with=report_to, project_config=project, **kw)

    def setup(self) -> None:
        """Build the accelerator, models, data, optimizer and schedule; resume if asked."""
        from diffusers.optimization import get_scheduler

        cfg = self.cfg
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for flag in ("validation_reference_path", "validation_driven_audio_path"):
            path = getattr(cfg, flag)
            if path and not Path(path).is_file():  # found now, not after hours of training
                raise ValueError(f"--{flag} {path} is not a file")
        if bool(cfg.validation_reference_path) != bool(cfg.validation_driven_audio_path):
            log.warning("validation needs both --validation_reference_path and --validation_driven_audio_path: "
                        "no validation clips")
        acc = self.accelerator = self._accelerator()
        self.device = acc.device
        self.weight_dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float32
        self.param_dtype = torch.bfloat16 if (cfg.param_dtype == "bf16" and cfg.mixed_precision == "bf16") else torch.float32
        if cfg.allow_tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)

        from accelerate.utils import set_seed

        set_seed(cfg.seed)  # Python, numpy and torch RNGs (the original seeds them the same way)
        # 1. models (frozen encoders in the training dtype, wav2vec2 in float32, as the original)
        self._load_models()

        # 2. data
        self._build_data()

        # 3. optimizer and schedule over the original's trainable selection
        params = set_trainable(self.dit, cfg.train_lora)
        self.trainable_params = params
        n_train = sum(p.numel() for p in params)
        n_all = sum(p.numel() for p in self.dit.parameters())
        log.info("trainable DiT parameters: %d of %d (%s)", n_train, n_all, "LoRA + audio adapter" if cfg.train_lora
                 else "blocks + audio adapter")
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                           weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
        steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.gradient_accumulation_steps)
        self.max_train_steps = cfg.max_train_steps or cfg.num_train_epochs * steps_per_epoch
        # the original multiplies by num_processes: accelerate steps a prepared scheduler once per process
        self.lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer=self.optimizer,
                                          num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
                                          num_training_steps=self.max_train_steps * acc.num_processes)
        self.model, self.optimizer, self.lr_scheduler = acc.prepare(self.dit, self.optimizer, self.lr_scheduler)

        # 4. noise generator (seed + rank, on the device) and the timestep table
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed + acc.process_index)
        self.timesteps, self.sigmas = train_schedule(cfg.train_sampling_steps, cfg.scheduler_shift)
        self.index_range = timestep_index_range(cfg.train_sampling_steps, acc.process_index, acc.num_processes)

        if acc.is_main_process and cfg.report_to:
            acc.init_trackers("stableavatar", config={k: str(v) for k, v in cfg.to_dict().items()})
        if cfg.resume_from_checkpoint:
            self.resume(cfg.resume_from_checkpoint)

    def _load_models(self) -> None:
        from wan.checkpoints.dit import load_dit
        from wan.configs import get_config
        from wan.models.audio import AudioEncoder
        from wan.models.clip import ImageEncoder
        from wan.models.t5 import TextEncoder
        from wan.models.vae import WanVAE

        cfg, dev, wd = self.cfg, self.device, self.weight_dtype
        wan_dir = Path(cfg.pretrained_model_name_or_path)
        if not wan_dir.is_dir():
            raise ValueError(f"--pretrained_model_name_or_path {wan_dir} is not a folder; expected "
                             "checkpoints/Wan2.1-Fun-V1.1-1.3B-InP")
        spec = get_config(cfg.model_spec)
        # fine-tuning from a released transformer3d-*.pt, or the Wan-Fun base with a fresh audio adapter
        dit = load_dit(wan_dir, cfg.transformer_path, dtype=self.param_dtype, device=dev)
        dit.gradient_checkpointing = cfg.gradient_checkpointing
        if cfg.train_lora:
            from wan.checkpoints.lora import add_lora

            add_lora(dit, cfg.rank, cfg.network_alpha)
        self.dit = dit.train()
        self.spec = spec.__class__(dit=dit.cfg, vae=spec.vae, t5=spec.t5, clip=spec.clip, scheduler=spec.scheduler,
                                   pipeline=spec.pipeline)
        self.vae = WanVAE.from_checkpoints(wan_dir, spec.vae, dtype=wd, device=dev).requires_grad_(False)
        self.image_encoder = ImageEncoder.from_checkpoints(wan_dir, spec.clip, dtype=wd, device=dev).requires_grad_(False).eval()
        self.audio_encoder = AudioEncoder.from_pretrained(cfg.pretrained_wav2vec_path, dtype=torch.float32,
                                                          device=dev).requires_grad_(False)
        # T5: encode every prompt the run can need, then release it (training prompts are three sentences)
        from wan.data.dataset import PROMPTS

        t5 = TextEncoder.from_checkpoints(wan_dir, spec.t5, dtype=wd, device=dev)
        prompts = [p for _, p in PROMPTS] + [cfg.validation_prompt, spec.pipeline.negative_prompt]
        t5.text_len = cfg.tokenizer_max_length  # the original's training tokenizer limit (226)
        with torch.no_grad():
            embs = t5.encode(prompts)
        self.text_encoder = CachedTextEncoder({p: e.detach() for p, e in zip(prompts, embs)})
        del t5
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    def _build_data(self) -> None:
        from wan.data.buckets import PlanSampler
        from wan.data.dataset import MultiBucketDataset, TalkingVideoDataset

        cfg = self.cfg
        self.dataset = MultiBucketDataset([
            TalkingVideoDataset(path, w, h, n_sample_frames=cfg.video_sample_n_frames)
            for path, (w, h) in zip(cfg.train_lists, cfg.buckets)])
        acc = self.accelerator
        self.micro_per_epoch = PlanSampler.steps_per_epoch(self.dataset.lengths, acc.num_processes)
        if self.micro_per_epoch == 0:
            raise ValueError(f"{sum(self.dataset.lengths)} clips cannot feed {acc.num_processes} processes")
        self.num_workers = cfg.dataloader_num_workers
        if self.num_workers is None:
            self.num_workers = default_num_workers(int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes)))
        log.info("data: %s clips in buckets %s; %d DataLoader workers per process", self.dataset.lengths,
                 dict(zip(cfg.bucket_names, cfg.buckets)), self.num_workers)

    def _loader(self, epoch: int, start: int):
        from wan.data.buckets import PlanSampler
        from wan.data.dataset import collate

        acc = self.accelerator
        sampler = PlanSampler(self.dataset.lengths, self.cfg.seed, epoch, acc.process_index, acc.num_processes, start)
        # its own generator: creating an iterator would otherwise draw from the global torch RNG, which a
        # resumed run (new iterator mid-epoch) and an uninterrupted one (no new iterator) would not share
        g = torch.Generator().manual_seed(self.cfg.seed * 1000003 + epoch)
        return torch.utils.data.DataLoader(self.dataset, batch_size=1, sampler=sampler, collate_fn=collate, generator=g,
                                           num_workers=self.num_workers,
                                           pin_memory=self.device.type == "cuda",
                                           persistent_workers=False)

    # ----------------------------------------------------------------------------------------- one step
    @torch.no_grad()
    def condition(self, batch: dict) -> Conditioning:
        """Step 2 of the module docstring: the frozen encoders' outputs for one batch."""
        from wan.pipeline import first_frame_mask

        dev, wd = self.device, self.weight_dtype
        video = batch["pixel_values"].to(dev, wd).permute(0, 2, 1, 3, 4)  # [B, 3, T, H, W]
        masked = batch["masked_pixel_values"].to(dev, wd).permute(0, 2, 1, 3, 4)
        b, _, n_frames, height, width = video.shape
        # posterior samples (the global torch RNG), not the modes used at inference (quirk 4)
        latents = self.vae.encode_posterior(video).sample()
        masked_latents = self.vae.encode_posterior(masked).sample()
        f, h, w = latents.shape[2:]
        if not bool((batch["pixel_value_masks"][:, 0] == 0).all() and (batch["pixel_value_masks"][:, 1:] == 1).all()):
            raise ValueError("only the first-frame inpainting mask is supported (the original's image_start_only)")
        # the original's resize of the pixel mask gives exactly ones on latent frame 0, zeros after
        mask = first_frame_mask(f, h, w, n_frames, self.dit.cfg.temporal_compression).to(dev, wd).expand(b, -1, -1, -1, -1)
        y = torch.cat([mask, masked_latents.to(wd)], dim=1)

        # CLIP of the reference frame: cast to the training dtype, truncated to uint8, back to [-1, 1]
        clip_px = batch["clip_pixel_values"].to(wd).float().cpu().numpy().astype(np.uint8)
        img = torch.from_numpy(clip_px).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
        clip_fea = self.image_encoder.encode(img.to(dev, wd), preprocess_dtype=wd)

        context = [e.to(dev) for e in self.text_encoder.encode(list(batch["text_prompt"]))]
        vocal = torch.cat([self.audio_encoder.encode(a) for a in batch["vocal_waveform"]]).float()
        if random.random() < self.cfg.audio_drop_prob:
            vocal = torch.zeros_like(vocal)  # the adapter still sees it: a non-zero audio context (quirk 6)
        clip_level = random.random() < self.cfg.clip_level_prob
        return Conditioning(latents, y, clip_fea, context, vocal, clip_level)

    def loss(self, batch: dict) -> Tensor:
        """Steps 2-4: conditioning, noising, forward, masked flow-matching loss (a scalar)."""
        c = self.condition(batch)
        face = batch["tgt_face_masks"].to(self.device, self.weight_dtype)
        lip = batch["tgt_lip_masks"].to(self.device, self.weight_dtype)
        return diffusion_loss(self.model, c, face, lip, self.cfg, self.timesteps, self.sigmas, self.index_range,
                              self.generator, self.dit.cfg.patch_size)

    def _clip_gradients(self) -> float | None:
        cfg, acc = self.cfg, self.accelerator
        from accelerate.utils import DistributedType

        if acc.distributed_type == DistributedType.DEEPSPEED:
            return None  # DeepSpeed clips to its "gradient_clipping" (= --max_grad_norm)
        grads = [p.grad for p in self.trainable_params if p.grad is not None]
        if not grads:
            return None
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])).item()
        limit = grad_clip_target(total, self.global_step, cfg.max_grad_norm, cfg.initial_grad_norm_ratio,
                                 cfg.abnormal_norm_clip_start)
        acc.clip_grad_norm_(self.trainable_params, limit)
        return total

    # ----------------------------------------------------------------------------------------- the loop
    def train(self) -> list[float]:
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        if not hasattr(self, "accelerator"):
            self.setup()
        cfg, acc = self.cfg, self.accelerator
        log.info("training %d steps from step %d (%d micro-batches per epoch and process)", self.max_train_steps,
                 self.global_step, self.micro_per_epoch)
        show = cfg.progress and acc.is_main_process
        bar = tqdm(total=self.max_train_steps, initial=self.global_step, desc="training", unit="step",
                   dynamic_ncols=True, disable=not show)
        with bar, logging_redirect_tqdm() if show else contextlib.nullcontext():  # log lines print above the bar
            self._train_loop(bar)
        acc.wait_for_everyone()
        acc.end_training()
        return self.history

    def _train_loop(self, bar) -> None:
        cfg, acc = self.cfg, self.accelerator
        last_saved = self.global_step if cfg.resume_from_checkpoint else -1
        running = 0.0
        while self.global_step < self.max_train_steps:
            epoch, start = divmod(self.micro_batches, self.micro_per_epoch)
            for batch in self._loader(epoch, start):
                t0 = time.perf_counter()
                with acc.accumulate(self.model):
                    loss = self.loss(batch)
                    running += acc.gather(loss.detach().reshape(1)).mean().item() / cfg.gradient_accumulation_steps
                    acc.backward(loss)
                    grad_norm = self._clip_gradients() if acc.sync_gradients else None
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad()
                self.micro_batches += 1
                if not acc.sync_gradients:
                    continue
                self.global_step += 1
                self.history.append(running)
                logs = {"train_loss": running, "lr": self.lr_scheduler.get_last_lr()[0],
                        "step_s": time.perf_counter() - t0}
                if grad_norm is not None:
                    logs["grad_norm"] = grad_norm
                acc.log(logs, step=self.global_step)
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{logs['lr']:.2e}", refresh=False)
                bar.update(1)
                if acc.is_main_process and (self.global_step % 10 == 0 or self.global_step <= 3):
                    log.info("step %d: %s", self.global_step, ", ".join(f"{k} {v:.4g}" for k, v in logs.items()))
                running = 0.0
                if self.global_step % cfg.checkpointing_steps == 0:
                    self.save_checkpoint()
                    last_saved = self.global_step
                if self.global_step % cfg.validation_steps == 0:
                    self.validate()
                if self.on_step is not None:
                    self.on_step(self, self.global_step, self.history[-1])
                if self.global_step >= self.max_train_steps:
                    break
        if last_saved != self.global_step:
            self.save_checkpoint()

    # ----------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """`checkpoint-<step>/`, written to a temporary folder and renamed once complete (atomic)."""
        from wan.checkpoints import atomic_save

        cfg, acc, step = self.cfg, self.accelerator, self.global_step
        root = Path(cfg.output_dir)
        final = root / f"{CHECKPOINT_PREFIX}{step}"
        tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))  # model, optimizer, scheduler, RNG of every process
        torch.save(self.generator.get_state(), tmp / f"noise_generator_{acc.process_index}.pt")
        acc.wait_for_everyone()  # every rank's files are in before the folder is renamed
        state = acc.get_state_dict(self.model)  # gathers ZeRO-3 shards; every rank must call it
        if acc.is_main_process:
            if cfg.train_lora:
                from wan.checkpoints.lora import base_state_dict, save_lora

                save_lora(acc.unwrap_model(self.model), tmp / f"lora-checkpoint-{step}.pt")
                state = base_state_dict(state)
            # the released format: a plain state dict, original key names, the model's dtype
            atomic_save({k: v.detach().cpu().contiguous() for k, v in state.items()},
                        tmp / f"transformer3d-checkpoint-{step}.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(
                {"global_step": step, "micro_batches": self.micro_batches, "num_processes": acc.num_processes,
                 "config": cfg.to_dict()}, indent=2, default=str))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune_checkpoints()
            log.info("saved %s", final)
        acc.wait_for_everyone()
        return final

    def _prune_checkpoints(self) -> None:
        limit = self.cfg.checkpoints_total_limit
        if not limit:
            return
        root = Path(self.cfg.output_dir)
        done = sorted((p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.name[len(CHECKPOINT_PREFIX):].isdigit()),
                      key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
        for p in done[:-limit]:
            shutil.rmtree(p, ignore_errors=True)

    def resume(self, which: str) -> None:
        """`which` = "latest" (the newest complete checkpoint in output_dir; none -> a fresh start) or a folder."""
        acc = self.accelerator
        path = latest_checkpoint(self.cfg.output_dir) if which == "latest" else Path(which)
        if path is None:
            log.info("no checkpoint in %s: starting a new run", self.cfg.output_dir)
            return
        if not (path / "trainer_state.json").is_file():
            raise ValueError(f"--resume_from_checkpoint {path} is not a complete checkpoint folder (no trainer_state.json)")
        state = json.loads((path / "trainer_state.json").read_text())
        if state["num_processes"] != acc.num_processes:
            raise ValueError(f"{path} was written by {state['num_processes']} processes, this run has "
                             f"{acc.num_processes}: the epoch plan and RNG states would not continue")
        acc.load_state(str(path))
        self.generator.set_state(torch.load(path / f"noise_generator_{acc.process_index}.pt", weights_only=True))
        self.global_step, self.micro_batches = state["global_step"], state["micro_batches"]
        log.info("resumed from %s at step %d", path, self.global_step)

    # ----------------------------------------------------------------------------------------- validation
    def validate(self) -> Path | None:
        """One generated window (the clip length of training) with its audio: `sample/sample-<step>.mp4`."""
        cfg, acc = self.cfg, self.accelerator
        if not (cfg.validation_reference_path and cfg.validation_driven_audio_path):
            return None
        path = None
        if acc.is_main_process:
            try:
                path = self._validate()
            except Exception as e:  # a failed sample must not end a run of days: one warning, and go on
                log.warning("validation at step %d failed, training goes on: %s: %s", self.global_step,
                            type(e).__name__, e)
                log.debug("validation traceback", exc_info=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        acc.wait_for_everyone()
        return path

    def _validate(self) -> Path | None:
        from accelerate.utils import DistributedType

        from wan.io.audio import load_audio
        from wan.io.video import Mp4Writer
        from wan.pipeline import StableAvatarPipeline

        cfg, acc = self.cfg, self.accelerator
        if acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3:
            log.warning("validation skipped under ZeRO-3 (the DiT's parameters are sharded)")
            return None
        w, h = cfg.validation_size or cfg.buckets[0]
        n = cfg.video_sample_n_frames
        pc = self.spec.pipeline
        audio = load_audio(cfg.validation_driven_audio_path)[: n * pc.audio_samples_per_frame]  # one window
        dit = acc.unwrap_model(self.model)
        pipe = StableAvatarPipeline(dit, self.vae, self.text_encoder, self.image_encoder, self.audio_encoder,
                                    self.spec, device=self.device, dtype=self.weight_dtype)
        result = pipe.generate(cfg.validation_reference_path, audio, cfg.validation_prompt, width=w, height=h,
                               num_inference_steps=cfg.validation_sample_steps, seed=cfg.seed,
                               text_guide_scale=pc.text_guide_scale, audio_guide_scale=pc.audio_guide_scale,
                               clip_length=n, overlap_window_length=min(pc.overlap_window_length, (n - 1) // 4),
                               progress=False)
        out = Path(cfg.output_dir) / "sample" / f"sample-{self.global_step}.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
        with Mp4Writer(out, w, h, fps=pc.fps, audio=result.audio, sample_rate=pc.sample_rate) as writer:
            for frames in pipe.decode_frames(result.latents):
                writer.write(frames[0], layout="CTHW")
        log.info("validation clip %s", out)
        return out
