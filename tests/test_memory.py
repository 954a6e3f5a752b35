"""Memory modes (wan/memory.py) and the exact halo-tiled VAE: every exact mode gives full load's final latents bit for
bit (CPU, tiny tree; the offload machinery runs on the CPU through a test hook), the guidance branches one at a time
equal the batched forward, umT5 visits with its embedding on the host and is freed after the prompts when asked,
halo tiles equal whole frames, `auto` picks by free memory. GPU checks (prefetch overlap, peaks) are opt-in."""

from __future__ import annotations

import argparse
import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import wan.memory as memory
from wan.configs import VAEConfig, get_config
from wan.memory import (GIB, BlockStreamer, apply_memory_mode, choose_memory_mode, estimate_peaks, forward_branches,
                        resolve_memory_mode, text_encoder_blocks, text_encoder_host_modules, visit)
from wan.models.vae import WanVAE


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"), "tiny", seed=0)


def load(tree):
    from wan.pipeline import StableAvatarPipeline

    return StableAvatarPipeline.from_checkpoints(
        tree / "Wan2.1-Fun-V1.1-1.3B-InP", tree / "StableAvatar-1.3B" / "transformer3d-square.pt",
        tree / "wav2vec2-base-960h", device="cpu", dtype=torch.float32, spec=get_config("tiny"))


@pytest.fixture(scope="module")
def pipe(tree):
    return load(tree)


@pytest.fixture(scope="module")
def reference(pipe):
    """Final latents and decoded frames of the tiny run in model_full_load (the plain pipeline)."""
    return generate(pipe)


@pytest.fixture
def cpu_offload(monkeypatch):
    """Let the offload modes run with device "cpu" (their copies are real copies there, see `memory._to_device`)."""
    monkeypatch.setattr(memory, "_OFFLOAD_DEVICE_TYPES", ("cuda", "cpu"))


def generate(pipe, decode: bool = True):
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    audio = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    out = pipe.generate(image, audio, "a person is talking", width=64, height=48, num_inference_steps=2,
                        overlap_window_length=3, clip_length=17, progress=False)
    frames = torch.cat(list(pipe.decode_frames(out.latents)), dim=2) if decode else None
    return out.latents, frames


# --- every exact mode = full load -------------------------------------------------------------------------------


def test_modes_give_full_load_latents_bit_for_bit(pipe, reference, cpu_offload):
    """model_cpu_offload and sequential_cpu_offload (umT5 visiting with its embedding on the host, DiT blocks
    streamed, guidance branches one at a time, halo-tiled VAE in 2 x 2 tiles, 1 latent frame per decode step) give
    full load's final latents bit for bit; the decoded frames agree up to float rounding (a halo tile's convs run on
    other shapes than the whole frame's: measured max |diff| 1.5e-6 here)."""
    ref, ref_frames = reference
    calls = []
    # a forward hook registered before the modes' hooks: it runs while the block still holds its streamed copy
    hook = pipe.dit.blocks[0].register_forward_hook(
        lambda m, args, out: calls.append((args[0].shape[0], next(m.parameters()).data_ptr())))
    host_ptr = next(pipe.dit.blocks[0].parameters()).data_ptr()
    try:
        apply_memory_mode(pipe, "model_cpu_offload")
        assert (pipe.guidance_batch, pipe.decode_chunk, pipe.vae.halo_tile) == (3, 1, None)
        lat, frames = generate(pipe)
        assert torch.equal(lat, ref)
        torch.testing.assert_close(frames, ref_frames, rtol=0, atol=1e-5)
        n_batched = len(calls)

        apply_memory_mode(pipe, "sequential_cpu_offload")
        assert (pipe.guidance_batch, pipe.decode_chunk, pipe.vae.halo_tile) == (1, 1, 256)
        pipe.vae.enable_halo_tiling(32)  # 64x48 frames in 2 x 2 tiles (256 px tiles cover them whole)
        assert pipe.vae._halo_grid(6, 8) == ([(0, 3), (3, 6)], [(0, 4), (4, 8)])
        del calls[:]
        lat, frames = generate(pipe)
        assert torch.equal(lat, ref)
        torch.testing.assert_close(frames, ref_frames, rtol=0, atol=1e-5)
    finally:
        hook.remove()
        apply_memory_mode(pipe, "model_full_load")
    # the blocks saw one branch at a time, three times as often, on streamed copies of their weights
    assert len(calls) == 3 * n_batched and {b for b, _ in calls} == {1}
    assert all(ptr != host_ptr for _, ptr in calls)
    assert next(pipe.dit.blocks[0].parameters()).data_ptr() == host_ptr
    assert not pipe.dit.blocks[0]._forward_pre_hooks and pipe.vae.halo_tile is None and pipe.guidance_batch == 3
    assert pipe.text_encoder is not None  # keep_text_encoder=True (the default) keeps it for the next video


def test_offload_modes_need_cuda(pipe):
    for mode in ("model_cpu_offload", "sequential_cpu_offload"):
        with pytest.raises(ValueError, match="needs a CUDA device"):
            apply_memory_mode(pipe, mode)
    with pytest.raises(ValueError, match="resolve_memory_mode"):
        apply_memory_mode(pipe, "auto")
    with pytest.raises(ValueError, match="unknown"):
        apply_memory_mode(pipe, "everything_on_the_gpu")


# --- guidance branches one at a time ----------------------------------------------------------------------------


def random_dit():
    from wan.models.dit import WanTransformer3DFantasyModel

    torch.manual_seed(0)
    model = WanTransformer3DFantasyModel(get_config("tiny").dit).eval()
    with torch.no_grad():
        for p in model.parameters():  # every weight random (the audio k/v start at zero otherwise)
            p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.dim() > 1 else 0.1))
    return model


def test_guidance_branches_one_at_a_time_equal_the_batched_forward():
    """The blocks and the head at batch 1 give each branch the bits they give it at batch 3 (float32, CPU; the
    embeddings and the adapter run batched in both). Distinct x per branch: the adapter still sees the last one."""
    from wan.bench import dit_inputs
    from wan.models.dit import TokenSplit

    model = random_dit()
    kw = dit_inputs("tiny", 64, 64, 21, torch.device("cpu"), torch.float32, text_lens=(10, 10, 7))
    with torch.no_grad():
        ref = model(**kw)
        out = forward_branches(model, **kw)
    assert torch.equal(out, ref)
    assert type(model.token_split) is TokenSplit
    model.token_split = type("Split", (TokenSplit,), {})()
    with pytest.raises(ValueError, match="parallel"):
        forward_branches(model, **kw)


# --- umT5 visits, host embedding, freeing -------------------------------------------------------------------------


def test_text_encoder_visit_keeps_the_embedding_on_the_host(pipe):
    te = pipe.text_encoder
    blocks, host = text_encoder_blocks(te), text_encoder_host_modules(te)
    assert len(host) == 1 and host[0].weight is te.model.shared.weight
    ids, mask = torch.randint(0, 100, (2, 16)), torch.ones(2, 16, dtype=torch.long)
    ref = te(ids, mask)
    emb_ptr, block_ptr = host[0].weight.data_ptr(), next(blocks[0].parameters()).data_ptr()
    norm_ptr = te.model.encoder.final_layer_norm.weight.data_ptr()
    seen = {}
    probe = blocks[0].register_forward_hook(  # runs before the visit's own hooks (registered later)
        lambda m, a, o: seen.update(emb=host[0].weight.data_ptr(), block=next(m.parameters()).data_ptr(),
                                 norm=te.model.encoder.final_layer_norm.weight.data_ptr()))
    with visit(te, "cpu", blocks, host=host):
        out = te(ids, mask)
    probe.remove()
    assert torch.equal(out, ref)
    # the embedding is looked up in place; the block and the rest work on copies (what the GPU would hold)
    assert seen["emb"] == emb_ptr and seen["block"] != block_ptr and seen["norm"] != norm_ptr
    assert (host[0].weight.data_ptr(), next(blocks[0].parameters()).data_ptr()) == (emb_ptr, block_ptr)
    assert te.model.encoder.final_layer_norm.weight.data_ptr() == norm_ptr
    assert not te._forward_pre_hooks and not host[0]._forward_hooks and not blocks[0]._forward_pre_hooks


def test_one_shot_run_frees_the_text_encoder(tree, reference, cpu_offload):
    """keep_text_encoder=False: same latents, the encoder (module and weights) is gone after the prompts, and a
    second generate() says why it cannot run."""
    pipe = load(tree)
    apply_memory_mode(pipe, "sequential_cpu_offload", keep_text_encoder=False)
    module, weight = weakref.ref(pipe.text_encoder), weakref.ref(pipe.text_encoder.model.encoder.block[0]
                                                                 .layer[1].DenseReluDense.wo.weight)
    assert torch.equal(generate(pipe, decode=False)[0], reference[0])
    gc.collect()
    assert pipe.text_encoder is None and module() is None and weight() is None
    with pytest.raises(ValueError, match="freed .* keep_text_encoder=True"):
        generate(pipe, decode=False)


# --- block streaming ---------------------------------------------------------------------------------------------


def test_block_streamer_restores_and_matches():
    torch.manual_seed(0)
    blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
    x = torch.randn(2, 8)

    def run():
        h = x
        for b in blocks:
            h = b(h)
        return h

    ref, ptrs = run(), [b.weight.data_ptr() for b in blocks]
    inside = []
    probes = [b.register_forward_hook(lambda m, a, o: inside.append(m.weight.data_ptr())) for b in blocks]
    streamer = BlockStreamer(blocks, torch.device("cpu"))
    handles = streamer.hooks()
    out = run()
    for h in handles + probes:
        h.remove()
    assert torch.equal(out, ref) and streamer.copy_stream is None and not streamer.ready
    assert all(a != b for a, b in zip(inside, ptrs)) and [b.weight.data_ptr() for b in blocks] == ptrs


# --- exact halo tiling of the VAE --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    model = WanVAE(VAEConfig(base_dim=4)).eval()
    with torch.no_grad():
        for p in model.parameters():  # larger than the init so that a missing margin pixel shows
            p.normal_(0, 0.2)
    return model


def test_halo_margins_of_the_wan_vae():
    """The receptive fields the tiles are padded with (Wan2.1 topology, any width): 13/12/10/7 pixels into the
    decoder's upsampling blocks and 1 into its head; 61 (left/top) and 68 (right/bottom) input pixels into the
    encoder's downsampling blocks."""
    from wan.models.vae import _decoder_margins, _encoder_margins, build_autoencoder

    with torch.device("meta"):
        real = build_autoencoder(VAEConfig())
    assert _decoder_margins(real.decoder) == ([13, 12, 10, 7], 1)
    assert _encoder_margins(real.encoder) == (61, 68)


def test_halo_tiled_decode_equals_whole_frames(vae, monkeypatch):
    """2 x 2 tiles of a 128x96 frame, 2 latent frames (the causal caches carried per tile): equal to the whole
    decode up to float rounding (measured max |diff| 6e-8: a few 1-ulp flips where a conv runs on another shape).
    Half the margins give errors of order 0.5 (one pixel short is invisible here: the edge of the receptive field
    weighs ~1e-7 with random weights; `test_halo_margins_of_the_wan_vae` pins the margins)."""
    import wan.models.vae as vae_module

    z = torch.randn(1, 16, 2, 12, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = torch.cat(list(vae.decode_stream(z, chunk=1)), dim=2)
        vae.enable_halo_tiling(64)
        try:
            assert vae._halo_grid(12, 16) == ([(0, 6), (6, 12)], [(0, 8), (8, 16)])
            tiled = vae.decode(z)  # = decode_stream with one chunk while halo tiling is on
            assert tiled.shape == whole.shape
            assert (tiled - whole).abs().max().item() <= 1e-6
            margins = vae_module._decoder_margins
            monkeypatch.setattr(vae_module, "_decoder_margins", lambda d: ([m // 2 for m in margins(d)[0]], 0))
            assert (vae.decode(z[:, :, :1]) - whole[:, :, :1]).abs().max().item() > 1e-2
        finally:
            vae.disable_halo_tiling()
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.enable_halo_tiling(60)


def test_halo_tiled_encode_equals_whole_frames(vae, monkeypatch):
    """2 x 2 tiles of a 192x192 video, 5 frames (causal chunks 1, 4): equal to the whole encode up to float
    rounding (measured: bit for bit); without margins the tiles are wrong."""
    import wan.models.vae as vae_module

    video = torch.rand(1, 3, 5, 192, 192, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        whole = vae.encode_posterior(video).parameters
        vae.enable_halo_tiling(96)
        try:
            assert vae._halo_grid(24, 24) == ([(0, 12), (12, 24)], [(0, 12), (12, 24)])
            tiled = vae.encode_posterior(video).parameters
            assert (tiled - whole).abs().max().item() <= 1e-6
            monkeypatch.setattr(vae_module, "_encoder_margins", lambda e: (0, 0))
            assert (vae.encode_posterior(video).parameters - whole).abs().max().item() > 1e-2
        finally:
            vae.disable_halo_tiling()


# --- auto ----------------------------------------------------------------------------------------------------------


def test_auto_picks_the_fastest_mode_that_fits():
    peaks = estimate_peaks(480, 832, 81)
    assert abs(peaks["model_full_load"] - 15.0) < 0.5  # measured 15.0 GiB (BENCHMARKS.md, H100 and H200)
    assert abs(peaks["model_cpu_offload"] - 9.1) < 0.5  # measured: the VAE stage of the offload modes
    assert peaks["sequential_cpu_offload"] <= 4.0  # the target (estimated, not measured yet)
    assert choose_memory_mode(79 * GIB, 480, 832)[0] == "model_full_load"
    mode, why = choose_memory_mode(12 * GIB, 480, 832)
    assert mode == "model_cpu_offload" and "12.0 GiB free" in why and "480x832" in why
    assert choose_memory_mode(6 * GIB, 480, 832)[0] == "sequential_cpu_offload"
    mode, why = choose_memory_mode(2 * GIB, 480, 832)
    assert mode == "sequential_cpu_offload" and "may run out of memory" in why
    # larger frames need more: at 720x1280 the same 22 GiB no longer hold full load (26 GiB estimated)
    assert choose_memory_mode(22 * GIB, 480, 832)[0] == "model_full_load"
    assert choose_memory_mode(22 * GIB, 720, 1280)[0] == "model_cpu_offload"
    # --fast allows full load and model_cpu_offload only
    mode, why = choose_memory_mode(6 * GIB, 480, 832, allowed=("model_full_load", "model_cpu_offload"))
    assert mode == "model_cpu_offload" and "may run out" in why
    assert resolve_memory_mode("auto", torch.device("cpu"), 480, 832)[0] == "model_full_load"
    assert resolve_memory_mode("model_cpu_offload", torch.device("cuda"), 480, 832)[0] == "model_cpu_offload"


def test_auto_on_the_cli_resolves_before_loading(tree, tmp_path):
    import inference
    from wan.runner import load_pipeline, resolve_device

    args = inference.build_parser().parse_args([
        "--pretrained_model_name_or_path", str(tree / "Wan2.1-Fun-V1.1-1.3B-InP"),
        "--transformer_path", str(tree / "StableAvatar-1.3B" / "transformer3d-square.pt"),
        "--pretrained_wav2vec_path", str(tree / "wav2vec2-base-960h"), "--model_spec", "tiny",
        "--GPU_memory_mode", "auto", "--device", "cpu"])
    device, dtype = resolve_device(args)
    pipe = load_pipeline(args, device, dtype)
    assert args.GPU_memory_mode == "model_full_load" and pipe.text_encoder is not None
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_device(argparse.Namespace(device="cpu", dtype="auto", GPU_memory_mode="sequential_cpu_offload"))


# --- GPU (opt-in) ---------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_block_streamer_prefetches_and_matches():
    """On CUDA: 8 blocks of 64 MiB streamed from pinned memory give the resident result bit for bit, hold about two
    blocks on the GPU, and prefetch (block 0 waits for the next forward); the copy of block k+1 overlaps block k."""
    dev = torch.device("cuda")
    torch.manual_seed(0)
    blocks = nn.ModuleList(nn.Linear(4096, 4096, bias=False).to(torch.bfloat16) for _ in range(8))
    x = torch.randn(8192, 4096, device=dev, dtype=torch.bfloat16)

    def run():
        h = x
        for b in blocks:
            h = b(h)
        return h

    blocks.to(dev)
    ref = run()
    blocks.to("cpu")
    memory._pin(memory._tensors(blocks))
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    streamer = BlockStreamer(blocks, dev)
    handles = streamer.hooks()
    out = run()
    assert list(streamer.ready) == [0]
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    for h in handles:
        h.remove()
    assert torch.equal(out, ref)
    block = 4096 * 4096 * 2
    assert peak <= 3 * block + 4 * x.numel() * 2, peak / block
    assert all(p.device.type == "cpu" and p.is_pinned() for p in blocks.parameters())


@pytest.mark.gpu
def test_gpu_guidance_branches_bit_for_bit_and_modes_max_difference(tree):
    """On CUDA (bf16 autocast, tiny tree): the guidance branches one at a time equal the batched forward bit for
    bit on the real-size DiT at a small size; every exact mode's final latents vs full load's: the max difference
    is printed (the CPU test asserts 0)."""
    from wan.bench import _random_dit, dit_inputs
    from wan.pipeline import StableAvatarPipeline

    dev = torch.device("cuda")
    model = _random_dit("stableavatar-1.3b", dev, torch.bfloat16)
    kw = dit_inputs("stableavatar-1.3b", 256, 256, 21, dev, torch.bfloat16)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = model(**kw)
        out = forward_branches(model, **kw)
    print("branches vs batched, real-size DiT 256x256x21: max |diff|", (out - ref).abs().max().item())
    assert torch.equal(out, ref)
    del model
    torch.cuda.empty_cache()

    pipe = StableAvatarPipeline.from_checkpoints(
        tree / "Wan2.1-Fun-V1.1-1.3B-InP", tree / "StableAvatar-1.3B" / "transformer3d-square.pt",
        tree / "wav2vec2-base-960h", device=dev, dtype=torch.bfloat16, load_device="cpu", spec=get_config("tiny"))
    results = {}
    for mode in ("model_full_load", "model_cpu_offload", "sequential_cpu_offload"):
        apply_memory_mode(pipe, mode)
        if mode == "sequential_cpu_offload":
            pipe.vae.enable_halo_tiling(32)
        results[mode] = generate(pipe)
    for mode, (lat, frames) in results.items():
        print(mode, "latents max |diff| vs full load", (lat - results["model_full_load"][0]).abs().max().item(),
              "frames", (frames - results["model_full_load"][1]).abs().max().item())
    assert torch.equal(results["model_cpu_offload"][0], results["model_full_load"][0])
