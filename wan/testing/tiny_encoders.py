"""Tiny-checkpoint writer for the text and image encoders, in the released formats (registered in tiny_checkpoints).

Writes into `<root>/Wan2.1-Fun-V1.1-1.3B-InP/`:
* `models_t5_umt5-xxl-enc-bf16.pth`: Wan T5 keys (`blocks.{i}.attn.q.weight`, ...), bfloat16, `spec.t5` sizes;
* `google/umt5-xxl/`: a tokenizer folder like the released one (`spiece.model`, `tokenizer.json`,
  `tokenizer_config.json`, `special_tokens_map.json`) over a unigram sentencepiece model trained here in
  milliseconds, at most `spec.t5.vocab_size` pieces, pad 0 / eos 1 / unk 2;
* `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`: `visual.*` at `spec.clip` sizes + a one-block
  `textual.*` tower + `log_scale`, float32, like the whole-CLIP original file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import Tensor

from wan.configs import ModelSpec, PipelineConfig

WAN_FUN_DIR = "Wan2.1-Fun-V1.1-1.3B-InP"

# the text tower is never used; these sizes only make the file look like the original (golden clip_d1's)
_TEXTUAL = dict(vocab_size=64, dim=16, max_len=16, layers=1)


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int,
                      dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Seeded random tensors for a key -> shape map, scaled so activations stay O(1).

    Norm gains 1 + N(0, 0.1) (a gain mapped to the wrong place shows), other 1-D tensors N(0, 0.05),
    class/position embeddings and scales N(0, 0.1), weights N(0, 1/fan_in).
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 1)[-1]
        t = torch.randn(shape, generator=gen)
        if "norm" in key and leaf == "weight":
            t = 1 + 0.1 * t
        elif key.endswith(("cls_embedding", "pos_embedding", "log_scale")):
            t = 0.1 * t
        elif len(shape) >= 2:
            t = t / (torch.tensor(shape[1:]).prod().item() ** 0.5)
        else:
            t = 0.05 * t
        out[key] = t.to(dtype)
    return out


# ----------------------------------------------------------------------------------------------------
# tokenizer


def tokenizer_corpus() -> list[str]:
    """A few hundred sentences: the pipeline's prompts, the default negative prompt and English templates."""
    negative = PipelineConfig().negative_prompt
    english = [
        "A middle-aged woman with short light brown hair, wearing pearl earrings and a blue blazer, is speaking "
        "passionately in front of a blurred background resembling a government building.",
        "Her mouth is open mid-phrase, her expression is engaged and energetic, and the lighting is bright and "
        "even, suggesting a television interview or live broadcast.",
        "The scene gives the impression she is singing with conviction and purpose.",
        "The protagonist is singing",
    ]
    subjects = ["A man", "A woman", "The singer", "An old man", "A young girl", "The protagonist", "A boy"]
    verbs = ["is singing", "is talking", "is speaking softly", "smiles", "is laughing", "is reading the news"]
    places = ["in a studio", "on a stage", "in front of a wall", "outdoors at night", "in a bright room"]
    return english + [negative] + negative.split("，") + [f"{s} {v} {p}." for s in subjects for v in verbs
                                                           for p in places]


def train_spiece(vocab_size: int, corpus: list[str] | None = None) -> bytes:
    """A unigram sentencepiece model (bytes of `spiece.model`) with umT5's special ids: pad 0, eos 1, unk 2,
    no bos. `hard_vocab_limit=False`: the corpus may support fewer pieces than asked, never more."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus or tokenizer_corpus()), model_writer=buf, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
        character_coverage=1.0, normalization_rule_name="identity", num_threads=1, minloglevel=2,
    )
    return buf.getvalue()


def write_t5_tokenizer(folder: str | Path, spiece_model: bytes) -> Path:
    """A umT5-style tokenizer folder around `spiece_model` (bytes), loadable offline.

    `tokenizer.json` holds the pipeline transformers 4.51's `T5TokenizerFast` built from such a model, which is
    what produced the golden e2e token ids (`trace.prompt_input_ids`): right-strip, runs of spaces -> "▁",
    Metaspace WITHOUT a "▁" prepended to the first word, `</s>` appended. Load it with
    `wan.checkpoints.t5.load_t5_tokenizer` (verbatim); `AutoTokenizer` would pick transformers 5's
    `T5Tokenizer`, which swaps in its own pre-tokenizer (it prepends "▁").
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(spiece_model)
    spec = proto.trainer_spec
    if (spec.pad_id, spec.eos_id, spec.unk_id) != (0, 1, 2):
        raise ValueError(f"spiece model has pad/eos/unk ids {(spec.pad_id, spec.eos_id, spec.unk_id)}; umT5 "
                         "needs (0, 1, 2)")
    tok = Tokenizer(models.Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=spec.unk_id,
                                   byte_fallback=False))
    charsmap = proto.normalizer_spec.precompiled_charsmap
    steps = [normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), "▁")]
    tok.normalizer = normalizers.Sequence(([normalizers.Precompiled(charsmap)] if charsmap else []) + steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", spec.eos_id)])
    for piece in proto.pieces[:3]:  # <pad>, </s>, <unk>
        tok.add_special_tokens([piece.piece])

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(spiece_model)
    tok.save(str(folder / "tokenizer.json"))
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512, **special}, indent=2))
    return folder


# ----------------------------------------------------------------------------------------------------
# weights


def write_t5(root: Path, spec: ModelSpec, seed: int) -> Path:
    """Random `models_t5_umt5-xxl-enc-bf16.pth` (original keys, bf16) + the tokenizer folder; returns the file."""
    from wan.checkpoints import atomic_save
    from wan.checkpoints.t5 import T5_CHECKPOINT, T5_TOKENIZER_DIR, t5_from_hf
    from wan.models.t5 import build_umt5

    wan_dir = Path(root) / WAN_FUN_DIR
    shapes = {k: tuple(v.shape) for k, v in t5_from_hf(build_umt5(spec.t5, empty=True).state_dict()).items()}
    path = wan_dir / T5_CHECKPOINT
    atomic_save(random_state_dict(shapes, seed, torch.bfloat16), path)
    write_t5_tokenizer(wan_dir / T5_TOKENIZER_DIR, train_spiece(spec.t5.vocab_size))
    return path


def _textual_shapes(embed_dim: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of upstream's XLM-RoBERTa text tower with head (XLMRobertaWithHead) at `_TEXTUAL` sizes."""
    v, d, n = _TEXTUAL["vocab_size"], _TEXTUAL["dim"], _TEXTUAL["max_len"]
    mid = (d + embed_dim) // 2
    shapes = {"textual.token_embedding.weight": (v, d), "textual.type_embedding.weight": (1, d),
              "textual.pos_embedding.weight": (n, d)}
    for i in range(_TEXTUAL["layers"]):
        b = f"textual.blocks.{i}"
        for name in ("q", "k", "v", "o"):
            shapes |= {f"{b}.attn.{name}.weight": (d, d), f"{b}.attn.{name}.bias": (d,)}
        shapes |= {f"{b}.norm1.weight": (d,), f"{b}.norm1.bias": (d,),
                   f"{b}.ffn.0.weight": (4 * d, d), f"{b}.ffn.0.bias": (4 * d,),
                   f"{b}.ffn.2.weight": (d, 4 * d), f"{b}.ffn.2.bias": (d,),
                   f"{b}.norm2.weight": (d,), f"{b}.norm2.bias": (d,)}
    return shapes | {"textual.norm.weight": (d,), "textual.norm.bias": (d,),
                     "textual.head.0.weight": (mid, d), "textual.head.2.weight": (embed_dim, mid)}


def write_clip(root: Path, spec: ModelSpec, seed: int) -> Path:
    """Random whole-CLIP file (visual + textual + log_scale, float32, original keys); returns its path."""
    from wan.checkpoints import atomic_save
    from wan.checkpoints.clip import CLIP_CHECKPOINT, clip_from_hf
    from wan.models.clip import build_clip_vision

    visual = {k: tuple(v.shape) for k, v in clip_from_hf(build_clip_vision(spec.clip, empty=True).state_dict()).items()}
    shapes = visual | _textual_shapes(spec.clip.embed_dim) | {"log_scale": ()}
    path = Path(root) / WAN_FUN_DIR / CLIP_CHECKPOINT
    atomic_save(random_state_dict(shapes, seed + 1), path)
    return path


def write(root: Path, spec: ModelSpec, seed: int) -> None:
    """tiny_checkpoints writer: the T5 file, its tokenizer folder and the CLIP file."""
    write_t5(root, spec, seed)
    write_clip(root, spec, seed)
