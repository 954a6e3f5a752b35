"""The attention entry point (wan/models/attention.py): which backend runs where, fallbacks, torch.compile.

FlashAttention-3 needs a Hopper GPU; on the CPU a fake FA3 package (computing SDPA in float32, counting its calls)
and a faked device capability exercise the choosing, the dispatch and the fallbacks. The GPU test compares the real
kernels at the DiT's shapes."""

import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

from wan.models import attention as A


@pytest.fixture(autouse=True)
def fresh_backend():
    A._reset()
    yield
    A._reset()


def reference(q, k, v):
    return F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


def fake_fa3(monkeypatch, behaviour="tuple", fp16=True, module="fa3_fwd_interface"):
    """Install a fake FA3 package `module`; returns its call log. behaviour: "tuple" returns (out, lse) like older
    official builds, "out" returns out like fa3-fwd, "raises" fails like a kernel built for another GPU, "wrong"
    computes something else."""
    calls = []

    def flash_attn_func(q, k, v):
        calls.append(tuple(q.shape))
        if behaviour == "raises":
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
        out = reference(q, k, v).to(q.dtype)
        if behaviour == "wrong":
            out = torch.zeros_like(out)
        lse = torch.zeros(q.shape[0], q.shape[2], q.shape[1])
        return (out, lse) if behaviour == "tuple" else out

    mod = types.ModuleType(module)
    mod.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, module, mod)
    if module == "fa3_fwd_interface":
        cfg = types.ModuleType("fa3_fwd_config")
        cfg.CONFIG = {"build_flags": {"FLASHATTENTION_DISABLE_FP16": not fp16}}
        monkeypatch.setitem(sys.modules, "fa3_fwd_config", cfg)
    return calls


def no_fa3(monkeypatch):
    for name in A.FA3_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError


def fake_hopper(monkeypatch, cap=(9, 0)):
    """Every device (the CPU included) reports CUDA capability `cap`."""
    monkeypatch.setattr(A, "_capability", lambda device: cap)


def qkv(dtype=torch.bfloat16, d=16, lq=24, lk=10, b=2, h=3):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(b, n, h, d, generator=g).to(dtype) for n in (lq, lk, lk))


def test_fa3_unsupported_reasons(monkeypatch):
    fa3 = A.FA3("fa3_fwd_interface", lambda q, k, v: q, fp16=False)
    cpu = torch.device("cpu")
    assert "CUDA GPU" in A.fa3_unsupported(cpu, torch.bfloat16, 128, fa3)
    fake_hopper(monkeypatch, (8, 0))
    assert "sm90" in A.fa3_unsupported(cpu, torch.bfloat16, 128, fa3)
    fake_hopper(monkeypatch, (10, 0))
    assert "sm90" in A.fa3_unsupported(cpu, torch.bfloat16, 128, fa3)
    fake_hopper(monkeypatch)
    assert A.fa3_unsupported(cpu, torch.bfloat16, 128, fa3) is None
    assert A.fa3_unsupported(cpu, torch.bfloat16, 192, fa3) is None  # the audio adapter's head dim
    assert "float16" in A.fa3_unsupported(cpu, torch.float16, 128, fa3)  # a build without fp16 kernels
    assert A.fa3_unsupported(cpu, torch.float16, 128, fa3._replace(fp16=True)) is None
    assert "float32" in A.fa3_unsupported(cpu, torch.float32, 128, fa3)
    assert "head dims" in A.fa3_unsupported(cpu, torch.bfloat16, 100, fa3)
    assert "head dims" in A.fa3_unsupported(cpu, torch.bfloat16, 264, fa3)
    assert "not installed" in A.fa3_unsupported(cpu, torch.bfloat16, 128, "no module")


def test_set_backend_checks_its_argument(monkeypatch):
    with pytest.raises(ValueError, match="auto, fa3, sdpa"):
        A.set_backend("flash")
    no_fa3(monkeypatch)
    with pytest.raises(ImportError, match=r"pip install -e \.\[hopper\]"):
        A.set_backend("fa3")  # an explicit request that can never run: an error, not a silent fallback
    assert A.get_backend() == "auto"
    A.set_backend("sdpa")
    assert A.get_backend() == "sdpa"


def test_cpu_always_runs_sdpa_silently(monkeypatch):
    calls = fake_fa3(monkeypatch)
    q, k, v = qkv()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = A.attention(q, k, v)
    assert not calls and A.backend_for("cpu", torch.bfloat16, 16) == "sdpa"
    assert torch.equal(out, F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2))
    assert A.describe_backend("cpu").startswith("torch SDPA (cpu)")


@pytest.mark.parametrize("behaviour,module", [("tuple", "flash_attn_interface"), ("out", "fa3_fwd_interface")])
def test_auto_picks_fa3_on_hopper_and_unpacks_its_output(monkeypatch, behaviour, module):
    if module == "flash_attn_interface":
        monkeypatch.setitem(sys.modules, "fa3_fwd_interface", None)
    calls = fake_fa3(monkeypatch, behaviour, module=module)
    fake_hopper(monkeypatch)
    q, k, v = qkv()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = A.attention(q, k, v)
        out32 = A.attention(*(t.float() for t in (q, k, v)))  # float32: SDPA, and no warning under auto
    assert A.backend_for("cpu", torch.bfloat16, 16) == "fa3"
    assert A.backend_for("cpu", torch.float32, 16) == "sdpa"
    assert calls == [(2, 80, 3, 16), (2, 24, 3, 16)]  # the one-time check against SDPA, then the call
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference(q, k, v), rtol=0, atol=2e-2)
    torch.testing.assert_close(out32, reference(q, k, v), rtol=1e-5, atol=1e-5)
    assert A.describe_backend("cpu").startswith(f"FlashAttention-3 ({module})")
    A.set_backend("sdpa")
    A.attention(q, k, v)
    assert len(calls) == 2 and A.describe_backend("cpu").endswith("[--attention sdpa]")


@pytest.mark.parametrize("behaviour", ["raises", "wrong"])
def test_a_broken_fa3_falls_back_to_sdpa_with_one_warning(monkeypatch, behaviour):
    calls = fake_fa3(monkeypatch, behaviour)
    fake_hopper(monkeypatch)
    q, k, v = qkv()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [A.attention(q, k, v) for _ in range(3)]
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "using torch SDPA" in msgs[0], msgs
    assert ("no kernel image" if behaviour == "raises" else "disagrees") in msgs[0]
    assert len(calls) == 1  # only the check ran it
    assert A.backend_for("cpu", torch.bfloat16, 16) == "sdpa"
    assert all(torch.equal(o, outs[0]) for o in outs)
    torch.testing.assert_close(outs[0].float(), reference(q, k, v), rtol=0, atol=2e-2)
    assert "SDPA so far for bfloat16 head dim 16" in A.describe_backend("cpu")


def test_missing_fa3_on_hopper_warns_once_and_explicit_fa3_warns_per_reason(monkeypatch):
    no_fa3(monkeypatch)
    fake_hopper(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for d in (16, 32, 16):
            A.attention(*qkv(d=d))
    assert len(caught) == 1 and "not installed" in str(caught[0].message)  # one warning for every shape
    assert "not installed" in A.describe_backend("cpu")

    A._reset()
    monkeypatch.undo()
    calls = fake_fa3(monkeypatch)
    A.set_backend("fa3")  # on the CPU: its calls run on SDPA, with one warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            A.attention(*qkv())
    assert len(caught) == 1 and "needs a CUDA GPU" in str(caught[0].message)
    assert not calls


# a fake FA3 kernel that is a torch custom op, as fa3-fwd's is (opaque to Dynamo, so its call log is not guarded)
_OP_CALLS = []


@torch.library.custom_op("wan_test::fake_fa3_fwd", mutates_args=())
def _fake_fa3_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    _OP_CALLS.append(tuple(q.shape))
    return reference(q, k, v).to(q.dtype)


@_fake_fa3_op.register_fake
def _(q, k, v):
    return torch.empty_like(q)


def test_choice_is_a_constant_under_torch_compile(monkeypatch):
    """Called from a compiled function (fullgraph: no graph break): FA3 runs inside the graph, the choice is made
    once, and changing the backend recompiles."""
    from torch._dynamo.testing import CompileCounter

    mod = types.ModuleType("fa3_fwd_interface")
    mod.flash_attn_func = lambda q, k, v: (_fake_fa3_op(q, k, v), torch.zeros(q.shape[0], q.shape[2], q.shape[1]))
    monkeypatch.setitem(sys.modules, "fa3_fwd_interface", mod)
    _OP_CALLS.clear()
    calls = _OP_CALLS
    fake_hopper(monkeypatch)
    q, k, v = qkv()
    torch._dynamo.reset()
    counter = CompileCounter()
    try:
        fn = torch.compile(lambda q, k, v: A.attention(q, k, v) * 2, backend=counter, fullgraph=True)
        first = fn(q, k, v)
        again = fn(q, k, v)
        assert counter.frame_count == 1
        assert len(calls) == 3  # the check (while tracing), then two compiled calls
        assert torch.equal(first, again)
        torch.testing.assert_close(first.float(), 2 * reference(q, k, v), rtol=0, atol=2e-2)
        A.set_backend("sdpa")
        fn(q, k, v)
        assert counter.frame_count == 2 and len(calls) == 3
    finally:
        torch._dynamo.reset()


# --- GPU: every backend against SDPA at the DiT's shapes ------------------------------------------------------------

# 480x832x81 (32,760 tokens = 21 latent frames x 1,560), CFG batch 3, 12 heads x 128; text 512 and image 257 keys;
# audio: each frame's 1,560 tokens against its 15 audio tokens; the audio adapter (batch 1, 8 heads x 192):
# 15 audio queries of each frame against its 1,560 video tokens
DIT_SHAPES = {
    "self": ((3, 32760, 12, 128), (3, 32760, 12, 128)),
    "text": ((3, 32760, 12, 128), (3, 512, 12, 128)),
    "image": ((3, 32760, 12, 128), (3, 257, 12, 128)),
    "audio": ((3 * 21, 1560, 12, 128), (3 * 21, 15, 12, 128)),
    "adapter": ((21, 15, 8, 192), (21, 1560, 8, 192)),
}


@pytest.mark.gpu
@pytest.mark.parametrize("shape", list(DIT_SHAPES))
def test_gpu_backends_equal_sdpa_at_the_dit_shapes(shape):
    """Each backend that can run here equals torch SDPA (math in float32 as the reference) within bf16 noise."""
    dev = torch.device("cuda")
    (qs, ks) = DIT_SHAPES[shape]
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(qs, generator=g, device=dev, dtype=torch.bfloat16)
    k, v = (torch.randn(ks, generator=g, device=dev, dtype=torch.bfloat16) for _ in range(2))
    ref = torch.cat([reference(q[i:i + 1], k[i:i + 1], v[i:i + 1]) for i in range(q.shape[0])])
    sdpa_err = None
    for backend in ("sdpa", "fa3"):
        if backend == "fa3":
            fa3 = A.load_fa3()
            if isinstance(fa3, str) or A.fa3_unsupported(dev, q.dtype, q.shape[-1], fa3):
                continue
        A._reset()
        A.set_backend(backend)
        assert A.backend_for(dev, q.dtype, q.shape[-1]) == backend
        out = A.attention(q, k, v)
        assert out.shape == q.shape and out.dtype == q.dtype
        err = ((out.float() - ref).norm() / ref.norm()).item()
        sdpa_err = err if backend == "sdpa" else sdpa_err
        assert err < 1e-2, (backend, err)
        assert err <= 2 * sdpa_err + 1e-4, (backend, err, sdpa_err)


@pytest.mark.gpu
def test_gpu_compiled_fast_dit_with_each_backend():
    """The compiled fast DiT forward (tiny, bf16 autocast) with every backend that runs here: no graph break around
    the entry point, and the same precision against a float32 forward (FA3 within 10 % of SDPA's error)."""
    from tests.test_fast import cuda_case, rel_err, run_cuda_bf16
    from wan.models.fast import enable_fast

    dev = torch.device("cuda")
    model, inp, ref32 = cuda_case()
    fa3 = A.load_fa3()
    backends = ["sdpa"] + ([] if isinstance(fa3, str) or A.fa3_unsupported(dev, torch.bfloat16, 16, fa3) else ["fa3"])
    errs = {}
    for backend in backends:
        A._reset()
        A.set_backend(backend)
        torch._dynamo.reset()
        state = enable_fast(model, compile=True)
        errs[backend] = rel_err(run_cuda_bf16(model, inp), ref32)
        assert state.compiled is not None, state.compile_failed
        assert A.backend_for(dev, torch.bfloat16, model.cfg.head_dim) == backend
    torch._dynamo.reset()
    assert errs["sdpa"] < 0.05, errs
    assert errs.get("fa3", 0) <= 1.1 * errs["sdpa"], errs
