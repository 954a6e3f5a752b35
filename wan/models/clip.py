"""CLIP image encoder: `transformers.CLIPVisionModelWithProjection` + the original preprocessing.

Wan's open-clip ViT-H/14 visual tower (pre-norm, exact-erf GELU, LayerNorm eps 1e-5, class token, no patch
bias) is the CLIP vision transformer of transformers; the weights come from the original file through
`wan.checkpoints.clip`. What the pipeline consumes (upstream `CLIPModel.forward`, spec pipeline.md §3.2):
bicubic resize to `image_size` (align_corners=False), `x * 0.5 + 0.5`, CLIP mean/std normalisation, then the
output of the penultimate block (`use_31_block=True`: all blocks but the last, no post-norm, no head)
-> `[B, 1 + (image_size / patch_size)^2, dim]` = `[B, 257, 1280]` for the release.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wan.configs import CLIPConfig


def clip_vision_config(cfg: CLIPConfig):
    """The `CLIPVisionConfig` of the visual tower described by `cfg`."""
    from transformers import CLIPVisionConfig

    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"CLIPConfig.image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
    return CLIPVisionConfig(
        hidden_size=cfg.dim,
        intermediate_size=cfg.dim * cfg.mlp_ratio,
        projection_dim=cfg.embed_dim,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_channels=3,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act="gelu",  # open-clip ViT-H/14 uses nn.GELU (erf), not QuickGELU
        layer_norm_eps=cfg.eps,
        attention_dropout=0.0,
    )


def build_clip_vision(cfg: CLIPConfig, empty: bool = True):
    """`CLIPVisionModelWithProjection` for `cfg` in eval mode without gradients; `empty=True`: parameters on the
    meta device (buffers such as `position_ids` stay real), to be materialised by a strict load."""
    from transformers import CLIPVisionModelWithProjection

    from accelerate import init_empty_weights

    # parameters only: non-persistent buffers (e.g. CLIP's position_ids) are not in the file and must be real
    with init_empty_weights(include_buffers=False) if empty else contextlib.nullcontext():
        model = CLIPVisionModelWithProjection(clip_vision_config(cfg))
    return model.eval().requires_grad_(False)


class ImageEncoder(nn.Module):
    """`encode(images [B, 3, H, W] in [-1, 1])` -> penultimate-block CLIP tokens `[B, 257, dim]`."""

    def __init__(self, model: nn.Module, cfg: CLIPConfig):
        super().__init__()
        self.model = model
        self.image_size = cfg.image_size
        self.mean = tuple(cfg.mean)
        self.std = tuple(cfg.std)

    @classmethod
    def from_checkpoints(cls, wan_dir: str | os.PathLike, cfg: CLIPConfig | None = None,
                         dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> "ImageEncoder":
        """Load `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` from the Wan2.1-Fun folder.

        dtype: float32 as the original keeps it.
        """
        from wan.checkpoints.clip import CLIP_CHECKPOINT

        wan_dir = Path(wan_dir)
        if not wan_dir.is_dir():
            raise ValueError(f"wan_dir {str(wan_dir)!r} is not a folder; pass the Wan2.1-Fun-V1.1-1.3B-InP folder "
                             f"that holds {CLIP_CHECKPOINT}")
        return cls.from_file(wan_dir / CLIP_CHECKPOINT, cfg, dtype, device)

    @classmethod
    def from_file(cls, checkpoint: str | os.PathLike, cfg: CLIPConfig | None = None,
                  dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> "ImageEncoder":
        """Load an original-format CLIP file (keys `visual.*` [+ `textual.*`, `log_scale`], or `model.`-prefixed)."""
        from wan.checkpoints.clip import load_clip_weights

        cfg = cfg or CLIPConfig()
        model = load_clip_weights(build_clip_vision(cfg, empty=True), checkpoint, dtype)
        return cls(model, cfg).to(device)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.vision_model.embeddings.patch_embedding.weight.dtype

    def preprocess(self, images: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """[B, 3, H, W] in [-1, 1] -> normalised [B, 3, S, S] pixels, computed in `dtype` (default: the images').

        The pipeline hands the original a bf16 tensor, so there these ops round to bf16 (pass
        dtype=torch.bfloat16 to reproduce it); mean/std are cast to that dtype as torchvision's Normalize does.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        x = images if dtype is None else images.to(dtype)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        x = x.mul(0.5).add(0.5)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x.sub(mean).div(std)

    def forward(self, pixels: Tensor) -> Tensor:
        """Normalised pixels [B, 3, S, S] -> output of the penultimate block [B, 1 + (S/patch)^2, dim]."""
        # hidden_states = (embeddings after pre-norm, block 1, ..., block N): [-2] is upstream's use_31_block.
        # The last block is computed and discarded (1/32 of the tower) rather than re-implementing the loop.
        out = self.model.vision_model(pixel_values=pixels.to(self.dtype), output_hidden_states=True)
        return out.hidden_states[-2]

    @torch.no_grad()
    def encode(self, images: Tensor, preprocess_dtype: torch.dtype | None = None) -> Tensor:
        """images [B, 3, H, W] in [-1, 1] -> [B, 257, dim] in the model dtype (float32 by default)."""
        device = self.model.vision_model.embeddings.patch_embedding.weight.device
        return self(self.preprocess(images.to(device), preprocess_dtype))
