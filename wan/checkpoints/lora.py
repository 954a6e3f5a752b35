"""LoRA for the DiT with peft, files in the original's format (spec training.md §14).

The original (`train_1B_rec_vec_lora.py`) wraps every `nn.Linear` of the DiT whose name contains neither
`vocal` nor `audio` with `y = W x + b + up(down(x)) * (alpha / rank)` (rank 128, alpha 64: scale 0.5;
down Kaiming-uniform a=sqrt(5), up zeros) and trains those plus the whole audio adapter. peft's LoRA layer
is that same function (`lora_A` = down, `lora_B` = up, scaling = alpha / r), so it is used here; files are
written with the original's names so its `merge_lora` tool and ours read the same thing:

    lora_transformer__blocks_0_self_attn_q.lora_down.weight   [r, in]
    lora_transformer__blocks_0_self_attn_q.lora_up.weight     [out, r]
    lora_transformer__blocks_0_self_attn_q.alpha              []

One difference: our DiT computes the timestep MLP (`time_embedding.0/.2`, `time_projection.1`) as an
explicit fp32 island that reads the Linear weights directly, so a LoRA on those three layers would never be
called; they are not targeted (365 LoRA layers instead of the original's 368).

Inference: `apply_lora(dit, "lora-checkpoint-<step>.pt")` merges `W += multiplier * (alpha / r) * up @ down`
into the weights (or, with `merge=False`, attaches the adapter unmerged). The audio-adapter weights trained
with the LoRA come from the matching `transformer3d-checkpoint-<step>.pt` (the full state dict).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["lora_target_names", "lora_file_key", "add_lora", "lora_state_dict", "base_state_dict", "save_lora",
           "load_lora_file", "apply_lora", "merge_lora", "remove_lora"]

PREFIX = "lora_transformer__"
EXCLUDE = ("vocal", "audio")  # the original's filter: the audio adapter and k_vocal/v_vocal are trained in full
FP32_ISLAND = ("time_embedding.", "time_projection.")  # read through .weight by the DiT: a LoRA there is never called


def lora_target_names(dit: nn.Module) -> list[str]:
    """Names of the DiT's Linear layers that get a LoRA (365 for the 30-block model)."""
    out = []
    for name, m in dit.named_modules():
        base = getattr(m, "base_layer", None)  # already wrapped by peft
        if isinstance(m, nn.Linear) or isinstance(base, nn.Linear):
            if ".base_layer" in name or any(s in name for s in EXCLUDE) or name.startswith(FP32_ISLAND):
                continue
            if "lora_" in name:
                continue
            out.append(name)
    return out


def lora_file_key(module_name: str) -> str:
    """`blocks.0.self_attn.q` -> `lora_transformer__blocks_0_self_attn_q` (the original's naming)."""
    return PREFIX + module_name.replace(".", "_")


def add_lora(dit: nn.Module, rank: int = 128, alpha: float = 64.0, targets: list[str] | None = None) -> nn.Module:
    """Attach fresh LoRA layers (peft, adapter "default") in place; only the LoRA parameters require grad.
    The LoRA weights are float32 whatever the DiT's dtype (as in the original, created after the bf16 cast)."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = targets if targets is not None else lora_target_names(dit)
    if rank < 1:
        raise ValueError(f"--rank must be >= 1, got {rank}")
    # a string target is a regex peft full-matches against module names: exactly these layers
    pattern = "(" + "|".join(re.escape(n) for n in targets) + ")"
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", init_lora_weights=True,
                        target_modules=pattern)
    inject_adapter_in_model(config, dit)
    for n, p in dit.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()
            p.requires_grad_(True)
    return dit


def _lora_layers(dit: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in dit.named_modules() if isinstance(m, LoraLayer)}


def lora_state_dict(dit: nn.Module, adapter: str = "default") -> dict[str, Tensor]:
    """The attached LoRA weights in the original's file format (CPU tensors)."""
    out = {}
    for name, m in _lora_layers(dit).items():
        key = lora_file_key(name)
        out[f"{key}.lora_down.weight"] = m.lora_A[adapter].weight.detach().cpu().contiguous()
        out[f"{key}.lora_up.weight"] = m.lora_B[adapter].weight.detach().cpu().contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(m.scaling[adapter] * m.r[adapter]))
    if not out:
        raise ValueError("the model has no LoRA layers; call add_lora first")
    return out


def base_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict of a LoRA-wrapped DiT with the original key names (`.base_layer` removed, LoRA dropped)."""
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}


def save_lora(dit: nn.Module, path: str | os.PathLike) -> None:
    """Write `lora-checkpoint-<step>.pt` (or `.safetensors`) atomically."""
    from wan.checkpoints import atomic_save

    atomic_save(lora_state_dict(dit), path)


def load_lora_file(path: str | os.PathLike) -> dict[str, Tensor]:
    from wan.checkpoints import load_state_dict_file, unwrap_state_dict

    return unwrap_state_dict(load_state_dict_file(path), path)


def _group(state: Mapping[str, Tensor], dit: nn.Module, source: str) -> dict[str, tuple[Tensor, Tensor, float]]:
    """{module name: (down [r, in], up [out, r], alpha)}, strictly matched to the DiT's Linear layers."""
    from wan.checkpoints import CheckpointError

    by_key = {lora_file_key(n): n for n, _ in dit.named_modules()}
    groups: dict[str, dict[str, Tensor]] = {}
    bad = []
    for k, v in state.items():
        stem, _, part = k.partition(".")
        if stem not in by_key or part not in ("lora_down.weight", "lora_up.weight", "alpha"):
            bad.append(k)
            continue
        groups.setdefault(stem, {})[part] = v
    incomplete = sorted(s for s, g in groups.items() if not {"lora_down.weight", "lora_up.weight"} <= set(g))
    if bad or incomplete:
        raise CheckpointError(f"{source}: LoRA keys that match no DiT layer {bad[:8]} ({len(bad)}); "
                              f"layers without both down and up weights {incomplete[:8]}")
    out = {}
    for stem, g in groups.items():
        name = by_key[stem]
        layer = dit.get_submodule(name)
        layer = getattr(layer, "base_layer", layer)
        down, up = g["lora_down.weight"], g["lora_up.weight"]
        r = up.shape[1]
        if not isinstance(layer, nn.Linear) or down.shape != (r, layer.in_features) or up.shape != (layer.out_features, r):
            raise CheckpointError(f"{source}: {stem} has down {tuple(down.shape)} / up {tuple(up.shape)}, which do not "
                                  f"fit {name} ({layer})")
        alpha = float(g["alpha"]) if "alpha" in g else float(r)  # the original's default alpha = rank
        out[name] = (down, up, alpha)
    if not out:
        raise CheckpointError(f"{source}: no LoRA weights")
    return out


@torch.no_grad()
def _merge_into(dit: nn.Module, groups: dict[str, tuple[Tensor, Tensor, float]], multiplier: float) -> None:
    for name, (down, up, alpha) in groups.items():
        layer = dit.get_submodule(name)
        w = layer.weight
        delta = (up.to(w.device, torch.float32) @ down.to(w.device, torch.float32)) * (multiplier * alpha / up.shape[1])
        w.copy_((w.float() + delta).to(w.dtype))


def apply_lora(dit: nn.Module, lora: str | os.PathLike | Mapping[str, Tensor], merge: bool = True,
               multiplier: float = 1.0) -> nn.Module:
    """Load a LoRA file (original format) into a plain DiT, in place.

    merge=True: `W += multiplier * (alpha / r) * up @ down` in float32, cast back (the original's `merge_lora`);
    merge=False: attach peft LoRA layers with the file's rank/alpha (same function, unmerged; multiplier 1)."""
    source = str(lora) if not isinstance(lora, Mapping) else "<LoRA state dict>"
    state = load_lora_file(lora) if not isinstance(lora, Mapping) else dict(lora)
    groups = _group(state, dit, source)
    if merge:
        _merge_into(dit, groups, multiplier)
        return dit
    if multiplier != 1.0:
        raise ValueError("an unmerged LoRA runs at multiplier 1; use merge=True for another multiplier")
    ranks = {up.shape[1] for _, up, _ in groups.values()}
    alphas = {a for _, _, a in groups.values()}
    if len(ranks) != 1 or len(alphas) != 1:
        raise ValueError(f"an unmerged LoRA needs one rank and alpha, the file has ranks {ranks}, alphas {alphas}")
    add_lora(dit, ranks.pop(), alphas.pop(), targets=sorted(groups))
    layers = _lora_layers(dit)
    with torch.no_grad():
        for name, (down, up, _) in groups.items():
            layers[name].lora_A["default"].weight.copy_(down)
            layers[name].lora_B["default"].weight.copy_(up)
    return dit


def remove_lora(dit: nn.Module) -> nn.Module:
    """Replace every peft LoRA layer by its base Linear (drops the adapter), in place."""
    for name, m in sorted(_lora_layers(dit).items(), key=lambda kv: -kv[0].count(".")):
        parent, _, child = name.rpartition(".")
        setattr(dit.get_submodule(parent) if parent else dit, child, m.get_base_layer())
    return dit


def merge_lora(dit: nn.Module, multiplier: float = 1.0) -> nn.Module:
    """Fold the attached LoRA into the base weights and remove the peft layers: a plain DiT with the
    original key names (what `save_dit` writes for inference without `--lora_path`)."""
    state = lora_state_dict(dit)
    remove_lora(dit)
    _merge_into(dit, _group(state, dit, "<attached LoRA>"), multiplier)
    return dit
