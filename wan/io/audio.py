"""Read driving audio as the original does with `librosa.load(path, sr=16000)`, without librosa.

librosa reads through soundfile (wav, flac, ogg, mp3, ...) and falls back to audioread, whose ffmpeg
backend decodes anything else (m4a, the audio track of an mp4) to interleaved 16-bit PCM at the native
rate; it then averages the channels and resamples with soxr "HQ", padding or trimming the result to
ceil(n * sr / sr_native) samples. We do the same: soundfile first (bit-identical to librosa), PyAV
otherwise, converting the decoded audio to s16 with libswresample (what the ffmpeg program does for
audioread) and scaling by 1/32768 as librosa's `buf_to_float` does.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


def load_audio(path: str | os.PathLike, sr: int | None = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 waveform [N] of an audio file (wav/flac/mp3/ogg/m4a/aac/...) or a video's audio track,
    resampled to `sr` (None keeps the file's rate). Equals `librosa.load(path, sr=sr)`.

    Raises FileNotFoundError for a missing file, ValueError when the file has no audio stream, cannot be
    decoded, or holds no samples.
    """
    y, sr_in = read_audio_channels(path)
    if y.shape[1] == 0:
        raise ValueError(f"{path}: the audio stream holds no samples")
    # librosa.to_mono: mean over channels of the [C, N] array (a single channel is used as is)
    y = y[0] if y.shape[0] == 1 else np.mean(y, axis=0)
    y = np.ascontiguousarray(y, dtype=np.float32)
    if sr is not None and sr != sr_in:
        y = resample(y, sr_in, sr)
    return y


def read_audio_channels(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Every channel of an audio file or a video's audio track at its own rate: (float32 [C, N], sample rate).
    soundfile first (wav/flac/ogg/mp3, as librosa), PyAV for anything else (mp4/m4a/aac/...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} does not exist")
    try:
        return _read_soundfile(path)
    except _soundfile_errors() as sf_error:
        return _read_pyav(path, sf_error)


def resample(y: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """librosa.resample(y, orig_sr=sr_in, target_sr=sr_out, res_type="soxr_hq") for a 1-D float32 signal:
    soxr HQ, then fixed to ceil(len * sr_out / sr_in) samples (soxr may return one fewer: zero-padded)."""
    import soxr

    if sr_in == sr_out:
        return y
    n_out = int(np.ceil(y.shape[-1] * (float(sr_out) / sr_in)))
    y_hat = soxr.resample(y, sr_in, sr_out, quality="HQ")
    if y_hat.shape[-1] > n_out:
        y_hat = y_hat[:n_out]
    elif y_hat.shape[-1] < n_out:
        y_hat = np.pad(y_hat, (0, n_out - y_hat.shape[-1]))
    return np.asarray(y_hat, dtype=y.dtype)


def _soundfile_errors() -> tuple[type[BaseException], ...]:
    import soundfile

    return (soundfile.SoundFileRuntimeError, soundfile.LibsndfileError)


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    """[C, N] float32 (a transposed view of soundfile's [N, C], as librosa holds it) and the sample rate."""
    import soundfile

    with soundfile.SoundFile(str(path)) as f:
        y = f.read(dtype="float32", always_2d=True)
        return y.T, f.samplerate


def decode_audio_s16(path: str | os.PathLike, sample_rate: int | None = None, open_error: str = "",
                     layout: str | None = None) -> tuple[np.ndarray, int]:
    """The first audio stream of a media file through PyAV as interleaved signed 16-bit PCM, like
    `ffmpeg -i FILE -f s16le -`: -> (int16 [N, C], sample rate). sample_rate None keeps the native rate, layout None
    the native channels (the stream must then keep them throughout); otherwise libswresample converts to them
    (layout: "mono", "stereo", ...: a downmix or upmix). Every failure is a ValueError naming the file (open_error:
    extra context for the first one)."""
    import av

    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable audio or video file ({open_error}PyAV: {e})") from e
    with container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio track (streams: {[s.type for s in container.streams] or 'none'}); "
                             "pass an audio file or a video with sound")
        stream = container.streams.audio[0]
        native = sample_rate is None and layout is None
        if native:
            resampler = av.AudioResampler(format="s16")
        else:
            resampler = av.AudioResampler(format="s16", layout=layout or stream.codec_context.layout.name,
                                          rate=sample_rate)
        chunks, rate, channels, first = [], None, None, None
        try:
            for frame in itertools.chain(container.decode(stream), [None]):  # None flushes the resampler
                if native and frame is not None:
                    first = first or (frame.sample_rate, len(frame.layout.channels))
                    if (frame.sample_rate, len(frame.layout.channels)) != first:
                        raise ValueError(f"{path}: the audio stream changes its sample rate or channel count midway")
                for f in resampler.resample(frame):
                    rate, channels = f.sample_rate, len(f.layout.channels)
                    chunks.append(f.to_ndarray().reshape(-1))
        except av.error.FFmpegError as e:
            raise ValueError(f"{path}: cannot decode its audio stream ({e})") from e
    if channels is None or not chunks:
        raise ValueError(f"{path}: the audio stream holds no samples")
    return np.concatenate(chunks).reshape(-1, channels), rate


def _read_pyav(path: Path, sf_error: BaseException) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with PyAV -> ([C, N] float32 from s16, sample rate)."""
    pcm, sample_rate = decode_audio_s16(path, open_error=f"soundfile: {sf_error}; ")
    # librosa.util.buf_to_float(n_bytes=2): int16 * (1 / 32768) in float32; then [N, C] -> [C, N]
    return (pcm.astype(np.float32) * np.float32(1.0 / 32768)).T, sample_rate
