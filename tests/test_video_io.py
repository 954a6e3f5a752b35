"""Streaming mp4 writer: frame count, fps, size, AAC audio trimmed to the video, atomic output."""

import numpy as np
import pytest
import torch

from wan.io.video import Mp4Writer, probe, read_audio, read_video_frames, to_uint8_frames

W, H, FPS, SR = 64, 48, 25, 16000


def smooth_video(t: int) -> torch.Tensor:
    """[3, T, H, W] float in [0, 1]: gradients that move over time (compress well, so read-back is close)."""
    y = torch.linspace(0, 1, H)[:, None].expand(H, W)
    x = torch.linspace(0, 1, W)[None, :].expand(H, W)
    frames = []
    for i in range(t):
        p = i / max(t - 1, 1)
        frames.append(torch.stack([0.5 + 0.4 * torch.sin(2 * torch.pi * (x + p)), y, 0.5 * x + 0.5 * y * p]))
    return torch.stack(frames, dim=1)


def sine(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_video_without_audio(tmp_path):
    video = smooth_video(30)
    path = tmp_path / "v.mp4"
    with Mp4Writer(path, width=W, height=H, fps=FPS, preset="ultrafast") as w:
        w.write(video[:, :13])            # [3, T, H, W]
        w.write(video[:, 13:].transpose(0, 1))  # [T, 3, H, W]
    info = probe(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (30, 25.0, W, H)
    assert info.video_codec == "h264" and not info.has_audio
    got = read_video_frames(path)
    ref = to_uint8_frames(video)
    assert got.shape == ref.shape == (30, H, W, 3)
    assert np.abs(got.astype(np.int16) - ref.astype(np.int16)).mean() < 4  # lossy, but the same picture
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temporary left behind


def test_video_with_audio_trimmed_to_video(tmp_path):
    frames, audio = 40, sine(2.5)           # 1.6 s of video, 2.5 s of audio
    path = tmp_path / "a.mp4"
    uint8 = to_uint8_frames(smooth_video(frames))
    with Mp4Writer(path, width=W, height=H, audio=audio, preset="ultrafast") as w:
        for i in range(0, frames, 7):
            w.write(uint8[i:i + 7])          # uint8 [T, H, W, 3]
    info = probe(path)
    assert info.num_frames == frames and info.fps == 25.0
    assert info.has_audio and info.audio_codec == "aac" and info.audio_sample_rate == SR
    assert abs(info.audio_duration - frames / FPS) <= 1 / FPS
    got, sr = read_audio(path)
    assert sr == SR and abs(len(got) - frames * SR // FPS) <= 1024
    n = min(len(got), len(audio))
    assert np.corrcoef(got[:n], audio[:n])[0, 1] > 0.9  # same signal, aligned (priming skipped)


def test_atomic_on_exception(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with Mp4Writer(path, width=W, height=H, audio=sine(1.0), preset="ultrafast") as w:
            w.write(smooth_video(5))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # an existing file at the path is left untouched by a failed write
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="opened for"):
        with Mp4Writer(path, width=W, height=H, preset="ultrafast") as w:
            w.write(smooth_video(4))
            w.write(torch.rand(2, 3, H + 2, W))  # wrong size
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_no_frames_saves_nothing(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        with Mp4Writer(tmp_path / "e.mp4", width=W, height=H):
            pass
    assert list(tmp_path.iterdir()) == []


def test_quantisation_truncates_like_save_videos_grid():
    x = torch.tensor([0.0, 0.5, 0.999, 1.0, 0.2]).view(1, 1, 5, 1).expand(3, 1, 5, 2)  # [3, T=1, H=5, W=2]
    got = to_uint8_frames(x)[0, :, 0, 0]
    ref = (x[0, 0, :, 0].float() * 255).numpy().astype(np.uint8)
    assert got.tolist() == ref.tolist() == [0, 127, 254, 255, 51]  # 127.5 -> 127: truncation, not rounding


def test_layouts():
    v = smooth_video(4)                                       # [3, 4, H, W]
    ref = to_uint8_frames(v)
    assert ref.shape == (4, H, W, 3)
    assert np.array_equal(to_uint8_frames(v.transpose(0, 1)), ref)          # [T, 3, H, W]
    assert np.array_equal(to_uint8_frames(v[None]), ref)                    # [1, 3, T, H, W]
    assert np.array_equal(to_uint8_frames(ref), ref)                        # uint8 passthrough
    assert np.array_equal(to_uint8_frames(v.permute(1, 2, 3, 0).numpy()), ref)  # float [T, H, W, 3]
    with pytest.raises(ValueError, match="ambiguous"):
        to_uint8_frames(torch.rand(3, 3, H, W))
    assert to_uint8_frames(torch.rand(3, 3, H, W), layout="CTHW").shape == (3, H, W, 3)


def test_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        Mp4Writer(tmp_path / "o.mp4", width=W + 1, height=H)
    with pytest.raises(ValueError, match="1 or 2 channels"):
        Mp4Writer(tmp_path / "o.mp4", width=W, height=H, audio=np.zeros((3, 100), np.float32))
    with pytest.raises(ValueError, match="AAC cannot carry 37800 Hz"):
        Mp4Writer(tmp_path / "o.mp4", width=W, height=H, audio=np.zeros(100, np.float32), sample_rate=37800)
    assert list(tmp_path.iterdir()) == []


def test_copy_video_stream_drops_audio_keeps_frames(tmp_path):
    from wan.io.video import Mp4Writer, copy_video_stream, probe, read_video_frames

    src = tmp_path / "a.mp4"
    with Mp4Writer(src, 32, 16, audio=np.zeros(16000, np.float32)) as w:
        w.write(np.random.default_rng(0).integers(0, 255, (10, 16, 32, 3), dtype=np.uint8))
    dst = copy_video_stream(src, tmp_path / "b.mp4")
    a, b = probe(src), probe(dst)
    assert a.has_audio and not b.has_audio
    assert b.num_frames == a.num_frames == 10 and b.video_codec == "h264"
    assert np.array_equal(read_video_frames(src), read_video_frames(dst))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]


# ------------------------------------------------------------------------------------------------
# the driving audio at its source rate and channels (what the original's README muxes with ffmpeg)


def source_signal(seconds: float, sr: int, channels: int) -> np.ndarray:
    """float32 [N, C]: per channel another chirp (no period: one lag matches) plus a tone at 0.2·sr / 0.25·sr
    (above 8 kHz at 44.1 kHz: absent from a 16 kHz copy)."""
    t = np.arange(int(seconds * sr)) / sr
    chans = [0.3 * np.sin(2 * np.pi * (300 * t + 150 * t ** 2)) + 0.3 * np.sin(2 * np.pi * 0.2 * sr * t),
             0.3 * np.sin(2 * np.pi * (500 * t + 400 * t ** 2) + 1) + 0.3 * np.sin(2 * np.pi * 0.25 * sr * t)]
    return np.stack(chans[:channels], 1).astype(np.float32)


def write_mp3(path, audio_nc: np.ndarray, sr: int) -> None:
    import fractions

    import av

    with av.open(str(path), "w", format="mp3") as c:
        a = c.add_stream("libmp3lame", rate=sr, layout="stereo" if audio_nc.shape[1] == 2 else "mono")
        a.bit_rate = 320_000
        for s in range(0, len(audio_nc), 1152):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio_nc[s:s + 1152].T), format="fltp",
                                               layout=a.layout.name)
            frame.sample_rate, frame.pts, frame.time_base = sr, s, fractions.Fraction(1, sr)
            for pkt in a.encode(frame):
                c.mux(pkt)
        for pkt in a.encode(None):
            c.mux(pkt)


def best_lag_corr(got: np.ndarray, ref: np.ndarray, max_lag: int = 1100) -> tuple[int, float]:
    """The lag (samples `got` is late on `ref`, within ±max_lag: an AAC priming is 1024) that maximises the
    correlation of two 1-D signals over their common middle part, and that correlation."""
    n = min(len(got), len(ref)) - 2 * max_lag
    r = ref[max_lag:max_lag + n]

    def corr(k: int) -> float:
        return float(np.corrcoef(got[max_lag + k:max_lag + k + n], r)[0, 1])

    lag = max(range(-max_lag, max_lag + 1), key=lambda k: np.dot(got[max_lag + k:max_lag + k + n], r))
    return lag, corr(lag)


@pytest.mark.parametrize("kind,sr,channels", [("wav", 44100, 2), ("mp3", 44100, 2), ("wav", 16000, 1)])
def test_source_audio_keeps_its_rate_channels_and_timing(tmp_path, kind, sr, channels):
    import soundfile as sf

    from wan.io.audio import load_audio, resample
    from wan.io.video import source_audio_track

    signal = source_signal(2.0, sr, channels)        # 2 s of audio, 1.6 s of video: trimmed to the video
    src = tmp_path / f"in.{kind}"
    if kind == "wav":
        sf.write(src, signal, sr, subtype="PCM_16")
    else:
        write_mp3(src, signal, sr)
    audio, rate = source_audio_track(src)
    assert audio.dtype == np.int16 and audio.shape[0] == channels and rate == sr
    frames = 40
    path = tmp_path / "a.mp4"
    with Mp4Writer(path, width=W, height=H, audio=audio, sample_rate=rate, preset="ultrafast") as w:
        w.write(smooth_video(frames))
    info = probe(path)
    assert (info.audio_codec, info.audio_sample_rate, info.audio_channels) == ("aac", sr, channels)
    if channels == 2:
        assert info.audio_bit_rate > 160_000  # 192 kb/s asked
    got, got_sr = read_audio(path, mono=False)
    assert got_sr == sr and abs(got.shape[1] - frames * sr // FPS) <= 1024  # the video's length ± one AAC frame
    for c in range(channels):
        lag, corr = best_lag_corr(got[c], signal[:, c])
        assert lag == 0 and corr > 0.99, (c, lag, corr)  # the source itself, starting at t = 0 with the video
    # the 16 kHz model input, brought back to the source rate, fails that bar: the check can tell them apart
    model_input = resample(load_audio(src), 16000, sr) if sr != 16000 else None
    if model_input is not None:
        assert best_lag_corr(model_input, signal[:, 0])[1] < 0.9
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_source_audio_resamples_rates_aac_lacks_and_downmixes_surround(tmp_path):
    import fractions

    import av

    from wan.io.video import source_audio_track

    src, sr = tmp_path / "odd.mka", 37800
    tone = source_signal(0.5, sr, 1)[:, 0]
    with av.open(str(src), "w", format="matroska") as c:
        a = c.add_stream("pcm_s16le", rate=sr, layout="5.1")
        pcm = np.repeat(np.round(tone * 32767).astype(np.int16)[:, None], 6, 1)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="5.1")
        frame.sample_rate, frame.pts, frame.time_base = sr, 0, fractions.Fraction(1, sr)
        for pkt in a.encode(frame):
            c.mux(pkt)
        for pkt in a.encode(None):
            c.mux(pkt)
    audio, rate = source_audio_track(src)
    assert rate == 48000 and audio.shape[0] == 2
    assert abs(audio.shape[1] - round(len(tone) * 48000 / sr)) <= 64
    assert np.abs(audio).max() > 1000  # the downmix carries the tone


def test_pipeline_write_video_muxes_the_source_audio(tmp_path):
    """StableAvatarPipeline.write_video with source_audio= (44.1 kHz stereo) and without (16 kHz mono input)."""
    import types

    import soundfile as sf

    from wan.pipeline import GenerationOutput, StableAvatarPipeline

    frames, sr = 29, 44100
    src = tmp_path / "drive.wav"
    signal = source_signal(frames / FPS + 0.3, sr, 2)
    sf.write(src, signal, sr, subtype="PCM_16")
    video = smooth_video(frames)

    def decode_frames(latents, chunk=4):
        for i in range(0, frames, 8):
            yield video[None, :, i:i + 8]

    stub = types.SimpleNamespace(spec=types.SimpleNamespace(pipeline=types.SimpleNamespace(fps=FPS, sample_rate=SR)),
                                 decode_frames=decode_frames)
    result = GenerationOutput(latents=torch.zeros(1), num_frames=frames, audio=sine(frames / FPS + 0.3),
                              width=W, height=H)
    paths = StableAvatarPipeline.write_video(stub, result, tmp_path / "src", progress=False, source_audio=src)
    info = probe(paths["video"])
    assert (info.num_frames, info.audio_sample_rate, info.audio_channels) == (frames, sr, 2)
    assert abs(info.audio_duration - frames / FPS) <= 1024 / sr
    got, _ = read_audio(paths["video"], mono=False)
    lag, corr = best_lag_corr(got[1], signal[:, 1])
    assert lag == 0 and corr > 0.99, (lag, corr)
    plain = probe(paths["video_without_audio"])
    assert plain.num_frames == frames and not plain.has_audio
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == ["video.mp4", "video_without_audio.mp4"]
    # no source file: the model's 16 kHz mono input, as before
    info = probe(StableAvatarPipeline.write_video(stub, result, tmp_path / "in", progress=False)["video"])
    assert (info.audio_sample_rate, info.audio_channels) == (SR, 1)
