"""Write a `checkpoints/` tree in the released layout, formats and key names, at tiny size, random weights.

    python -m wan.testing.tiny_checkpoints --out DIR [--spec tiny] [--seed 0]

Tests and demos use it; users never need it. Each component has a writer `write(root, spec, seed)`
registered in WRITERS (module:function), so the encoder/VAE/audio files come from their own modules.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from wan.configs import get_config

# name -> "module:function"; each writes its files under `root` (the checkpoints/ folder)
WRITERS: dict[str, str] = {
    "dit": "wan.testing.tiny_dit:write",
    "vae": "wan.testing.tiny_vae_audio:write_vae",
    "wav2vec": "wan.testing.tiny_vae_audio:write_wav2vec",
    "encoders": "wan.testing.tiny_encoders:write",
}


def write_tiny_checkpoints(out: str | Path, spec: str = "tiny", seed: int = 0,
                           components: list[str] | None = None) -> Path:
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    cfg = get_config(spec)
    for name, target in WRITERS.items():
        if components is not None and name not in components:
            continue
        mod, fn = target.split(":")
        getattr(importlib.import_module(mod), fn)(root, cfg, seed)
    return root


def main(args: argparse.Namespace) -> None:
    root = write_tiny_checkpoints(args.out, args.spec, args.seed, args.components)
    print(f"wrote tiny checkpoints ({args.spec}) to {root}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write (becomes a checkpoints/ tree)")
    p.add_argument("--spec", default="tiny", help="model spec name from wan.configs.CONFIGS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--components", nargs="*", default=None, help=f"subset of {list(WRITERS)}")
    main(p.parse_args())
