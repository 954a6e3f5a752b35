"""Wan VAE: parity with the original (goldens, loaded from an original-format .pth), key naming, strict
loading, streaming decode == whole decode (plain, sliced, tiled), tiny writer round trip."""

from __future__ import annotations

import pytest
import torch

from wan.checkpoints import CheckpointError, atomic_save
from wan.checkpoints.vae import VAE_FILE, diffusers_key_to_original, diffusers_to_original, original_to_diffusers
from wan.configs import VAEConfig, get_config
from wan.models.vae import WanVAE, build_autoencoder
from wan.testing.golden import assert_close_module
from wan.testing.tiny_vae_audio import WAN_FUN_DIR, write_vae


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> WanVAE:
    root = tmp_path_factory.mktemp("ckpt")
    write_vae(root, get_config("tiny"), seed=0)
    return WanVAE.from_checkpoints(root / WAN_FUN_DIR, get_config("tiny").vae)


@pytest.mark.parametrize("case", ["vae_c1_5f_16x16", "vae_c2_9f_16x24_cond"])
def test_golden_parity(golden, case, tmp_path):
    g = golden(case)
    # the released file's keys are the manifest's without the wrapper's `model.` prefix
    weights = {k[len("model."):]: v for k, v in g.weights.items()}
    atomic_save(weights, tmp_path / VAE_FILE)
    cfg = VAEConfig(base_dim=g.tiny_overrides()["_video_vae dim"])
    vae = WanVAE.from_checkpoints(tmp_path, cfg)
    out = g.outputs
    with torch.no_grad():
        posterior = vae.encode_posterior(g.inputs["video"])
        assert_close_module(posterior.parameters, out["posterior_parameters"], what=f"{case} posterior")
        assert_close_module(vae.encode(g.inputs["video"]), out["latent_mode"], what=f"{case} latent_mode")
        video = vae.decode(out["latent_mode"])
        streamed = torch.cat(list(vae.decode_stream(out["latent_mode"], chunk=1)), dim=2)
    assert_close_module(video, out["decoded"], what=f"{case} decoded")
    assert_close_module(streamed, out["decoded"], what=f"{case} decoded (stream)")
    assert_close_module((video / 2 + 0.5).clamp(0, 1), out["decoded_video_0_1"], what=f"{case} decoded 0..1")


def test_key_naming_inverts_diffusers_converter():
    model = build_autoencoder(VAEConfig(base_dim=4))
    keys = list(model.state_dict())
    originals = [diffusers_key_to_original(k) for k in keys]
    assert len(set(originals)) == len(keys) == 194
    # diffusers' own converter maps each original name back to the diffusers name
    conv = original_to_diffusers({o: torch.tensor(float(i)) for i, o in enumerate(originals)})
    assert {k: int(v) for k, v in conv.items()} == {k: i for i, k in enumerate(keys)}
    # a few names checked against the released manifest (checkpoint_keys/vae.tsv)
    for o in ("conv1.weight", "conv2.bias", "encoder.conv1.weight", "encoder.head.0.gamma", "decoder.head.2.bias",
              "encoder.downsamples.3.shortcut.weight", "encoder.downsamples.5.time_conv.weight",
              "encoder.middle.1.to_qkv.weight", "decoder.middle.2.residual.6.weight",
              "decoder.upsamples.4.shortcut.bias", "decoder.upsamples.3.time_conv.weight",
              "decoder.upsamples.11.resample.1.weight", "decoder.upsamples.14.residual.3.gamma"):
        assert o in originals, o
    with pytest.raises(KeyError):
        diffusers_key_to_original("decoder.something_new.weight")


def test_golden_key_set_matches_naming(golden):
    g = golden("vae_c1_5f_16x16")
    model = build_autoencoder(VAEConfig(base_dim=4))
    shapes = {diffusers_key_to_original(k): tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k[len("model."):]: tuple(v.shape) for k, v in g.weights.items()}


def test_strict_load_names_original_keys(tmp_path):
    vae = build_autoencoder(VAEConfig(base_dim=4))
    sd = diffusers_to_original(vae.state_dict())
    del sd["decoder.upsamples.4.shortcut.weight"]
    sd["decoder.extra.weight"] = torch.zeros(1)
    sd["conv2.bias"] = torch.zeros(3)
    atomic_save(sd, tmp_path / VAE_FILE)
    with pytest.raises(CheckpointError) as e:
        WanVAE.from_checkpoints(tmp_path, VAEConfig(base_dim=4))
    msg = str(e.value)
    assert "decoder.upsamples.4.shortcut.weight" in msg and "decoder.extra.weight" in msg and "conv2.bias" in msg
    with pytest.raises(CheckpointError, match="base_dim|mis-shaped"):
        atomic_save(diffusers_to_original(vae.state_dict()), tmp_path / VAE_FILE)
        WanVAE.from_checkpoints(tmp_path, VAEConfig(base_dim=8))
    with pytest.raises(CheckpointError, match="no VAE file"):
        WanVAE.from_checkpoints(tmp_path / "nowhere", VAEConfig(base_dim=4))


def test_tiny_writer_round_trip(tmp_path):
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    root = write_tiny_checkpoints(tmp_path, components=["vae"])
    path = root / WAN_FUN_DIR / VAE_FILE
    written = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float32 for v in written.values())
    assert "decoder.upsamples.4.shortcut.weight" in written and "model.conv1.weight" not in written
    vae = WanVAE.from_checkpoints(path, get_config("tiny").vae)
    back = diffusers_to_original(vae.vae.state_dict())
    assert back.keys() == written.keys()
    assert all(torch.equal(back[k], written[k]) for k in written)
    assert vae.dtype == torch.float32 and not vae.training


def test_stream_equals_whole_decode(tiny_vae):
    torch.manual_seed(0)
    # >= 16 latent positions per frame: over fewer, post_quant_conv (1x1x1) may round differently with the
    # number of frames it is given (oneDNN vector tails): ~1e-5 at 2x4 latents, 0 at every realistic size
    z = torch.randn(1, 16, 6, 4, 4)
    with torch.no_grad():
        whole = tiny_vae.decode(z)
        assert whole.shape == (1, 3, 21, 32, 32)
        for chunk in (1, 2, 4, 9):
            parts = list(tiny_vae.decode_stream(z, chunk=chunk))
            assert len(parts) == -(-6 // chunk)
            assert parts[0].shape[2] == 1 + 4 * (min(chunk, 6) - 1)
            streamed = torch.cat(parts, dim=2)
            assert streamed.shape == whole.shape
            assert (streamed - whole).abs().max().item() <= 1e-6, chunk
        assert streamed.abs().max() <= 1.0  # clamped like decode


def test_stream_equals_decode_with_slicing_and_tiling(tiny_vae):
    torch.manual_seed(1)
    z = torch.randn(2, 16, 4, 4, 6)
    try:
        with torch.no_grad():
            tiny_vae.enable_slicing()
            sliced = tiny_vae.decode(z)
            assert (torch.cat(list(tiny_vae.decode_stream(z, chunk=3)), 2) - sliced).abs().max().item() <= 1e-6
            # 16x16-pixel tiles (2x2 latent) every 8 px: 2 x 3 tiles with blended seams
            tiny_vae.enable_tiling(16, 16, 8, 8)
            tiled = tiny_vae.decode(z)
            assert (tiled - sliced).abs().max().item() > 1e-3  # tiling is really on (and approximate)
            assert (torch.cat(list(tiny_vae.decode_stream(z, chunk=2)), 2) - tiled).abs().max().item() <= 1e-6
            tiny_vae.disable_slicing()
            assert (torch.cat(list(tiny_vae.decode_stream(z, chunk=4)), 2) - tiny_vae.decode(z)).abs().max() <= 1e-6
    finally:
        tiny_vae.disable_tiling()
        tiny_vae.disable_slicing()


def test_stream_is_lazy(tiny_vae):
    """Each chunk is decoded only when asked for: memory does not grow with the number of latent frames."""
    calls = []
    handle = tiny_vae.vae.decoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[2]))
    try:
        stream = tiny_vae.decode_stream(torch.randn(1, 16, 50, 2, 2), chunk=2)
        with torch.no_grad():
            first = next(stream)
            assert first.shape == (1, 3, 5, 16, 16) and calls == [1, 1]
            next(stream)
        assert calls == [1, 1, 1, 1]
    finally:
        handle.remove()


def test_encode_decode_shapes_and_errors(tiny_vae):
    video = torch.rand(1, 3, 9, 16, 24) * 2 - 1
    with torch.no_grad():
        lat = tiny_vae.encode(video)
        assert lat.shape == (1, 16, 3, 2, 3)
        assert tiny_vae.decode(lat).shape == video.shape
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        tiny_vae.encode(video[:, :, :8])
    with pytest.raises(ValueError, match="multiple of 8"):
        tiny_vae.encode(video[..., :20])
    with pytest.raises(ValueError, match="latents must be"):
        next(tiny_vae.decode_stream(torch.zeros(1, 4, 2, 2, 2)))
    with pytest.raises(ValueError, match="chunk"):
        next(tiny_vae.decode_stream(lat, chunk=0))


# ------------------------------------------------------------------------------ long streams (>= 40 frames)
def test_long_stream_equals_whole_decode(tiny_vae):
    """41 latent frames (161 video frames), 4x4 latents; chunk sizes that do and do not divide the length."""
    torch.manual_seed(2)
    n = 41
    z = torch.randn(1, 16, n, 4, 4)
    with torch.no_grad():
        whole = tiny_vae.decode(z)
        assert whole.shape == (1, 3, 1 + 4 * (n - 1), 32, 32)
        for chunk in (1, 3, 8, 16):
            parts = list(tiny_vae.decode_stream(z, chunk=chunk))
            sizes = [min(chunk, n - s) for s in range(0, n, chunk)]
            assert [p.shape[2] for p in parts] == [1 + 4 * (sizes[0] - 1)] + [4 * s for s in sizes[1:]], chunk
            diff = (torch.cat(parts, dim=2) - whole).abs().max().item()
            assert diff <= 1e-6, (chunk, diff)


def _held_tensor_bytes(obj, seen: set[int]) -> int:
    """Bytes of the distinct tensor storages reachable from `obj` through dicts, lists and tuples (a view counts
    its whole storage: that is what it keeps alive)."""
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(_held_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_held_tensor_bytes(v, seen) for v in obj)
    return 0


def _stream_state_bytes(vae: WanVAE, n_frames: int) -> tuple[list[int], list[int]]:
    """Decode n_frames latent frames one at a time; after every yielded chunk record the bytes of the feature
    caches and of every tensor the generator's frame holds (its input `latents` excepted: the caller owns it)."""
    torch.manual_seed(3)
    gen = vae.decode_stream(torch.randn(1, 16, n_frames, 4, 4), chunk=1)
    cache_bytes, state_bytes = [], []
    with torch.no_grad():
        for _ in gen:
            local = gen.gi_frame.f_locals
            cache_bytes.append(_held_tensor_bytes(local["caches"], set()))
            state_bytes.append(_held_tensor_bytes({k: v for k, v in local.items() if k not in ("latents", "self")},
                                                  set()))
    return cache_bytes, state_bytes


def test_stream_state_does_not_grow_with_length(tiny_vae):
    """The generator carries a fixed-size causal cache (<= 2 time steps per causal conv) and the current
    chunk only: its tensors stop growing after the first chunks and do not depend on the video length."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    long_cache, long_state = _stream_state_bytes(tiny_vae, 48)
    short_cache, short_state = _stream_state_bytes(tiny_vae, 12)
    assert len(long_cache) == 48 and len(short_cache) == 12
    n_convs = sum(isinstance(m, WanCausalConv3d) for m in tiny_vae.vae.decoder.modules())
    cache = long_cache[-1]
    assert cache > 0 and n_convs > 20
    # warm-up: the first latent frame leaves one cached time step per conv, every later one two
    assert long_cache[0] < long_cache[1]
    assert set(long_cache[1:]) == {cache}, long_cache
    assert set(long_state[1:]) == {long_state[1]}, long_state
    assert short_cache == long_cache[:12] and short_state == long_state[:12]
    # the rest of the state is one decoded chunk (4 frames of 3x32x32 float32) and its latent, nothing more
    assert 0 < long_state[1] - cache < 2 * 4 * 3 * 32 * 32 * 4


def test_bench_vae_cpu_smoke(tmp_path, capsys):
    """`python -m wan.bench vae` at tiny size on the CPU: three phases, printed and written to --json."""
    import argparse
    import json

    from wan.bench import main, parse_size

    args = argparse.Namespace(what="vae", sizes=[parse_size("32x48")], frames=5, spec="tiny", dtype=None,
                              device="cpu", warmup=0, runs=1, json=str(tmp_path / "b.json"), chunk=1)
    main(args)
    results = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [r["what"] for r in results] == ["vae_encode", "vae_decode", "vae_decode_stream"]
    assert all(r["dtype"] == "fp32" and r["size_wxh"] == "32x48" and r["latent_frames"] == 2 for r in results)
    assert all(r["median_s"] > 0 for r in results) and results[2]["chunk"] == 1
    out = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("attention:")]
    assert len(out) == 3, out
