"""Tiny-checkpoint writers for the VAE and wav2vec2, in the released formats (registered in tiny_checkpoints).

* `write_vae`    -> `<root>/Wan2.1-Fun-V1.1-1.3B-InP/Wan2.1_VAE.pth`: plain torch state dict, original key names,
                    float32, at `spec.vae.base_dim`.
* `write_wav2vec` -> `<root>/wav2vec2-base-960h/`: a Hugging Face folder like the real one: a `Wav2Vec2ForCTC`
                    checkpoint (keys `wav2vec2.*` + `lm_head.*`), its config, the feature extractor's
                    `preprocessor_config.json` and a CTC tokenizer (`vocab.json`, ...), width `spec.dit.audio_in_dim`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from wan.configs import ModelSpec

WAN_FUN_DIR = "Wan2.1-Fun-V1.1-1.3B-InP"
WAV2VEC_DIR = "wav2vec2-base-960h"

# facebook/wav2vec2-base-960h's character vocabulary (32 CTC labels)
CTC_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U",
             "M", "W", "C", "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z"]

# config values of wav2vec2-base-960h that shape the module (checkpoints.md §2.5)
_BASE_960H = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    conv_dim=(512,) * 7, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
)
# the golden e2e cases' tiny stand-in: base-960h's kernels and strides (320 samples per token), 16-channel convs
_TINY = dict(
    num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
)


def wav2vec_config(hidden_size: int):
    """`Wav2Vec2Config` of base-960h at hidden 768, else the tiny stand-in at `hidden_size`."""
    from transformers import Wav2Vec2Config

    sizes = dict(_BASE_960H) if hidden_size == 768 else dict(_TINY, hidden_size=hidden_size)
    return Wav2Vec2Config(
        **sizes,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=False,
        feat_extract_norm="group", feat_extract_activation="gelu", do_stable_layer_norm=False,
        hidden_act="gelu", layer_norm_eps=1e-5, mask_time_prob=0.05, vocab_size=len(CTC_VOCAB),
        pad_token_id=0, ctc_loss_reduction="sum", architectures=["Wav2Vec2ForCTC"],
    )


def write_vae(root: Path, spec: ModelSpec, seed: int) -> Path:
    """Random `Wan2.1_VAE.pth` at `spec.vae` sizes; returns the file path."""
    from wan.checkpoints.vae import VAE_FILE, save_vae_weights
    from wan.models.vae import build_autoencoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = build_autoencoder(spec.vae)
        # diffusers initialises every RMS-norm gain to 1; spread them so a test can see a mis-mapped gamma
        for name, p in vae.named_parameters():
            if name.endswith(".gamma"):
                p.data.uniform_(0.5, 1.5)
    path = Path(root) / WAN_FUN_DIR / VAE_FILE
    save_vae_weights(vae.float(), path)
    return path


def write_wav2vec(root: Path, spec: ModelSpec, seed: int) -> Path:
    """Random `wav2vec2-base-960h/` folder of width `spec.dit.audio_in_dim`; returns the folder."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    folder = Path(root) / WAV2VEC_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Vec2ForCTC(wav2vec_config(spec.dit.audio_in_dim)).float().eval()
        # masked_spec_embed is drawn uniform [0, 1) and only used in training; give biases some spread too
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.data.normal_(0.0, 0.05)
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(folder)
    vocab = folder / "vocab.json"
    vocab.write_text(json.dumps({tok: i for i, tok in enumerate(CTC_VOCAB)}))
    Wav2Vec2CTCTokenizer(str(vocab), bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                         word_delimiter_token="|", do_lower_case=False).save_pretrained(folder)
    return folder
