"""GPU memory modes, applied from outside to a built StableAvatarPipeline (the models stay pure). `PLANS` says what
each mode does:

* model_full_load: every model on the GPU all run long (umT5 aside, see below); one batch-3 DiT forward per window.
  The reference.
* model_cpu_offload: models live on the CPU and each visits the GPU for its stage; the VAE decodes one latent frame
  per step. Same latents as full load.
* sequential_cpu_offload: as model_cpu_offload, and the DiT's 30 blocks stream from pinned memory (block k+1 copied
  on a side stream while block k runs: `BlockStreamer`), the three guidance branches go through the blocks one
  after the other (`forward_branches`: a third of the activations), the VAE works in exact halo tiles of <= 256 px
  (`WanVAE.enable_halo_tiling`). Same latents as full load (CPU: bit for bit); frames equal up to float rounding.
* model_cpu_offload_and_qfloat8: as model_cpu_offload, every DiT tensor whose name lacks "modulation" stored as
  float8_e4m3fn and cast per module call (the original's qfloat8). Changes outputs.

umT5 (10.6 GiB of bf16 weights, used once per `generate()`) never sits on the GPU whole: on CUDA, in every mode, it
visits the GPU for the text stage with its 24 blocks streamed (`BlockStreamer`) and its 2 GiB embedding looked up on
the CPU (a gather: the same bits), so the text stage needs about two blocks on top of what the mode keeps resident.
`offload_text_encoder=False` keeps the original's resident encoder in model_full_load.

Host memory: a long-lived process (the app, a jobs file) keeps umT5 in pinned CPU memory between `generate()` calls
(`keep_text_encoder=True`, the default). A one-shot run passes `keep_text_encoder=False`: umT5 is not pinned, streams
from where it was loaded, and is freed right after the prompts are encoded (a second `generate()` raises a
ValueError saying so).

`--GPU_memory_mode auto`: `resolve_memory_mode` / `choose_memory_mode` pick the fastest mode whose estimated peak
(`estimate_peaks`) fits the free GPU memory, before the models load.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from wan.configs import MEMORY_MODES

STAGE_MODELS = {"text_encoder": "text_encoder", "image_encoder": "image_encoder", "vae": "vae",
                "audio_encoder": "audio_encoder", "dit": "dit"}
# the device types on which the offload modes run; tests add "cpu" to exercise the machinery without a GPU
_OFFLOAD_DEVICE_TYPES = ("cuda",)

FREED_TEXT_ENCODER = ("the text encoder was freed after the prompts of the first generate() were encoded "
                      "(keep_text_encoder=False: a one-shot run); apply the memory mode with keep_text_encoder=True "
                      "to generate more than once with this pipeline")


@dataclass(frozen=True)
class ModePlan:
    """What a memory mode does. offload: models live on the CPU and visit the GPU for their stage;
    stream_dit: the DiT blocks stream from pinned CPU memory one at a time; guidance_batch: 3 = one batched DiT
    forward per window, 1 = the three guidance branches one after the other through the blocks (a third of the
    activations); decode_chunk: latent frames per VAE decode step; vae_tile: exact halo tiles of at most this many
    pixels a side for the VAE encode and decode (None: whole frames); fp8: DiT weights stored in float8_e4m3fn."""

    offload: bool
    stream_dit: bool = False
    guidance_batch: int = 3
    decode_chunk: int = 4
    vae_tile: int | None = None
    fp8: bool = False


PLANS = {
    "model_full_load": ModePlan(offload=False),
    "model_cpu_offload": ModePlan(offload=True, decode_chunk=1),
    "sequential_cpu_offload": ModePlan(offload=True, stream_dit=True, guidance_batch=1, decode_chunk=1,
                                       vae_tile=256),
    "model_cpu_offload_and_qfloat8": ModePlan(offload=True, decode_chunk=1, fp8=True),
}
assert set(PLANS) | {"auto"} == set(MEMORY_MODES)


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


def apply_memory_mode(pipe, mode: str, offload_text_encoder: bool | None = None,
                      keep_text_encoder: bool = True) -> None:
    """Configure `pipe` for `mode` (see the module docstring); may be applied again with another mode, except after
    model_cpu_offload_and_qfloat8 (its fp8 weights stay).

    offload_text_encoder: model_full_load only; None = on for a CUDA pipeline (the text encoder visits the GPU for
    its stage, blocks streamed), off elsewhere (nothing to save on the CPU). The offload modes always stream it.
    keep_text_encoder: False frees the text encoder after the first prompts are encoded (one-shot runs: no 11 GB
    of host memory held for the rest of the run)."""
    if mode == "auto":
        raise ValueError("GPU_memory_mode auto is resolved before loading: call resolve_memory_mode() first")
    if mode not in PLANS:
        raise ValueError(f"unknown GPU_memory_mode {mode!r}; choose one of {MEMORY_MODES}")
    plan = PLANS[mode]
    device = pipe.device
    if plan.offload and device.type not in _OFFLOAD_DEVICE_TYPES:
        raise ValueError(f"GPU_memory_mode {mode} needs a CUDA device")
    if plan.offload:
        te_offloaded = True
    elif offload_text_encoder is None:
        te_offloaded = device.type == "cuda"
    else:
        te_offloaded = offload_text_encoder
    for name in STAGE_MODELS.values():
        model = getattr(pipe, name)
        _move(model, "cpu" if plan.offload or (te_offloaded and name == "text_encoder") else device)
    if te_offloaded and keep_text_encoder and pipe.text_encoder is not None:
        _pin(_tensors(pipe.text_encoder))  # once, here: pinning 11 GB takes seconds
    if plan.fp8:
        quantize_fp8(pipe.dit, compute_dtype=pipe.dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    pipe.guidance_batch = plan.guidance_batch
    pipe.decode_chunk = plan.decode_chunk
    if pipe.vae is not None:
        pipe.vae.disable_halo_tiling()
        if plan.vae_tile is not None:
            pipe.vae.enable_halo_tiling(plan.vae_tile)

    @contextlib.contextmanager
    def stage(name: str):
        if name == "text_encoder":
            te = pipe.text_encoder
            if te is None:
                raise ValueError(FREED_TEXT_ENCODER)
            with (visit(te, device, text_encoder_blocks(te), host=text_encoder_host_modules(te)) if te_offloaded
                  else contextlib.nullcontext()):
                yield
            del te
            if not keep_text_encoder:
                release_text_encoder(pipe)
            return
        if not plan.offload:
            yield
            return
        model = getattr(pipe, STAGE_MODELS[name])
        if plan.stream_dit and name == "dit":
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
            if device.type == "cuda":
                torch.cuda.empty_cache()

    pipe.stage = stage


def release_text_encoder(pipe) -> None:
    """Drop the pipeline's text encoder and give its memory back (host: plain and pinned; GPU: cached blocks)."""
    pipe.text_encoder = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        empty_host_cache = getattr(torch._C, "_host_emptyCache", None)  # pinned blocks cached by torch
        if empty_host_cache is not None:
            empty_host_cache()


# ------------------------------------------------------------------------------------------------ text encoder


def text_encoder_blocks(text_encoder) -> nn.ModuleList | None:
    """The transformer blocks of a `wan.models.t5.TextEncoder` (transformers UMT5EncoderModel:
    `model.encoder.block`), or None when the encoder has another layout (then it visits whole)."""
    blocks = getattr(getattr(getattr(text_encoder, "model", None), "encoder", None), "block", None)
    return blocks if isinstance(blocks, nn.ModuleList) else None


def text_encoder_host_modules(text_encoder) -> list[nn.Module]:
    """The umT5 token embedding (`encoder.embed_tokens`, tied to `shared`: 256k x 4096, 2 GiB in bf16): looked up
    on the CPU during a visit, only the looked-up rows go to the GPU. Empty for another layout."""
    encoder = getattr(getattr(text_encoder, "model", None), "encoder", None)
    embed = getattr(encoder, "embed_tokens", None)
    return [embed] if isinstance(embed, nn.Embedding) else []


# ------------------------------------------------------------------------------------------------ visits, streaming


def _tensors(module: nn.Module) -> list[Tensor]:
    """Parameters and buffers, each once (tied weights such as umT5's shared embedding appear once)."""
    seen, out = set(), []
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _pin(tensors: list[Tensor]) -> None:
    """Move each tensor's data to pinned CPU memory (fast, asynchronous host-to-device copies); plain CPU memory
    where no CUDA device exists."""
    for t in tensors:
        data = t.data.cpu()
        if torch.cuda.is_available() and not data.is_pinned():
            data = data.pin_memory()
        t.data = data


def _to_device(data: Tensor, device: torch.device) -> Tensor:
    # copy=True: on the CPU (tests) a visit really works on copies, as it does on a GPU
    return data.to(device, non_blocking=True, copy=True)


def _move_args(args: tuple, kwargs: dict, device) -> tuple[tuple, dict]:
    move = (lambda v: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v)
    return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}


@contextlib.contextmanager
def visit(model: nn.Module, device: torch.device | str, streamed: nn.ModuleList | None = None,
          host: list[nn.Module] = ()):
    """Run `model` on `device` for the duration of the block, its weights living in CPU memory (pinned or not).

    Tensors outside `streamed` and `host` are copied to `device` on entry; the modules of `streamed` are copied one
    at a time right before their forward and dropped right after (on CUDA the next one is copied on a side stream
    meanwhile, see `BlockStreamer`); the modules of `host` keep their weights on the CPU and compute there (inputs
    moved to the CPU, outputs to `device`), and the model's own inputs are then moved to `device`. On exit every
    tensor points at its CPU copy again: nothing is copied back, the device memory is released. Numbers are
    unchanged (the same weights, the same ops; a lookup is exact on any device)."""
    device = torch.device(device)
    tensors = _tensors(model)
    cpu_data = [t.data for t in tensors]
    stay = {id(t) for t in _tensors(streamed)} if streamed is not None else set()
    host_ids = {id(t) for m in host for t in _tensors(m)}
    for t in tensors:
        if id(t) not in stay and id(t) not in host_ids:
            t.data = _to_device(t.data, device)
    handles = BlockStreamer(streamed, device).hooks() if streamed is not None else []
    if host:
        handles.append(model.register_forward_pre_hook(lambda m, a, kw: _move_args(a, kw, device), with_kwargs=True))
    for m in host:
        cpu = next(iter(_tensors(m))).device
        handles.append(m.register_forward_pre_hook(lambda m, a, kw, _d=cpu: _move_args(a, kw, _d), with_kwargs=True))
        handles.append(m.register_forward_hook(lambda m, a, out: out.to(device, non_blocking=True)))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        for t, data in zip(tensors, cpu_data):
            t.data = data
        if device.type == "cuda":
            torch.cuda.empty_cache()


class BlockStreamer:
    """Forward hooks that run a ModuleList's blocks on `device` while their weights live in CPU memory: block k's
    tensors are copied to `device` before its forward and pointed back at their CPU copies after it.

    On CUDA the copies overlap the compute: when block k starts, block k+1 (block 0 after the last, for the next
    forward) is copied on a side stream from pinned memory; the compute stream waits for that copy's event before
    block k+1 runs, and `record_stream` keeps the allocator from reusing a block's memory before the compute stream
    is done with it. The device holds about two blocks. Elsewhere (CPU tests) each block is copied when it starts."""

    def __init__(self, blocks: nn.ModuleList, device: torch.device):
        self.device = torch.device(device)
        self.params = [_tensors(b) for b in blocks]
        self.cpu = [[t.data for t in ts] for ts in self.params]
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.ready: dict[int, tuple[list[Tensor], object]] = {}  # prefetched block -> (device tensors, event)
        self.blocks = blocks

    def _fetch(self, k: int) -> tuple[list[Tensor], object]:
        if self.copy_stream is None:
            return [_to_device(d, self.device) for d in self.cpu[k]], None
        with torch.cuda.stream(self.copy_stream):
            data = [_to_device(d, self.device) for d in self.cpu[k]]
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        return data, event

    def pre(self, k: int) -> None:
        data, event = self.ready.pop(k, None) or self._fetch(k)
        self.ready.clear()  # a prefetch for another block (blocks run out of order) is dropped
        if event is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(event)
            for d in data:
                d.record_stream(compute)
        for t, d in zip(self.params[k], data):
            t.data = d
        if self.copy_stream is not None:
            nxt = (k + 1) % len(self.params)
            self.ready[nxt] = self._fetch(nxt)

    def post(self, k: int) -> None:
        for t, d in zip(self.params[k], self.cpu[k]):
            t.data = d

    def hooks(self) -> list:
        """Install the hooks; returns their handles (removing them also drops a pending prefetch)."""
        handles = []
        for k, block in enumerate(self.blocks):
            handles.append(block.register_forward_pre_hook(lambda m, a, _k=k: self.pre(_k)))
            handles.append(block.register_forward_hook(lambda m, a, out, _k=k: self.post(_k)))
        handles.append(_Callback(self.ready.clear))
        return handles


class _Callback:
    """A hook-handle look-alike whose `remove()` runs a function."""

    def __init__(self, fn):
        self.fn = fn

    def remove(self) -> None:
        self.fn()


def stream_blocks(dit: nn.Module, device: torch.device) -> list:
    """Everything but `dit.blocks` goes to `device`; the blocks stream from pinned CPU memory (`BlockStreamer`).
    Returns the hook handles."""
    for name, child in dit.named_children():
        if name != "blocks":
            child.to(device)
    dit.blocks.to("cpu")
    _pin(_tensors(dit.blocks))
    return BlockStreamer(dit.blocks, device).hooks()


# ------------------------------------------------------------------------------------------------ guidance branches


class _OneBranch:
    """`dit.token_split` that keeps guidance branch `b` through the blocks and the head (the `TokenSplit` seam that
    CFG-parallel inference uses across processes, here across time)."""

    def __init__(self, b: int):
        self.b = b

    def shard_tokens(self, tokens: Tensor, freqs: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
        return tokens[self.b:self.b + 1], freqs

    def shard_batch(self, x: Tensor) -> Tensor:
        return x[self.b:self.b + 1]

    def gather(self, out: Tensor, num_groups: int) -> Tensor:
        return out


def forward_branches(dit: nn.Module, **kwargs) -> Tensor:
    """`dit(**kwargs)` for a guidance batch, its branches one after the other through the blocks and the head:
    the block activations of one branch instead of three. The embeddings and the audio adapter still run on the
    whole batch (as CFG-parallel inference does), so every kernel sees the same shapes as in the batched forward
    except the blocks' and the head's batch size."""
    from wan.models.dit import TokenSplit

    base = dit.token_split
    if type(base) is not TokenSplit:
        raise ValueError("guidance branches one at a time (sequential_cpu_offload) do not combine with parallel "
                         "inference")
    try:
        outs = []
        for b in range(kwargs["x"].shape[0]):
            dit.token_split = _OneBranch(b)
            outs.append(dit(**kwargs))
    finally:
        dit.token_split = base
    return torch.cat(outs)


# ------------------------------------------------------------------------------------------------ fp8


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


# ------------------------------------------------------------------------------------------------ auto

GIB = 2**30
# Peaks of the real models (bf16 DiT and umT5, fp32 VAE/CLIP/wav2vec2), GiB, random weights, 480x832 (32,760
# tokens per window), from BENCHMARKS.md (H200/H100, torch 2.11): measured where marked, else derived from them.
RESIDENT = {  # weights on the GPU
    "dit": 1.747e9 * 2 / GIB,  # 3.25: parameter count x bf16
    "image_encoder": 2.45,  # measured (CLIP resident)
    "vae": 0.48,  # measured (VAE resident 0.51 incl. its input)
    "audio_encoder": 0.36,  # 94.4 M parameters x fp32
}
DIT_ACT_480x832 = 7.78 - 3.25  # measured peak of one batch-3 forward minus its weights: activations at 32,760 tokens
VAE_DECODE_ACT_480x832 = 9.02 - 0.51  # measured streamed decode peak minus resident
VAE_ENCODE_ACT_480x832 = 7.26 - 0.86  # measured 81-frame encode peak minus resident (weights + the input video)
TEXT_BLOCK = 0.40  # one umT5-XXL block (193 M parameters, bf16) + its activations at 2 x 512 tokens: estimated
DIT_BLOCK = 0.11  # one DiT block's weights (56 M parameters, bf16)
DIT_OUTSIDE_BLOCKS = 0.3  # DiT embeddings, audio adapter, head (stay on the GPU when the blocks stream): estimated
MARGIN = 1.0  # allocator fragmentation, cuDNN workspaces, the CUDA context's own use beyond `mem_get_info`: estimated
FASTEST_FIRST = ("model_full_load", "model_cpu_offload", "sequential_cpu_offload")


def estimate_peaks(width: int, height: int, clip_length: int = 81) -> dict[str, float]:
    """Estimated peak GPU memory (GiB, allocated) of each exact mode for one window of `clip_length` frames at
    width x height: the 480x832 measurements (BENCHMARKS.md) scaled with the DiT tokens (activations are linear
    in them: flash/cuDNN attention keeps no score matrix) and with the pixels (VAE). Not measured per size."""
    pixels = width * height / (480 * 832)
    lat_frames = (clip_length - 1) // 4 + 1
    tokens = (height // 16) * (width // 16) * lat_frames / 32760
    dit_act = DIT_ACT_480x832 * tokens
    dec, enc = VAE_DECODE_ACT_480x832 * pixels, VAE_ENCODE_ACT_480x832 * pixels
    video = 3 * clip_length * width * height * 4 / GIB  # the encode's fp32 input video
    others = RESIDENT["image_encoder"] + RESIDENT["vae"] + RESIDENT["audio_encoder"]
    full = RESIDENT["dit"] + others
    tile = PLANS["sequential_cpu_offload"].vae_tile
    # a halo tile covers about (tile + margins)^2 pixels: 14 px (decode) and 64 + 68 px (encode) of margins
    dec_tile = min(1.0, (tile + 14) ** 2 / (width * height)) * dec
    enc_tile = min(1.0, (tile + 132) ** 2 / (width * height)) * enc
    return {
        "model_full_load": full + max(2 * TEXT_BLOCK, dit_act, dec, enc + video),
        "model_cpu_offload": max(2 * TEXT_BLOCK, RESIDENT["dit"] + dit_act, RESIDENT["vae"] + max(dec, enc + video),
                                 RESIDENT["image_encoder"]),
        "sequential_cpu_offload": max(2 * TEXT_BLOCK, DIT_OUTSIDE_BLOCKS + 2 * DIT_BLOCK + dit_act / 3,
                                      RESIDENT["vae"] + max(dec_tile, enc_tile), RESIDENT["image_encoder"]),
    }


def choose_memory_mode(free_bytes: int, width: int, height: int, clip_length: int = 81,
                       allowed: tuple[str, ...] = FASTEST_FIRST) -> tuple[str, str]:
    """The fastest of `allowed` (fastest first) whose estimated peak + MARGIN fits `free_bytes` of GPU memory,
    and why; the most frugal one, with a warning in the reason, when none fits."""
    peaks = estimate_peaks(width, height, clip_length)
    free = free_bytes / GIB
    for mode in allowed:
        if peaks[mode] + MARGIN <= free:
            return mode, (f"{free:.1f} GiB free on the GPU; {mode} needs about {peaks[mode]:.1f} GiB (+{MARGIN:.0f} "
                          f"margin) at {width}x{height}, {clip_length} frames per window")
    mode = min(allowed, key=lambda m: peaks[m])
    return mode, (f"only {free:.1f} GiB free on the GPU; the most frugal mode, {mode}, needs about "
                  f"{peaks[mode]:.1f} GiB at {width}x{height}: it may run out of memory (free the GPU or lower the "
                  "size)")


def resolve_memory_mode(mode: str, device: torch.device, width: int, height: int, clip_length: int = 81,
                        allowed: tuple[str, ...] = FASTEST_FIRST) -> tuple[str, str]:
    """`mode` unless it is "auto"; auto = model_full_load off CUDA, else `choose_memory_mode` on the device's free
    memory now (call it before the models load). Returns (mode, reason)."""
    if mode != "auto":
        return mode, "chosen"
    device = torch.device(device)
    if device.type != "cuda":
        return "model_full_load", f"{device.type}: no GPU memory to save"
    free, _ = torch.cuda.mem_get_info(device)
    return choose_memory_mode(free, width, height, clip_length, allowed)
