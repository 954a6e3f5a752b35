"""Real-size key manifests of the released encoder/VAE files vs our library modules, on the meta device.

Each manifest (tests/data/*.tsv, copied from the upstream key dump) lists every tensor of the original
module: `vae.tsv` and `clip_visual.tsv` in the upstream wrappers' naming (file key = manifest key without the
leading `model.`), `t5_encoder.tsv` in the file's own naming. The manifest's tensors, as meta tensors of the
listed shapes, go through OUR converters (original -> library naming) and must match the real-size module
(also built on meta: no memory) key for key and shape for shape, with nothing left over on either side; the
module then accepts them in a strict `load_state_dict`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wan.checkpoints import CheckpointError, check_state_dict, model_shapes
from wan.checkpoints.clip import clip_to_hf
from wan.checkpoints.t5 import t5_to_hf
from wan.checkpoints.vae import original_to_diffusers
from wan.configs import CLIPConfig, T5Config, VAEConfig
from wan.models.clip import build_clip_vision
from wan.models.t5 import build_umt5
from wan.models.vae import build_autoencoder

DATA = Path(__file__).parent / "data"


def read_manifest(name: str) -> dict[str, tuple[int, ...]]:
    """`key<TAB>[d0, d1, ...]<TAB>dtype` rows -> {key: shape} (every row float32 in these manifests)."""
    lines = (DATA / name).read_text().splitlines()
    assert lines[0].split("\t") == ["key", "shape", "dtype"], name
    out = {}
    for line in lines[1:]:
        key, shape, dtype = line.split("\t")
        assert dtype == "float32", (name, key, dtype)
        assert key not in out, (name, key)
        out[key] = tuple(json.loads(shape))
    return out


def file_state_dict(manifest: dict[str, tuple[int, ...]], strip_model: bool) -> dict[str, torch.Tensor]:
    """The original file as meta tensors of the manifest's shapes (`model.` stripped where the file has none)."""
    if strip_model:
        assert all(k.startswith("model.") for k in manifest)
        manifest = {k[len("model."):]: s for k, s in manifest.items()}
    return {k: torch.empty(s, device="meta") for k, s in manifest.items()}


def build_vae():
    with torch.device("meta"):
        return build_autoencoder(VAEConfig())


def convert_vae(manifest):
    return original_to_diffusers(file_state_dict(manifest, strip_model=True))


def convert_clip(manifest):
    return clip_to_hf(file_state_dict(manifest, strip_model=True), "clip_visual.tsv")


def convert_t5(manifest):
    return t5_to_hf(file_state_dict(manifest, strip_model=False), "t5_encoder.tsv")


# name: (manifest, meta builder, converter, keys, parameters of the original module (param_counts.json))
CASES = {
    "vae": ("vae.tsv", build_vae, convert_vae, 194, 126_892_531),
    "clip_visual": ("clip_visual.tsv", lambda: build_clip_vision(CLIPConfig(), empty=True), convert_clip,
                    392, 632_076_800),
    "t5_encoder": ("t5_encoder.tsv", lambda: build_umt5(T5Config(), empty=True), convert_t5, 242, 5_680_910_336),
}


@pytest.mark.parametrize("name", list(CASES))
def test_release_manifest_loads_into_meta_model(name):
    tsv, build, convert, n_keys, n_params = CASES[name]
    manifest = read_manifest(tsv)
    assert len(manifest) == n_keys
    assert sum(torch.Size(s).numel() for s in manifest.values()) == n_params

    model = build()
    assert all(p.is_meta for p in model.parameters())
    converted = convert(manifest)
    expected = model_shapes(model)
    # every converted key is a module key with the same shape, and every module key is covered
    assert sorted(set(converted) - set(expected)) == []
    assert sorted(set(expected) - set(converted)) == []
    assert {k: v for k, v in expected.items() if tuple(converted[k].shape) != v} == {}
    check_state_dict(expected, converted, tsv)
    # the library module takes them as they are (strict; meta -> meta with assign)
    model.load_state_dict(converted, strict=True, assign=True)
    if hasattr(model, "tie_weights"):  # as the T5 loader does: `shared` and the encoder's embed_tokens are one
        model.tie_weights()
    assert sum(p.numel() for p in model.parameters()) == n_params


@pytest.mark.parametrize("name", list(CASES))
def test_manifest_check_can_fail(name):
    """The comparison above notices a dropped key, an extra key and a wrong shape."""
    tsv, build, convert, _, _ = CASES[name]
    manifest = read_manifest(tsv)
    expected = model_shapes(build())
    keys = list(manifest)
    dropped = {k: s for k, s in manifest.items() if k != keys[-1]}
    with pytest.raises(CheckpointError, match="missing"):
        check_state_dict(expected, convert(dropped), tsv)
    reshaped = {**manifest, keys[1]: tuple(d + 1 for d in manifest[keys[1]])}
    with pytest.raises(CheckpointError, match="mis-shaped"):
        check_state_dict(expected, convert(reshaped), tsv)
    # an unknown original key: rejected by the renaming table (CLIP/T5) or left over after it (VAE)
    extra = {**manifest, keys[0].rsplit(".", 1)[0] + ".extra_weight": (3,)}
    with pytest.raises(CheckpointError, match="unexpected"):
        check_state_dict(expected, convert(extra), tsv)
