"""umT5 text encoder: golden parity from original-format files, key table round trip, strict errors, tokenizer."""

from __future__ import annotations

import pytest
import torch

from wan.checkpoints import CheckpointError
from wan.checkpoints.t5 import T5_CHECKPOINT, T5_TOKENIZER_DIR, t5_from_hf, t5_to_hf
from wan.configs import T5Config, get_config
from wan.models.t5 import TextEncoder, build_umt5, trim_to_mask
from wan.testing.golden import assert_close_module
from wan.testing.tiny_encoders import WAN_FUN_DIR, random_state_dict, write_t5, write_t5_tokenizer


def golden_t5_config(config: dict) -> T5Config:
    """Upstream WanT5EncoderModel kwargs -> T5Config (shared_pos False and dropout 0 are what Wan uses)."""
    assert config["shared_pos"] is False and config["dropout"] == 0.0
    return T5Config(vocab_size=config["vocab"], dim=config["dim"], dim_attn=config["dim_attn"],
                    dim_ffn=config["dim_ffn"], num_heads=config["num_heads"], num_layers=config["num_layers"],
                    num_buckets=config["num_buckets"])


def test_golden_t5_d2(golden, tmp_path):
    case = golden("t5_d2")
    path = tmp_path / T5_CHECKPOINT
    torch.save(case.weights, path)  # the original file format: Wan keys, plain state dict
    enc = TextEncoder.from_files(path, None, golden_t5_config(case.meta["config"]), dtype=torch.float32)

    mask = case.inputs["attention_mask"]
    hidden = enc(case.inputs["input_ids"], mask)
    assert_close_module(hidden, case.outputs["last_hidden_state"], what="last_hidden_state")
    trimmed = trim_to_mask(hidden, mask)
    assert [u.shape[0] for u in trimmed] == [7, 150]
    for i, u in enumerate(trimmed):
        assert_close_module(u, case.outputs[f"prompt_embeds.{i}"], what=f"prompt_embeds.{i}")


def test_golden_e2e_prompts(golden, tmp_path):
    """Tokenizer + encoder as the long pipeline runs them: token ids and the context tensors of e2e_f1."""
    case = golden("e2e_f1_long_square")
    wan_dir = tmp_path / WAN_FUN_DIR
    write_t5_tokenizer(wan_dir / T5_TOKENIZER_DIR, case.tensors["assets.t5_spiece_model"].numpy().tobytes())
    wan_dir.mkdir(exist_ok=True)
    torch.save(case.group("weights.text_encoder"), wan_dir / T5_CHECKPOINT)
    cfg = golden_t5_config(case.meta["modules"]["text_encoder"]["config"])
    enc = TextEncoder.from_checkpoints(wan_dir, cfg, dtype=torch.float32)

    kwargs = case.meta["call"]["kwargs"]
    for key, context in (("prompt", "trace.context.2"), ("negative_prompt", "trace.context.0")):
        ids, mask = enc.tokenize([kwargs[key]])
        assert torch.equal(ids, case.tensors[f"trace.{key}_input_ids"]), key
        assert torch.equal(mask, case.tensors[f"trace.{key}_attention_mask"]), key
        (emb,) = enc.encode([kwargs[key]])
        assert_close_module(emb, case.tensors[context], what=key)


def test_key_table_round_trip():
    cfg = get_config("tiny").t5
    model_keys = build_umt5(cfg, empty=True).state_dict()
    original = t5_from_hf(model_keys)
    assert len(original) == len(model_keys) - 1  # the tied embedding is one tensor in the file
    sd = random_state_dict({k: tuple(v.shape) for k, v in original.items()}, seed=3)
    hf = t5_to_hf(sd)
    assert set(hf) == set(model_keys)
    assert hf["shared.weight"] is hf["encoder.embed_tokens.weight"]
    back = t5_from_hf(hf)
    assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    # the released manifest's key names are exactly the original side of the table
    assert "blocks.1.pos_embedding.embedding.weight" in sd and "blocks.1.ffn.gate.0.weight" in sd


def test_strict_load_names_keys(tmp_path):
    cfg = get_config("tiny").t5
    shapes = {k: tuple(v.shape) for k, v in t5_from_hf(build_umt5(cfg, empty=True).state_dict()).items()}
    good = random_state_dict(shapes, seed=0)
    path = tmp_path / "t5.pth"

    bad = dict(good)
    del bad["blocks.1.attn.k.weight"]
    bad["blocks.1.attn.k_extra.weight"] = torch.zeros(1)
    bad["norm.weight"] = torch.ones(cfg.dim + 1)
    torch.save(bad, path)
    with pytest.raises(CheckpointError) as err:
        TextEncoder.from_files(path, None, cfg)
    msg = str(err.value)
    assert "missing keys [blocks.1.attn.k.weight]" in msg
    assert "unexpected keys [blocks.1.attn.k_extra.weight]" in msg
    assert "norm.weight: file (33,) != model (32,)" in msg

    # both missing pieces are named at once, each with what belongs there
    with pytest.raises(CheckpointError, match=f"{T5_CHECKPOINT}: missing. Expected Wan2.1.s umT5-XXL.*"
                                              "umt5-xxl: missing umT5 tokenizer"):
        TextEncoder.from_checkpoints(tmp_path, cfg)
    torch.save(good, tmp_path / T5_CHECKPOINT)
    with pytest.raises(CheckpointError, match="umt5-xxl: missing umT5 tokenizer"):
        TextEncoder.from_checkpoints(tmp_path, cfg)
    with pytest.raises(ValueError, match="is not a folder"):
        TextEncoder.from_checkpoints(tmp_path / "nowhere", cfg)


def test_tiny_tree(tmp_path):
    spec = get_config("tiny")
    write_t5(tmp_path, spec, seed=0)
    wan_dir = tmp_path / WAN_FUN_DIR
    assert torch.load(wan_dir / T5_CHECKPOINT)["blocks.0.attn.q.weight"].dtype == torch.bfloat16
    enc = TextEncoder.from_checkpoints(wan_dir, spec.t5, dtype=torch.bfloat16)
    assert enc.model.shared.weight is enc.model.encoder.embed_tokens.weight
    assert len(enc.tokenizer) <= spec.t5.vocab_size

    prompts = ["The protagonist is singing", spec.pipeline.negative_prompt]
    ids, mask = enc.tokenize(prompts)
    assert ids.shape == (2, spec.t5.text_len) and ids[0, int(mask[0].sum()) - 1] == 1  # `</s>` then pad 0
    assert ids[0, int(mask[0].sum()):].eq(0).all()
    embs = enc.encode(prompts)
    assert [tuple(e.shape) for e in embs] == [(int(m.sum()), spec.t5.dim) for m in mask]
    assert all(e.dtype == torch.bfloat16 and e.isfinite().all() for e in embs)
    # padding must not leak into the kept rows: the same prompt alone gives the same rows
    (alone,) = enc.encode(prompts[:1])
    torch.testing.assert_close(alone, embs[0])
    # and a batch runs in float32 as well, to bf16 precision of the stored weights
    enc32 = TextEncoder.from_checkpoints(wan_dir, spec.t5, dtype=torch.float32)
    torch.testing.assert_close(enc32.encode(prompts[:1])[0], embs[0].float(), atol=0.1, rtol=0.05)


def test_release_layout_on_meta():
    """The released encoder (built on the meta device: no memory) expects exactly the 242 keys of the
    original file (manifest t5_encoder.tsv), e.g. per-block relative position tables [32, 64]."""
    shapes = {k: tuple(v.shape) for k, v in t5_from_hf(build_umt5(T5Config(), empty=True).state_dict()).items()}
    assert len(shapes) == 242
    assert shapes["token_embedding.weight"] == (256384, 4096)
    assert shapes["blocks.23.pos_embedding.embedding.weight"] == (32, 64)
    assert shapes["blocks.0.ffn.gate.0.weight"] == (10240, 4096) and shapes["blocks.0.ffn.fc2.weight"] == (4096, 10240)
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 5_680_910_336  # checkpoints.md §3
