"""GPU memory modes, applied from outside to a built StableAvatarPipeline (the models stay pure).

| mode | what | numerics |
| --- | --- | --- |
| model_full_load | every model on the GPU for the whole run | reference |
| model_cpu_offload | models live on the CPU; each is moved to the GPU for its stage (text, image, VAE encode, audio, DiT loop, decode) and back | identical |
| sequential_cpu_offload | as model_cpu_offload, and the DiT's 30 blocks stream from (pinned) CPU memory one at a time during the forward; embeddings, adapter and head stay on the GPU | identical |
| model_cpu_offload_and_qfloat8 | as model_cpu_offload, with every DiT tensor whose name lacks "modulation" stored as float8_e4m3fn and cast to the compute dtype per module call (the original's qfloat8) | changes outputs (fp8 weights) |
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

MODES = ("model_full_load", "model_cpu_offload", "sequential_cpu_offload", "model_cpu_offload_and_qfloat8")
STAGE_MODELS = {"text_encoder": "text_encoder", "image_encoder": "image_encoder", "vae": "vae",
                "audio_encoder": "audio_encoder", "dit": "dit"}


def _move(obj, device) -> None:
    if obj is None:
        return
    if isinstance(obj, nn.Module):
        obj.to(device)
    elif hasattr(obj, "to"):
        obj.to(device)
    else:
        for m in vars(obj).values():  # wrappers holding modules
            if isinstance(m, nn.Module):
                m.to(device)


def apply_memory_mode(pipe, mode: str) -> None:
    """Configure `pipe` for `mode` (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown GPU_memory_mode {mode!r}; choose one of {MODES}")
    device = pipe.device
    if mode == "model_full_load":
        for name in STAGE_MODELS.values():
            _move(getattr(pipe, name), device)
        pipe.stage = lambda name: contextlib.nullcontext()
        return
    if device.type != "cuda":
        raise ValueError(f"GPU_memory_mode {mode} needs a CUDA device")
    for name in STAGE_MODELS.values():
        _move(getattr(pipe, name), "cpu")
    if mode == "model_cpu_offload_and_qfloat8":
        quantize_fp8(pipe.dit, compute_dtype=pipe.dtype)
    streamed = mode == "sequential_cpu_offload"

    @contextlib.contextmanager
    def stage(name: str):
        model = getattr(pipe, STAGE_MODELS[name])
        if streamed and name == "dit":
            handles = stream_blocks(model, device)
            try:
                yield
            finally:
                for h in handles:
                    h.remove()
                _move(model, "cpu")
            return
        _move(model, device)
        try:
            yield
        finally:
            _move(model, "cpu")
            torch.cuda.empty_cache()

    pipe.stage = stage


def stream_blocks(dit: nn.Module, device: torch.device) -> list:
    """Everything but `dit.blocks` goes to `device`; each block is copied to the GPU right before its forward
    and dropped right after (weights stay in pinned CPU memory). Returns the hook handles."""
    for name, child in dit.named_children():
        if name != "blocks":
            child.to(device)
    handles = []
    for block in dit.blocks:
        block.to("cpu")
        for p in block.parameters():
            if not p.data.is_pinned():
                p.data = p.data.pin_memory()
        cpu_data = {k: p.data for k, p in block.named_parameters()}

        def pre(mod, args, _cpu=cpu_data):
            for k, p in mod.named_parameters():
                p.data = _cpu[k].to(device, non_blocking=True)

        def post(mod, args, out, _cpu=cpu_data):
            for k, p in mod.named_parameters():
                p.data = _cpu[k]
            return out

        handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
    return handles


def quantize_fp8(dit: nn.Module, compute_dtype: torch.dtype = torch.bfloat16) -> None:
    """Store every DiT tensor whose name has no "modulation" as float8_e4m3fn; modules holding them cast their
    own tensors to `compute_dtype` for the duration of each call (as the original's qfloat8 mode)."""
    for name, p in dit.named_parameters():
        if "modulation" not in name and p.is_floating_point():
            p.data = p.data.to(torch.float8_e4m3fn)

    def pre(mod, args):
        for p in mod.parameters(recurse=False):
            if p.dtype == torch.float8_e4m3fn:
                p.data = p.data.to(compute_dtype)

    def post(mod, args, out):
        for n, p in mod.named_parameters(recurse=False):
            if "modulation" not in n:
                p.data = p.data.to(torch.float8_e4m3fn)
        return out

    for mod in dit.modules():
        if any(True for _ in mod.parameters(recurse=False)):
            mod.register_forward_pre_hook(pre)
            mod.register_forward_hook(post)
