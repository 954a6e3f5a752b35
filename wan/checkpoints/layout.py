"""Which weight files a run reads, checked before anything loads (the loaders' own file names, nothing re-listed).

`missing_weights(wan_dir, transformer_path, wav2vec_dir)` -> one line per missing piece, naming what belongs there.
"""

from __future__ import annotations

import os
from pathlib import Path

from wan.checkpoints.clip import CLIP_CHECKPOINT
from wan.checkpoints.dit import BASE_WEIGHT_NAMES
from wan.checkpoints.t5 import T5_CHECKPOINT, T5_TOKENIZER_DIR
from wan.checkpoints.vae import VAE_FILE

WAV2VEC_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def missing_weights(wan_dir: str | os.PathLike, transformer_path: str | os.PathLike | None,
                    wav2vec_dir: str | os.PathLike) -> list[str]:
    """Every file `StableAvatarPipeline.from_checkpoints` will read that is not there, as readable lines."""
    wan, w2v = Path(wan_dir), Path(wav2vec_dir)
    out = []
    if not wan.is_dir():
        out.append(f"{wan}/: the Wan2.1-Fun-V1.1-1.3B-InP folder (--pretrained_model_name_or_path)")
    else:
        if not (wan / "config.json").is_file():
            out.append(f"{wan / 'config.json'}: the Wan2.1-Fun DiT config")
        if not any((wan / n).is_file() for n in BASE_WEIGHT_NAMES) and not any(wan.glob("*.safetensors")):
            out.append(f"{wan}/diffusion_pytorch_model*.safetensors: the Wan2.1-Fun DiT weights")
        for name, what in ((T5_CHECKPOINT, "the umT5 text encoder"), (CLIP_CHECKPOINT, "the CLIP image encoder"),
                           (VAE_FILE, "the Wan VAE")):
            if not (wan / name).is_file():
                out.append(f"{wan / name}: {what}")
        tok = wan / T5_TOKENIZER_DIR
        if not ((tok / "tokenizer.json").is_file() or (tok / "spiece.model").is_file()):
            out.append(f"{tok}/tokenizer.json: the umT5 tokenizer")
    if transformer_path is not None and not Path(transformer_path).is_file():
        out.append(f"{transformer_path}: the StableAvatar DiT weights (--transformer_path)")
    if not (w2v / "config.json").is_file():
        out.append(f"{w2v / 'config.json'}: the wav2vec2-base-960h folder (--pretrained_wav2vec_path)")
    elif not any((w2v / n).is_file() for n in WAV2VEC_WEIGHTS):
        out.append(f"{w2v}/model.safetensors: the wav2vec2 weights")
    return out
