"""wav2vec2-base-960h audio encoder: transformers' feature extractor + `Wav2Vec2Model`, as the original uses them.

The original pipeline calls, for every sliding window's slice of the 16 kHz waveform,
`Wav2Vec2Processor(slice, sampling_rate=16000, return_tensors="pt").input_values` (only its feature
extractor acts: `(x - x.mean()) / sqrt(x.var() + 1e-7)` in numpy float32, no padding, no attention mask)
and then `Wav2Vec2Model(input_values).last_hidden_state` in float32, eval mode. One token per 320 samples
(conv strides 5*2^6), i.e. 50 tokens per second.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

SAMPLE_RATE = 16000  # wav2vec2-base-960h was trained on 16 kHz audio


class AudioEncoder(nn.Module):
    """Waveform (16 kHz, float32 [n]) -> wav2vec2 features [1, T_a, hidden] (T_a ~= n / 320)."""

    def __init__(self, model: nn.Module, feature_extractor) -> None:
        super().__init__()
        self.model = model  # transformers Wav2Vec2Model
        self.feature_extractor = feature_extractor  # transformers Wav2Vec2FeatureExtractor (holds no weights)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> "AudioEncoder":
        """Load a local `wav2vec2-base-960h/` folder (Hugging Face layout; the weights are a `Wav2Vec2ForCTC`
        checkpoint whose `wav2vec2.` part is the model, `lm_head` is dropped). Strict: any model weight
        missing from the folder, or of another shape, raises CheckpointError (transformers would only warn
        and leave it randomly initialised). Never touches the network."""
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

        from wan.checkpoints import CheckpointError

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder}: not a wav2vec2 folder (no config.json); pass --pretrained_wav2vec_path "
                                  "pointing at checkpoints/wav2vec2-base-960h")
        from transformers.utils import logging as hf_logging

        # the left-over CTC head is expected: silence transformers' load report, check the info ourselves
        verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder, local_files_only=True)
            model, info = Wav2Vec2Model.from_pretrained(folder, local_files_only=True, output_loading_info=True,
                                                        dtype=dtype)
        except (OSError, RuntimeError) as e:  # missing weight / preprocessor file, mis-shaped weights
            raise CheckpointError(f"{folder}: cannot load wav2vec2 ({e})") from e
        finally:
            hf_logging.set_verbosity(verbosity)
            if bar:
                hf_logging.enable_progress_bar()
        # the CTC head is expected to be left over; anything else is a mismatch
        unexpected = [k for k in info.get("unexpected_keys", []) if not k.startswith("lm_head.")]
        problems = {"missing": info.get("missing_keys", []), "unexpected": unexpected,
                    "mis-shaped": info.get("mismatched_keys", [])}
        problems = {k: sorted(map(str, v)) for k, v in problems.items() if v}
        if problems:
            raise CheckpointError(f"{folder}: wav2vec2 weights do not match its config: {problems}")
        if feature_extractor.sampling_rate != SAMPLE_RATE:
            raise CheckpointError(f"{folder}: feature extractor expects {feature_extractor.sampling_rate} Hz, "
                                  f"the pipeline feeds {SAMPLE_RATE} Hz")
        return cls(model, feature_extractor).to(device).eval()

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def normalize(self, waveform: np.ndarray | Tensor) -> Tensor:
        """float32 waveform [n] -> input_values [1, n]: the feature extractor's zero-mean unit-variance
        normalisation of this slice on its own (numpy float32, eps 1e-7), exactly as the original calls it."""
        if isinstance(waveform, Tensor):
            waveform = waveform.detach().cpu().numpy()
        waveform = np.asarray(waveform, dtype=np.float32)
        if waveform.ndim != 1 or waveform.size == 0:
            raise ValueError(f"waveform must be a non-empty 1-D array of samples, got shape {waveform.shape}")
        out = self.feature_extractor(waveform, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        return out.input_values

    def forward(self, input_values: Tensor) -> Tensor:
        """input_values [B, n] (already normalised) -> last_hidden_state [B, T_a, hidden]."""
        p = next(self.model.parameters())
        return self.model(input_values.to(p.device, p.dtype)).last_hidden_state

    def encode(self, waveform: np.ndarray | Tensor) -> Tensor:
        """float32 16 kHz waveform [n] (one window's slice) -> [1, T_a, hidden] wav2vec2 features.
        The caller chooses the grad mode (inference wraps it in torch.no_grad / inference_mode)."""
        return self(self.normalize(waveform))
