"""The golden folder's rules (docs/testing.md): unset and absent -> skip; set, or the default present, but the folder
or a case missing -> fail."""

import json

import pytest
import torch

from wan.testing import golden as G


def test_golden_folder_rules(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setattr(G, "REPO_ROOT", repo)
    monkeypatch.delenv("STABLEAVATAR_GOLDEN_DIR", raising=False)
    assert G.golden_dir() is None  # -> the `golden` fixture skips with GOLDEN_SKIP_REASON
    assert "original StableAvatar" in G.GOLDEN_SKIP_REASON and "docs/testing.md" in G.GOLDEN_SKIP_REASON

    default = tmp_path / "shared" / "golden"
    default.mkdir(parents=True)
    assert G.golden_dir() == default  # present (even empty): configured, so a missing case fails
    with pytest.raises(FileNotFoundError, match="'c1' missing"):
        G.load_golden("c1")

    monkeypatch.setenv("STABLEAVATAR_GOLDEN_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        G.load_golden("c1")

    from safetensors.torch import save_file

    monkeypatch.setenv("STABLEAVATAR_GOLDEN_DIR", str(default))
    save_file({"inputs.x": torch.ones(2), "outputs.y": torch.zeros(1)}, str(default / "c1.safetensors"))
    (default / "c1.json").write_text(json.dumps({"kind": "module"}))
    case = G.load_golden("c1")
    assert case.meta == {"kind": "module"} and list(case.inputs) == ["x"] and list(case.outputs) == ["y"]
