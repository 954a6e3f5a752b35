"""Wan2.1 VAE weights: the original `Wan2.1_VAE.pth` <-> diffusers' `AutoencoderKLWan`.

The original file is a plain torch state dict whose keys are the upstream `AutoencoderKLWan_` names
(`encoder.downsamples.3.residual.2.weight`, `conv1.bias`, ...: manifest `vae.tsv` without the leading
`model.`). Loading goes through diffusers' own converter (`convert_wan_vae_to_diffusers`); the inverse
naming below is only used to write files in the original format and to name mismatching keys in the
original naming. The converter hard-codes Wan2.1's topology (dim_mult [1, 2, 4, 4], 2 residual blocks),
so only `base_dim` may change.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from wan.checkpoints import (
    CheckpointError,
    atomic_save,
    check_state_dict,
    load_into,
    load_state_dict_file,
    model_shapes,
    unwrap_state_dict,
)

VAE_FILE = "Wan2.1_VAE.pth"  # inside the Wan2.1-Fun folder (yaml vae_kwargs.vae_subpath)

# resnet-internal names: diffusers -> original `residual` Sequential indices
_RESNET_PARTS = {
    "norm1": "residual.0",
    "conv1": "residual.2",
    "norm2": "residual.3",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}
# mid block: diffusers module -> original `middle` Sequential index
_MID_PARTS = {"resnets.0": "middle.0", "attentions.0": "middle.1", "resnets.1": "middle.2"}
# the decoder's up_blocks.b hold 3 resnets then an upsampler: original upsamples.{4b + r}, upsamples.{4b + 3}
_UP_BLOCK_STRIDE = 4


def original_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original keys -> `AutoencoderKLWan` keys, by diffusers' converter (values are not touched)."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    return convert_wan_vae_to_diffusers(dict(state_dict))


def diffusers_key_to_original(key: str) -> str:
    """Inverse of diffusers' converter for one `AutoencoderKLWan` key (e.g. `decoder.up_blocks.1.resnets.0.
    conv_shortcut.weight` -> `decoder.upsamples.4.shortcut.weight`). Unknown keys raise KeyError."""
    top = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
    head, _, rest = key.partition(".")
    if head in top:
        return f"{top[head]}.{rest}"
    if head not in ("encoder", "decoder"):
        raise KeyError(key)

    def resnet(tail: str) -> str:  # "conv1.weight" -> "residual.2.weight"
        part, _, leaf = tail.partition(".")
        if part not in _RESNET_PARTS:
            raise KeyError(key)
        return f"{_RESNET_PARTS[part]}.{leaf}"

    fixed = {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2"}
    part, _, leaf = rest.partition(".")
    if part in fixed:
        return f"{head}.{fixed[part]}.{leaf}"
    if m := re.fullmatch(r"mid_block\.(resnets\.[01]|attentions\.0)\.(.+)", rest):
        sub, tail = m.groups()
        return f"{head}.{_MID_PARTS[sub]}." + (tail if sub.startswith("attentions") else resnet(tail))
    if head == "encoder" and (m := re.fullmatch(r"down_blocks\.(\d+)\.(.+)", rest)):
        idx, tail = m.groups()
        if tail.startswith(("resample.", "time_conv.")):  # a downsampling Resample keeps its names
            return f"encoder.downsamples.{idx}.{tail}"
        return f"encoder.downsamples.{idx}.{resnet(tail)}"
    if head == "decoder" and (m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest)):
        b, r, tail = m.groups()
        return f"decoder.upsamples.{_UP_BLOCK_STRIDE * int(b) + int(r)}.{resnet(tail)}"
    if head == "decoder" and (m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest)):
        b, tail = m.groups()
        return f"decoder.upsamples.{_UP_BLOCK_STRIDE * int(b) + _UP_BLOCK_STRIDE - 1}.{tail}"
    raise KeyError(key)


def diffusers_to_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`AutoencoderKLWan` state dict -> the original file's keys (what `Wan2.1_VAE.pth` holds)."""
    return {diffusers_key_to_original(k): v for k, v in state_dict.items()}


def find_vae_file(wan_dir: str | os.PathLike) -> Path:
    """`<Wan2.1-Fun folder>/Wan2.1_VAE.pth`, or the path itself when it names a file."""
    p = Path(wan_dir)
    if p.is_file():
        return p
    f = p / VAE_FILE
    if not f.is_file():
        raise CheckpointError(f"{f}: no VAE file; expected {VAE_FILE} in the Wan2.1-Fun folder {p}")
    return f


def load_vae_weights(model: nn.Module, path: str | os.PathLike, dtype: torch.dtype | None = None) -> nn.Module:
    """Strictly load an original-format VAE file into a diffusers `AutoencoderKLWan` (which may be on meta).

    Mismatches are reported with the original key names, as they appear in the file.
    """
    sd = unwrap_state_dict(load_state_dict_file(path), path)
    if sd and all(k.startswith("model.") for k in sd):
        # the upstream wrapper's own state_dict (manifest naming): same tensors, one level deeper
        sd = {k[len("model."):]: v for k, v in sd.items()}
    expected = {diffusers_key_to_original(k): s for k, s in model_shapes(model).items()}
    check_state_dict(expected, sd, str(path))
    return load_into(model, original_to_diffusers(sd), str(path), dtype)


def save_vae_weights(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write an `AutoencoderKLWan` (or its state dict) as an original-format `.pth` (plain state dict)."""
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    atomic_save({k: v.detach().contiguous().cpu() for k, v in diffusers_to_original(sd).items()}, path)
