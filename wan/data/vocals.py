"""Vocal stem of a mix with an MDX-Net ONNX model (UVR's Kim_Vocal_2), computing what audio-separator computes.

The original `vocal_seperator.py` calls audio-separator (`Separator(output_single_stem="vocals")`, default
MDX settings). audio-separator cannot sit beside the base stack (it pulls torchvision/CUDA torch through onnx2torch
and wants an `ffmpeg` executable), so this is an own runner over onnxruntime + torch.stft that reproduces
audio-separator **0.38.1** (the release current when StableAvatar shipped; `MDXSeparator.separate/demix/run_model`,
`uvr_lib_v5/stft.py`, `CommonSeparator.prepare_mix/write_audio_pydub`):

1. mix = the file as `librosa.load(path, mono=False, sr=44100)` (float32, soxr-HQ resampling when the rate
   differs); mono is duplicated to stereo.
2. peak-normalise the mix to 0.9 if it is louder (`normalization_threshold`).
3. demix: pad `trim = n_fft//2` zeros in front and `gen_size + trim − N mod gen_size` behind
   (`chunk = hop·(dim_t−1)`, `gen_size = chunk − 2·trim`); slide a window of `chunk` samples with step
   `int((1−overlap)·chunk)`; per chunk: STFT (hann periodic, hop 1024, center=True) → `[1, 4, dim_f, dim_t]`
   (L.re, L.im, R.re, R.im; bins ≥ dim_f dropped), bins 0–2 zeroed, the ONNX model, ISTFT with the dropped bins
   zero-padded; the chunk is weighted by `np.hanning(len)` and overlap-added, divided by the summed windows;
   trim `trim` samples at both ends and cut to N.
4. × `compensate` (per model), then peak-normalise to 0.9 again (primary stem), and once more when written.
5. written as 16-bit PCM stereo 44.1 kHz WAV: `int16(x·32767)` (truncation), as audio-separator's pydub path.

audio-separator ≥ 0.39 changed step 4 (vocals × the input's peak, no compensation): not reproduced here.

MDX parameters: `dim_f`, `dim_t` are read from the ONNX input shape `[batch, 4, dim_f, dim_t]`; `n_fft` and
`compensate` are not in the file — audio-separator looks them up by the file's MD5 in UVR's
`mdx_model_data/model_data_new.json` (TRvlvr/application_data); the values for the known models are in
`KNOWN_MODELS` (by file stem), anything else needs `n_fft=` / `compensate=`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 44100  # audio-separator's default sample_rate
NORMALIZATION_THRESHOLD = 0.9  # Separator(normalization_threshold=0.9)

# UVR model_data_new.json entries (mdx_n_fft_scale_set, mdx_dim_f_set, 2**mdx_dim_t_set, compensate)
KNOWN_MODELS: dict[str, dict] = {
    "Kim_Vocal_2": dict(n_fft=7680, dim_f=3072, dim_t=256, compensate=1.009, primary_stem="Vocals"),
    "UVR-MDX-NET-Voc_FT": dict(n_fft=7680, dim_f=3072, dim_t=256, compensate=1.021, primary_stem="Vocals"),
}


@dataclass(frozen=True)
class MDXParams:
    """Separation settings: model geometry + audio-separator's MDX defaults (hop 1024, overlap 0.25)."""

    n_fft: int
    dim_f: int
    dim_t: int
    compensate: float
    hop_length: int = 1024
    overlap: float = 0.25

    @property
    def trim(self) -> int:
        return self.n_fft // 2

    @property
    def chunk_size(self) -> int:
        return self.hop_length * (self.dim_t - 1)

    @property
    def gen_size(self) -> int:
        return self.chunk_size - 2 * self.trim


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError("vocal separation needs onnxruntime: pip install -e '.[audio]' "
                          "(or pip install onnxruntime)") from e
    return onnxruntime


class MDXSeparator:
    """An MDX-Net ONNX vocal model on onnxruntime (CPU unless `providers` says otherwise).

        sep = MDXSeparator("checkpoints/Kim_Vocal_2.onnx")
        vocals = sep.separate(load_mix("song.wav"))      # float32 [2, N] at 44.1 kHz
    """

    def __init__(self, model_path: str | os.PathLike, n_fft: int | None = None, compensate: float | None = None,
                 overlap: float = 0.25, hop_length: int = 1024, providers: list[str] | None = None):
        ort = _onnxruntime()
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            from wan.checkpoints.fetch import report, vocal_model_piece

            raise FileNotFoundError(f"MDX model {self.model_path} does not exist:\n"
                                    f"{report([vocal_model_piece(self.model_path)])}")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1) (got {overlap})")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.model_path), sess_options=opts,
                                            providers=providers or ["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4 or shape[1] != 4 or not all(isinstance(s, int) for s in shape[2:]):
            raise ValueError(f"{self.model_path}: not an MDX-Net model (input {inp.name} has shape {shape}, "
                             "expected [batch, 4, dim_f, dim_t] with fixed dim_f/dim_t)")
        dim_f, dim_t = shape[2], shape[3]
        known = KNOWN_MODELS.get(self.model_path.stem, {})
        n_fft = n_fft if n_fft is not None else known.get("n_fft")
        compensate = compensate if compensate is not None else known.get("compensate")
        if n_fft is None or compensate is None:
            raise ValueError(f"{self.model_path.name}: unknown MDX model; pass n_fft= and compensate= (UVR's "
                             f"mdx_n_fft_scale_set / compensate; known: {sorted(KNOWN_MODELS)})")
        if dim_f > n_fft // 2 + 1:
            raise ValueError(f"dim_f {dim_f} exceeds n_fft//2+1 = {n_fft // 2 + 1}; wrong n_fft ({n_fft})?")
        self.params = MDXParams(n_fft=int(n_fft), dim_f=dim_f, dim_t=dim_t, compensate=float(compensate),
                                hop_length=hop_length, overlap=overlap)
        if self.params.gen_size <= 0:
            raise ValueError(f"chunk {self.params.chunk_size} ≤ 2·trim {2 * self.params.trim}: dim_t {dim_t} too "
                             f"small for n_fft {n_fft}")

    # -- spectral transforms (uvr_lib_v5/stft.py) ----------------------------------------------------

    def _stft(self, x):
        """[B, 2, L] float32 tensor → [B, 4, dim_f, T] (L.re, L.im, R.re, R.im)."""
        import torch

        p = self.params
        b, c, n = x.shape
        spec = torch.stft(x.reshape(-1, n), n_fft=p.n_fft, hop_length=p.hop_length,
                          window=torch.hann_window(p.n_fft, periodic=True), center=True, return_complex=True)
        spec = torch.view_as_real(spec).permute(0, 3, 1, 2)  # [B·2, 2, F, T]
        spec = spec.reshape(b, c * 2, spec.shape[-2], spec.shape[-1])
        return spec[:, :, :p.dim_f, :]

    def _istft(self, spec):
        """[B, 4, dim_f, T] → [B, 2, L]; the bins above dim_f are zero."""
        import torch

        p = self.params
        b, c, f, t = spec.shape
        n_bins = p.n_fft // 2 + 1
        spec = torch.cat([spec, torch.zeros(b, c, n_bins - f, t, dtype=spec.dtype)], dim=2)
        spec = spec.reshape(b * c // 2, 2, n_bins, t).permute(0, 2, 3, 1)
        z = torch.complex(spec[..., 0].contiguous(), spec[..., 1].contiguous())
        wave = torch.istft(z, n_fft=p.n_fft, hop_length=p.hop_length,
                           window=torch.hann_window(p.n_fft, periodic=True), center=True)
        return wave.reshape(b, 2, -1)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """float32 [1, 2, chunk] → model output waveform float32 [1, 2, chunk'] (MDXSeparator.run_model)."""
        import torch

        spec = self._stft(torch.from_numpy(chunk))
        spec[:, :, :3, :] = 0  # audio-separator zeroes the 3 lowest bins before the model
        pred = self.session.run(None, {self.input_name: spec.numpy()})[0]
        return self._istft(torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))).numpy()

    # -- separation ------------------------------------------------------------------------------

    def demix(self, mix: np.ndarray, progress: bool = False) -> np.ndarray:
        """Model output for a stereo mix float32 `[2, N]` → float32 `[2, N]` (before compensation)."""
        p = self.params
        if mix.ndim != 2 or mix.shape[0] != 2:
            raise ValueError(f"demix needs a stereo float array [2, N] (got shape {mix.shape})")
        n = mix.shape[-1]
        pad = p.gen_size + p.trim - n % p.gen_size
        mixture = np.concatenate([np.zeros((2, p.trim), np.float32), mix.astype(np.float32, copy=False),
                                  np.zeros((2, pad), np.float32)], axis=1)
        total = mixture.shape[-1]
        step = int((1 - p.overlap) * p.chunk_size)
        result = np.zeros((1, 2, total), dtype=np.float32)
        divider = np.zeros((1, 2, total), dtype=np.float32)
        starts = range(0, total, step)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="vocals", unit="chunk")
        for start in starts:
            end = min(start + p.chunk_size, total)
            actual = end - start
            part = mixture[:, start:end]
            if actual != p.chunk_size:
                part = np.concatenate([part, np.zeros((2, p.chunk_size - actual), np.float32)], axis=-1)
            out = self._run_chunk(np.ascontiguousarray(part[None], dtype=np.float32))
            if p.overlap != 0:
                window = np.tile(np.hanning(actual)[None, None, :], (1, 2, 1))  # float64, as upstream
                out[..., :actual] *= window
                divider[..., start:end] += window
            else:
                divider[..., start:end] += 1
            result[..., start:end] += out[..., :actual]
        with np.errstate(invalid="ignore"):  # 0/0 at the outermost samples (hanning ends), trimmed below
            waves = (result / divider)[:, :, p.trim:-p.trim]
        return np.concatenate(waves, axis=-1)[:, :n]

    def separate(self, mix: np.ndarray, progress: bool = False) -> np.ndarray:
        """Primary (vocal) stem float32 `[2, N]` of a stereo float32 mix `[2, N]` at 44.1 kHz, as audio-separator
        0.38.1 hands it to its writer (steps 2–4 of the module docstring). `mix` is not modified."""
        mix = normalize(np.array(mix, dtype=np.float32), NORMALIZATION_THRESHOLD)
        source = self.demix(mix, progress=progress)
        source *= self.params.compensate
        return normalize(source, NORMALIZATION_THRESHOLD)


def normalize(wave: np.ndarray, max_peak: float) -> np.ndarray:
    """Scale (in place) to `max_peak` when the peak exceeds it (spec_utils.normalize with min_peak 0)."""
    maxv = np.abs(wave).max()
    if maxv > max_peak:
        wave *= max_peak / maxv
    return wave


def load_mix(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Stereo float32 `[2, N]` at `sample_rate`, like `librosa.load(path, mono=False, sr=44100)` + mono→stereo
    (soundfile, or PyAV for containers such as mp4/m4a)."""
    from wan.io.audio import read_audio_channels, resample

    y, sr = read_audio_channels(path)
    if y.shape[0] > 2:
        raise ValueError(f"{path}: {y.shape[0]} audio channels; MDX models take mono or stereo — downmix first")
    if sr != sample_rate:
        y = np.stack([resample(np.ascontiguousarray(ch), sr, sample_rate) for ch in y])
    if not np.any(y):
        raise ValueError(f"audio file {path} is empty or silent")
    if y.shape[0] == 1:
        y = np.concatenate([y, y])
    return np.ascontiguousarray(y, dtype=np.float32)


def to_pcm16(stem: np.ndarray) -> np.ndarray:
    """int16 `[N, 2]` of a float stem `[2, N]` as audio-separator writes it: normalise to 0.9, `(x·32767)` truncated."""
    x = normalize(np.array(stem, dtype=np.float32).T, NORMALIZATION_THRESHOLD)
    return (x * 32767).astype(np.int16)


def separate_file(model_path: str | os.PathLike, audio_path: str | os.PathLike, out_path: str | os.PathLike,
                  progress: bool = True, **kwargs) -> Path:
    """Vocal stem of `audio_path` written to `out_path` (16-bit PCM stereo 44.1 kHz WAV). kwargs → MDXSeparator."""
    import soundfile

    mix = load_mix(audio_path)
    sep = MDXSeparator(model_path, **kwargs)
    vocals = sep.separate(mix, progress=progress)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pcm = to_pcm16(vocals)
    if np.abs(pcm).max() == 0:
        print(f"warning: the vocal stem of {audio_path} is silent")
    tmp = out_path.with_name(f".{out_path.name}.part")
    soundfile.write(str(tmp), pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, out_path)
    return out_path
