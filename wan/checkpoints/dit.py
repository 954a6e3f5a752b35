"""Load the StableAvatar DiT from the released files.

1. the Wan2.1-Fun base: `<wan_dir>/config.json` + `diffusion_pytorch_model.bin` | `.safetensors` | all `*.safetensors`
   (sharded), the original's search order — 983 keys, everything but the audio adapter;
2. the StableAvatar overlay `transformer3d-square.pt` / `transformer3d-rec-vec.pt` (plain state dict or
   `{"state_dict": ...}`) — all 1143 keys — or a single `.safetensors` of our own format (the full state dict).

The model is built on the meta device (no full-size random init), the union of the files is checked strictly
(every missing, unexpected or mis-shaped key named) and assigned, then cast to `dtype`.

Without an overlay only the 160 audio-adapter keys may be missing: they then take the original's documented
fresh init (k_vocal/v_vocal zero, adapter Linears PyTorch default, modulations randn/sqrt(dim)) with a warning —
what training from the Wan-Fun weights needs, and what the original silently does at inference.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from wan.checkpoints import CheckpointError, check_state_dict, load_state_dict_file, model_shapes, unwrap_state_dict
from wan.configs import DiTConfig, dit_config_from_original, get_config
from wan.models.dit import WanTransformer3DFantasyModel

log = logging.getLogger(__name__)

BASE_WEIGHT_NAMES = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors")


def is_adapter_key(key: str) -> bool:
    """The 160 keys that exist only in the StableAvatar files (not in Wan2.1-Fun)."""
    return key.startswith("vocal_projector.") or ".cross_attn.k_vocal." in key or ".cross_attn.v_vocal." in key


def read_dit_config(wan_dir: str | os.PathLike, overrides: dict | None = None) -> DiTConfig:
    path = Path(wan_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; expected the Wan2.1-Fun-V1.1-1.3B-InP transformer config.json")
    try:
        return dit_config_from_original(json.loads(path.read_text()), overrides)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e


def find_base_weights(wan_dir: str | os.PathLike) -> list[Path]:
    """The original's search order: `.bin`, then `diffusion_pytorch_model.safetensors`, then every `*.safetensors`."""
    wan_dir = Path(wan_dir)
    for name in BASE_WEIGHT_NAMES:
        if (wan_dir / name).is_file():
            return [wan_dir / name]
    shards = sorted(wan_dir.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(
            f"{wan_dir}: no transformer weights (expected diffusion_pytorch_model.safetensors, "
            "diffusion_pytorch_model-0000x-of-0000y.safetensors shards, or diffusion_pytorch_model.bin)"
        )
    return shards


def _read_keys(path: Path, skip: set[str]) -> dict[str, torch.Tensor]:
    """Read a base file, skipping keys the overlay already provides (saves memory for the 1.3B base)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        out = {}
        try:
            with safe_open(str(path), framework="pt") as f:
                for k in f.keys():
                    if k not in skip:
                        out[k] = f.get_tensor(k)
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
        return out
    sd = unwrap_state_dict(load_state_dict_file(path), path)
    return {k: v for k, v in sd.items() if k not in skip}


def fresh_adapter_state(model_cfg: DiTConfig, keys: list[str], seed: int = 0) -> dict[str, torch.Tensor]:
    """The original's fresh init of the audio-adapter parameters named in `keys` (built on CPU, small)."""
    from wan.models.vocal import VocalProjector

    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        vp = VocalProjector(model_cfg)
    out = {f"vocal_projector.{k}": v for k, v in vp.state_dict().items()}
    for k in keys:
        if ".cross_attn.k_vocal." in k or ".cross_attn.v_vocal." in k:
            shape = (model_cfg.dim, model_cfg.dim) if k.endswith("weight") else (model_cfg.dim,)
            out[k] = torch.zeros(shape)
    return {k: out[k] for k in keys}


def load_dit(wan_dir: str | os.PathLike | None, transformer_path: str | os.PathLike | None = None, *,
             dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
             config: DiTConfig | None = None) -> WanTransformer3DFantasyModel:
    """Build the DiT and load its weights strictly. Either argument may be None, not both:
    `wan_dir` alone = Wan-Fun base + fresh adapter (warning); `transformer_path` alone must hold all keys
    (our own single-file format) and the config comes from `config` or the released spec."""
    if wan_dir is None and transformer_path is None:
        raise ValueError("give the Wan2.1-Fun folder (--pretrained_model_name_or_path) and/or --transformer_path")
    cfg = config or (read_dit_config(wan_dir) if wan_dir is not None else get_config("stableavatar-1.3b").dit)
    with torch.device("meta"):
        model = WanTransformer3DFantasyModel(cfg)
    expected = model_shapes(model)

    state: dict[str, torch.Tensor] = {}
    sources = []
    if transformer_path is not None:
        transformer_path = Path(transformer_path)
        state = unwrap_state_dict(load_state_dict_file(transformer_path), transformer_path)
        sources.append(str(transformer_path))
    if wan_dir is not None and not set(expected) <= set(state):
        for f in find_base_weights(wan_dir):
            part = _read_keys(f, skip=set(state))
            if f.suffix != ".safetensors":
                part = unwrap_state_dict(part, f)
            state.update(part)
            sources.append(str(f))

    missing = [k for k in expected if k not in state]
    if missing and transformer_path is None and all(is_adapter_key(k) for k in missing):
        log.warning("no --transformer_path: the %d audio-adapter tensors take their fresh init (k_vocal/v_vocal "
                    "zero): the audio has no effect until they are trained", len(missing))
        state.update(fresh_adapter_state(cfg, missing))
    check_state_dict(expected, state, " + ".join(sources))
    state = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def save_dit(model: WanTransformer3DFantasyModel, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Write the full state dict (original key names): `.safetensors` (our format) or `.pt` (the released format)."""
    from wan.checkpoints import atomic_save

    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
          for k, v in model.state_dict().items()}
    atomic_save(sd, path)
