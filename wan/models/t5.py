"""umT5-XXL text encoder: `transformers.UMT5EncoderModel` + the original pipeline's prompt handling.

Wan's `WanT5EncoderModel` is the umT5 encoder (per-layer relative position bias, no attention scaling,
gated tanh-GELU FFN, RMS norms), so the library class computes the same function; weights come from the
original file through `wan.checkpoints.t5`. Prompt handling follows the long pipeline's
`_get_t5_prompt_embeds` (spec pipeline.md §3.3): no prompt cleaning, pad to `text_len` = 512 with truncation
and the `</s>` special token, run with the attention mask, keep each prompt's first `mask.sum()` rows.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from wan.configs import T5Config

logger = logging.getLogger(__name__)


def umt5_config(cfg: T5Config):
    """The `UMT5Config` of the encoder Wan builds from `cfg` (encoder only, no dropout)."""
    from transformers import UMT5Config

    if cfg.dim_attn % cfg.num_heads:
        raise ValueError(f"T5Config.dim_attn {cfg.dim_attn} is not divisible by num_heads {cfg.num_heads}")
    return UMT5Config(
        vocab_size=cfg.vocab_size,
        d_model=cfg.dim,
        d_kv=cfg.dim_attn // cfg.num_heads,
        d_ff=cfg.dim_ffn,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.num_buckets,
        relative_attention_max_distance=cfg.max_distance,
        layer_norm_epsilon=cfg.eps,
        feed_forward_proj="gated-gelu",  # gelu_new == Wan's tanh-approximated GELU on the gate branch
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
    )


def build_umt5(cfg: T5Config, empty: bool = True):
    """`UMT5EncoderModel` for `cfg`, in eval mode without gradients.

    `empty=True` puts the parameters on the meta device (no full-size random init: 5.7 B parameters for
    the real encoder); a strict load then materialises them. `empty=False` gives a randomly initialised model.
    """
    from transformers import UMT5EncoderModel

    from accelerate import init_empty_weights

    # parameters only: non-persistent buffers (e.g. CLIP's position_ids) are not in the file and must be real
    with init_empty_weights(include_buffers=False) if empty else contextlib.nullcontext():
        model = UMT5EncoderModel(umt5_config(cfg))
    return model.eval().requires_grad_(False)


def trim_to_mask(hidden: Tensor, attention_mask: Tensor) -> list[Tensor]:
    """[B, L, dim] states + [B, L] mask -> B tensors [L_i, dim] with L_i = number of unmasked tokens."""
    seq_lens = attention_mask.gt(0).sum(dim=1).long()
    return [u[:v] for u, v in zip(hidden, seq_lens.tolist())]


class TextEncoder(nn.Module):
    """umT5 encoder + tokenizer. `encode(prompts)` -> one `[L_i, dim]` tensor per prompt."""

    def __init__(self, model: nn.Module, tokenizer=None, text_len: int = 512):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.text_len = text_len

    @classmethod
    def from_checkpoints(cls, wan_dir: str | os.PathLike, cfg: T5Config | None = None,
                         dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu") -> "TextEncoder":
        """Load from the Wan2.1-Fun folder: `models_t5_umt5-xxl-enc-bf16.pth` + `google/umt5-xxl/`.

        dtype: bf16 as the original runs it (its loader materialises the weights in bf16); float32 for parity.
        """
        from wan.checkpoints.t5 import T5_CHECKPOINT, T5_TOKENIZER_DIR

        wan_dir = Path(wan_dir)
        if not wan_dir.is_dir():
            raise ValueError(f"wan_dir {str(wan_dir)!r} is not a folder; pass the Wan2.1-Fun-V1.1-1.3B-InP folder "
                             f"that holds {T5_CHECKPOINT} and {T5_TOKENIZER_DIR}/")
        return cls.from_files(wan_dir / T5_CHECKPOINT, wan_dir / T5_TOKENIZER_DIR, cfg, dtype, device)

    @classmethod
    def from_files(cls, checkpoint: str | os.PathLike, tokenizer_dir: str | os.PathLike | None,
                   cfg: T5Config | None = None, dtype: torch.dtype = torch.bfloat16,
                   device: str | torch.device = "cpu") -> "TextEncoder":
        """Load an original-format weight file and (optionally) a tokenizer folder."""
        from wan.checkpoints.t5 import load_t5_tokenizer, load_t5_weights, require_t5_files

        cfg = cfg or T5Config()
        require_t5_files(checkpoint, tokenizer_dir)  # name every missing piece before loading gigabytes
        tokenizer = load_t5_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
        if tokenizer is not None and len(tokenizer) > cfg.vocab_size:
            raise ValueError(f"tokenizer at {tokenizer_dir} has {len(tokenizer)} tokens, more than the encoder's "
                             f"vocab_size {cfg.vocab_size}")
        model = load_t5_weights(build_umt5(cfg, empty=True), checkpoint, dtype)
        model.tie_weights()  # the strict load assigned `shared` and `encoder.embed_tokens` separately
        return cls(model, tokenizer, cfg.text_len).to(device)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask: [B, L] -> last hidden states [B, L, dim] (padded rows included)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def tokenize(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Prompts -> (input_ids, attention_mask), both [B, text_len], exactly as the original pipeline."""
        if self.tokenizer is None:
            raise ValueError("this TextEncoder was built without a tokenizer; pass tokenizer_dir to from_files")
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a list of strings, got {prompts!r}")
        enc = self.tokenizer(prompts, padding="max_length", max_length=self.text_len, truncation=True,
                             add_special_tokens=True, return_tensors="pt")
        for p, ids in zip(prompts, self.tokenizer(prompts, add_special_tokens=True).input_ids):
            if len(ids) > self.text_len:  # the original logs this too and truncates
                logger.warning("prompt truncated to %d tokens: %r", self.text_len, p[:80])
        return enc.input_ids, enc.attention_mask

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[Tensor]:
        """Prompts -> one `[L_i, dim]` tensor per prompt (model dtype, model device); L_i counts `</s>`."""
        input_ids, mask = self.tokenize(prompts)
        hidden = self(input_ids.to(self.device), mask.to(self.device))
        return trim_to_mask(hidden, mask)
