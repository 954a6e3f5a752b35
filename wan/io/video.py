"""Streaming mp4 output (H.264 + the driving audio as AAC) over PyAV, plus small readers for tests.

The original saves `video_without_audio.mp4` with `imageio.mimsave` (all frames in memory, no audio)
and leaves the muxing to a manual ffmpeg call on the source audio (README: `ffmpeg -i
video_without_audio.mp4 -i audio.wav -c:v copy -c:a aac -shortest out.mp4`; spec pipeline.md §11).
Here frames are encoded as they arrive, so memory does not grow with the video length, the audio is
muxed in the same pass (trimmed to the video's duration), and the file appears at its path only once
it is complete. `source_audio_track` reads the driving file at its own rate and channels, so the mp4
sounds like the source, not like the model's 16 kHz mono input.
Pixels are quantised like the original's `save_videos_grid`: `(x·255).astype(uint8)`, truncation.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

__all__ = ["Mp4Writer", "to_uint8_frames", "source_audio_track", "copy_video_stream", "VideoInfo", "probe",
           "read_video_frames", "read_audio"]

# the rates ffmpeg's AAC encoder takes (its `supported_samplerates`)
AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
AAC_BIT_RATE = {1: 128_000, 2: 192_000}  # per channel count: transparent for speech and music
_LAYOUTS = {1: "mono", 2: "stereo"}


def to_uint8_frames(frames, layout: str | None = None) -> np.ndarray:
    """Frames as uint8 `[T, H, W, 3]` numpy.

    Accepts uint8 `[T, H, W, 3]` (numpy or tensor, passed through), float numpy `[T, H, W, 3]`,
    or float tensors in [0, 1] laid out `[T, 3, H, W]`, `[3, T, H, W]` or `[1, 3, T, H, W]` (the
    pipeline's `videos`). `layout` ("THWC", "TCHW", "CTHW") is needed only when the shape is
    ambiguous (T = 3). Floats are quantised as the original's `save_videos_grid`: float32
    `x·255` then a truncating cast (values clamped to [0, 1] first, a no-op for valid input).
    """
    if isinstance(frames, np.ndarray):
        x = torch.from_numpy(frames)
        layout = layout or "THWC"
    elif isinstance(frames, torch.Tensor):
        x = frames.detach().cpu()
    else:
        raise ValueError(f"frames must be a numpy array or a torch tensor (got {type(frames).__name__})")
    if x.dim() == 5:
        if x.shape[0] != 1:
            raise ValueError(f"a 5-D video must have batch size 1 [1, 3, T, H, W] (got {tuple(x.shape)}); "
                             "write each video separately")
        x, layout = x[0], layout or "CTHW"
    if x.dim() != 4:
        raise ValueError(f"frames must be 4-D [T, H, W, 3] / [T, 3, H, W] / [3, T, H, W] (got {tuple(x.shape)})")
    if layout is None:
        if x.dtype == torch.uint8 and x.shape[-1] == 3:
            layout = "THWC"
        elif x.shape[1] == 3 and x.shape[0] != 3:
            layout = "TCHW"
        elif x.shape[0] == 3 and x.shape[1] != 3:
            layout = "CTHW"
        else:
            raise ValueError(f"ambiguous frame layout for shape {tuple(x.shape)}; pass layout='TCHW' or 'CTHW'")
    perm = {"THWC": (0, 1, 2, 3), "TCHW": (0, 2, 3, 1), "CTHW": (1, 2, 3, 0)}.get(layout)
    if perm is None:
        raise ValueError(f"unknown layout {layout!r}; use 'THWC', 'TCHW' or 'CTHW'")
    x = x.permute(*perm)
    if x.shape[-1] != 3:
        raise ValueError(f"frames must have 3 (RGB) channels (got shape {tuple(x.shape)} as T, H, W, C)")
    if x.dtype == torch.uint8:
        return np.ascontiguousarray(x.numpy())
    if not x.is_floating_point():
        raise ValueError(f"frames must be uint8 or float in [0, 1] (got {x.dtype})")
    x = x.float().clamp(0, 1) * 255
    return np.ascontiguousarray(x.numpy().astype(np.uint8))  # truncation, as the original


class Mp4Writer:
    """Write an H.264 mp4 frame batch by frame batch, with the driving audio muxed as AAC.

        with Mp4Writer("out.mp4", width=512, height=512, audio=wave, sample_rate=44100) as w:
            for frames in decoded_chunks:
                w.write(frames)              # uint8 [T,H,W,3] or float [T,3,H,W] / [3,T,H,W] in [0,1]

    libx264, yuv420p (so width and height must be even), `crf` quality (18: visually near-lossless;
    the original used imageio's defaults). `audio`: samples at `sample_rate` (one of
    `AAC_SAMPLE_RATES`), mono `[N]` or `[C, N]` with C = 1 or 2, float in [-1, 1] or int16
    (`source_audio_track` gives the driving file so); AAC at 128 kb/s mono, 192 kb/s stereo, starting at
    t = 0 with the video and trimmed to the video's duration (frames / fps), which is never longer than
    the audio in the pipeline. The file is written to a temporary name in the same folder and renamed to
    `path` on a successful close; on an exception (or `abort()`) the temporary file is removed and
    nothing appears at `path`.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: int = 25,
                 audio: np.ndarray | torch.Tensor | None = None, sample_rate: int = 16000,
                 crf: int = 18, preset: str = "medium"):
        try:
            import av
        except ImportError as e:  # pragma: no cover - av is a core dependency
            raise ImportError("writing mp4 needs PyAV: pip install av") from e
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"video size {width}x{height} (WxH) must be positive and even for yuv420p H.264; "
                             "crop or pad the frames by one pixel")
        if fps <= 0:
            raise ValueError(f"fps must be positive (got {fps})")
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ValueError(f"output folder {self.path.parent} does not exist; create it first")
        self.width, self.height, self.fps, self.sample_rate = int(width), int(height), int(fps), int(sample_rate)
        self.num_frames = 0
        self._audio = None if audio is None else _channels_first(audio)
        if self._audio is not None and self.sample_rate not in AAC_SAMPLE_RATES:
            raise ValueError(f"AAC cannot carry {self.sample_rate} Hz audio; resample it to one of {AAC_SAMPLE_RATES}")
        self._audio_pos = 0  # samples handed to the encoder so far
        # a hidden temporary name in the same folder, so the final os.replace is atomic
        self._tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.part")
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        try:
            self._video = self._container.add_stream("libx264", rate=self.fps)
            self._video.width, self._video.height = self.width, self.height
            self._video.pix_fmt = "yuv420p"
            self._video.options = {"crf": str(crf), "preset": preset}
            self._astream = None
            if self._audio is not None:
                channels = self._audio.shape[0]
                self._astream = self._container.add_stream("aac", rate=self.sample_rate, layout=_LAYOUTS[channels])
                self._astream.bit_rate = AAC_BIT_RATE[channels]
        except BaseException:
            self._discard()
            raise
        self._closed = False

    # -- context manager -------------------------------------------------------------------------

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- writing ---------------------------------------------------------------------------------

    def write(self, frames, layout: str | None = None) -> None:
        """Encode a batch of frames (see `to_uint8_frames` for the accepted forms) and the audio they cover."""
        if self._closed:
            raise ValueError(f"{self.path}: write() after close()")
        import av

        arr = to_uint8_frames(frames, layout)
        if arr.shape[1:3] != (self.height, self.width):
            raise ValueError(f"frames are {arr.shape[2]}x{arr.shape[1]} (WxH) but the writer was opened for "
                             f"{self.width}x{self.height}")
        for img in arr:
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = self.num_frames
            frame.time_base = Fraction(1, self.fps)
            self._mux(self._video.encode(frame))
            self.num_frames += 1
        self._encode_audio_until(self._audio_samples_for(self.num_frames))

    def _audio_samples_for(self, num_frames: int) -> int:
        """Samples covering `num_frames` video frames (trim to the video duration)."""
        return min(self._audio.shape[1], num_frames * self.sample_rate // self.fps) if self._audio is not None else 0

    def _encode_audio_until(self, end: int) -> None:
        if self._astream is None or end <= self._audio_pos:
            return
        import av

        chunk = self._audio[:, self._audio_pos:end]  # [C, n]
        layout = _LAYOUTS[chunk.shape[0]]
        if chunk.dtype == np.int16:  # packed (interleaved) s16: [1, n·C]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk.T).reshape(1, -1), format="s16",
                                               layout=layout)
        else:  # planar float: [C, n]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=layout)
        frame.sample_rate = self.sample_rate
        frame.pts = self._audio_pos
        frame.time_base = Fraction(1, self.sample_rate)
        # the codec context re-chunks to AAC's 1024-sample frames internally
        self._mux(self._astream.encode(frame))
        self._audio_pos = end

    def _mux(self, packets) -> None:
        for p in packets:
            self._container.mux(p)

    # -- finishing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Flush the encoders, finish the file and move it to `path` (atomically)."""
        if self._closed:
            return
        if self.num_frames == 0:
            self.abort()
            raise ValueError(f"{self.path}: no frames were written; nothing saved")
        try:
            self._mux(self._video.encode(None))
            if self._astream is not None:
                self._mux(self._astream.encode(None))
            self._container.close()
            self._closed = True
            os.replace(self._tmp, self.path)
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        """Stop without saving: the temporary file is removed and `path` is left untouched."""
        if not self._closed:
            self._discard()

    def _discard(self) -> None:
        self._closed = True
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the file is being thrown away anyway
            pass
        self._tmp.unlink(missing_ok=True)


def _channels_first(audio) -> np.ndarray:
    """Writer audio as a `[C, N]` array (C = 1 or 2), int16 kept, anything else float32."""
    a = audio.detach().cpu().float().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    a = a[None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[0] not in _LAYOUTS:
        raise ValueError(f"audio must be mono [N] or [C, N] with 1 or 2 channels (got shape {a.shape}); "
                         "source_audio_track downmixes other layouts to stereo")
    return a if a.dtype == np.int16 else a.astype(np.float32, copy=False)


def source_audio_track(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The audio of a media file (wav/flac/mp3/m4a/..., or a video's audio track) as `Mp4Writer` carries it:
    int16 `[C, N]` and its sample rate, at the file's own rate and channels, as ffmpeg decodes it (encoder
    delays skipped, so sample 0 is t = 0). A rate AAC has not is resampled to 48 kHz; more than 2 channels
    are downmixed to stereo. Failures are ValueErrors naming the file."""
    from wan.io.audio import decode_audio_s16

    pcm, rate = decode_audio_s16(path)  # [N, C]
    if rate not in AAC_SAMPLE_RATES or pcm.shape[1] > 2:
        pcm, rate = decode_audio_s16(path, sample_rate=rate if rate in AAC_SAMPLE_RATES else 48000,
                                     layout="stereo" if pcm.shape[1] > 2 else None)
    return pcm.T, rate


def copy_video_stream(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write `dst` with the video stream of `src` only (packets copied, no re-encode), atomically."""
    import av

    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.part")
    try:
        with av.open(str(src)) as inp, av.open(str(tmp), mode="w", format="mp4") as out:
            vin = inp.streams.video[0]
            vout = out.add_stream_from_template(vin)
            for packet in inp.demux(vin):
                if packet.dts is None:  # the demuxer's final flush packet
                    continue
                packet.stream = vout
                out.mux(packet)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


# ------------------------------------------------------------------------------------------------
# readers (tests, checks)


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` reads from a container (durations in seconds)."""

    num_frames: int
    fps: float
    width: int
    height: int
    video_codec: str
    duration: float
    has_audio: bool
    audio_codec: str | None = None
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    audio_bit_rate: int | None = None
    audio_duration: float | None = None


def probe(path: str | os.PathLike) -> VideoInfo:
    """Stream metadata of a video file; frames and audio duration are counted by decoding (exact)."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        num_frames = sum(1 for _ in c.decode(v))
        info = dict(num_frames=num_frames, fps=float(v.average_rate), width=v.codec_context.width,
                    height=v.codec_context.height, video_codec=v.codec_context.name,
                    duration=num_frames / float(v.average_rate), has_audio=bool(c.streams.audio))
        if info["has_audio"]:
            a = c.streams.audio[0]
            info.update(audio_codec=a.codec_context.name, audio_bit_rate=a.bit_rate)
    if info["has_audio"]:
        samples, sr = read_audio(path, mono=False)
        info.update(audio_sample_rate=sr, audio_channels=samples.shape[0], audio_duration=samples.shape[1] / sr)
    return VideoInfo(**info)


def read_video_frames(path: str | os.PathLike) -> np.ndarray:
    """All frames of the first video stream as uint8 `[T, H, W, 3]` RGB."""
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


def read_audio(path: str | os.PathLike, mono: bool = True) -> tuple[np.ndarray, int]:
    """The first audio stream as float32 samples, mono `[N]` (the channels' mean) or `[C, N]`, and its rate;
    cut where the stream's duration says the real samples end."""
    import av

    from wan.io.audio import decode_audio_s16

    pcm, sr = decode_audio_s16(path)  # [N, C]
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        # the demuxer skips the AAC priming (edit list) but the decoder returns whole 1024-sample
        # frames: the stream duration says where the real samples end
        n = int(round(a.duration * a.time_base * sr)) if a.duration is not None else None
    x = pcm[:n].T.astype(np.float32) / 32768
    return (x.mean(axis=0) if mono else x), sr
