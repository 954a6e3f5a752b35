"""Tiny DiT files in the released layout: Wan-Fun base (config.json + safetensors, 983-key-style: no adapter)
and the StableAvatar overlays (`transformer3d-square.pt` plain, `transformer3d-rec-vec.pt` state_dict-wrapped),
bf16 as the released files most likely are."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from wan.checkpoints.dit import is_adapter_key
from wan.configs import ModelSpec
from wan.models.dit import WanTransformer3DFantasyModel

WAN_DIR = "Wan2.1-Fun-V1.1-1.3B-InP"
SA_DIR = "StableAvatar-1.3B"


def tiny_dit_state(spec: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
    """A random full state dict whose audio keys are non-zero (so the tiny audio path does something)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = WanTransformer3DFantasyModel(spec.dit)
        for name, p in model.named_parameters():
            if ".k_vocal." in name or ".v_vocal." in name:
                torch.nn.init.normal_(p, std=0.5 / spec.dit.dim**0.5)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def dit_config_json(spec: ModelSpec) -> dict:
    """config.json as Wan2.1-Fun ships it, plus the fields a tiny model needs (our loader reads them)."""
    c = spec.dit
    out = {"_class_name": "WanTransformer3DModel", "model_type": c.model_type, "dim": c.dim, "eps": c.eps,
           "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim, "in_dim": c.in_dim, "num_heads": c.num_heads,
           "num_layers": c.num_layers, "out_dim": c.out_dim, "text_len": c.text_len}
    default = type(c)()
    for f in ("text_dim", "clip_dim", "audio_in_dim", "audio_proj_dim"):
        if getattr(c, f) != getattr(default, f):
            out[f] = getattr(c, f)
    return out


def write(root: Path, spec: ModelSpec, seed: int, sharded: bool = False) -> None:
    from safetensors.torch import save_file

    sd = {k: v.to(torch.bfloat16) for k, v in tiny_dit_state(spec, seed).items()}
    base = {k: v for k, v in sd.items() if not is_adapter_key(k)}
    wan = root / WAN_DIR
    wan.mkdir(parents=True, exist_ok=True)
    (wan / "config.json").write_text(json.dumps(dit_config_json(spec), indent=2))
    if sharded:
        keys = sorted(base)
        parts = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
        index = {"metadata": {}, "weight_map": {}}
        for i, part in enumerate(parts, 1):
            name = f"diffusion_pytorch_model-{i:05d}-of-{len(parts):05d}.safetensors"
            save_file({k: base[k].contiguous() for k in part}, str(wan / name))
            index["weight_map"].update({k: name for k in part})
        (wan / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    else:
        save_file({k: v.contiguous() for k, v in base.items()}, str(wan / "diffusion_pytorch_model.safetensors"))
    sa = root / SA_DIR
    sa.mkdir(parents=True, exist_ok=True)
    torch.save(sd, sa / "transformer3d-square.pt")
    torch.save({"state_dict": sd}, sa / "transformer3d-rec-vec.pt")
