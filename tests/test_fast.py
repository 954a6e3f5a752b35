"""The DiT's fast numerics (`set_numerics("fast")`, `wan.models.fast.enable_fast`): same function as the reference,
no less precise in bf16; TeaCache (wan/models/teacache.py) and fp8 (wan/models/fp8.py), both approximate."""

import warnings

import pytest
import torch

from wan.bench import dit_inputs
from wan.configs import get_config
from wan.models.dit import WanTransformer3DFantasyModel, rope_real
from wan.models.fast import disable_fast, enable_fast, is_fast
from wan.models.layers import rope_apply, rope_freqs_for_grid


def random_dit(seed: int = 0) -> WanTransformer3DFantasyModel:
    """Tiny DiT with every weight random (the audio k/v start at zero otherwise), rounded to bf16 so that the
    float32 and bf16 models hold the same weights."""
    torch.manual_seed(seed)
    model = WanTransformer3DFantasyModel(get_config("tiny").dit).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.dim() > 1 else 0.1))
    return model.to(torch.bfloat16).float()


def inputs(frames: int = 21, clip_frames: int | None = None):
    return dit_inputs("tiny", 64, 64, frames, torch.device("cpu"), torch.float32, clip_frames=clip_frames,
                      text_lens=(10, 10, 7))


def run(model, inp, dtype=torch.float32, autocast=False, **extra):
    kw = dict(inp, **extra)
    for k in ("x", "y", "clip_fea"):  # CPU autocast keeps nn.LayerNorm in the input dtype: feed bf16 there
        kw[k] = kw[k].to(dtype)
    kw["context"] = [c.to(dtype) for c in kw["context"]]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(**kw).float()


def rel_err(a, ref):
    return ((a - ref).norm() / ref.norm()).item()


def cuda_case():
    """GPU tests: (the random tiny DiT in bf16 on CUDA, its bf16 inputs, the float32 forward's output)."""
    dev = torch.device("cuda")
    model = random_dit().to(dev)
    inp = {k: (v.to(dev) if isinstance(v, torch.Tensor) else [u.to(dev) for u in v] if k == "context" else v)
           for k, v in inputs().items()}
    with torch.no_grad():
        ref32 = model(**inp).float()
    return model.to(torch.bfloat16), {**inp, "x": inp["x"].bfloat16(), "y": inp["y"].bfloat16()}, ref32


def run_cuda_bf16(model, inp):
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        return model(**inp).float()


def test_rope_real_equals_complex_rope():
    grid, d = (3, 4, 2), 16
    freqs = rope_freqs_for_grid(grid, d, torch.device("cpu"))
    x = torch.randn(2, 30, 4, d)  # 24 real tokens + 6 padding tokens
    ri = torch.view_as_real(freqs).float()
    cos = torch.cat([ri[..., 0], torch.ones(6, 1, d // 2)])
    sin = torch.cat([ri[..., 1], torch.zeros(6, 1, d // 2)])
    torch.testing.assert_close(rope_real(x, cos, sin), rope_apply(x, freqs), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["full", "short_last_window", "clip_level"])
def test_fast_float32_equals_reference(case):
    model = random_dit()
    extra = {}
    if case == "short_last_window":  # 3 latent frames padded to the 6 of a 21-frame clip: padding not rotated
        inp = inputs(frames=9, clip_frames=21)
    else:
        inp = inputs()
        extra = {"is_clip_level_modeling": True} if case == "clip_level" else {}
    ref = run(model, inp, **extra)
    enable_fast(model, compile=False)
    assert is_fast(model)
    fast = run(model, inp, **extra)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)  # float32 rounding only


def test_numerics_policy_is_a_model_attribute():
    """`set_numerics` alone switches the one block forward between the two layouts (enable_fast adds compilation);
    the state dict and parameters are the same objects either way; an unknown name is refused."""
    model = random_dit().to(torch.bfloat16)
    inp = inputs()
    params = [id(p) for p in model.parameters()]
    ref = run(model, inp, torch.bfloat16, autocast=True)
    model.set_numerics("fast")
    fast = run(model, inp, torch.bfloat16, autocast=True)
    assert not torch.equal(fast, ref)  # other roundings
    enable_fast(model, compile=False)
    assert torch.equal(run(model, inp, torch.bfloat16, autocast=True), fast)
    disable_fast(model)
    assert model.numerics == "original" and torch.equal(run(model, inp, torch.bfloat16, autocast=True), ref)
    model.set_numerics("fast", fp32_residual=False)
    assert not torch.equal(run(model, inp, torch.bfloat16, autocast=True), fast)
    model.set_numerics("original")
    assert [id(p) for p in model.parameters()] == params
    with pytest.raises(ValueError, match="original, fast"):
        model.set_numerics("quick")


def test_disable_fast_restores_reference_bitwise():
    model = random_dit()
    inp = inputs()
    keys = list(model.state_dict())
    ref = run(model, inp)
    enable_fast(model, compile=False)
    assert list(model.state_dict()) == keys  # nothing registered on the model
    enable_fast(model, compile=False)  # idempotent
    disable_fast(model)
    assert not is_fast(model)
    assert all("forward" not in vars(b) for b in model.blocks)
    assert torch.equal(run(model, inp), ref)


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_bf16_no_less_precise_than_reference(seed):
    """Acceptance: relative L2 error against the float32 forward (same bf16-representable weights) of the fast
    bf16-autocast forward <= that of the reference bf16-autocast forward (the original's precision layout).
    Without the float32 residual stream the two are statistically equal (measured ratio 0.99-1.004 over 6 seeds),
    hence the 2 % slack there."""
    model = random_dit(seed)
    inp = inputs()
    ref32 = run(model, inp)
    model = model.to(torch.bfloat16)
    ref_err = rel_err(run(model, inp, torch.bfloat16, autocast=True), ref32)
    enable_fast(model, compile=False)
    fast_err = rel_err(run(model, inp, torch.bfloat16, autocast=True), ref32)
    enable_fast(model, compile=False, fp32_residual=False)
    fast16_err = rel_err(run(model, inp, torch.bfloat16, autocast=True), ref32)
    assert 1e-4 < ref_err < 0.05  # the comparison measures something
    assert fast_err <= 0.8 * ref_err, (fast_err, ref_err)  # measured 0.66-0.71
    assert fast16_err <= 1.02 * ref_err, (fast16_err, ref_err)


def test_compiled_blocks_share_one_graph():
    """All blocks and repeated forwards reuse one compiled graph (dynamo frame count), with Python ints
    (num_groups) and the dtype as constants; the result equals the eager fast path."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model = random_dit().to(torch.bfloat16)
    inp = inputs()
    enable_fast(model, compile=False)
    eager = run(model, inp, torch.bfloat16, autocast=True)
    counter, x_strides = CompileCounter(), []

    def backend(gm, example_inputs):  # records the residual stream's layout as the compiled graph sees it
        x_strides.append(next(t.stride() for t in example_inputs if isinstance(t, torch.Tensor) and t.dim() == 3))
        return counter(gm, example_inputs)

    state = enable_fast(model, compile=True, backend=backend)
    for _ in range(2):
        out = run(model, inp, torch.bfloat16, autocast=True)
    assert state.compile_failed is None
    assert len(model.blocks) > 1 and counter.frame_count == 1, counter.frame_count
    # `patchify` hands over a transposed view; the fast path makes the stream contiguous once, at block 0
    dim = model.cfg.dim
    assert x_strides == [(inp["seq_len"] * dim, dim, 1)], x_strides
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    torch._dynamo.reset()


def test_compile_failure_falls_back_to_eager():
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    torch._dynamo.reset()
    model = random_dit()
    inp = inputs()
    ref = run(model, inp)
    state = enable_fast(model, compile=True, backend=broken_backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run(model, inp)
    assert state.compile_failed and state.compiled is None
    assert any("eager forward" in str(w.message) for w in caught)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_fast_matches_golden(golden):
    """The fast path in float32 reproduces the original's numbers (short last window case: padding)."""
    from tests.test_dit_golden import build_dit
    from wan.models.dit import original_guidance_audio
    from wan.testing.golden import assert_close_module

    case = golden("transformer_a3_lastwindow")
    model = build_dit(case)
    enable_fast(model, compile=False)
    kw = {k: case.arg(v) for k, v in case.meta["call"]["kwargs"].items()}
    vocal, audio_null = original_guidance_audio(kw.pop("vocal_embeddings"))
    with torch.no_grad():
        out = model(vocal_embeddings=vocal, audio_null=audio_null, **kw)
    assert_close_module(out, case.outputs["noise_pred"], what="fast noise_pred")


# --- TeaCache (approximate, off by default) ----------------------------------------------------------------

def test_teacache_threshold_zero_is_the_exact_path(tiny_pipeline):
    from wan.models.teacache import TeaCache

    pipe = tiny_pipeline
    try:
        enable_fast(pipe.dit, compile=False)
        exact = generate(pipe)
        tc = TeaCache(0.0, num_steps=2)
        enable_fast(pipe.dit, compile=False, teacache=tc)
        assert torch.equal(generate(pipe), exact)
        assert tc.skipped == 0 and tc.calls == 2 * 2  # 2 steps x 2 windows (1 s of audio, clip 17, overlap 3)
    finally:
        disable_fast(pipe.dit)


def teacache_run(model, tc, order, steps=(987.0, 900.0, 800.0), keys=True):
    """Call the DiT like the pipeline: for each step, the windows in `order` (two windows of different inputs),
    with cache_key=(step, window) when `keys`. Returns {(step, window): the blocks' output} (hooked)."""
    from wan.models.teacache import attach

    inp = inputs()
    windows = [inp, {**inp, "x": inp["x"] * 0.5 + 0.1}]
    attach(model, tc)
    seen, outs = [], {}
    handle = model.blocks[-1].register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    try:
        for i, t in enumerate(steps):
            for w in order[i] if isinstance(order[0], tuple) else order:
                n = len(seen)
                extra = {"cache_key": (i, w)} if keys else {}
                out = run(model, {**windows[w], "t": torch.full((3,), t)}, **extra)
                outs[i, w] = (seen[-1] if len(seen) > n else None, out)
    finally:
        handle.remove()
        attach(model, None)
    return outs


def test_teacache_threshold_zero_with_keys_equals_the_exact_path():
    from wan.models.teacache import TeaCache

    model = random_dit()
    exact = teacache_run(model, None, (0, 1))
    tc = TeaCache(0.0, num_steps=3)
    cached = teacache_run(model, tc, (0, 1))
    assert tc.calls == 6 and tc.skipped == 0
    assert all(torch.equal(cached[key][1], exact[key][1]) for key in exact)


@pytest.mark.parametrize("order", [(0, 1), ((0, 1), (1, 0), (0, 1))])
def test_teacache_keeps_one_residual_per_window_whatever_the_call_order(order):
    """With a huge threshold the middle step is skipped; each window then gets ITS OWN cached residual (the
    original's state leaks from one window to the next): with unchanged inputs, a skipped call returns exactly what
    that window's blocks gave at the previous computed step, also when the windows come in another order."""
    from wan.models.teacache import TeaCache

    model = random_dit()
    exact = teacache_run(model, None, order)
    tc = TeaCache(1e9, num_steps=3)
    outs = teacache_run(model, tc, order)
    assert tc.calls == 6 and tc.skipped == 2
    for w in (0, 1):
        assert outs[1, w][0] is None  # the blocks did not run
        assert torch.equal(outs[0, w][0], exact[0, w][0]) and torch.equal(outs[2, w][1], exact[2, w][1])
    # the head sees the cached blocks' output: step 1 of window w = the head of window w's step-0 stream at t(1)
    assert not torch.allclose(outs[1, 0][1], outs[1, 1][1])
    assert (outs[1, 0][1] - exact[1, 0][1]).abs().max() > 0  # approximate: the step-1 blocks were skipped


def test_teacache_explicit_steps_reset_and_resume():
    """Step 0 starts a new generation; a step that does not follow the previous one (a resumed render) runs;
    repeated calls with one key (the guidance branches one at a time) keep one residual each."""
    from wan.models.teacache import TeaCache

    tc = TeaCache(1e9, num_steps=10)
    runs = []

    def blocks(x):
        runs.append(x.sum().item())
        return x + 1

    def call(step, window, value=0.0):
        x = torch.full((1, 4, 8), value)
        e0 = torch.full((1, 6, 8), 1.0 + step)
        return tc(blocks, x, e0, (step, window))

    call(0, 0)
    call(1, 0)  # skipped: threshold never reached
    assert len(runs) == 1 and tc.skipped == 1
    call(5, 0)  # a jump (resumed render): runs
    assert len(runs) == 2
    call(6, 0)
    call(6, 0, value=2.0)  # a second branch of the same window: no residual of its own yet -> runs
    assert len(runs) == 3
    call(7, 0)
    out = call(7, 0, value=3.0)
    assert len(runs) == 3 and torch.equal(out, torch.full((1, 4, 8), 4.0))  # its own slot's residual (+1)
    call(0, 0)  # a new generation: nothing cached from the last
    assert len(runs) == 4 and tc.calls == 1 and tc.skipped == 0
    for step in range(1, 9):
        call(step, 0)
    assert len(runs) == 4 and tc.skipped == 8
    call(9, 0)  # the last step always runs
    assert len(runs) == 5


def test_teacache_without_keys_infers_them_from_the_call_order():
    """Until the pipeline passes cache_key, the call order says which window a call is (one warning)."""
    from wan.models.teacache import TeaCache

    model = random_dit()
    exact = teacache_run(model, None, (0, 1), keys=False)
    tc = TeaCache(1e9, num_steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = teacache_run(model, tc, (0, 1), keys=False)
    assert sum("cache_key" in str(w.message) for w in caught) == 1
    assert tc.calls == 6 and tc.skipped == 2
    assert outs[1, 0][0] is None and outs[1, 1][0] is None
    assert torch.equal(outs[2, 1][1], exact[2, 1][1])


def test_teacache_rejects_bad_settings():
    from wan.models.teacache import TeaCache

    with pytest.raises(ValueError, match="threshold"):
        TeaCache(-0.1, 10)
    with pytest.raises(ValueError, match="num_steps"):
        TeaCache(0.1, 0)


# --- wan.memory: model_full_load keeps the text encoder off the GPU between its stages -----------------------

@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from wan.pipeline import StableAvatarPipeline
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    tree = write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"), "tiny", seed=0)
    return StableAvatarPipeline.from_checkpoints(
        tree / "Wan2.1-Fun-V1.1-1.3B-InP", tree / "StableAvatar-1.3B" / "transformer3d-square.pt",
        tree / "wav2vec2-base-960h", device="cpu", dtype=torch.float32, spec=get_config("tiny"))


def generate(pipe):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    audio = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    return pipe.generate(image, audio, "a person is talking", width=64, height=48, num_inference_steps=2,
                         overlap_window_length=3, clip_length=17, progress=False).latents


def test_text_encoder_visit_streams_blocks_and_restores(tiny_pipeline):
    from wan.memory import text_encoder_blocks, visit

    te = tiny_pipeline.text_encoder
    blocks = text_encoder_blocks(te)
    assert blocks is not None and len(blocks) == get_config("tiny").t5.num_layers
    ids = torch.randint(0, 100, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    ref = te(ids, mask)
    ptrs = [p.data_ptr() for p in te.parameters()]
    with visit(te, "cpu", blocks):
        assert all(len(b._forward_pre_hooks) == 1 and len(b._forward_hooks) == 1 for b in blocks)
        out = te(ids, mask)
    assert torch.equal(out, ref)
    assert all(not b._forward_pre_hooks and not b._forward_hooks for b in blocks)
    assert [p.data_ptr() for p in te.parameters()] == ptrs  # back on the very same CPU storage


def test_full_load_with_text_encoder_offload_and_fast_dit_same_latents(tiny_pipeline):
    from wan.memory import apply_memory_mode

    pipe = tiny_pipeline
    ref = generate(pipe)
    apply_memory_mode(pipe, "model_full_load", offload_text_encoder=True)
    try:
        assert torch.equal(generate(pipe), ref)
        assert pipe.text_encoder.device.type == "cpu"
        enable_fast(pipe.dit, compile=False)
        # float32 rounding only, but the pipeline stores latents in bf16 (as the original): a rare 1-ulp flip
        fast = generate(pipe)
        torch.testing.assert_close(fast, ref, rtol=1e-2, atol=4e-3)
        assert (fast != ref).float().mean() < 0.01
    finally:
        disable_fast(pipe.dit)
        apply_memory_mode(pipe, "model_full_load")


@pytest.mark.gpu
def test_gpu_text_encoder_visit_frees_memory_and_fast_compiles():
    """On CUDA: the visit leaves no weights on the GPU and gives the resident encoder's numbers bitwise; the
    compiled fast block runs (inductor) and is no less precise than the reference in bf16."""
    from wan.memory import text_encoder_blocks, visit
    from wan.models.t5 import TextEncoder, build_umt5

    dev = torch.device("cuda")
    te = TextEncoder(build_umt5(get_config("tiny").t5, empty=False), None, 16).to(dev, torch.bfloat16)
    ids, mask = torch.randint(0, 100, (2, 16), device=dev), torch.ones(2, 16, dtype=torch.long, device=dev)
    ref = te(ids, mask)
    te.to("cpu")
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    with visit(te, dev, text_encoder_blocks(te)):
        out = te(ids, mask)
    assert torch.equal(out, ref)
    del out
    assert torch.cuda.memory_allocated() <= base and te.device.type == "cpu"

    model, inp, ref32 = cuda_case()
    ref_err = rel_err(run_cuda_bf16(model, inp), ref32)
    state = enable_fast(model, compile=True)
    fast_err = rel_err(run_cuda_bf16(model, inp), ref32)
    assert state.compiled is not None, state.compile_failed
    assert fast_err <= ref_err, (fast_err, ref_err)


def test_quantize_fp8_rows_round_trip():
    from wan.models.fp8 import FP8_DTYPE, quantize_fp8_rows

    x = torch.randn(7, 64) * torch.logspace(-3, 3, 7).unsqueeze(1)  # rows of very different magnitude
    x[3] = 0
    q, s = quantize_fp8_rows(x)
    assert q.dtype == FP8_DTYPE and s.shape == (7, 1) and s[3].item() == 1.0
    back = q.float() * s
    assert torch.equal(back[3], torch.zeros(64))
    # e4m3 keeps 3 mantissa bits: relative error per element <= 2^-4 (normal range), rows scaled independently
    err = ((back - x).abs() / x.abs().amax(dim=1, keepdim=True).clamp(min=1e-30)).amax().item()
    assert 0 < err <= 2 ** -4


def test_fp8_is_approximate_close_and_leaves_the_model_alone():
    """fp8 (APPROXIMATE, opt-in): a real quantization (output differs from the exact fast path) that stays close
    to the float32 forward, with the model's parameters (the same objects), state dict and reference forward
    untouched, and `disable_fast` restoring the reference bit for bit."""
    from wan.models.fp8 import FP8_DTYPE, Fp8Linear, is_fp8

    model = random_dit(0)
    inp = inputs()
    ref32 = run(model, inp)
    model = model.to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    ref = run(model, inp, torch.bfloat16, autocast=True)
    enable_fast(model, compile=False)
    exact = run(model, inp, torch.bfloat16, autocast=True)
    enable_fast(model, compile=False, fp8=True)
    fp8 = run(model, inp, torch.bfloat16, autocast=True)
    assert is_fp8(model) and isinstance(model.blocks[-1].ffn[2], Fp8Linear)
    assert model.blocks[0].self_attn.q.weight_fp8.dtype == FP8_DTYPE
    assert not isinstance(model.blocks[0].cross_attn.k, Fp8Linear)  # context-side projections stay
    assert [id(p) for p in model.parameters()] == params and list(model.state_dict()) == list(before)
    assert not torch.equal(fp8, exact)
    err, exact_err = rel_err(fp8, ref32), rel_err(exact, ref32)
    assert exact_err < err < 0.1, (err, exact_err)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    disable_fast(model)
    assert not is_fp8(model) and type(model.blocks[0].self_attn.q) is torch.nn.Linear
    assert [id(p) for p in model.parameters()] == params
    assert torch.equal(run(model, inp, torch.bfloat16, autocast=True), ref)


def test_rope_table_is_built_once_per_grid_and_usable_with_autograd():
    """The per-forward RoPE table is cached on its device (no host copy per forward); created under inference_mode
    it must still serve a later training forward (an inference tensor cannot be saved for backward)."""
    from wan.models.layers import _rope_freqs_cached

    with torch.inference_mode():
        a = rope_freqs_for_grid((3, 4, 2), 16, torch.device("cpu"))
    b = rope_freqs_for_grid((3, 4, 2), 16, "cpu")
    assert a is b and not a.is_inference()
    assert torch.equal(a, _rope_freqs_cached.__wrapped__((3, 4, 2), 16, torch.device("cpu"), 1024, 10000.0))
    assert rope_freqs_for_grid((2, 4, 2), 16, "cpu") is not a
    x = torch.randn(1, 24, 2, 16, requires_grad=True)
    rope_apply(x, a).sum().backward()
    assert x.grad is not None


def test_audio_null_mask_no_copy_and_same_numbers():
    from wan.models.dit import _keep_mask

    m = _keep_mask((True, False, False), torch.device("cpu"), torch.float32)
    assert m is _keep_mask((True, False, False), torch.device("cpu"), torch.float32)
    assert m.tolist() == [0.0, 1.0, 1.0] and not m.is_inference()
    model = random_dit()
    inp = inputs()
    with torch.no_grad():
        as_list = model(**inp)
        as_tensor = model(**dict(inp, audio_null=torch.tensor(inp["audio_null"])))
    assert torch.equal(as_list, as_tensor)


def test_bench_dit_fp8_and_attention_cpu_smoke(tmp_path, capsys):
    """`python -m wan.bench dit --fp8 --precision` and `attention` at tiny size on the CPU (the GPU runs behind
    BENCHMARKS.md use the same entry points)."""
    import argparse
    import json

    from wan.bench import main, parse_size

    common = dict(sizes=[parse_size("64x64")], frames=21, spec="tiny", dtype="bf16", device="cpu", warmup=0,
                  runs=1, fast=False, no_compile=True, profile=None, teacache=0.0)
    main(argparse.Namespace(what="dit", fp8=True, precision=True, json=str(tmp_path / "d.json"), **common))
    r = json.loads((tmp_path / "d.json").read_text())["results"][0]
    assert r["fast"] and r["fp8"] and r["precision"]["fast_rel_l2"] > 0
    main(argparse.Namespace(what="attention", fp8=False, precision=False, json=str(tmp_path / "a.json"), **common))
    res = json.loads((tmp_path / "a.json").read_text())["results"]
    ok = [x for x in res if "error" not in x]
    assert len(ok) >= 5 and all(x["median_s"] > 0 for x in ok)
    assert "precision" in capsys.readouterr().out


@pytest.mark.gpu
def test_gpu_fp8_compiled_runs_and_stays_close():
    """fp8 on CUDA (torch._scaled_mm, row-wise scales) inside the compiled block forward: runs, compiles, and stays
    within 10 % relative L2 of the float32 forward."""
    model, inp, ref32 = cuda_case()
    torch._dynamo.reset()
    state = enable_fast(model, compile=True, fp8=True)
    out = run_cuda_bf16(model, inp)
    torch._dynamo.reset()
    assert state.compiled is not None, state.compile_failed
    assert rel_err(out, ref32) < 0.1
