"""Frozen configuration dataclasses, one per component, and the named model specs.

`CONFIGS["stableavatar-1.3b"]` is the released model; `CONFIGS["tiny"]` is its twin for CPU tests.
Every constant the original hard-codes inside a constructor is a field here (spec transformer.md §1.1),
because the golden fixtures' tiny cases change several of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DiTConfig:
    """Wan2.1-Fun-1.3B-InP DiT + StableAvatar audio adapter (original field names where they exist)."""

    model_type: str = "i2v"
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    in_dim: int = 36
    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    num_heads: int = 12
    num_layers: int = 30
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    # --- constants the original writes as literals (transformer.md §1.1) ---
    clip_dim: int = 1280  # MLPProj(1280, dim): CLIP feature width
    clip_tokens: int = 257  # context[:, :257] = image tokens
    img_emb_eps: float = 1e-5  # img_emb's two nn.LayerNorms use PyTorch's default eps
    audio_in_dim: int = 768  # wav2vec2-base width
    audio_proj_dim: int = 1536  # adapter width; must equal dim
    vocal_num_layers: int = 2
    vocal_num_heads: int = 8
    vocal_ffn_mult: int = 2  # adapter FFN width = 2 * audio_proj_dim
    vocal_eps: float = 1e-6  # adapter blocks / final head (their own default, not `eps`)
    vocal_proj_eps: float = 1e-5  # proj_model.norm: nn.LayerNorm default eps
    expand_length: int = 4  # audio-group widening in split_tensor_with_padding
    temporal_compression: int = 4  # video frames per latent frame (after the first)
    rope_max_positions: int = 1024
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.audio_proj_dim != self.dim:
            raise ValueError(
                f"audio_proj_dim ({self.audio_proj_dim}) must equal dim ({self.dim}): the adapter adds the "
                "DiT's e0 [B, 6, dim] to its own modulation and k_vocal/v_vocal are Linear(dim, dim)"
            )
        if self.audio_proj_dim % self.vocal_num_heads:
            raise ValueError("audio_proj_dim must be divisible by vocal_num_heads")
        if self.model_type != "i2v":
            raise ValueError(f"only the i2v model type is supported, got {self.model_type!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def replace(self, **kw) -> "DiTConfig":
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class VAEConfig:
    """Wan2.1 causal 3-D VAE (`Wan2.1_VAE.pth`); base_dim 96 is a literal in the original."""

    base_dim: int = 96
    z_dim: int = 16
    temporal_compression: int = 4
    spatial_compression: int = 8
    # per-channel latent statistics the original hard-codes in AutoencoderKLWan.__init__:
    # encode returns (mu - mean) * (1 / std), decode starts from z / (1 / std) + mean
    latents_mean: tuple[float, ...] = (
        -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
        0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
    )
    latents_std: tuple[float, ...] = (
        2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
    )

    def __post_init__(self) -> None:
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean/latents_std need z_dim={self.z_dim} values each")


@dataclass(frozen=True)
class T5Config:
    """umT5-XXL encoder as the original builds it (`models_t5_umt5-xxl-enc-bf16.pth`)."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    text_len: int = 512
    eps: float = 1e-6


@dataclass(frozen=True)
class CLIPConfig:
    """Visual tower of open-clip XLM-RoBERTa-large ViT-H/14 (`models_clip_open-clip-...-vit-huge-14.pth`)."""

    image_size: int = 224
    patch_size: int = 14
    dim: int = 1280
    num_heads: int = 16
    num_layers: int = 32
    mlp_ratio: int = 4
    embed_dim: int = 1024  # projection head width (unused by the pipeline)
    eps: float = 1e-5
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class SchedulerConfig:
    """FlowMatchEulerDiscreteScheduler kwargs of `wan_civitai.yaml` (diffusers 0.30.1 semantics)."""

    num_train_timesteps: int = 1000
    shift: float = 5.0


@dataclass(frozen=True)
class PipelineConfig:
    """The fixed rates of the pipeline and the ONE home of the generation defaults.

    `StableAvatarPipeline.generate()` reads every argument left at None from here: the values the original's
    `inference.sh` passes (the authors' recommended settings). `inference.py` keeps the original's argparse
    defaults where they differ (`ORIGINAL_CLI_DEFAULTS`), so the original's command lines mean the same; `inference.sh`
    passes these values explicitly."""

    sample_rate: int = 16000
    fps: int = 25
    width: int = 512
    height: int = 512
    seed: int = 42  # the original crashes without one
    clip_sample_n_frames: int = 81
    overlap_window_length: int = 5
    overlapping_weight_scheme: str = "uniform"
    sample_steps: int = 50
    text_guide_scale: float = 3.0
    audio_guide_scale: float = 5.0
    negative_prompt: str = (
        "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
        "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
        "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
    )

    @property
    def audio_samples_per_frame(self) -> int:
        return self.sample_rate // self.fps


# inference.py's defaults where the original's argparse differs from `PipelineConfig` (its inference.sh overrides all
# three with PipelineConfig's values): field name -> value
ORIGINAL_CLI_DEFAULTS = {"text_guide_scale": 5.0, "audio_guide_scale": 4.0, "overlap_window_length": 10}

# --GPU_memory_mode values (wan/memory.py applies them); here so that the CLI can check a flag without torch.
# "auto" resolves to one of the exact modes before loading (wan.memory.resolve_memory_mode)
MEMORY_MODES = ("model_full_load", "model_cpu_offload", "sequential_cpu_offload", "model_cpu_offload_and_qfloat8",
                "auto")


@dataclass(frozen=True)
class ModelSpec:
    dit: DiTConfig = field(default_factory=DiTConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    t5: T5Config = field(default_factory=T5Config)
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


CONFIGS: dict[str, ModelSpec] = {
    "stableavatar-1.3b": ModelSpec(),
    # transformer_a1's DiT (dim 64, 4 heads, 2 layers) with a 32-wide tiny wav2vec / CLIP
    "tiny": ModelSpec(
        dit=DiTConfig(
            dim=64, ffn_dim=128, freq_dim=32, text_dim=32, num_heads=4, num_layers=2,
            clip_dim=32, audio_in_dim=32, audio_proj_dim=64,
        ),
        vae=VAEConfig(base_dim=4),
        t5=T5Config(vocab_size=160, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2),
        clip=CLIPConfig(image_size=32, patch_size=2, dim=32, num_heads=4, num_layers=3, embed_dim=16),
        pipeline=PipelineConfig(clip_sample_n_frames=17, overlap_window_length=3, sample_steps=4),
    ),
}


def get_config(name: str) -> ModelSpec:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model spec {name!r}; choose one of {sorted(CONFIGS)}") from None


# keys of the original DiT config that carry no information for us (copies or flash-attn-only)
_DIT_BOOKKEEPING = {"in_channels", "hidden_size", "window_size", "_class_name", "_diffusers_version", "add_control_adapter",
                    "in_dim_control_adapter", "downscale_factor_control_adapter"}


def dit_config_from_original(config: dict, overrides: dict | None = None) -> DiTConfig:
    """DiTConfig from an original-style config dict (Wan-Fun `config.json`, or a golden case's `config`)
    plus hard-coded-constant overrides (`clip_dim`, `audio_in_dim`, `audio_proj_dim`, ...).

    Like the original loader, patch_size (1,2,2), qk_norm and cross_attn_norm are forced; keys we do not know are
    an error (so a file for another architecture is not silently misread)."""
    fields = {f.name for f in dataclasses.fields(DiTConfig)}
    kw = {}
    unknown = []
    for k, v in {**config, **(overrides or {})}.items():
        if k in _DIT_BOOKKEEPING:
            continue
        if k not in fields:
            unknown.append(k)
            continue
        kw[k] = tuple(v) if isinstance(v, list) else v
    if unknown:
        raise ValueError(f"unknown DiT config keys {sorted(unknown)}")
    kw.update(patch_size=(1, 2, 2), qk_norm=True, cross_attn_norm=True)
    kw.setdefault("audio_proj_dim", kw.get("dim", DiTConfig.dim))
    return DiTConfig(**kw)
