"""Multi-process inference on CPU (gloo, 2 processes, the tiny model): window-parallel and CFG-parallel give
exactly the one-process latents; sequence parallelism (Ulysses all-to-all) gives them within float32 tolerance,
per-frame audio attention included; `torchrun ... inference.py` writes one video equal to the 1-process one."""

from __future__ import annotations

import json
import os
from conftest import free_port
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wan.distributed import ParallelLayout, choose_layout
from wan.distributed.cfg_parallel import branch_ranges
from wan.distributed.usp import shard_frames

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "examples" / "case-2" / "audio.wav"
IMAGE = ROOT / "examples" / "case-1" / "reference.png"
# 1.8 s of speech at clip 17 / overlap 3: 12 latent frames -> 5 windows, the last one short (4 of 5 frames)
SECONDS, CLIP, OVERLAP, STEPS, W, H = 1.8, 17, 3, 3, 64, 48
# The processes compared bit for bit run the same single-threaded maths whatever the caller's environment, on
# oneMKL's reproducibility conditions (oneMKL developer guide, "Reproducibility Conditions"): a fixed thread count
# (CPU float results depend on it, CLAUDE.md; MKL_NUM_THREADS overrides OMP_NUM_THREADS, measured: torch runs 2
# threads under OMP_NUM_THREADS=1 MKL_NUM_THREADS=2), MKL_DYNAMIC and OMP_DYNAMIC false (no thread teams sized at
# run time), and a CNR code branch (MKL_CBWR) so that oneMKL's results do not depend on the buffers' alignment.
SAME_MATHS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_DYNAMIC": "false",
                  "MKL_DYNAMIC": "false", "MKL_CBWR": "AUTO,STRICT"}


# --- pure logic ------------------------------------------------------------------------------------------------------

def test_branch_ranges():
    assert branch_ranges(3, 1) == [(0, 3)]
    assert branch_ranges(3, 2) == [(0, 2), (2, 3)]
    assert branch_ranges(3, 3) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="guidance branches"):
        branch_ranges(3, 4)


def test_choose_layout():
    # GPU count only: window-parallel while there are windows to share, CFG / Ulysses for short clips
    assert choose_layout(2, 8, 12, 1560) == ParallelLayout(window=2)
    assert choose_layout(8, 8, 12, 1560) == ParallelLayout(window=8)
    assert choose_layout(3, 1, 12, 1560) == ParallelLayout(cfg=3)
    assert choose_layout(2, 1, 12, 1560) == ParallelLayout(ulysses=2)
    assert choose_layout(6, 2, 12, 1560) == ParallelLayout(window=2, cfg=3)
    # explicit choices
    assert choose_layout(4, 8, 12, 1560, ulysses=2, ring=2) == ParallelLayout(ulysses=2, ring=2)
    assert choose_layout(4, 8, 12, 1560, ulysses=2, window_parallel=True) == ParallelLayout(window=2, ulysses=2)
    assert choose_layout(2, 8, 12, 1560, cfg_parallel=True) == ParallelLayout(cfg=2)
    assert choose_layout(6, 8, 12, 1560, cfg_parallel=True, window_parallel=True) == ParallelLayout(window=2, cfg=3)
    with pytest.raises(ValueError, match="must equal|window_parallel"):
        choose_layout(4, 8, 12, 1560, ulysses=2)
    with pytest.raises(ValueError, match="heads"):
        choose_layout(8, 8, 12, 1560, ulysses=8)
    with pytest.raises(ValueError, match="2 or 3"):
        choose_layout(4, 8, 12, 1560, cfg_parallel=True)
    assert ParallelLayout(window=2, cfg=3, ulysses=2).coords(7) == (1, 0, 1)


def test_shard_frames_holds_whole_frame_slices():
    """Every rank's local sequence is G blocks of T/P tokens, block g from frame g: the per-frame audio attention's
    `view(B*G, -1)` then pairs each local token with its own frame's audio group."""
    g, t, p = 5, 12, 2
    idx = torch.arange(g * t).view(1, g * t, 1)
    for r in range(p):
        local = shard_frames(idx, g, r, p).view(g, t // p)
        assert torch.equal(local // t, torch.arange(g)[:, None].expand(g, t // p))  # frame of each local token
        assert torch.equal(local[0], torch.arange(r * t // p, (r + 1) * t // p))
    both = torch.stack([shard_frames(idx, g, r, p).view(g, t // p) for r in range(p)], dim=1)
    assert torch.equal(both.reshape(-1), torch.arange(g * t))  # gather_frames' permutation inverts it
    with pytest.raises(ValueError, match="divisible by 5"):
        shard_frames(idx, g, 0, 5)


# --- 2 processes over gloo ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"), "tiny", seed=0)


def _speech(seconds: float, path: Path) -> Path:
    import soundfile as sf

    y, sr = sf.read(SPEECH, dtype="int16", always_2d=True)
    n = int(seconds * sr)
    sf.write(path, np.concatenate([y] * (n // len(y) + 1))[:n], sr, subtype="PCM_16")
    return path


def _reset(pipe) -> None:
    from wan.models.attention import attention
    from wan.models.dit import TokenSplit
    from wan.pipeline import SequentialWindows

    pipe.parallel = SequentialWindows()
    pipe.dit.token_split = TokenSplit()
    for block in pipe.dit.blocks:
        block.self_attn.attention_fn = attention


class _ContiguousSplit:
    """The original's sequence split (contiguous chunks of the flat sequence): the test must catch its audio bug."""

    def __init__(self, group):
        import torch.distributed as dist

        self.group, self.rank, self.size = group, dist.get_rank(group), dist.get_world_size(group)

    def shard_tokens(self, tokens, freqs, num_groups):
        s = tokens.shape[1] // self.size
        return tokens[:, self.rank * s:(self.rank + 1) * s], freqs[self.rank * s:(self.rank + 1) * s]

    def shard_batch(self, x):
        return x

    def gather(self, out, num_groups):
        from wan.distributed.comm import all_gather_stack

        parts = all_gather_stack(out, self.group)
        return torch.cat(list(parts), dim=1)


def _worker(rank: int, world: int, port: int, tree: str, audio_path: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from wan.configs import get_config
    from wan.distributed import apply_parallel, init_parallel
    from wan.io.audio import load_audio
    from wan.pipeline import StableAvatarPipeline

    dist.init_process_group("gloo", rank=rank, world_size=world)
    tree = Path(tree)
    pipe = StableAvatarPipeline.from_checkpoints(
        tree / "Wan2.1-Fun-V1.1-1.3B-InP", tree / "StableAvatar-1.3B" / "transformer3d-square.pt",
        tree / "wav2vec2-base-960h", device="cpu", dtype=torch.float32, spec=get_config("tiny"))
    audio = load_audio(audio_path)

    def gen():
        return pipe.generate(IMAGE, audio, "A woman is speaking", width=W, height=H, num_inference_steps=STEPS,
                             overlap_window_length=OVERLAP, clip_length=CLIP, progress=False).latents

    ref = gen()
    report = {}
    for name, layout in [("window", ParallelLayout(window=2)), ("cfg", ParallelLayout(cfg=2))]:
        _reset(pipe)
        apply_parallel(pipe, init_parallel(layout))
        got = gen()
        report[name] = (got - ref).abs().max().item()
        assert torch.equal(got, ref), f"{name}-parallel differs from the sequential loop: max|d| {report[name]}"

    # sequence parallelism: the whole pipeline, then one DiT forward against the original's contiguous split
    _reset(pipe)
    ctx = init_parallel(ParallelLayout(ulysses=2))
    apply_parallel(pipe, ctx)
    got = gen()
    d = (got - ref).abs()
    report["usp"] = d.max().item()
    report["usp_frac_differing"] = (d > 0).float().mean().item()
    # the loop stores every step's latents in bf16 (the original's cast), so float32-rounding differences of the
    # forward show up as a few bf16 steps: at most one bf16 ulp of the largest latent, on < 1 % of the elements
    assert d.max().item() <= 2.0 ** (torch.log2(ref.abs().max()).floor().item() - 7), report
    assert report["usp_frac_differing"] < 0.01, report

    g = torch.Generator().manual_seed(1)
    cfg = pipe.dit.cfg
    x = torch.randn(1, 16, 4, H // 8, W // 8, generator=g)  # a short window: 4 of 5 frames, one padding frame
    kw = dict(x=x.expand(3, -1, -1, -1, -1), t=torch.full((3,), 700.0), seq_len=5 * (H // 16) * (W // 16),
              context=[torch.randn(7, cfg.text_dim, generator=g) for _ in range(3)],
              clip_fea=torch.randn(1, 257, cfg.clip_dim, generator=g).expand(3, -1, -1),
              y=torch.randn(1, 20, 4, H // 8, W // 8, generator=g).expand(3, -1, -1, -1, -1),
              vocal_embeddings=torch.randn(1, 27, cfg.audio_in_dim, generator=g), audio_null=[True, False, False],
              video_sample_n_frames=CLIP)
    with torch.no_grad():
        usp = pipe.dit(**kw)
        pipe.dit.token_split = _ContiguousSplit(ctx.seq_group)
        wrong = pipe.dit(**kw)
        _reset(pipe)
        one = pipe.dit(**kw)
        kw["audio_null"] = [True, True, True]
        no_audio = pipe.dit(**kw)
    report["usp_dit"] = (usp - one).abs().max().item()
    report["contiguous_split_dit"] = (wrong - one).abs().max().item()
    report["audio_effect_dit"] = (no_audio - one).abs().max().item()
    torch.testing.assert_close(usp, one, rtol=1e-5, atol=1e-5)
    assert report["audio_effect_dit"] > 1e-2, "the audio attention must matter for this check to mean anything"
    assert report["contiguous_split_dit"] > 1e-3, "the original's contiguous split should pair tokens with wrong audio"
    if rank == 0:
        Path(out).write_text(json.dumps(report))
    dist.destroy_process_group()


def test_two_processes_match_one(tree, tmp_path):
    import torch.multiprocessing as mp

    audio = _speech(SECONDS, tmp_path / "speech.wav")
    out = tmp_path / "report.json"
    mp.spawn(_worker, args=(2, free_port(), str(tree), str(audio), str(out)), nprocs=2, join=True)
    report = json.loads(out.read_text())
    print(report)
    assert report["window"] == 0 and report["cfg"] == 0


# --- torchrun inference.py --------------------------------------------------------------------------------------------

def _cli(tree, tmp_path, audio, out, *extra, nproc=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                f"--master_port={free_port()}"] if nproc > 1 else [sys.executable]
    cmd = [*launcher, str(ROOT / "inference.py"),
           f"--pretrained_model_name_or_path={tree / 'Wan2.1-Fun-V1.1-1.3B-InP'}",
           f"--transformer_path={tree / 'StableAvatar-1.3B' / 'transformer3d-square.pt'}",
           f"--pretrained_wav2vec_path={tree / 'wav2vec2-base-960h'}",
           f"--validation_reference_path={IMAGE}", f"--validation_driven_audio_path={audio}",
           "--validation_prompts", "A woman is speaking", f"--output_dir={out}", "--seed=42",
           # 128x96, not W x H: libx264 encodes the same frames to different streams below about 112x96 (measured:
           # 64x48 gave 3 different streams in 5 encodes of identical frames) — what made this test fail "under load"
           "--sample_steps=2", "--width=128", "--height=96", f"--clip_sample_n_frames={CLIP}",
           f"--overlap_window_length={OVERLAP}", "--device=cpu", "--dtype=fp32", "--model_spec=tiny", *extra]
    env = {**os.environ, **SAME_MATHS_ENV}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)


def test_torchrun_inference_writes_one_identical_video(tree, tmp_path):
    from wan.io.video import read_video_frames

    audio = _speech(SECONDS, tmp_path / "speech.wav")
    one = _cli(tree, tmp_path, audio, tmp_path / "one", "--no_progress")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _cli(tree, tmp_path, audio, tmp_path / "two", nproc=2)  # GPU count only: automatic layout
    assert two.returncode == 0, two.stderr[-3000:]
    assert "layout" in two.stderr and "window=2" in two.stderr, two.stderr[-2000:]
    assert two.stderr.count("denoising: 100%") == 1, two.stderr[-2000:]  # one progress bar
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["video.mp4", "video_without_audio.mp4"]
    assert two.stdout.count("wrote ") == 1, two.stdout  # only rank 0 writes
    a, b = (read_video_frames(tmp_path / d / "video.mp4").astype(np.int16) for d in ("one", "two"))
    assert a.shape == b.shape, (a.shape, b.shape)
    d = np.abs(a - b)
    assert not d.any(), (f"{(d.reshape(len(d), -1).max(1) > 0).sum()} of {len(d)} frames differ (max {d.max()}, "
                         f"{(d > 0).mean():.2%} of the values); window-parallel must give the 1-process latents")


_FAILING_RANK = r"""
import sys, torch, torch.distributed as dist
from wan.distributed import ParallelLayout, init_parallel
from wan.distributed.window_parallel import WindowParallel
ctx = init_parallel(ParallelLayout(window=2), device_type="cpu", timeout_s=60)
if ctx.rank == 1:
    raise RuntimeError("rank 1 failed on purpose")
par = WindowParallel(ctx.window_group, ctx.is_main)
list(par.map(lambda k, z: z + 1, [torch.zeros(1, 16, 5, 6, 8)] * 4))  # waits for rank 1's windows
"""


def test_a_failing_rank_does_not_hang_the_others(tmp_path):
    """Rank 1 dies before the first exchange: rank 0's collective must fail (not wait), and both exit non-zero."""
    import time

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", _FAILING_RANK], env={**env, "RANK": str(r)}, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert time.perf_counter() - t0 < 60
    assert procs[1].returncode != 0 and "failed on purpose" in results[1][1]
    assert procs[0].returncode != 0, results[0]


def test_bench_four_processes_window_x_cfg_exact(tmp_path):
    """4 processes = 2 window groups x 2 CFG ranks (the groups of a 2-D grid), the DiT sharded (FSDP) over each
    window group's 2 CFG ranks, through the multi-GPU benchmark entry point on random tiny weights: still exactly
    the 1-process latents."""
    common = ["-m", "wan.distributed.bench", "--spec=tiny", "--size=64x48", f"--seconds={SECONDS}",
              f"--frames={CLIP}", f"--overlap={OVERLAP}", "--steps=2", "--dtype=fp32", "--device=cpu"]
    env = {**os.environ, **SAME_MATHS_ENV}
    one = subprocess.run([sys.executable, *common, f"--save={tmp_path / 'one.pt'}"], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    four = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=4",
                           f"--master_port={free_port()}", *common, "--window_parallel", "--cfg_parallel",
                           "--fsdp_dit", f"--compare={tmp_path / 'one.pt'}"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert four.returncode == 0, four.stderr[-3000:]
    res = json.loads([line for line in four.stdout.splitlines() if line.startswith("{")][-1])
    assert res["layout"] == "ParallelLayout(window=2, cfg=2, ulysses=1, ring=1)"
    assert res["equal"] and res["max_abs_diff"] == 0.0, res
    # --fsdp_dit: each rank holds about half of the DiT (sharded over its 2 CFG ranks), same latents
    assert res["fsdp_dit"] and 0.45 < res["dit_params_here"] / res["dit_params"] < 0.55, res


def test_fsdp_dit_needs_ranks_running_the_same_forwards():
    assert choose_layout(2, 8, 12, 1560, fsdp_dit=True) == ParallelLayout(ulysses=2)  # not window=2
    assert choose_layout(4, 8, 12, 1560, fsdp_dit=True) == ParallelLayout(window=2, ulysses=2)
    assert choose_layout(1, 8, 12, 1560, fsdp_dit=True) == ParallelLayout()
    with pytest.raises(ValueError, match="fsdp_dit"):
        choose_layout(2, 8, 12, 1560, window_parallel=True, fsdp_dit=True)


def test_automatic_layout_prefers_exact_unless_much_slower():
    """With the measured costs (Ulysses 2: 0.52 of a step; window-parallel: ceil(n/2)/n), 5 windows on 2 GPUs
    cost 9 units window-parallel vs 7.8 with Ulysses (13 % faster): the exact layout is kept; 3 windows cost
    6 vs 4.7 (22 % faster): Ulysses."""
    assert choose_layout(2, 5, 12, 1560) == ParallelLayout(window=2)
    assert choose_layout(2, 3, 12, 1560) == ParallelLayout(ulysses=2)
    assert choose_layout(2, 4, 12, 1560) == ParallelLayout(window=2)
