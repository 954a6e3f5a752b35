"""Access to the golden (parity) fixtures: what the original StableAvatar code computes on tiny random weights.

Each case is `<case>.safetensors` (weights, inputs, outputs) + `<case>.json` (config, call); they are made by running
the original code and are not shipped with the repository (docs/testing.md). Rules: the folder is
`$STABLEAVATAR_GOLDEN_DIR`, else `<repo>/../shared/golden`. Unset variable and no default folder -> tests skip.
Variable set (or default folder present) but the folder or a case missing -> tests FAIL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_SKIP_REASON = ("no golden fixtures (parity fixtures made by running the original StableAvatar code on tiny "
                      "random weights; not shipped with the repo): set STABLEAVATAR_GOLDEN_DIR to their folder, see "
                      "docs/testing.md")


def golden_dir() -> Path | None:
    """The configured golden folder, or None when neither the variable nor the default folder exists."""
    env = os.environ.get("STABLEAVATAR_GOLDEN_DIR")
    if env:
        return Path(env)
    default = REPO_ROOT.parent / "shared" / "golden"
    return default if default.is_dir() else None


@dataclass
class GoldenCase:
    name: str
    meta: dict
    tensors: dict[str, torch.Tensor]

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under `prefix.` with the prefix stripped (e.g. "weights", "inputs", "weights.vae")."""
        p = prefix.rstrip(".") + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        return self.group("weights")

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        return self.group("inputs")

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        return self.group("outputs")

    def tiny_overrides(self) -> dict:
        """`hardcoded_overrides` of a module case as {name: tiny value} (the "unchanged" note dropped)."""
        out = {}
        for k, v in self.meta.get("hardcoded_overrides", {}).items():
            if k == "unchanged":
                continue
            out[k] = v[1] if isinstance(v, list) else v
        return out

    def arg(self, src):
        """Resolve one value of `call.kwargs`: "inputs.x" -> tensor, lists element-wise, literals as is."""
        if isinstance(src, list):
            return [self.arg(x) for x in src]
        if isinstance(src, str) and src.startswith("inputs."):
            return self.tensors[src]
        return src


def load_golden(name: str) -> GoldenCase:
    """Load one case; raises FileNotFoundError when the configured folder lacks it (tests must fail)."""
    root = golden_dir()
    if root is None:
        raise FileNotFoundError("no golden folder configured (docs/testing.md)")
    if not root.is_dir():
        raise FileNotFoundError(f"STABLEAVATAR_GOLDEN_DIR={root} is not a folder; point it at the golden fixtures or "
                                "unset it to skip the parity tests (docs/testing.md)")
    jpath, spath = root / f"{name}.json", root / f"{name}.safetensors"
    if not jpath.is_file() or not spath.is_file():
        raise FileNotFoundError(f"golden case {name!r} missing in {root} (STABLEAVATAR_GOLDEN_DIR; docs/testing.md)")
    from safetensors.torch import load_file

    return GoldenCase(name, json.loads(jpath.read_text()), load_file(str(spath)))


def assert_close_module(got: torch.Tensor, ref: torch.Tensor, *, what: str = "",
                        atol: float = 1e-4, rel: float = 2e-5) -> None:
    """The golden README's module tolerance: max|d| <= 1e-4 and max|d| / max|ref| <= 2e-5."""
    got = got.detach().float().cpu()
    ref = ref.float()
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    d = (got - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert d <= atol and d <= rel * max(scale, 1e-12), f"{what}: max|diff| {d:.3e} (max|ref| {scale:.3e})"
