"""Window plan, audio slices, blend weights and fusion against the spec tables and the e2e goldens."""

import pytest
import torch

from wan.sampling import euler_step, flow_sigmas, guidance
from wan.sliding_window import (
    Window, audio_slice, blend_weights, fuse_overlap, num_decoded_frames, num_latent_frames,
    num_video_frames, plan_windows,
)

E2E_CASES = ["e2e_f1_long_square", "e2e_f2_long_rect_log", "e2e_f3_overlap5_uniform", "e2e_f4_partial_last"]


def original_loop_windows(total: int, per_window: int, overlap: int, max_iter: int = 10_000):
    """The original while-loop's index updates (spec pipeline.md §8), as (start, end, end == total).

    Returns None where the original never terminates, [] where it runs no window.
    """
    out, s, e, last = [], 0, per_window, False
    while e <= total:
        out.append((s, e, e == total))
        if len(out) > max_iter:
            return None
        if last:
            break
        if e != total:
            s += per_window - overlap
            if s + per_window < total:
                e = s + per_window
            else:
                e, last = total, True
    return out


# ------------------------------------------------------------------------------------------------
# lengths (spec pipeline.md §2)


@pytest.mark.parametrize("n, frames, latent, decoded", [
    (80_000, 125, 32, 125), (160_000, 250, 63, 249), (641_985, 1003, 251, 1001),
])
def test_lengths_spec_examples(n, frames, latent, decoded):
    assert num_video_frames(n) == frames
    assert num_latent_frames(frames) == latent
    assert num_decoded_frames(latent) == decoded


def test_lengths_general():
    assert num_latent_frames(81) == 21 and num_decoded_frames(21) == 81
    assert num_video_frames(639) == 0 and num_video_frames(640) == 1 and num_latent_frames(1) == 1
    for f in range(1, 200):
        d = num_decoded_frames(num_latent_frames(f))
        assert d <= f and f - d == (f - 1) % 4  # the largest 4k+1 <= F
    assert num_video_frames(48_000, sample_rate=16000, fps=30) == 90  # 533 samples per frame, floor


# ------------------------------------------------------------------------------------------------
# window plan


def test_plan_matches_original_loop_wherever_it_terminates():
    checked = 0
    for per_window in range(3, 23):
        for overlap in range(2, per_window):
            for total in range(per_window + 1, 3 * per_window + 8):
                ref = original_loop_windows(total, per_window, overlap)
                got = plan_windows(total, per_window, overlap)
                assert [(w.start, w.end, w.is_last) for w in got] == ref, (total, per_window, overlap)
                assert got[-1].length > overlap and all(w.length == per_window for w in got[:-1])
                checked += 1
    assert checked > 3000


def test_plan_cases_the_original_does_not_handle():
    assert original_loop_windows(21, 21, 5) is None      # Ftot == Fpb: infinite loop upstream
    assert plan_windows(21, 21, 5) == [Window(0, 21, True)]
    assert original_loop_windows(13, 21, 5) == []         # Ftot < Fpb: no window upstream (zeros)
    assert plan_windows(13, 21, 5) == [Window(0, 13, True)]
    assert plan_windows(1, 21, 5) == [Window(0, 1, True)]
    n = 51_840 + 1000                                    # 82 frames -> 21 latent frames
    (w,) = plan_windows(num_latent_frames(num_video_frames(n)), 21, 5)
    assert audio_slice(w, n, clip_length=81) == (0, n)


def test_plan_spec_table():
    """spec pipeline.md §8.1 (L = 5, clip 81) and the L = 10 example."""
    def plan(n, overlap=5):
        ws = plan_windows(num_latent_frames(num_video_frames(n)), num_latent_frames(81), overlap)
        return [(w.start, w.end) for w in ws], [audio_slice(w, n, 81) for w in ws]

    assert plan(80_000) == ([(0, 21), (16, 32)], [(0, 51_840), (40_960, 80_000)])
    assert plan(160_000) == ([(0, 21), (16, 37), (32, 53), (48, 63)],
                             [(0, 51_840), (40_960, 92_800), (81_920, 133_760), (122_880, 160_000)])
    windows, slices = plan(641_985)
    assert [s for s, _ in windows] == list(range(0, 225, 16)) + [240] and windows[-1] == (240, 251)
    assert all(b - a == 51_840 for a, b in slices[:-1]) and slices[-1] == (614_400, 641_985)
    assert plan(160_000, overlap=10)[0] == [(0, 21), (11, 32), (22, 43), (33, 54), (44, 63)]


@pytest.mark.parametrize("args, match", [
    ((10, 5, 1), "overlap_window_length must be >= 2"),
    ((10, 5, 0), "overlap_window_length must be >= 2"),
    ((10, 5, 5), "must be < the window length 5"),
    ((10, 5, 7), "must be < the window length 5"),
    ((0, 5, 2), "num_latent_frames must be >= 1"),
])
def test_plan_errors(args, match):
    with pytest.raises(ValueError, match=match):
        plan_windows(*args)


def test_audio_slice_rule():
    w = Window(2, 7, False)
    assert audio_slice(w, 24_520, clip_length=17) == (5120, 5120 + 17 * 640)  # clip_length frames, not 4·5
    assert audio_slice(Window(6, 10, True), 24_520, clip_length=17) == (15_360, 24_520)
    with pytest.raises(ValueError, match="does not fit"):
        audio_slice(Window(2, 7, False), 10_000, clip_length=17)


def test_plan_and_audio_slices_match_e2e_goldens(golden):
    for name in E2E_CASES:
        case = golden(name)
        kw, derived = case.meta["call"]["kwargs"], case.meta["call"]["derived"]
        assert derived["audio_slice"] == "original"
        n = case.tensors["inputs.audio"].shape[0]
        spf = derived["audio_samples_per_video_frame"]
        assert spf == kw["sr"] // kw["fps"] == 640
        assert num_video_frames(n, kw["sr"], kw["fps"]) == derived["total_video_frames_from_audio"]
        total = num_latent_frames(derived["total_video_frames_from_audio"])
        assert total == derived["infer_latent_frames"]
        per_window = num_latent_frames(kw["clip_length"])
        assert per_window == derived["frames_per_batch"]
        windows = plan_windows(total, per_window, kw["overlap_window_length"])
        got = [{"latent": [w.start, w.end], "audio_samples": list(audio_slice(w, n, kw["clip_length"], spf)),
                "blend_with_previous": w.blends} for w in windows]
        assert got == derived["windows"], name
        steps = kw["num_inference_steps"]
        assert len(windows) * steps == derived["transformer_calls"]


def test_e2e_denoising_loop_teacher_forced(golden):
    """Drive the loop with the recorded DiT outputs: every window input, step output and the final
    latents of the original are reproduced bit for bit (float32 buffer, bf16 write-back, fp32 weights)."""
    for name in E2E_CASES:
        case = golden(name)
        kw, t = case.meta["call"]["kwargs"], case.tensors
        overlap, scheme = kw["overlap_window_length"], kw["overlapping_weight_scheme"]
        total = num_latent_frames(num_video_frames(t["inputs.audio"].shape[0]))
        windows = plan_windows(total, num_latent_frames(kw["clip_length"]), overlap)
        timesteps, sigmas = flow_sigmas(kw["num_inference_steps"])
        latents, call = t["trace.initial_latents"], 0
        for i, ts in enumerate(timesteps):
            out = torch.zeros_like(latents)
            for w in windows:
                tag = f"trace.call{call:02d}"
                z = latents[:, :, w.start:w.end]
                assert torch.equal(t[f"{tag}.x"], z.expand(3, -1, -1, -1, -1)), (name, call)
                assert torch.equal(t[f"{tag}.t"], ts.expand(3)), (name, call)
                v = guidance(*t[f"{tag}.noise_pred"].chunk(3), kw["audio_guide_scale"], kw["text_guide_scale"])
                z = euler_step(v, sigmas[i], sigmas[i + 1], z)
                assert torch.equal(z, t[f"trace.step{call:02d}.prev_sample"]), (name, call)
                if w.blends and i != 0:  # the original never blends at step 0
                    z = fuse_overlap(z, out[:, :, w.start:w.start + overlap], blend_weights(overlap, scheme, z.dtype))
                out[:, :, w.start:w.end] = z.to(torch.bfloat16)
                call += 1
            latents = out
        assert torch.equal(latents, t["outputs.final_latents"]), name


# ------------------------------------------------------------------------------------------------
# blend weights and fusion (spec pipeline.md §10)

BF16_TABLE = {
    (5, "uniform"): [0, 0.25, 0.5, 0.75, 1],
    (5, "log"): [0, 0.357421875, 0.62109375, 0.828125, 1],
    (10, "uniform"): [0, 0.111328125, 0.22265625, 0.333984375, 0.4453125, 0.5546875, 0.66796875, 0.77734375,
                      0.890625, 1],
    (10, "log"): [0, 0.1748046875, 0.32421875, 0.453125, 0.56640625, 0.671875, 0.76171875, 0.84765625,
                  0.92578125, 1],
}


@pytest.mark.parametrize("key", list(BF16_TABLE))
def test_blend_weights_bf16_table(key):
    w = blend_weights(*key, dtype=torch.bfloat16)
    assert w.shape == (1, 1, key[0], 1, 1) and w.dtype == torch.bfloat16
    assert w.flatten().float().tolist() == BF16_TABLE[key]


def test_one_minus_w_in_bf16():
    w = blend_weights(10, "uniform", torch.bfloat16)
    assert (1 - w).dtype == torch.bfloat16
    assert (1 - w).flatten().float().tolist() == [1, 0.890625, 0.77734375, 0.6640625, 0.5546875, 0.4453125,
                                                  0.33203125, 0.22265625, 0.109375, 0]


def test_blend_weights_float32():
    L = 7
    u = blend_weights(L, "uniform")
    assert u.dtype == torch.float32 and u.flatten().tolist() == [torch.tensor(j / 6).item() for j in range(L)]
    g = blend_weights(L, "log").flatten().double()
    ref = torch.log1p(torch.linspace(0, 1, L, dtype=torch.float64) * (torch.e - 1))
    assert torch.allclose(g, ref, atol=1e-6) and g[0] == 0 and g[-1] == 1


def test_blend_weights_errors():
    with pytest.raises(ValueError, match="unknown overlapping_weight_scheme 'linear'"):
        blend_weights(5, "linear")
    with pytest.raises(ValueError, match="overlap must be >= 2"):
        blend_weights(1, "uniform")


def test_fuse_overlap():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 7, 2, 3, generator=g)
    prev = torch.randn(1, 4, 3, 2, 3, generator=g)
    w = blend_weights(3, "uniform")                                   # 0, 0.5, 1
    out = fuse_overlap(z, prev, w)
    assert torch.equal(out[:, :, 0], prev[:, :, 0])                   # first overlap frame: previous window
    assert torch.allclose(out[:, :, 1], 0.5 * (z[:, :, 1] + prev[:, :, 1]))
    assert torch.equal(out[:, :, 2:], z[:, :, 2:])                    # last overlap frame and beyond: new window
    assert not torch.equal(z[:, :, 0], out[:, :, 0])                  # input untouched (a new tensor)
    with pytest.raises(ValueError, match="restricted"):
        fuse_overlap(z, prev[:, :, :2], w)


def test_fuse_overlap_bf16_semantics():
    """bf16 latents and weights (inference.py): 1 − w rounded to bf16, products and sum in bf16."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 16, 21, 4, 4, generator=g).to(torch.bfloat16)
    prev = torch.randn(1, 16, 10, 4, 4, generator=g).to(torch.bfloat16)
    w = blend_weights(10, "uniform", torch.bfloat16)
    out = fuse_overlap(z, prev, w)
    assert out.dtype == torch.bfloat16
    ref = z[:, :, :10] * w + prev * (1 - w)                           # all-bf16 arithmetic
    assert torch.equal(out[:, :, :10], ref)
    w32 = blend_weights(10, "uniform", torch.float32)
    assert not torch.equal(out[:, :, :10], (z[:, :, :10].float() * w32 + prev.float() * (1 - w32)).to(torch.bfloat16))
