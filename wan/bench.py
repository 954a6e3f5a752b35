"""Benchmark entry point: every figure in BENCHMARKS.md comes from here (or from a command named there).

    python -m wan.bench dit --sizes 480x832 --frames 81 [--spec stableavatar-1.3b] [--runs 5] [--json out.json]
    python -m wan.bench dit --fast [--no_compile] [--precision] --sizes 480x832 512x512 --frames 81
    python -m wan.bench dit_precision --sizes 480x832 --frames 81 [--no_compile]
    python -m wan.bench pipeline --sizes 480x832 --seconds 5 --steps 50 [--memory_mode model_cpu_offload]
    python -m wan.bench vae --sizes 480x832 --frames 81 [--dtype fp32] [--chunk 4]
    python -m wan.bench encoders --sizes 480x832 [--dtype bf16]
    python -m wan.bench attention --sizes 480x832 512x512      # SDPA layouts/backends (and FA3) at the DiT's shape
    [--attention auto|fa3|sdpa]  (every command: the attention backend, wan.models.attention.set_backend)

Real-size models are built directly on the GPU with random weights (never a CPU init of 1.7 B parameters) and
timed with CUDA events after warm-up; the median of `--runs` is reported with the peak memory. Sizes are W x H.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from wan.configs import get_config


def parse_size(s: str) -> tuple[int, int]:
    """'480x832' -> (width 480, height 832)."""
    try:
        w, h = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 480x832, got {s!r}") from None
    if w % 16 or h % 16:
        raise argparse.ArgumentTypeError(f"width and height must be multiples of 16, got {s}")
    return w, h


def _timer(fn, warmup: int, runs: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def dit_inputs(spec_name: str, width: int, height: int, frames: int, device: torch.device, dtype: torch.dtype,
               clip_frames: int | None = None, batch: int = 3, text_lens: tuple[int, ...] = (126, 126, 80)):
    """Random inputs shaped like one guidance-batched window call of the pipeline."""
    cfg = get_config(spec_name).dit
    clip_frames = clip_frames or frames
    f = (frames - 1) // 4 + 1
    h, w = height // 8, width // 8
    seq_len = ((clip_frames - 1) // 4 + 1) * (h // 2) * (w // 2)
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dt)

    a_tokens = (clip_frames * 640 - 400) // 320 + 1  # wav2vec2 token count for clip_frames of 16 kHz audio
    return dict(
        x=rnd(batch, cfg.out_dim, f, h, w), t=torch.full((batch,), 987.0, device=device),
        context=[rnd(text_lens[i % len(text_lens)], cfg.text_dim) for i in range(batch)], seq_len=seq_len,
        clip_fea=rnd(batch, cfg.clip_tokens, cfg.clip_dim, dt=torch.float32),
        y=rnd(batch, cfg.in_dim - cfg.out_dim, f, h, w),
        vocal_embeddings=rnd(1, a_tokens, cfg.audio_in_dim, dt=torch.float32),
        audio_null=[True] + [False] * (batch - 1), video_sample_n_frames=clip_frames,
    )


def _random_dit(spec_name: str, device: torch.device, dtype: torch.dtype):
    """The real-size DiT with random weights built on `device`; the zero-initialised audio keys/values get the
    Linear default init too, so that every branch of the block computes something."""
    from wan.models.dit import WanTransformer3DFantasyModel

    with torch.device(device):
        model = WanTransformer3DFantasyModel(get_config(spec_name).dit)
        for block in model.blocks:
            block.cross_attn.k_vocal.reset_parameters()
            block.cross_attn.v_vocal.reset_parameters()
    return model.to(dtype).eval().requires_grad_(False)


def _dit_bench_inputs(spec_name: str, width: int, height: int, frames: int, device: torch.device,
                      dtype: torch.dtype) -> dict:
    inputs = dit_inputs(spec_name, width, height, frames, device, dtype)
    if device.type == "cpu":  # CPU autocast leaves nn.LayerNorm in its input dtype: no float32 inputs there
        inputs.update(clip_fea=inputs["clip_fea"].to(dtype), vocal_embeddings=inputs["vocal_embeddings"].to(dtype))
    return inputs


def _fast_info(model) -> dict:
    state = getattr(model, "_fast_state", None)
    if state is None:
        return {"fast": False}
    info = {"fast": True, "compiled": state.compiled is not None, "compile_failed": state.compile_failed,
            "fp32_residual": state.fp32_residual, "fp8": state.fp8}
    if state.teacache is not None:
        info["teacache"] = {"threshold": state.teacache.threshold, "calls": state.teacache.calls,
                            "skipped": state.teacache.skipped}
    return info


def dit_precision(model, inputs: dict, spec_name: str, device: torch.device, dtype: torch.dtype) -> dict:
    """Relative L2 error, against a float32 forward with the same weights (no autocast, no TF32), of the
    reference `dtype`-autocast forward (the original's precision layout) and of the fast forward.

    model: the `dtype` model (fast enabled or not: the fast path is enabled for the comparison either way, with
    its existing state if there is one)."""
    from wan.models.fast import disable_fast, enable_fast

    ac = torch.autocast(device.type, dtype=dtype)
    fp32 = _random_dit(spec_name, device, torch.float32)
    fp32.load_state_dict(model.state_dict())  # the same (dtype-representable) weights
    inputs32 = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else
                    [u.float() for u in v] if isinstance(v, list) and v and isinstance(v[0], torch.Tensor) else v)
                for k, v in inputs.items()}
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        t0 = time.perf_counter()
        with torch.no_grad():
            ref32 = fp32(**inputs32).float()
        if device.type == "cuda":
            torch.cuda.synchronize()
        fp32_s = time.perf_counter() - t0
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    del fp32
    if device.type == "cuda":
        torch.cuda.empty_cache()

    def rel(out):
        return ((out.float() - ref32).norm() / ref32.norm()).item()

    state = getattr(model, "_fast_state", None)
    disable_fast(model)
    with torch.no_grad(), ac:
        ref_err = rel(model(**inputs))
    state = enable_fast(model, state=state, compile=state is None)
    with torch.no_grad(), ac:
        fast_err = rel(model(**inputs))
    return {"ref_bf16_rel_l2": ref_err, "fast_rel_l2": fast_err, "fast_over_ref": fast_err / ref_err,
            "fp32_forward_s": fp32_s, **_fast_info(model)}


def bench_dit(args) -> dict:
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    width, height = args.size
    t0 = time.perf_counter()
    model = _random_dit(args.spec, device, dtype)
    build_s = time.perf_counter() - t0
    if getattr(args, "fast", False) or getattr(args, "fp8", False):
        from wan.models.fast import enable_fast

        enable_fast(model, compile=not args.no_compile, fp8=args.fp8)
    inputs = _dit_bench_inputs(args.spec, width, height, args.frames, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step():
        with torch.no_grad(), autocast:
            return model(**inputs)

    t0 = time.perf_counter()  # the first call includes torch.compile's compilation on the fast path
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    first_call_s = time.perf_counter() - t0
    times = _timer(step, max(args.warmup - 1, 0), args.runs, device)
    res = {
        "what": "dit_forward", "spec": args.spec, "size_wxh": f"{width}x{height}", "frames": args.frames,
        "batch": 3, "tokens": inputs["seq_len"], "dtype": args.dtype, "median_s": statistics.median(times),
        "min_s": min(times), "runs": len(times), "first_call_s": first_call_s, "build_s": build_s,
        "params": sum(p.numel() for p in model.parameters()), **_fast_info(model),
    }
    if device.type == "cuda":
        res["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["device"] = torch.cuda.get_device_name()
    res["torch"] = torch.__version__
    if getattr(args, "profile", None):
        try:
            res["profile_top"] = _profile(step, device, Path(args.profile) / f"dit_{width}x{height}.txt")
        except Exception as err:  # noqa: BLE001 - never lose the timing to the profiler
            print(f"profile failed: {type(err).__name__}: {err}", flush=True)
    if getattr(args, "precision", False) and dtype != torch.float32:
        try:  # the timing above is reported even if the float32 comparison cannot run
            res["precision"] = dit_precision(model, inputs, args.spec, device, dtype)
        except Exception as err:  # noqa: BLE001
            res["precision_error"] = f"{type(err).__name__}: {err}"[:500]
            print(f"precision comparison failed: {res['precision_error']}", flush=True)
    return res


def _profile(fn, device: torch.device, out: Path, rows: int = 30) -> list[dict]:
    """One call of `fn` under torch.profiler: the table of ops by device time goes to `out` (and is printed);
    returns the top `rows` as dicts."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    avgs = prof.key_averages()
    key = "self_cpu_time_total"
    if device.type == "cuda":  # renamed from self_cuda_time_total in recent torch
        key = "self_device_time_total" if hasattr(avgs[0], "self_device_time_total") else "self_cuda_time_total"
    table = avgs.table(sort_by=key, row_limit=rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table, flush=True)
    top = sorted(avgs, key=lambda e: getattr(e, key, 0), reverse=True)[:rows]
    return [{"op": e.key, "calls": e.count, "self_device_ms": getattr(e, key, 0) / 1000} for e in top]


def bench_dit_precision(args) -> dict:
    """`dit_precision`: the fast and the reference bf16 forwards against a float32 forward, real size, random
    weights (rounded to bf16 so that all three use the same weights)."""
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if dtype == torch.float32:
        raise ValueError("dit_precision compares a low-precision forward against float32: use --dtype bf16")
    width, height = args.size
    model = _random_dit(args.spec, device, dtype)
    from wan.models.fast import enable_fast

    enable_fast(model, compile=not args.no_compile, fp8=args.fp8)
    inputs = _dit_bench_inputs(args.spec, width, height, args.frames, device, dtype)
    res = {"what": "dit_precision", "spec": args.spec, "size_wxh": f"{width}x{height}", "frames": args.frames,
           "batch": 3, "tokens": inputs["seq_len"], "dtype": args.dtype,
           **dit_precision(model, inputs, args.spec, device, dtype), "torch": torch.__version__}
    if device.type == "cuda":
        res["device"] = torch.cuda.get_device_name()
    return res


def build_random_pipeline(spec_name: str, device: torch.device, dtype: torch.dtype, workdir: Path,
                          on_cpu: bool = False):
    """Every model of the pipeline at `spec_name` size with random weights, built directly on `device`
    (then moved to the CPU when `on_cpu`, for the offload modes). The umT5 tokenizer is a tiny trained one
    (token ids only need to fit the vocabulary)."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from wan.models.audio import AudioEncoder
    from wan.models.clip import ImageEncoder, build_clip_vision
    from wan.models.dit import WanTransformer3DFantasyModel
    from wan.models.t5 import TextEncoder, build_umt5
    from wan.models.vae import WanVAE, build_autoencoder
    from wan.pipeline import StableAvatarPipeline
    from wan.testing.tiny_encoders import train_spiece, write_t5_tokenizer
    from wan.testing.tiny_vae_audio import wav2vec_config

    from wan.checkpoints.t5 import load_t5_tokenizer

    spec = get_config(spec_name)
    tok = load_t5_tokenizer(write_t5_tokenizer(workdir / "tokenizer", train_spiece(160)))
    with torch.device(device):
        dit = WanTransformer3DFantasyModel(spec.dit).to(dtype).eval().requires_grad_(False)
        t5 = TextEncoder(build_umt5(spec.t5, empty=False).to(dtype), tok, spec.t5.text_len)
        clip = ImageEncoder(build_clip_vision(spec.clip, empty=False), spec.clip)
        vae = WanVAE(spec.vae, build_autoencoder(spec.vae)).eval().requires_grad_(False)
        # .to(device): transformers makes `masked_spec_embed` with the legacy torch.Tensor(n), which ignores the
        # device context and stays on the CPU
        w2v = Wav2Vec2Model(wav2vec_config(spec.dit.audio_in_dim)).to(device).eval().requires_grad_(False)
    audio = AudioEncoder(w2v, Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                       do_normalize=True, return_attention_mask=False))
    if on_cpu:
        for m in (dit, t5, clip, vae, audio):
            m.to("cpu")
        torch.cuda.empty_cache()
    return StableAvatarPipeline(dit, vae, t5, clip, audio, spec, device=device, dtype=dtype)


def bench_pipeline(args) -> dict:
    """One full generation (+ streamed decode and mp4 write) on random weights: wall time, time per step,
    peak VRAM and peak host RSS."""
    import resource
    import tempfile

    import numpy as np

    from wan.memory import apply_memory_mode

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    width, height = args.size
    work = Path(tempfile.mkdtemp(prefix="wan_bench_"))
    t0 = time.perf_counter()
    pipe = build_random_pipeline(args.spec, device, dtype, work, on_cpu=args.memory_mode != "model_full_load")
    apply_memory_mode(pipe, args.memory_mode)
    if args.fast or args.teacache or args.fp8:
        from wan.models.fast import TeaCache, enable_fast

        tc = TeaCache(args.teacache, num_steps=args.steps) if args.teacache else None
        enable_fast(pipe.dit, compile=not args.no_compile, teacache=tc, fp8=args.fp8)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(args.seconds * 16000))).astype(np.float32)
    from PIL import Image

    ref = work / "ref.png"
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(ref)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    out = pipe.generate(ref, audio, "a person is talking", width=width, height=height,
                        num_inference_steps=args.steps, overlap_window_length=args.overlap,
                        clip_length=args.frames, progress=False)
    t2 = time.perf_counter()
    pipe.write_video(out, work / "out", progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t3 = time.perf_counter()
    from wan.io.video import probe

    info = probe(work / "out" / "video.mp4")
    res = {
        "what": "pipeline", "spec": args.spec, "size_wxh": f"{width}x{height}", "frames": args.frames,
        "seconds": args.seconds, "steps": args.steps, "memory_mode": args.memory_mode, "dtype": args.dtype,
        "video_frames": info.num_frames, "audio_codec": info.audio_codec, "build_s": build_s,
        "generate_s": t2 - t1, "per_step_s": (t2 - t1) / args.steps, "decode_write_s": t3 - t2,
        "wall_s": t3 - t1, "timings": out.timings, **_fast_info(pipe.dit),
        "teacache_threshold": args.teacache,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if device.type == "cuda":
        res["peak_vram_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["device"] = torch.cuda.get_device_name()
    return res


def bench_attention(args) -> list[dict]:
    """The DiT's self-attention call (batch 3 x 12 heads x the window's tokens x 128) under SDPA in several
    layouts and backends, to see what the one `attention()` entry point should hand the kernel: TFLOP/s each
    (4*B*H*S^2*D flops per call)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from wan.models import attention as attn
    from wan.models.attention import attention

    device = torch.device(args.device)
    width, height = args.size
    spec = get_config(args.spec).dit
    b, n, d = 3, spec.num_heads, spec.head_dim
    s = ((args.frames - 1) // 4 + 1) * (height // 16) * (width // 16)
    g = torch.Generator(device=device).manual_seed(0)
    results = []

    def run(name: str, fn, tokens: int, dtype=torch.bfloat16, backend=None):
        q, k, v = (torch.randn(b, tokens, n, d, device=device, dtype=dtype, generator=g) for _ in range(3))
        ctx = sdpa_kernel([backend]) if backend is not None else torch.autocast(device.type, enabled=False)
        try:
            with ctx, torch.no_grad():
                times = _timer(lambda: fn(q, k, v), args.warmup, args.runs, device)
        except RuntimeError as err:
            results.append({"what": "attention", "variant": name, "error": str(err)[:200]})
            print(f"attention {name}: {str(err)[:200]}", flush=True)
            return
        sec = statistics.median(times)
        r = {"what": "attention", "variant": name, "size_wxh": f"{width}x{height}", "tokens": tokens,
             "shape": [b, n, tokens, d], "dtype": str(dtype), "median_s": sec,
             "tflops": 4 * b * n * tokens ** 2 * d / sec / 1e12}
        results.append(r)
        print(f"attention {name:38s} S={tokens}: {sec * 1e3:7.2f} ms  {r['tflops']:6.1f} TFLOP/s", flush=True)

    def views(q, k, v):  # SDPA on [B, H, S, D] transposed views of [B, S, H, D], no output copy
        return torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))

    def contiguous(q, k, v):
        return views(*(t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)))

    chosen = attn.backend_for(device, torch.bfloat16, d)
    run(f"entry point ({chosen}, + flatten)", lambda q, k, v: attention(q, k, v).flatten(2), s)
    fa3 = attn.load_fa3()
    if chosen != "fa3" and not isinstance(fa3, str) and attn.fa3_unsupported(device, torch.bfloat16, d, fa3) is None:
        requested = attn.get_backend()
        attn.set_backend("fa3")
        try:
            run("entry point (--attention fa3, + flatten)", lambda q, k, v: attention(q, k, v).flatten(2), s)
        finally:
            attn.set_backend(requested)
    run("BSHD transposed views", views, s)
    run("BHSD contiguous (copies included)", contiguous, s)
    run("BSHD views fp16", views, s, torch.float16)
    pad = -(-s // 128) * 128
    if pad != s:
        run(f"BSHD views, S padded to {pad}", views, pad)
        run(f"keys/values padded to {pad} (not exact)",
            lambda q, k, v: views(q, *(torch.nn.functional.pad(t, (0, 0, 0, 0, 0, pad - s)) for t in (k, v))), s)
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
        run(f"forced {backend.name}", views, s, backend=backend)
    return results


def _reset_peak(device: torch.device) -> float:
    """Synchronise, reset the peak counter; returns the GiB allocated now (weights + inputs)."""
    if device.type != "cuda":
        return 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 2**30


def _component_result(what: str, args, times: list[float], resident_gib: float, device: torch.device,
                      **extra) -> dict:
    res = {"what": what, "spec": args.spec, "dtype": args.dtype, **extra, "median_s": statistics.median(times),
           "min_s": min(times), "runs": len(times)}
    if device.type == "cuda":
        res["resident_gib"] = resident_gib  # weights + inputs before the call
        res["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["device"] = torch.cuda.get_device_name()
    res["torch"] = torch.__version__
    return res


def bench_vae(args) -> list[dict]:
    """Wan VAE on random weights built on the device: encode of a `--frames` video, whole decode and streamed
    decode (`--chunk` latent frames per step, each chunk copied to the host as the mp4 writer consumes it)
    of its latent. Each phase: median of `--runs` after `--warmup`, peak memory of that phase."""
    from wan.models.vae import WanVAE, build_autoencoder

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    cfg = get_config(args.spec).vae
    width, height = args.size
    if (args.frames - 1) % cfg.temporal_compression:
        raise ValueError(f"--frames {args.frames}: the causal VAE needs 1 + 4k frames (e.g. 81)")
    t0 = time.perf_counter()
    with torch.device(device):
        vae = WanVAE(cfg, build_autoencoder(cfg)).to(dtype).eval().requires_grad_(False)
    build_s = time.perf_counter() - t0
    g = torch.Generator(device="cpu").manual_seed(0)
    video = (torch.rand(1, 3, args.frames, height, width, generator=g) * 2 - 1).to(device, dtype)
    common = dict(size_wxh=f"{width}x{height}", frames=args.frames, latent_frames=(args.frames - 1) // 4 + 1,
                  build_s=build_s, params=sum(p.numel() for p in vae.parameters()))
    results = []
    with torch.no_grad():
        resident = _reset_peak(device)
        times = _timer(lambda: vae.encode(video), args.warmup, args.runs, device)
        results.append(_component_result("vae_encode", args, times, resident, device, **common))
        latents = vae.encode(video)
        del video
        if device.type == "cuda":
            torch.cuda.empty_cache()

        resident = _reset_peak(device)
        times = _timer(lambda: vae.decode(latents), args.warmup, args.runs, device)
        results.append(_component_result("vae_decode", args, times, resident, device, **common))
        if device.type == "cuda":
            torch.cuda.empty_cache()

        def stream():
            for part in vae.decode_stream(latents, chunk=args.chunk):
                part.cpu()

        resident = _reset_peak(device)
        times = _timer(stream, args.warmup, args.runs, device)
        results.append(_component_result("vae_decode_stream", args, times, resident, device, chunk=args.chunk,
                                         **common))
    return results


def bench_encoders(args) -> list[dict]:
    """umT5 encode of the pipeline's two prompts (negative + positive, padded to text_len) in `--dtype` (bf16 at
    inference) and CLIP encode of one `--sizes` image (fp32 model, as the original; the image arrives in
    `--dtype` like in the pipeline). Random weights built on the device, one model resident at a time."""
    import tempfile

    from wan.checkpoints.t5 import load_t5_tokenizer
    from wan.models.clip import ImageEncoder, build_clip_vision
    from wan.models.t5 import TextEncoder, build_umt5
    from wan.testing.tiny_encoders import train_spiece, write_t5_tokenizer

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    spec = get_config(args.spec)
    width, height = args.size
    results = []
    work = Path(tempfile.mkdtemp(prefix="wan_bench_"))
    tok = load_t5_tokenizer(write_t5_tokenizer(work / "tokenizer", train_spiece(160)))
    prompts = [spec.pipeline.negative_prompt,
               "A middle-aged woman with short light brown hair, wearing pearl earrings and a blue blazer, is "
               "speaking passionately in front of a blurred background resembling a government building."]

    t0 = time.perf_counter()
    with torch.device(device):
        t5 = TextEncoder(build_umt5(spec.t5, empty=False).to(dtype), tok, spec.t5.text_len)
    build_s = time.perf_counter() - t0
    resident = _reset_peak(device)
    times = _timer(lambda: t5.encode(prompts), args.warmup, args.runs, device)
    results.append(_component_result(
        "t5_encode", args, times, resident, device, prompts=len(prompts), text_len=spec.t5.text_len,
        tokens=[len(e) for e in t5.encode(prompts)], build_s=build_s,
        params=sum(p.numel() for p in t5.parameters())))
    del t5
    if device.type == "cuda":
        torch.cuda.empty_cache()

    t0 = time.perf_counter()
    with torch.device(device):
        clip = ImageEncoder(build_clip_vision(spec.clip, empty=False), spec.clip)
    build_s = time.perf_counter() - t0
    g = torch.Generator(device="cpu").manual_seed(0)
    image = (torch.rand(1, 3, height, width, generator=g) * 2 - 1).to(device, dtype)
    resident = _reset_peak(device)
    times = _timer(lambda: clip.encode(image), args.warmup, args.runs, device)
    results.append(_component_result(
        "clip_encode", args, times, resident, device, size_wxh=f"{width}x{height}", model_dtype="fp32",
        out_shape=list(clip.encode(image).shape), build_s=build_s,
        params=sum(p.numel() for p in clip.parameters())))
    return results


def _component_line(r: dict) -> str:
    """One printed line for the vae / encoder results."""
    shape = f"{r['size_wxh']} x{r['frames']}" if "frames" in r else r.get("size_wxh", f"{r.get('prompts')} prompts")
    extra = f" chunk {r['chunk']}" if "chunk" in r else ""
    return (f"{r['what']:17s} {shape:>14s} {r['dtype']}{extra}: median {r['median_s']:.3f} s "
            f"(min {r['min_s']:.3f}, {r['runs']} runs)"
            + (f", peak {r['peak_gib']:.2f} GiB (resident {r['resident_gib']:.2f})" if "peak_gib" in r else ""))


def main(args: argparse.Namespace) -> None:
    from wan.models.attention import describe_backend, set_backend

    results = []
    set_backend(getattr(args, "attention", "auto"))
    print(f"attention: {describe_backend(args.device)}", flush=True)
    if args.dtype is None:  # as at inference: the VAE in float32, everything else in bf16
        args.dtype = "fp32" if args.what == "vae" else "bf16"
    bench = {"dit": bench_dit, "dit_precision": bench_dit_precision, "pipeline": bench_pipeline, "vae": bench_vae,
             "encoders": bench_encoders, "attention": bench_attention}[args.what]
    for size in args.sizes:
        a = argparse.Namespace(**{**vars(args), "size": size})
        out = bench(a)
        if isinstance(out, list):  # component benchmarks: one result per phase / model
            results.extend(out)
            for r in out if args.what != "attention" else ():  # attention prints its own lines
                print(_component_line(r), flush=True)
            continue
        results.append(out)
        r = results[-1]
        if r["what"] == "dit_precision" or "precision" in r:
            pr = r.get("precision", r)
            print(f"precision {r['size_wxh']:>9s} x{r['frames']:<4d} rel. L2 vs float32: reference {args.dtype} "
                  f"{pr['ref_bf16_rel_l2']:.3e}, fast {pr['fast_rel_l2']:.3e} (ratio {pr['fast_over_ref']:.3f}; "
                  f"compiled {pr.get('compiled')}, float32 forward {pr['fp32_forward_s']:.1f} s)", flush=True)
            if r["what"] == "dit_precision":
                continue
        if r["what"] == "pipeline":
            print(f"pipeline {r['size_wxh']} {r['seconds']} s audio, {r['steps']} steps, {r['memory_mode']}: "
                  f"wall {r['wall_s']:.1f} s ({r['per_step_s']:.2f} s/step, decode+write {r['decode_write_s']:.1f} s), "
                  f"{r['video_frames']} frames, peak VRAM {r.get('peak_vram_gib', 0):.2f} GiB, "
                  f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
            continue
        fast = ("" if not r.get("fast") else
                f" fast({'compiled' if r['compiled'] else 'eager'}, first call {r['first_call_s']:.1f} s)")
        if r.get("compile_failed"):
            print(f"torch.compile failed, eager fast path timed: {r['compile_failed']}", flush=True)
        print(f"{r['what']:12s} {r['size_wxh']:>9s} x{r['frames']:<4d} tokens {r['tokens']:6d} {r['dtype']}{fast}: "
              f"median {r['median_s']:.3f} s (min {r['min_s']:.3f}, {r['runs']} runs)"
              + (f", peak {r['peak_gib']:.2f} GiB" if "peak_gib" in r else ""), flush=True)
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%d"), "attention": describe_backend(args.device)}
        Path(args.json).write_text(json.dumps({**meta, "results": results}, indent=2))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["dit", "dit_precision", "pipeline", "vae", "encoders", "attention"])
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[parse_size("480x832")], help="W x H, e.g. 480x832 512x512")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--spec", default="stableavatar-1.3b")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp32"],
                   help="default: fp32 for vae (as at inference), bf16 otherwise (encoders: the T5's; CLIP is fp32)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", default=None)
    p.add_argument("--seconds", type=float, default=5.0, help="pipeline: audio length")
    p.add_argument("--steps", type=int, default=50, help="pipeline: denoising steps")
    p.add_argument("--overlap", type=int, default=5, help="pipeline: overlap_window_length")
    p.add_argument("--memory_mode", default="model_full_load", help="pipeline: GPU memory mode")
    p.add_argument("--chunk", type=int, default=4, help="vae: latent frames per streamed-decode step")
    p.add_argument("--attention", default="auto", choices=["auto", "fa3", "sdpa"],
                   help="attention backend (wan.models.attention.set_backend)")
    p.add_argument("--fast", action="store_true", help="dit, pipeline: wan.models.fast.enable_fast on the DiT")
    p.add_argument("--no_compile", action="store_true", help="with --fast / dit_precision: no torch.compile")
    p.add_argument("--fp8", action="store_true",
                   help="dit, dit_precision, pipeline: APPROXIMATE fp8 matmuls in the blocks (implies --fast)")
    p.add_argument("--teacache", type=float, default=0.0,
                   help="pipeline: APPROXIMATE TeaCache threshold (implies --fast; 0 = off, the original suggests 0.1)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="dit: profile one forward after the timing (torch.profiler table by device time into DIR)")
    p.add_argument("--precision", action="store_true",
                   help="dit: also compare reference and fast bf16 against a float32 forward (as dit_precision)")
    main(p.parse_args())
