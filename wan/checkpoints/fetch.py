"""Make sure the released weights are in `checkpoints/`; download what is missing from the Hugging Face Hub.

    python -m wan.checkpoints.fetch --dir checkpoints [--repo FrancisRing/StableAvatar]

Exit 0 when every file the pipeline reads is present (nothing is downloaded then). Otherwise, offline
(`HF_HUB_OFFLINE=1`, or the Hub unreachable) it stops at once with the list of missing files and the command to
fetch them; online it downloads them with huggingface_hub (progress bars, resumable: re-running continues).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

REPO_ID = "FrancisRing/StableAvatar"
WAN = "Wan2.1-Fun-V1.1-1.3B-InP"
# what inference reads (checkpoints/README.md); a glob for the sharded DiT base
REQUIRED = [
    f"{WAN}/config.json",
    f"{WAN}/diffusion_pytorch_model*.safetensors",
    f"{WAN}/Wan2.1_VAE.pth",
    f"{WAN}/models_t5_umt5-xxl-enc-bf16.pth",
    f"{WAN}/google/umt5-xxl/*",
    f"{WAN}/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
    "StableAvatar-1.3B/transformer3d-square.pt",
    "wav2vec2-base-960h/config.json",
]


def missing_files(root: str | os.PathLike, required: list[str] = REQUIRED) -> list[str]:
    root = Path(root)
    return [pat for pat in required if not any(p.is_file() for p in root.glob(pat))]


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def main(args: argparse.Namespace) -> int:
    missing = missing_files(args.dir)
    if not missing:
        return 0
    listing = "\n".join(f"  {args.dir}/{m}" for m in missing)
    if not hub_reachable():
        print(f"error: the weights are not complete and the Hugging Face Hub is not reachable (offline).\n"
              f"Missing:\n{listing}\n"
              f"Download them on a machine with network access and copy them here:\n"
              f"  huggingface-cli download {args.repo} --local-dir {args.dir}\n"
              f"(layout: checkpoints/README.md)", file=sys.stderr)
        return 2
    from huggingface_hub import snapshot_download

    print(f"downloading {args.repo} into {args.dir} (missing: {len(missing)} entries; resumable)", file=sys.stderr)
    snapshot_download(repo_id=args.repo, local_dir=args.dir)
    still = missing_files(args.dir)
    if still:
        print("error: after the download these are still missing:\n" + "\n".join(still), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="checkpoints")
    p.add_argument("--repo", default=REPO_ID)
    sys.exit(main(p.parse_args()))
