"""Audio front end: file reading like librosa.load(sr=16000) (files made on the fly), wav2vec2 encoder
(tiny folder in the real layout; parity with the e2e goldens' wav2vec features)."""

from __future__ import annotations

import fractions
import json

import numpy as np
import pytest
import torch

from wan.io.audio import load_audio, resample

SR = 44100


def _stereo(n: int = SR + 37, sr: int = SR) -> np.ndarray:
    t = np.arange(n) / sr
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t + 1)], 1).astype(np.float32)


def _librosa_like(raw_nc: np.ndarray, sr: int) -> np.ndarray:
    """What librosa.load(sr=16000) computes from soundfile's [N, C] float32 samples (soxr HQ + ceil length)."""
    import soxr

    y = raw_nc.T.mean(axis=0) if raw_nc.shape[1] > 1 else raw_nc[:, 0]
    out = soxr.resample(np.ascontiguousarray(y), sr, 16000, quality="HQ")
    n = int(np.ceil(len(y) * 16000 / sr))
    return np.pad(out, (0, max(0, n - len(out))))[:n]


def _write_av(path, audio_nc: np.ndarray, sr: int, codec: str, fmt: str | None = None, video: bool = False,
              layout: str = "stereo") -> None:
    """A container with one audio stream (and optionally a short H.264 video stream), written with PyAV."""
    import av

    sample_fmt = {"aac": "fltp", "pcm_s16le": "s16"}[codec]
    with av.open(str(path), "w", format=fmt) as c:
        if video:
            vs = c.add_stream("libx264", rate=25)
            vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        a = c.add_stream(codec, rate=sr, layout=layout)
        if video:
            for i in range(5):
                frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
                for p in vs.encode(frame):
                    c.mux(p)
            for p in vs.encode(None):
                c.mux(p)
        for s in range(0, len(audio_nc), 1024):
            block = audio_nc[s:s + 1024]
            if sample_fmt == "s16":  # packed interleaved: [1, n * C]
                arr = np.round(block * 32767).astype(np.int16).reshape(1, -1)
            else:  # planar: [C, n]
                arr = np.ascontiguousarray(block.T)
            frame = av.AudioFrame.from_ndarray(arr, format=sample_fmt, layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = sr, s, fractions.Fraction(1, sr)
            for p in a.encode(frame):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)


# --------------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("name,subtype", [("a.wav", "PCM_16"), ("a.flac", "PCM_16"), ("f.wav", "FLOAT")])
def test_soundfile_formats_equal_librosa_recipe(tmp_path, name, subtype):
    import soundfile as sf

    sf.write(tmp_path / name, _stereo(), SR, subtype=subtype)
    y = load_audio(tmp_path / name)
    raw, _ = sf.read(tmp_path / name, dtype="float32", always_2d=True)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == int(np.ceil((SR + 37) * 16000 / SR)) == 16014
    np.testing.assert_array_equal(y, _librosa_like(raw, SR))
    # the downmix really is the channel mean: a 440 Hz + 660 Hz mixture, not one channel
    assert np.corrcoef(y[:16000], _librosa_like(raw[:, :1], SR)[:16000])[0, 1] < 0.95


def test_mono_16k_is_untouched_and_sr_none_keeps_rate(tmp_path):
    import soundfile as sf

    x = (np.random.default_rng(0).standard_normal(8000) * 0.1).astype(np.float32)
    sf.write(tmp_path / "m.wav", x, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "m.wav"), x)
    sf.write(tmp_path / "s.wav", _stereo(1000), SR, subtype="FLOAT")
    y = load_audio(tmp_path / "s.wav", sr=None)
    assert len(y) == 1000
    np.testing.assert_array_equal(y, _stereo(1000).mean(axis=1))


def test_resample_fixes_length_like_librosa():
    import soxr

    y = np.random.default_rng(1).standard_normal(48001).astype(np.float32)
    assert len(soxr.resample(y, 48000, 16000, quality="HQ")) == 16000  # soxr gives one short
    out = resample(y, 48000, 16000)
    assert len(out) == 16001 and out[-1] == 0.0 and out.dtype == np.float32
    assert resample(y, 16000, 16000) is y


def test_pyav_path_is_exact_for_pcm(tmp_path):
    """A .mov soundfile cannot open goes through PyAV; with PCM inside it must equal the wav of the same samples."""
    import soundfile as sf

    x = _stereo()
    pcm = np.round(x * 32767).astype(np.int16)
    _write_av(tmp_path / "a.mov", x, SR, "pcm_s16le", fmt="mov")
    sf.write(tmp_path / "a.wav", pcm, SR, subtype="PCM_16")
    np.testing.assert_array_equal(load_audio(tmp_path / "a.mov"), load_audio(tmp_path / "a.wav"))


@pytest.mark.parametrize("name,fmt,video", [("v.mp4", "mp4", True), ("a.m4a", "ipod", False)])
def test_aac_in_mp4_and_m4a(tmp_path, name, fmt, video):
    import soundfile as sf

    x = _stereo()
    _write_av(tmp_path / name, x, SR, "aac", fmt=fmt, video=video)
    sf.write(tmp_path / "ref.wav", x, SR, subtype="FLOAT")
    y, ref = load_audio(tmp_path / name), load_audio(tmp_path / "ref.wav")
    assert y.dtype == np.float32 and y.ndim == 1
    # AAC works in 1024-sample frames: the encoder delay is trimmed, the tail padding of the last frame stays
    assert len(ref) <= len(y) <= len(ref) + int(np.ceil(1024 * 16000 / SR))
    assert np.corrcoef(y[:len(ref)], ref)[0, 1] > 0.99  # lossy, but aligned and downmixed the same way
    # s16 quantisation like audioread's ffmpeg pipe: every decoded sample is k / 32768 before the resampler
    assert np.abs(y).max() <= 1.0


def test_errors(tmp_path):
    import soundfile as sf

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"not audio " * 20)
    with pytest.raises(ValueError, match="not a readable audio"):
        load_audio(tmp_path / "junk.wav")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 2), np.float32), SR)
    with pytest.raises(ValueError, match="no samples"):
        load_audio(tmp_path / "empty.wav")

    import av

    with av.open(str(tmp_path / "silent.mp4"), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        for _ in range(3):
            for p in vs.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
    with pytest.raises(ValueError, match="no audio track"):
        load_audio(tmp_path / "silent.mp4")


# --------------------------------------------------------------------------------------------- wav2vec2
@pytest.fixture(scope="module")
def wav2vec_dir(tmp_path_factory):
    from wan.configs import get_config
    from wan.testing.tiny_vae_audio import write_wav2vec

    return write_wav2vec(tmp_path_factory.mktemp("ckpt"), get_config("tiny"), seed=0)


def test_tiny_wav2vec_folder_looks_real(wav2vec_dir):
    from safetensors.torch import load_file
    from transformers import Wav2Vec2Processor

    from wan.testing.tiny_checkpoints import WRITERS

    assert WRITERS["wav2vec"] == "wan.testing.tiny_vae_audio:write_wav2vec"
    cfg = json.loads((wav2vec_dir / "config.json").read_text())
    assert cfg["architectures"] == ["Wav2Vec2ForCTC"] and cfg["hidden_size"] == 32
    assert cfg["conv_stride"] == [5, 2, 2, 2, 2, 2, 2] and cfg["conv_kernel"] == [10, 3, 3, 3, 3, 2, 2]
    keys = set(load_file(wav2vec_dir / "model.safetensors"))
    assert {"lm_head.weight", "lm_head.bias", "wav2vec2.masked_spec_embed"} <= keys
    assert all(k.startswith(("wav2vec2.", "lm_head.")) for k in keys)
    assert len(json.loads((wav2vec_dir / "vocab.json").read_text())) == 32
    # the original loads a Wav2Vec2Processor from the same folder
    Wav2Vec2Processor.from_pretrained(wav2vec_dir)


def test_audio_encoder(wav2vec_dir):
    from wan.models.audio import AudioEncoder

    enc = AudioEncoder.from_pretrained(wav2vec_dir)
    assert not enc.training and enc.hidden_size == 32
    assert next(enc.parameters()).dtype == torch.float32
    x = (np.random.default_rng(2).standard_normal(10880) * 0.3 + 0.05).astype(np.float32)
    iv = enc.normalize(x)
    ref = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    np.testing.assert_array_equal(iv[0].numpy(), ref.astype(np.float32))
    with torch.no_grad():
        out = enc.encode(x)
        # 320 samples per token after the 400-sample receptive field: 17 frames of 640 samples -> 33 tokens
        assert out.shape == (1, (10880 - 400) // 320 + 1, 32) == (1, 33, 32)
        # the slice is normalised on its own: scaling and offsetting the waveform changes nothing
        torch.testing.assert_close(enc.encode(3 * x + 1), out, atol=1e-4, rtol=1e-4)
        assert enc.encode(torch.from_numpy(x)).shape == out.shape
    with pytest.raises(ValueError, match="1-D"):
        enc.normalize(np.zeros((2, 100), np.float32))


def test_audio_encoder_strict(tmp_path, wav2vec_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    from wan.checkpoints import CheckpointError
    from wan.models.audio import AudioEncoder

    bad = tmp_path / "w2v"
    shutil.copytree(wav2vec_dir, bad)
    sd = load_file(bad / "model.safetensors")
    del sd["wav2vec2.encoder.layers.1.attention.q_proj.weight"]
    save_file(sd, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="q_proj"):
        AudioEncoder.from_pretrained(bad)
    with pytest.raises(CheckpointError, match="no config.json"):
        AudioEncoder.from_pretrained(tmp_path / "nothing")


@pytest.mark.parametrize("case", ["e2e_f1_long_square", "e2e_f2_long_rect_log", "e2e_f3_overlap5_uniform",
                                  "e2e_f4_partial_last"])
def test_wav2vec_golden_parity(golden, case, tmp_path):
    """Every window's wav2vec features of the first denoising step equal upstream's (trace.callNN.vocal_embeddings[1]),
    loaded through AudioEncoder.from_pretrained from a folder holding the golden weights."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from wan.models.audio import AudioEncoder
    from wan.testing.golden import assert_close_module

    g = golden(case)
    mod = g.meta["modules"]
    model = Wav2Vec2Model(Wav2Vec2Config(**mod["wav2vec"]["config"]))
    model.load_state_dict(g.group("weights.wav2vec"), strict=True)
    model.save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(**mod["wav2vec_processor"]["feature_extractor"]).save_pretrained(tmp_path)
    enc = AudioEncoder.from_pretrained(tmp_path)
    audio = g.inputs["audio"].numpy()
    for i, w in enumerate(g.meta["call"]["derived"]["windows"]):
        s, e = w["audio_samples"]
        with torch.no_grad():
            got = enc.encode(audio[s:e])
        ref = g.tensors[f"trace.call{i:02d}.vocal_embeddings"][1:2]
        assert_close_module(got, ref, what=f"{case} window {i}")


# ------------------------------------------------------------------------------------- librosa itself
# librosa is in the `test` extra: a plain import, so a missing librosa FAILS here instead of skipping.
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_equals_librosa_on_stereo_44k_wav(tmp_path):
    import librosa
    import soundfile as sf

    # an odd length and two different tones: resampler length fix-up and the channel mean both matter
    sf.write(tmp_path / "s.wav", _stereo(2 * SR + 101), SR, subtype="PCM_16")
    ref, sr = librosa.load(tmp_path / "s.wav", sr=16000)
    y = load_audio(tmp_path / "s.wav")
    assert sr == 16000 and ref.shape == (int(np.ceil((2 * SR + 101) * 16000 / SR)),)
    assert y.dtype == ref.dtype == np.float32
    np.testing.assert_array_equal(y, ref)


def test_equals_librosa_on_example_audio():
    """The repo's real 40 s 16 kHz stereo speech (no resampling: the channel mean alone)."""
    import librosa

    path = REPO / "examples" / "case-2" / "audio.wav"
    ref, sr = librosa.load(path, sr=16000)
    y = load_audio(path)
    assert sr == 16000 and len(ref) > 40 * 16000
    assert y.dtype == ref.dtype and y.shape == ref.shape
    assert np.abs(y - ref).max() == 0.0
