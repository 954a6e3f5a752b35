"""CLIP image encoder weights: Wan's open-clip XLM-RoBERTa ViT-H/14 file <-> `CLIPVisionModelWithProjection`.

The original `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` is a plain fp32 state dict of the whole
`XLMRobertaCLIP` (keys `visual.*`, `textual.*`, `log_scale`; upstream's `CLIPModel` adds a `model.` prefix
when loading, which is how manifests and golden fixtures name them: both spellings are accepted). Only the
visual tower is used; `textual.*` and `log_scale` are known and skipped, every `visual.*` key must match.

Special cases of the table: the fused `to_qkv` is split into q/k/v (upstream views its output as
[B, L, 3, heads, head_dim], i.e. q, k, v are consecutive row blocks); `cls_embedding` [1, 1, D] and
`pos_embedding` [1, N, D] lose their leading singleton dims; `head` [D, E] is used as `x @ head`, so it is the
transpose of `visual_projection.weight` [E, D].
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from wan.checkpoints import CheckpointError, load_state_dict_file, unwrap_state_dict
from wan.checkpoints.t5 import KeyRule, load_converted, to_converted, to_original

CLIP_CHECKPOINT = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"  # yaml image_encoder_subpath

_BLOCK = "vision_model.encoder.layers.{i}"

CLIP_RULES: tuple[KeyRule, ...] = (
    KeyRule("visual.patch_embedding.weight", "vision_model.embeddings.patch_embedding.weight"),
    KeyRule("visual.cls_embedding", "vision_model.embeddings.class_embedding",
            split=lambda t: t.reshape(t.shape[-1]), merge=lambda t: t.reshape(1, 1, -1)),
    KeyRule("visual.pos_embedding", "vision_model.embeddings.position_embedding.weight",
            split=lambda t: t[0], merge=lambda t: t[None]),
    KeyRule("visual.pre_norm.{p}", "vision_model.pre_layrnorm.{p}"),
    KeyRule("visual.transformer.{i}.norm1.{p}", f"{_BLOCK}.layer_norm1.{{p}}"),
    KeyRule("visual.transformer.{i}.attn.to_qkv.{p}",
            tuple(f"{_BLOCK}.self_attn.{name}_proj.{{p}}" for name in "qkv"),
            split=lambda t: tuple(t.chunk(3, dim=0)), merge=lambda q, k, v: torch.cat([q, k, v], dim=0)),
    KeyRule("visual.transformer.{i}.attn.proj.{p}", f"{_BLOCK}.self_attn.out_proj.{{p}}"),
    KeyRule("visual.transformer.{i}.norm2.{p}", f"{_BLOCK}.layer_norm2.{{p}}"),
    KeyRule("visual.transformer.{i}.mlp.0.{p}", f"{_BLOCK}.mlp.fc1.{{p}}"),
    KeyRule("visual.transformer.{i}.mlp.2.{p}", f"{_BLOCK}.mlp.fc2.{{p}}"),
    KeyRule("visual.post_norm.{p}", "vision_model.post_layernorm.{p}"),
    KeyRule("visual.head", "visual_projection.weight",
            split=lambda t: t.t().contiguous(), merge=lambda t: t.t().contiguous()),
)


def is_unused_key(key: str) -> bool:
    """Keys of the file that the image encoder knowingly skips: the XLM-RoBERTa text tower and the logit scale."""
    return key.startswith("textual.") or key == "log_scale"


def strip_model_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Accept upstream's module naming (`model.visual.*`) as well as the file's (`visual.*`)."""
    if state_dict and all(k.startswith("model.") for k in state_dict):
        return {k[len("model."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def visual_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The file's state dict without the text tower / logit scale (both spellings of the keys accepted)."""
    return {k: v for k, v in strip_model_prefix(state_dict).items() if not is_unused_key(k)}


def clip_to_hf(state_dict: Mapping[str, Tensor], source: str = "<state dict>") -> dict[str, Tensor]:
    """Original keys (visual tower; textual/log_scale dropped) -> `CLIPVisionModelWithProjection` keys."""
    return to_converted(visual_state_dict(state_dict), CLIP_RULES, source)


def clip_from_hf(state_dict: Mapping[str, Tensor], source: str = "<state dict>") -> dict[str, Tensor]:
    """`CLIPVisionModelWithProjection` keys -> the original `visual.*` keys."""
    return to_original(state_dict, CLIP_RULES, source)


def load_clip_weights(model: nn.Module, path: str | os.PathLike, dtype: torch.dtype | None = None) -> nn.Module:
    """Strictly load the visual tower of Wan's CLIP file into a `CLIPVisionModelWithProjection` (meta or real)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing. Expected Wan2.1's open-clip XLM-RoBERTa ViT-H/14 weights here ({CLIP_CHECKPOINT}: "
            "a torch state dict with keys `visual.*`, `textual.*`, `log_scale`), as shipped in the "
            "Wan2.1-Fun-V1.1-1.3B-InP folder"
        )
    state_dict = visual_state_dict(unwrap_state_dict(load_state_dict_file(path), path))
    return load_converted(model, state_dict, CLIP_RULES, str(path), dtype)
