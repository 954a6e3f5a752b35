"""Parity of the DiT and the audio adapter with the original code (golden fixtures, float32 CPU)."""

import pytest
import torch

from wan.configs import dit_config_from_original
from wan.models.dit import WanTransformer3DFantasyModel, original_guidance_audio
from wan.models.vocal import VocalProjector, split_audio_sequence, split_tensor_with_padding
from wan.testing.golden import assert_close_module


def build_dit(case) -> WanTransformer3DFantasyModel:
    cfg = dit_config_from_original(case.meta["config"], case.tiny_overrides())
    model = WanTransformer3DFantasyModel(cfg).float().eval()
    model.load_state_dict(case.weights, strict=True)
    return model


@pytest.mark.parametrize("name", ["transformer_a1_square", "transformer_a2_rect", "transformer_a3_lastwindow"])
def test_transformer_golden(golden, name):
    case = golden(name)
    model = build_dit(case)
    kw = {k: case.arg(v) for k, v in case.meta["call"]["kwargs"].items()}
    vocal, audio_null = original_guidance_audio(kw.pop("vocal_embeddings"))
    with torch.no_grad():
        out = model(vocal_embeddings=vocal, audio_null=audio_null, **kw)
    ref = case.outputs
    assert_close_module(out, ref["noise_pred"], what=f"{name} noise_pred")
    s = case.meta["cfg_scales"]
    u, b1, b2 = out.chunk(3)
    cfg_out = u + s["audio_guide_scale"] * (b1 - u) + s["text_guide_scale"] * (b2 - b1)
    assert_close_module(cfg_out, ref["noise_pred_cfg"], what=f"{name} noise_pred_cfg")


def test_transformer_per_element_audio_equals_shared(golden):
    """Running the adapter per element on [a, a, a] with element 0 nulled equals the shared-audio path."""
    case = golden("transformer_a1_square")
    model = build_dit(case)
    kw = {k: case.arg(v) for k, v in case.meta["call"]["kwargs"].items()}
    a = kw.pop("vocal_embeddings")[-1:]
    with torch.no_grad():
        shared = model(vocal_embeddings=a, audio_null=[True, False, False], **kw)
        per = model(vocal_embeddings=a.expand(3, -1, -1), audio_null=[True, False, False], **kw)
    torch.testing.assert_close(per, shared, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["vocal_projector_b1", "vocal_projector_b2_81f"])
def test_vocal_projector_golden(golden, name):
    case = golden(name)
    c = case.meta["config"]
    cfg = dit_config_from_original({"dim": c["dit_dim"], "num_heads": 4, "ffn_dim": 4 * c["dit_dim"]},
                                   {"audio_in_dim": c["audio_in_dim"], "audio_proj_dim": c["audio_proj_dim"]})
    model = VocalProjector(cfg).float().eval()
    model.load_state_dict(case.weights, strict=True)
    kw = {k: case.arg(v) for k, v in case.meta["call"]["kwargs"].items()}
    with torch.no_grad():
        tokens, lens = model(**kw)
    assert_close_module(tokens, case.outputs["context_tokens"], what=f"{name} context_tokens")
    assert torch.equal(lens, case.outputs["vocal_context_lens"])


def test_split_audio_sequence_table(golden):
    case = golden("vocal_projector_b1")
    table = case.meta.get("split_audio_sequence_table")
    assert table, "golden JSON lacks split_audio_sequence_table"
    for row in table:
        got = split_audio_sequence(row["audio_proj_length"], row["num_frames"])
        assert got == row["pos_idx_ranges"], row["audio_proj_length"]
    assert len(table) > 3


def test_groups_released_geometry():
    """Spec transformer.md §6.2: 161 tokens over 81 frames -> K = 15, valid lengths 6, 12, 15 x 18, 12."""
    ranges = split_audio_sequence(161, 81)
    groups, lens = split_tensor_with_padding(torch.randn(1, 161, 8), ranges, expand_length=4)
    assert groups.shape == (1, 21, 15, 8)
    assert lens.tolist() == [6, 12] + [15] * 18 + [12]
    assert split_audio_sequence(121, 81)[1][1] - split_audio_sequence(121, 81)[1][0] + 9 == 13
