"""umT5-XXL text encoder weights and tokenizer: Wan's original files <-> `transformers.UMT5EncoderModel`.

The original `models_t5_umt5-xxl-enc-bf16.pth` is a plain torch state dict (bf16) with the key names of
Wan's own `WanT5EncoderModel` (manifest `t5_encoder.tsv`): `token_embedding.weight`, `norm.weight`,
`blocks.{i}.{norm1,attn.{q,k,v,o},norm2,ffn.{gate.0,fc1,fc2},pos_embedding.embedding}.weight`.
That module computes exactly what `UMT5EncoderModel` computes (no 1/sqrt(d) attention scaling, a relative
position bias table per layer, gated tanh-GELU FFN, RMS norms without bias), so loading is a pure renaming:
`T5_RULES` below. The renaming engine (`KeyRule`, `to_converted`, `to_original`, `load_converted`) is generic;
`wan.checkpoints.clip` reuses it for the CLIP table, which also splits/reshapes tensors.

Loads are strict and report mismatches in the file's own key names.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from wan.checkpoints import (
    CheckpointError,
    _fmt,
    check_state_dict,
    load_into,
    load_state_dict_file,
    unwrap_state_dict,
)

T5_CHECKPOINT = "models_t5_umt5-xxl-enc-bf16.pth"  # inside the Wan2.1-Fun folder (yaml text_encoder_subpath)
T5_TOKENIZER_DIR = "google/umt5-xxl"  # inside the Wan2.1-Fun folder (yaml tokenizer_subpath)


# --------------------------------------------------------------------------------------------------
# generic renaming engine


# placeholders usable in key templates
_FIELDS = {"i": r"\d+", "p": r"weight|bias"}


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, ...
    return re.compile("".join(
        re.escape(part) if j % 2 == 0 else f"(?P<{part}>{_FIELDS[part]})" for j, part in enumerate(parts)
    ))


@dataclass(frozen=True)
class KeyRule:
    """One line of a conversion table.

    `original` is a key template of the original file, `converted` the matching template(s) of the library
    module; `{i}` stands for a block index and `{p}` for `weight|bias`. A rule with several converted keys
    (a fused qkv, a tied embedding) needs `split` (original tensor -> converted tensors) and `merge`
    (converted tensors -> original tensor); a one-to-one rule may carry a reversible `split`/`merge` pair
    for a reshape or transpose.
    """

    original: str
    converted: str | tuple[str, ...]
    split: Callable[[Tensor], Tensor | tuple[Tensor, ...]] | None = None
    merge: Callable[..., Tensor] | None = None
    _regex: re.Pattern = field(init=False, repr=False, compare=False)
    _converted_regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.converted, str):
            object.__setattr__(self, "converted", (self.converted,))
        if (self.split is None) != (self.merge is None):
            raise ValueError(f"rule {self.original!r}: give both split and merge, or neither")
        if len(self.converted) > 1 and self.split is None:
            raise ValueError(f"rule {self.original!r}: one key to several needs split/merge")
        object.__setattr__(self, "_regex", _template_regex(self.original))
        object.__setattr__(self, "_converted_regex", _template_regex(self.converted[0]))


def to_converted(state_dict: Mapping[str, Tensor], rules: Sequence[KeyRule],
                 source: str = "<state dict>") -> dict[str, Tensor]:
    """Original keys -> converted keys. A key that no rule matches raises CheckpointError (naming them all)."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        for rule in rules:
            if m := rule._regex.fullmatch(key):
                values = rule.split(value) if rule.split else value
                values = values if isinstance(values, tuple) else (values,)
                for template, v in zip(rule.converted, values, strict=True):
                    out[template.format(**m.groupdict())] = v
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: unexpected keys {_fmt(sorted(unknown))}")
    return out


def to_original(state_dict: Mapping[str, Tensor], rules: Sequence[KeyRule],
                source: str = "<state dict>") -> dict[str, Tensor]:
    """Converted keys -> original keys (inverse of `to_converted`). Works on meta tensors, so it also maps a
    model's expected shapes into the original naming."""
    rest = dict(state_dict)
    out: dict[str, Tensor] = {}
    for rule in rules:
        for key in [k for k in rest if rule._converted_regex.fullmatch(k)]:
            if key not in rest:  # already consumed by this rule
                continue
            groups = rule._converted_regex.fullmatch(key).groupdict()
            names = [template.format(**groups) for template in rule.converted]
            missing = [n for n in names if n not in rest]
            if missing:
                raise CheckpointError(f"{source}: {key} comes without {_fmt(missing)}")
            values = [rest.pop(n) for n in names]
            out[rule.original.format(**groups)] = rule.merge(*values) if rule.merge else values[0]
    if rest:
        raise CheckpointError(f"{source}: keys no rule maps back to the original format {_fmt(sorted(rest))}")
    return out


def load_converted(model: nn.Module, state_dict: Mapping[str, Tensor], rules: Sequence[KeyRule], source: str,
                   dtype: torch.dtype | None = None) -> nn.Module:
    """Strictly load an original-format `state_dict` into `model` (which may live on the meta device).

    Mismatches are checked and named in the ORIGINAL key names and shapes (the model's expected keys are
    mapped back through the rules), so the message speaks the language of the file.
    """
    expected = to_original(model.state_dict(), rules, source=f"{type(model).__name__}")
    check_state_dict({k: tuple(v.shape) for k, v in expected.items()}, state_dict, source)
    return load_into(model, to_converted(state_dict, rules, source), source, dtype)


# --------------------------------------------------------------------------------------------------
# the T5 table (ENV_NOTES §2c; verified against upstream's module)


def _tie(t: Tensor) -> tuple[Tensor, Tensor]:
    # UMT5EncoderModel keeps the embedding twice (`shared` and the encoder's tied `embed_tokens`)
    return t, t


T5_RULES: tuple[KeyRule, ...] = (
    KeyRule("token_embedding.weight", ("shared.weight", "encoder.embed_tokens.weight"),
            split=_tie, merge=lambda shared, embed_tokens: shared),
    KeyRule("norm.weight", "encoder.final_layer_norm.weight"),
    KeyRule("blocks.{i}.norm1.weight", "encoder.block.{i}.layer.0.layer_norm.weight"),
    KeyRule("blocks.{i}.attn.q.weight", "encoder.block.{i}.layer.0.SelfAttention.q.weight"),
    KeyRule("blocks.{i}.attn.k.weight", "encoder.block.{i}.layer.0.SelfAttention.k.weight"),
    KeyRule("blocks.{i}.attn.v.weight", "encoder.block.{i}.layer.0.SelfAttention.v.weight"),
    KeyRule("blocks.{i}.attn.o.weight", "encoder.block.{i}.layer.0.SelfAttention.o.weight"),
    # Wan builds the encoder with shared_pos=False: every block owns its [num_buckets, num_heads] table
    KeyRule("blocks.{i}.pos_embedding.embedding.weight",
            "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight"),
    KeyRule("blocks.{i}.norm2.weight", "encoder.block.{i}.layer.1.layer_norm.weight"),
    # Wan: fc2(fc1(x) * gelu_tanh(gate(x))); UMT5 "gated-gelu": wo(gelu_new(wi_0(x)) * wi_1(x))
    KeyRule("blocks.{i}.ffn.gate.0.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight"),
    KeyRule("blocks.{i}.ffn.fc1.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight"),
    KeyRule("blocks.{i}.ffn.fc2.weight", "encoder.block.{i}.layer.1.DenseReluDense.wo.weight"),
)


def t5_to_hf(state_dict: Mapping[str, Tensor], source: str = "<state dict>") -> dict[str, Tensor]:
    """Wan T5 keys -> `UMT5EncoderModel` keys (tensors are shared, not copied)."""
    return to_converted(state_dict, T5_RULES, source)


def t5_from_hf(state_dict: Mapping[str, Tensor], source: str = "<state dict>") -> dict[str, Tensor]:
    """`UMT5EncoderModel` keys -> Wan T5 keys (what the original file holds)."""
    return to_original(state_dict, T5_RULES, source)


def require_t5_files(checkpoint: str | os.PathLike | None, tokenizer_dir: str | os.PathLike | None) -> None:
    """Raise one CheckpointError naming every missing piece (and what belongs there) before anything loads."""
    problems = []
    if checkpoint is not None and not Path(checkpoint).is_file():
        problems.append(
            f"{checkpoint}: missing. Expected Wan2.1's umT5-XXL encoder here ({T5_CHECKPOINT}: a torch state dict "
            "with keys like `blocks.0.attn.q.weight`), as shipped in the Wan2.1-Fun-V1.1-1.3B-InP folder"
        )
    if tokenizer_dir is not None:
        folder = Path(tokenizer_dir)
        if not ((folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file()):
            problems.append(
                f"{folder}: missing umT5 tokenizer. Expected the {T5_TOKENIZER_DIR} tokenizer folder here "
                "(tokenizer.json and/or spiece.model, tokenizer_config.json, special_tokens_map.json), as "
                "shipped inside the Wan2.1-Fun-V1.1-1.3B-InP folder"
            )
    if problems:
        raise CheckpointError("; ".join(problems))


def load_t5_weights(model: nn.Module, path: str | os.PathLike, dtype: torch.dtype | None = None) -> nn.Module:
    """Strictly load Wan's `models_t5_umt5-xxl-enc-bf16.pth` into a `UMT5EncoderModel` (meta or real)."""
    path = Path(path)
    require_t5_files(path, None)
    state_dict = unwrap_state_dict(load_state_dict_file(path), path)
    return load_converted(model, state_dict, T5_RULES, str(path), dtype)


# --------------------------------------------------------------------------------------------------
# tokenizer


def load_t5_tokenizer(folder: str | os.PathLike):
    """The umT5 tokenizer of `<Wan dir>/google/umt5-xxl`.

    With a `tokenizer.json` (the released folder has one) the file's pipeline is used verbatim, as the
    original's transformers 4.x `T5TokenizerFast` did: transformers 5's `T5Tokenizer` class (what
    `AutoTokenizer` picks from `tokenizer_config.json`) would replace the file's normalizer and
    pre-tokenizer by its own. Without one, the folder is converted from `spiece.model` by `AutoTokenizer`.
    """
    folder = Path(folder)
    require_t5_files(None, folder)
    if (folder / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token_id is None:
        special = folder / "special_tokens_map.json"
        raise CheckpointError(
            f"{folder}: the tokenizer defines no pad token (umT5 pads with `<pad>` = id 0); check "
            f"{special.name}/tokenizer_config.json"
            + (f" ({json.loads(special.read_text())})" if special.is_file() else "")
        )
    return tokenizer
