"""All weight I/O: find files, unwrap containers, convert formats, strict checks.

One module per component (`dit`, `t5`, `clip`, `vae`, `audio`); the shared primitives live here.
Every load is safe (safetensors, or `torch.load(weights_only=True)`) and strict: a mismatch raises a
`CheckpointError` naming the missing, unexpected and mis-shaped keys (the original silently ignores them).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A weight file is missing, unreadable, unsafe, or does not match the model."""


def _fmt(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', …' if len(keys) > limit else ''}] ({len(keys)})"


def load_state_dict_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read one weight file: `.safetensors`, or a torch pickle (`.pt`/`.pth`/`.bin`) with weights_only=True.

    A pickle that holds anything but tensors (and plain containers of them) is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weight file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except Exception as e:  # corrupt header, truncated file
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        try:  # mmap keeps multi-GB files out of RAM; only the zip format supports it
            obj = torch.load(str(path), map_location=map_location, weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            obj = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: refused to load (not a plain tensor state dict under weights_only=True: {e})"
        ) from e
    return obj


def unwrap_state_dict(obj, path: str | os.PathLike = "<state dict>") -> dict[str, torch.Tensor]:
    """The original's `.pt` files are a plain state dict or `{"state_dict": {...}}`; also `module.` prefixes."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {_fmt([str(k) for k in bad])}")
    keys = list(obj)
    if keys and all(k.startswith("module.") for k in keys):  # saved from a DDP wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def check_state_dict(expected: Mapping[str, tuple[int, ...] | torch.Size],
                     got: Mapping[str, torch.Tensor], source: str) -> None:
    """Strict comparison of names and shapes; raises CheckpointError naming every mismatch."""
    missing = sorted(k for k in expected if k not in got)
    unexpected = sorted(k for k in got if k not in expected)
    misshaped = sorted(
        f"{k}: file {tuple(got[k].shape)} != model {tuple(expected[k])}"
        for k in expected
        if k in got and tuple(got[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing keys {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_fmt(unexpected)}")
        if misshaped:
            parts.append(f"mis-shaped keys {_fmt(misshaped)}")
        raise CheckpointError(f"{source}: " + "; ".join(parts))


def model_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
              dtype: torch.dtype | None = None) -> nn.Module:
    """Strictly load `state_dict` into `model` (which may live on the meta device: then it is materialised
    with `assign=True`, so no full-size random init is ever computed). Casts floating tensors to `dtype`."""
    check_state_dict(model_shapes(model), state_dict, source)
    if dtype is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    on_meta = any(p.is_meta for p in model.parameters())
    model.load_state_dict(state_dict, strict=True, assign=on_meta)
    return model


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save / safetensors save through a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in obj.items()}, tmp)
        else:
            torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
