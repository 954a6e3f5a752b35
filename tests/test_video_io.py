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
    with pytest.raises(ValueError, match="mono"):
        Mp4Writer(tmp_path / "o.mp4", width=W, height=H, audio=np.zeros((2, 100), np.float32))
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
