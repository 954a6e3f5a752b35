"""Flow-matching schedule, Euler step and 3-way guidance against the goldens and diffusers' step semantics."""

import pytest
import torch

from wan.sampling import euler_step, flow_sigmas, guidance

STEP_COUNTS = (3, 4, 10, 30, 50)

# spec pipeline.md §7 (rounded to 6 decimals)
SIGMAS_10 = [1.0, 0.975743, 0.946273, 0.909707, 0.863132, 0.801786, 0.717317, 0.593619, 0.395095, 0.024414, 0.0]
SIGMAS_50_HEAD = [1.000000, 0.995872, 0.991605, 0.987192, 0.982626]
SIGMAS_50_TAIL = [0.320511, 0.260762, 0.192804, 0.114819, 0.024414, 0.000000]


def test_schedule_exact_vs_golden(golden):
    case = golden("scheduler_e")
    assert case.meta["scheduler_kwargs"]["shift"] == 5.0 and case.meta["scheduler_kwargs"]["num_train_timesteps"] == 1000
    out = case.outputs
    for n in STEP_COUNTS:
        timesteps, sigmas = flow_sigmas(n, shift=5.0, num_train_timesteps=1000)
        assert timesteps.dtype == sigmas.dtype == torch.float32
        assert torch.equal(timesteps, out[f"timesteps_{n}"]), n
        assert torch.equal(sigmas, out[f"sigmas_{n}"]), n


def test_step_vs_golden(golden):
    case = golden("scheduler_e")
    _, sigmas = flow_sigmas(50)
    v, x = case.inputs["model_output"], case.inputs["sample"]
    for k in case.meta["spec"]["shape"]["step_indices"]:
        got = euler_step(v, sigmas[k], sigmas[k + 1], x)
        ref = case.outputs[f"step_prev_sample_50_{k}"]
        assert got.dtype == ref.dtype and (got - ref).abs().max().item() <= 1e-6, k


def test_schedule_matches_spec_table():
    t, s = flow_sigmas(10)
    assert s.tolist() == pytest.approx(SIGMAS_10, abs=1e-6)
    assert t[0].item() == 1000.0 and s[-1].item() == 0.0
    assert torch.equal(t, s[:-1] * 1000)
    _, s50 = flow_sigmas(50)
    assert len(s50) == 51
    assert s50[:5].tolist() == pytest.approx(SIGMAS_50_HEAD, abs=1e-6)
    assert s50[-6:].tolist() == pytest.approx(SIGMAS_50_TAIL, abs=1e-6)
    # the double shift: one application would end at the training sigma_min 0.00498, not 0.024414
    assert s50[-2].item() == pytest.approx(0.024414, abs=1e-6)


def test_schedule_bad_steps():
    for bad in (0, -3, None, 2.5):
        with pytest.raises(ValueError, match="num_steps"):
            flow_sigmas(bad)


def _diffusers_step(v, k, sigmas, timesteps, x):
    """The installed diffusers scheduler's step() with our sigmas injected (its Euler update is unchanged since 0.30.1)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    sch.sigmas, sch.timesteps = sigmas.clone(), timesteps.clone()
    sch._step_index = k
    return sch.step(v, timesteps[k], x, return_dict=False)[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_step_dtype_semantics_match_diffusers(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 4, 4, generator=g).to(torch.bfloat16)  # the pipeline's window latents
    v = (torch.randn(1, 16, 3, 4, 4, generator=g) * 3).to(dtype)
    timesteps, sigmas = flow_sigmas(50)
    for k in (0, 7, 49):
        got = euler_step(v, sigmas[k], sigmas[k + 1], x)
        ref = _diffusers_step(v, k, sigmas, timesteps, x)
        assert got.dtype == ref.dtype == dtype and torch.equal(got, ref), k
        # Python-float sigmas are taken as float32: same result
        assert torch.equal(euler_step(v, sigmas[k].item(), sigmas[k + 1].item(), x), got)


def test_bf16_step_product_is_bf16():
    """σ'−σ is rounded to bf16 and multiplied in bf16 before the fp32 add: differs from an fp32 update."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4096, generator=g).to(torch.bfloat16)
    v = torch.randn(4096, generator=g).to(torch.bfloat16)
    _, sigmas = flow_sigmas(50)
    s, s1 = sigmas[10], sigmas[11]
    got = euler_step(v, s, s1, x)
    dt_bf16 = (s1 - s).to(torch.bfloat16).float()
    bf16_product = (x.float() + (dt_bf16 * v.float()).to(torch.bfloat16).float()).to(torch.bfloat16)
    fp32_dt_product = (x.float() + ((s1 - s) * v.float()).to(torch.bfloat16).float()).to(torch.bfloat16)
    fp32_update = (x.float() + (s1 - s) * v.float()).to(torch.bfloat16)
    assert torch.equal(got, bf16_product)
    assert not torch.equal(got, fp32_dt_product)
    assert not torch.equal(got, fp32_update)


@pytest.mark.parametrize("name", ["transformer_a1_square", "transformer_a2_rect", "transformer_a3_lastwindow"])
def test_guidance_vs_golden(golden, name):
    case = golden(name)
    u, b1, b2 = case.outputs["noise_pred"].chunk(3)
    scales = case.meta["cfg_scales"]
    got = guidance(u, b1, b2, audio_scale=scales["audio_guide_scale"], text_scale=scales["text_guide_scale"])
    assert torch.equal(got, case.outputs["noise_pred_cfg"])
    # swapping the scales (the pre-f58cb13 bug) gives something else
    assert scales["audio_guide_scale"] != scales["text_guide_scale"]
    swapped = guidance(u, b1, b2, audio_scale=scales["text_guide_scale"], text_scale=scales["audio_guide_scale"])
    assert not torch.allclose(swapped, got)


def test_guidance_branch_roles():
    u, a, t = (torch.full((2,), float(i)) for i in (1, 2, 4))  # uncond, neg text + audio, pos text + audio
    assert torch.equal(guidance(u, a, t, 0.0, 0.0), u)
    assert torch.equal(guidance(u, a, t, 1.0, 0.0), a)
    assert torch.equal(guidance(u, a, t, 1.0, 1.0), t)
    # (1 − A)·u + (A − T)·a + T·t  (spec pipeline.md §8)
    assert torch.allclose(guidance(u, a, t, 5.0, 3.0), (1 - 5) * u + (5 - 3) * a + 3 * t)
