"""DiT weight loading: real-size manifest, released layouts, strict errors, unsafe pickles."""

import logging
from pathlib import Path

import pytest
import torch

from wan.checkpoints import CheckpointError, load_state_dict_file
from wan.checkpoints.dit import is_adapter_key, load_dit, save_dit
from wan.configs import get_config
from wan.models.dit import WanTransformer3DFantasyModel
from wan.testing import tiny_dit
from wan.testing.tiny_checkpoints import write_tiny_checkpoints

DATA = Path(__file__).parent / "data"


def test_real_size_manifest_matches_released_keys():
    with torch.device("meta"):
        model = WanTransformer3DFantasyModel(get_config("stableavatar-1.3b").dit)
    rows = [line.split("\t") for line in (DATA / "transformer_1.3B.tsv").read_text().splitlines()[1:]]
    expected = {k: eval(shape) for k, shape, _ in rows}
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert len(got) == 1143
    assert sum(v.numel() for v in model.parameters()) == 1_747_426_112
    assert sum(is_adapter_key(k) for k in got) == 160


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"), "tiny", seed=0, components=["dit"])


def _ref_state():
    return {k: v.to(torch.bfloat16) for k, v in tiny_dit.tiny_dit_state(get_config("tiny"), 0).items()}


@pytest.mark.parametrize("overlay", ["transformer3d-square.pt", "transformer3d-rec-vec.pt"])
def test_load_released_layout(tree, overlay):
    model = load_dit(tree / tiny_dit.WAN_DIR, tree / tiny_dit.SA_DIR / overlay, dtype=torch.bfloat16)
    ref = _ref_state()
    sd = model.state_dict()
    assert set(sd) == set(ref)
    for k in ref:
        assert sd[k].dtype == torch.bfloat16 and torch.equal(sd[k], ref[k]), k
    assert not any(p.is_meta for p in model.parameters())


def test_load_sharded_base_and_own_format(tmp_path):
    spec = get_config("tiny")
    tiny_dit.write(tmp_path, spec, seed=0, sharded=True)
    wan = tmp_path / tiny_dit.WAN_DIR
    assert len(list(wan.glob("*.safetensors"))) == 2
    a = load_dit(wan, tmp_path / tiny_dit.SA_DIR / "transformer3d-square.pt", dtype=torch.float32)
    own = tmp_path / "own.safetensors"
    save_dit(a, own)
    b = load_dit(None, own, dtype=torch.float32, config=spec.dit)
    c = load_dit(wan, own, dtype=torch.float32)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]) and torch.equal(v, c.state_dict()[k])


def test_base_only_fresh_adapter(tree, caplog):
    with caplog.at_level(logging.WARNING):
        model = load_dit(tree / tiny_dit.WAN_DIR, None, dtype=torch.float32)
    assert "audio-adapter" in caplog.text
    blk = model.blocks[0].cross_attn
    assert torch.count_nonzero(blk.k_vocal.weight) == 0 and torch.count_nonzero(blk.v_vocal.bias) == 0
    base = {k: v for k, v in _ref_state().items() if not is_adapter_key(k)}
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v.float()) for k, v in base.items())


def _write_overlay(tmp_path, sd):
    p = tmp_path / "bad.pt"
    torch.save(sd, p)
    return p


def test_missing_extra_misshaped_keys_are_named(tree, tmp_path):
    ref = _ref_state()
    sd = dict(ref)
    del sd["blocks.1.ffn.0.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \[blocks\.1\.ffn\.0\.weight\]"):
        load_dit(None, _write_overlay(tmp_path, sd), config=get_config("tiny").dit)
    sd = dict(ref, **{"blocks.0.extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \[blocks\.0\.extra\.weight\]"):
        load_dit(None, _write_overlay(tmp_path, sd), config=get_config("tiny").dit)
    sd = dict(ref, **{"head.head.bias": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"mis-shaped keys \[head\.head\.bias: file \(3,\) != model \(64,\)\]"):
        load_dit(None, _write_overlay(tmp_path, sd), config=get_config("tiny").dit)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_objects_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "obj": _Evil()}, p)
    with pytest.raises(CheckpointError, match="refused"):
        load_state_dict_file(p)
    p2 = tmp_path / "notdict.pt"
    torch.save([torch.zeros(1)], p2)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        load_dit(None, p2, config=get_config("tiny").dit)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_dit(tmp_path, None)
    (tmp_path / "config.json").write_text('{"dim": 64, "num_heads": 4}')
    with pytest.raises(CheckpointError, match="no transformer weights"):
        load_dit(tmp_path, None)


def test_tiny_checkpoints_cli(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "wan.testing.tiny_checkpoints", "--out", str(tmp_path), "--components", "dit"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "StableAvatar-1.3B" / "transformer3d-square.pt").is_file()
