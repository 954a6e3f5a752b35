"""GPU memory modes, applied from outside to a built StableAvatarPipeline (the models stay pure).

| mode | what | numerics |
| --- | --- | --- |
| model_full_load | every model on the GPU for the whole run, except the umT5 text encoder on CUDA: it lives in pinned CPU memory and visits the GPU for the text stage only, its 24 blocks streamed one at a time (see `visit`) | identical |
| model_cpu_offload | models live on the CPU; each is moved to the GPU for its stage (text, image, VAE encode, audio, DiT loop, decode) and back | identical |
| sequential_cpu_offload | as model_cpu_offload, and the DiT's 30 blocks stream from (pinned) CPU memory one at a time during the forward; embeddings, adapter and head stay on the GPU | identical |
| model_cpu_offload_and_qfloat8 | as model_cpu_offload, with every DiT tensor whose name lacks "modulation" stored as float8_e4m3fn and cast to the compute dtype per module call (the original's qfloat8) | changes outputs (fp8 weights) |

Why the text encoder is special in model_full_load: umT5-XXL holds 10.6 GiB of bf16 weights and is used once per
`generate()`; resident, it raised the 480x832 peak to 25.6 GiB. Visiting with its blocks streamed, the text stage
needs ~2 GiB (the shared embedding) + one block on top of the other models, and the DiT loop and the decode no
longer carry it, so the run peaks at the decode (~15 GiB estimated at 480x832) for any video length. The price is
one 11 GB host-to-device copy from pinned memory per `generate()` (~0.5 s). Pass `offload_text_encoder=False` to
keep the original's behaviour.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from wan.configs import MEMORY_MODES

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


def apply_memory_mode(pipe, mode: str, offload_text_encoder: bool | None = None) -> None:
    """Configure `pipe` for `mode` (see the module docstring).

    offload_text_encoder: model_full_load only; None = on for a CUDA pipeline (the text encoder visits the GPU
    for its stage, blocks streamed), off elsewhere (nothing to save on the CPU)."""
    if mode not in MEMORY_MODES:
        raise ValueError(f"unknown GPU_memory_mode {mode!r}; choose one of {MEMORY_MODES}")
    device = pipe.device
    if mode == "model_full_load":
        if offload_text_encoder is None:
            offload_text_encoder = device.type == "cuda"
        te = pipe.text_encoder if offload_text_encoder else None
        for name in STAGE_MODELS.values():
            model = getattr(pipe, name)
            _move(model, "cpu" if te is not None and model is te else device)
        if te is None:
            pipe.stage = lambda name: contextlib.nullcontext()
            return
        _pin(_tensors(te))  # once, here: pinning 11 GB takes seconds
        if device.type == "cuda":
            torch.cuda.empty_cache()
        blocks = text_encoder_blocks(te)

        def stage(name: str):
            return visit(te, device, blocks) if name == "text_encoder" else contextlib.nullcontext()

        pipe.stage = stage
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


def text_encoder_blocks(text_encoder) -> nn.ModuleList | None:
    """The transformer blocks of a `wan.models.t5.TextEncoder` (transformers UMT5EncoderModel:
    `model.encoder.block`), or None when the encoder has another layout (then it visits whole)."""
    blocks = getattr(getattr(getattr(text_encoder, "model", None), "encoder", None), "block", None)
    return blocks if isinstance(blocks, nn.ModuleList) else None


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers, each once (tied weights such as umT5's shared embedding appear once)."""
    seen, out = set(), []
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _pin(tensors: list[torch.Tensor]) -> None:
    """Move each tensor's data to pinned CPU memory (fast, asynchronous host-to-device copies); plain CPU memory
    where no CUDA device exists."""
    for t in tensors:
        data = t.data.cpu()
        if torch.cuda.is_available() and not data.is_pinned():
            data = data.pin_memory()
        t.data = data


@contextlib.contextmanager
def visit(model: nn.Module, device: torch.device | str, streamed: nn.ModuleList | None = None):
    """Run `model` on `device` for the duration of the block, its weights living in (pinned) CPU memory.

    Tensors outside `streamed` are copied to `device` on entry; each module of `streamed` is copied right
    before its forward and dropped right after (so the device holds the rest + about one block). On exit every
    tensor points at its CPU copy again: nothing is copied back, the device memory is released. Numbers are
    unchanged (the same weights compute on the same device)."""
    device = torch.device(device)
    tensors = _tensors(model)
    _pin(tensors)
    cpu_data = [t.data for t in tensors]
    inner = {id(t) for t in _tensors(streamed)} if streamed is not None else set()
    for t in tensors:
        if id(t) not in inner:
            t.data = t.data.to(device, non_blocking=True)
    handles = _stream_hooks(streamed, device) if streamed is not None else []
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        for t, data in zip(tensors, cpu_data):
            t.data = data
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _stream_hooks(blocks: nn.ModuleList, device: torch.device) -> list:
    """Hooks that copy each block's (pinned CPU) tensors to `device` before its forward and point them back at
    the CPU copies after it. Returns the hook handles."""
    handles = []
    for block in blocks:
        tensors = _tensors(block)
        cpu_data = [t.data for t in tensors]

        def pre(mod, args, _t=tensors, _cpu=cpu_data):
            for t, data in zip(_t, _cpu):
                t.data = data.to(device, non_blocking=True)

        def post(mod, args, out, _t=tensors, _cpu=cpu_data):
            for t, data in zip(_t, _cpu):
                t.data = data
            return out

        handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
    return handles


def stream_blocks(dit: nn.Module, device: torch.device) -> list:
    """Everything but `dit.blocks` goes to `device`; each block is copied to the GPU right before its forward
    and dropped right after (weights stay in pinned CPU memory). Returns the hook handles."""
    for name, child in dit.named_children():
        if name != "blocks":
            child.to(device)
    dit.blocks.to("cpu")
    _pin(_tensors(dit.blocks))
    return _stream_hooks(dit.blocks, device)


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
