"""CLIP image encoder: golden parity from original-format files, key table round trip, strict errors, tiny tree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wan.checkpoints import CheckpointError
from wan.checkpoints.clip import CLIP_CHECKPOINT, clip_from_hf, clip_to_hf, strip_model_prefix
from wan.configs import CLIPConfig, get_config
from wan.models.clip import ImageEncoder, build_clip_vision
from wan.testing.golden import assert_close_module
from wan.testing.tiny_encoders import WAN_FUN_DIR, random_state_dict, write_clip


def golden_clip_config(override: dict) -> CLIPConfig:
    """`clip_xlm_roberta_vit_h_14_kwargs_override` -> CLIPConfig (the visual tower's sizes)."""
    return CLIPConfig(image_size=override["image_size"], patch_size=override["patch_size"],
                      dim=override["vision_dim"], num_heads=override["vision_heads"],
                      num_layers=override["vision_layers"], mlp_ratio=override["vision_mlp_ratio"],
                      embed_dim=override["embed_dim"])


def test_golden_clip_d1(golden, tmp_path):
    case = golden("clip_d1")
    cfg = golden_clip_config(case.meta["clip_xlm_roberta_vit_h_14_kwargs_override"])
    file_sd = strip_model_prefix(case.weights)  # the file has no `model.` (upstream's CLIPModel adds it)
    assert {k.split(".")[0] for k in file_sd} == {"visual", "textual", "log_scale"}
    path = tmp_path / CLIP_CHECKPOINT
    torch.save(file_sd, path)
    enc = ImageEncoder.from_file(path, cfg)

    image = case.inputs["videos.0"].transpose(0, 1)  # the pipeline's [3, 1, H, W] -> [1, 3, H, W]
    pixels = enc.preprocess(image)
    assert_close_module(pixels, case.tensors["intermediates.visual_input"], what="visual_input")
    assert_close_module(enc.encode(image), case.outputs["clip_context"], what="clip_context")

    # the module naming (`model.visual.*`, as in manifests and goldens) loads to the same encoder
    torch.save(case.weights, tmp_path / "prefixed.pth")
    torch.testing.assert_close(ImageEncoder.from_file(tmp_path / "prefixed.pth", cfg).encode(image),
                               enc.encode(image), atol=0, rtol=0)


def test_golden_e2e_clip_context(golden, tmp_path):
    """The reference image as the long pipeline prepares it (pipeline.md §3.1) -> e2e_f1's clip_fea."""
    from PIL import Image

    case = golden("e2e_f1_long_square")
    module = case.meta["modules"]["clip_image_encoder"]
    cfg = golden_clip_config(module["clip_xlm_roberta_vit_h_14_kwargs_override"])
    torch.save(strip_model_prefix(case.group(module["weights_prefix"])), tmp_path / CLIP_CHECKPOINT)
    enc = ImageEncoder.from_checkpoints(tmp_path, cfg)
    kwargs = case.meta["call"]["kwargs"]
    ref = Image.fromarray(case.tensors["inputs.reference_image"].numpy()).resize([kwargs["width"],
                                                                                  kwargs["height"]])
    image = torch.from_numpy(np.array(ref)).permute(2, 0, 1) / 255
    image = (image - 0.5) * 2
    out = enc.encode(image[None])
    for i in range(3):  # [neg, neg, pos] copies of the same features
        assert_close_module(out[0], case.tensors["trace.clip_fea"][i], what=f"clip_fea[{i}]")


def test_key_table_round_trip():
    cfg = get_config("tiny").clip
    model_sd = build_clip_vision(cfg, empty=True).state_dict()
    original = clip_from_hf(model_sd)
    assert original["visual.transformer.0.attn.to_qkv.weight"].shape == (3 * cfg.dim, cfg.dim)
    assert original["visual.head"].shape == (cfg.dim, cfg.embed_dim)
    assert original["visual.cls_embedding"].shape == (1, 1, cfg.dim)
    assert original["visual.pos_embedding"].shape == (1, 257, cfg.dim)
    sd = random_state_dict({k: tuple(v.shape) for k, v in original.items()}, seed=1)
    hf = clip_to_hf({**sd, "textual.norm.weight": torch.ones(3), "log_scale": torch.tensor(2.6)})
    assert set(hf) == set(model_sd)
    # to_qkv rows are q, k, v in that order (upstream: .view(b, s, 3, heads, head_dim))
    qkv = sd["visual.transformer.1.attn.to_qkv.weight"]
    assert torch.equal(hf["vision_model.encoder.layers.1.self_attn.k_proj.weight"], qkv[cfg.dim:2 * cfg.dim])
    back = clip_from_hf(hf)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_strict_load_names_keys(tmp_path):
    cfg = get_config("tiny").clip
    shapes = {k: tuple(v.shape) for k, v in clip_from_hf(build_clip_vision(cfg, empty=True).state_dict()).items()}
    good = random_state_dict(shapes, seed=0)
    path = tmp_path / "clip.pth"

    torch.save(good, path)  # without textual.* / log_scale: fine, they are not used
    ImageEncoder.from_file(path, cfg)

    bad = {**good, "textual.whatever": torch.zeros(2), "log_scale": torch.zeros(()), "visual.extra": torch.zeros(1)}
    del bad["visual.transformer.2.mlp.2.bias"]
    bad["visual.pos_embedding"] = torch.zeros(1, 65, cfg.dim)
    torch.save(bad, path)
    with pytest.raises(CheckpointError) as err:
        ImageEncoder.from_file(path, cfg)
    msg = str(err.value)
    assert "missing keys [visual.transformer.2.mlp.2.bias]" in msg
    assert "unexpected keys [visual.extra]" in msg  # the text tower and log_scale are not reported
    assert "visual.pos_embedding: file (1, 65, 32) != model (1, 257, 32)" in msg

    with pytest.raises(CheckpointError, match=f"{CLIP_CHECKPOINT}: missing. Expected Wan2.1's open-clip"):
        ImageEncoder.from_checkpoints(tmp_path, cfg)


def test_tiny_tree(tmp_path):
    spec = get_config("tiny")
    path = write_clip(tmp_path, spec, seed=0)
    file_sd = torch.load(path)
    assert "log_scale" in file_sd and "textual.head.2.weight" in file_sd
    assert file_sd["visual.head"].dtype == torch.float32
    enc = ImageEncoder.from_checkpoints(tmp_path / WAN_FUN_DIR, spec.clip)

    images = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = enc.encode(images)
    assert out.shape == (2, 257, spec.clip.dim) and out.dtype == torch.float32 and out.isfinite().all()
    torch.testing.assert_close(enc.encode(images[1:]), out[1:])  # per-image, batch-independent
    # the pipeline's bf16 input: preprocessing rounds to bf16, the tower stays float32
    out_bf16 = enc.encode(images, preprocess_dtype=torch.bfloat16)
    assert out_bf16.dtype == torch.float32
    assert 0 < (out_bf16 - out).abs().max() < 0.1 * out.abs().max()
    with pytest.raises(ValueError, match="images must be"):
        enc.encode(images[0])


def test_release_layout_on_meta():
    """The released visual tower (meta device) expects exactly the 392 `visual.*` keys of clip_visual.tsv."""
    model_sd = build_clip_vision(CLIPConfig(), empty=True).state_dict()
    shapes = {k: tuple(v.shape) for k, v in clip_from_hf(model_sd).items()}
    assert len(shapes) == 392
    assert shapes["visual.pos_embedding"] == (1, 257, 1280) and shapes["visual.head"] == (1280, 1024)
    assert shapes["visual.transformer.31.attn.to_qkv.weight"] == (3840, 1280)
    assert shapes["visual.patch_embedding.weight"] == (1280, 3, 14, 14)
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 632_076_800  # checkpoints.md §2.4
