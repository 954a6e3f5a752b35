"""Media helpers for data preparation over PyAV (no ffmpeg executable): audio track → WAV, frames at a fixed fps,
crop-and-resize to a training bucket."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

# training buckets (W, H), spec training.md §2
BUCKETS: dict[str, tuple[int, int]] = {"square": (512, 512), "rec": (832, 480), "vec": (480, 832)}


def extract_audio(video_path: str | os.PathLike, wav_path: str | os.PathLike, sample_rate: int | None = 44100) -> Path:
    """The first audio track of a video (or any media file) as 16-bit PCM WAV with its channel count.

    The original (moviepy 1.0.3 `write_audiofile(codec='pcm_s16le')`) resamples to moviepy's default 44.1 kHz
    through ffmpeg; here libswresample does the same (`sample_rate=None` keeps the source rate). A file without an
    audio track → ValueError.
    """
    import soundfile

    from wan.io.audio import decode_audio_s16

    video_path, wav_path = Path(video_path), Path(wav_path)
    if not video_path.is_file():
        raise FileNotFoundError(f"video {video_path} does not exist")
    pcm, rate = decode_audio_s16(video_path, sample_rate)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = wav_path.with_name(f".{wav_path.name}.part")
    try:
        soundfile.write(str(tmp), pcm, rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, wav_path)
    finally:
        tmp.unlink(missing_ok=True)  # nothing half-written is left behind
    return wav_path


def frames_at_fps(video_path: str | os.PathLike, fps: float | None) -> Iterator[np.ndarray]:
    """RGB uint8 `[H, W, 3]` frames of the first video stream, resampled to `fps` on the time axis (output frame k
    shows the source frame on screen at k/fps; frames are dropped or repeated), or every frame when fps is None."""
    import av

    with av.open(str(video_path)) as c:
        vs = c.streams.video[0]
        src_fps = float(vs.average_rate or vs.guessed_rate or 25)
        prev, prev_t, k = None, None, 0
        for frame in c.decode(vs):
            img = frame.to_ndarray(format="rgb24")
            if fps is None:
                yield img
                continue
            t = float(frame.pts * frame.time_base) if frame.pts is not None else (prev_t or 0.0) + 1 / src_fps
            if prev is not None:
                while k / fps < t - 1e-6:  # output times before this frame show the previous one
                    yield prev
                    k += 1
            prev, prev_t = img, t
        if prev is not None and fps is not None:
            end = prev_t + 1 / src_fps
            while k / fps < end - 1e-6:
                yield prev
                k += 1


def fit_to_bucket(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop to the bucket's aspect ratio, then resize to `width`×`height` (area filter when shrinking)."""
    import cv2

    h, w = rgb.shape[:2]
    target = width / height
    if w / h > target:  # too wide: crop the sides
        nw = max(1, round(h * target))
        x0 = (w - nw) // 2
        rgb = rgb[:, x0:x0 + nw]
    elif w / h < target:  # too tall: crop top and bottom
        nh = max(1, round(w / target))
        y0 = (h - nh) // 2
        rgb = rgb[y0:y0 + nh]
    if rgb.shape[:2] == (height, width):
        return np.ascontiguousarray(rgb)
    interp = cv2.INTER_AREA if rgb.shape[0] > height else cv2.INTER_CUBIC
    return cv2.resize(rgb, (width, height), interpolation=interp)
