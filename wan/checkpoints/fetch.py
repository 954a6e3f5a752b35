"""Check the weight files a run will read; download the missing ones from the Hugging Face Hub.

    python -m wan.checkpoints.fetch [inference.py's flags ...]       (what inference.sh runs first)

Takes inference.py's whole argv and reads the final --pretrained_model_name_or_path, --transformer_path and
--pretrained_wav2vec_path (a repeated flag overrides, as in argparse; without them, the released layout under
`checkpoints/`). Only the files the pipeline reads there are checked and fetched. A path in the released layout
(`<dir>/Wan2.1-Fun-V1.1-1.3B-InP`, `<dir>/StableAvatar-1.3B/transformer3d-{square,rec-vec}.pt`,
`<dir>/wav2vec2-base-960h`) is filled from FrancisRing/StableAvatar into `<dir>`; any other path is not
downloaded but reported with what it should contain and where the released files come from.

Exit 0 when everything is there (the Hub is not contacted then). Offline (`HF_HUB_OFFLINE=1`, or the Hub
unreachable) it stops at once with the missing files and the `hf download` commands (huggingface_hub >= 1.0) that
get them; online it downloads them (progress bars, resumable: re-running continues). Exit 2 when something is
still missing.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

REPO_ID = "FrancisRing/StableAvatar"  # the original README's one download: `... download FrancisRing/StableAvatar`
WAN = "Wan2.1-Fun-V1.1-1.3B-InP"
ADAPTER = "StableAvatar-1.3B"
ADAPTER_FILES = ("transformer3d-square.pt", "transformer3d-rec-vec.pt")
WAV2VEC = "wav2vec2-base-960h"
WAV2VEC_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what transformers' from_pretrained looks for
VOCAL_MODEL = "Kim_Vocal_2.onnx"  # at the top of the repo; vocal_seperator.py only
DEFAULTS = {  # inference.sh's paths: the released layout under checkpoints/
    "pretrained_model_name_or_path": f"checkpoints/{WAN}",
    "transformer_path": f"checkpoints/{ADAPTER}/{ADAPTER_FILES[0]}",
    "pretrained_wav2vec_path": f"checkpoints/{WAV2VEC}",
}


@dataclass(frozen=True)
class Piece:
    """One thing a run reads: any of `names` (globs relative to `folder`) will do. Its released files are
    `hub_names` (default: `names`, in order of preference) in the Hub repo's folder `hub_dir` ("" = the top).
    `downloadable` when `names` are the released names (`released`) and `folder` is `<dir>/<hub_dir>`: the files
    then come from the repo into `<dir>`."""

    what: str
    flag: str
    folder: Path
    names: tuple[str, ...]
    hub_dir: str
    hub_names: tuple[str, ...] = ()
    released: bool = True

    @property
    def path(self) -> Path:
        return self.folder / self.names[0]

    @property
    def downloadable(self) -> bool:
        parts = Path(self.hub_dir).parts
        return self.released and (not parts or self.folder.parts[-len(parts):] == parts)

    @property
    def local_dir(self) -> Path:
        """`<dir>`: the folder the Hub repo's top maps to (`--local-dir`)."""
        assert self.downloadable
        depth = len(Path(self.hub_dir).parts)
        return self.folder.parents[depth - 1] if depth else self.folder

    def present(self) -> bool:
        return any(p.is_file() for name in self.names for p in self.folder.glob(name))

    def hub_patterns(self) -> list[str]:
        return [f"{self.hub_dir}/{n}" if self.hub_dir else n for n in (self.hub_names or self.names)]


def pieces(wan_dir: str | os.PathLike, transformer_path: str | os.PathLike | None,
           wav2vec_dir: str | os.PathLike) -> list[Piece]:
    """What `StableAvatarPipeline.from_checkpoints` reads for these flags (the loaders' own file names)."""
    from wan.checkpoints.clip import CLIP_CHECKPOINT
    from wan.checkpoints.dit import BASE_WEIGHT_NAMES
    from wan.checkpoints.t5 import T5_CHECKPOINT, T5_TOKENIZER_DIR
    from wan.checkpoints.vae import VAE_FILE

    wan, w2v = Path(os.path.normpath(wan_dir)), Path(os.path.normpath(wav2vec_dir))
    flag, tok = "--pretrained_model_name_or_path", T5_TOKENIZER_DIR
    out = [
        Piece("the Wan2.1-Fun DiT config", flag, wan, ("config.json",), WAN),
        # the loader takes a .bin, a .safetensors or every *.safetensors (sharded); the Hub has .safetensors
        Piece("the Wan2.1-Fun DiT weights", flag, wan,
              ("diffusion_pytorch_model*.safetensors", *BASE_WEIGHT_NAMES, "*.safetensors"), WAN,
              ("diffusion_pytorch_model*.safetensors",)),
        Piece("the umT5 text encoder", flag, wan, (T5_CHECKPOINT,), WAN),
        Piece("the umT5 tokenizer", flag, wan, (f"{tok}/tokenizer.json", f"{tok}/spiece.model"), WAN, (f"{tok}/*",)),
        # its pad token (`<pad>`) is defined by either of these (tests/test_fetch.py found the gap)
        Piece("the umT5 tokenizer's special tokens", flag, wan,
              (f"{tok}/tokenizer_config.json", f"{tok}/special_tokens_map.json"), WAN, (f"{tok}/*",)),
        Piece("the CLIP image encoder", flag, wan, (CLIP_CHECKPOINT,), WAN),
        Piece("the Wan VAE", flag, wan, (VAE_FILE,), WAN),
    ]
    if transformer_path is not None:
        t = Path(os.path.normpath(transformer_path))
        # a released file name is fetched as itself; any other name is someone's own weights: not on the Hub
        released = t.name in ADAPTER_FILES
        out.append(Piece("the StableAvatar DiT weights", "--transformer_path", t.parent, (t.name,), ADAPTER,
                         () if released else ADAPTER_FILES[:1], released))
    flag = "--pretrained_wav2vec_path"
    out += [Piece("the wav2vec2 config", flag, w2v, ("config.json",), WAV2VEC),
            Piece("the wav2vec2 feature extractor config", flag, w2v, ("preprocessor_config.json",), WAV2VEC),
            Piece("the wav2vec2 weights", flag, w2v, WAV2VEC_WEIGHTS, WAV2VEC)]
    return out

def vocal_model_piece(path: str | os.PathLike) -> Piece:
    """vocal_seperator.py's --audio_separator_model_file (Kim_Vocal_2.onnx sits at the top of the Hub repo)."""
    p = Path(os.path.normpath(path))
    released = p.name == VOCAL_MODEL
    return Piece("the MDX-Net vocal model", "--audio_separator_model_file", p.parent, (p.name,), "",
                 () if released else (VOCAL_MODEL,), released)


def pieces_from_argv(argv: list[str]) -> list[Piece]:
    """The pieces for the final values of the three weight flags in inference.py's argv (other flags ignored)."""
    p = argparse.ArgumentParser(add_help=False)  # abbreviations too, as inference.py takes them
    for name, default in DEFAULTS.items():
        p.add_argument(f"--{name}", default=default)
    args, _ = p.parse_known_args(argv)
    return pieces(args.pretrained_model_name_or_path, args.transformer_path or None, args.pretrained_wav2vec_path)


# ------------------------------------------------------------------------------------------------ messages


def download_command(patterns: list[str], local_dir: str | os.PathLike, repo: str = REPO_ID) -> str:
    """`hf download` (huggingface_hub >= 1.0: `huggingface-cli` is gone) of the repo files matching `patterns`."""
    include = " ".join(f"--include {shlex.quote(p)}" for p in dict.fromkeys(patterns))
    return f"hf download {repo} {include} --local-dir {shlex.quote(str(local_dir))}"


def report(missing: list[Piece], repo: str = REPO_ID) -> str:
    """The missing pieces, where each comes from and the commands that get them (every alternative name is
    included: the repo holds one of them)."""
    lines = [f"  {p.path}: {p.what} ({p.flag})" for p in missing if p.downloadable]
    by_dir: dict[Path, list[str]] = {}
    for p in missing:
        if p.downloadable:
            by_dir.setdefault(p.local_dir, []).extend(p.hub_patterns())
    if by_dir:
        lines.append(f"Source: https://huggingface.co/{repo} (the original README's download). Get them with "
                     "huggingface_hub's `hf` (pip install -U huggingface_hub; behind a firewall, "
                     "HF_ENDPOINT=https://hf-mirror.com):")
        lines += [f"  {download_command(patterns, folder, repo)}" for folder, patterns in by_dir.items()]
    foreign = [p for p in missing if not p.downloadable]
    if foreign:
        lines.append("Not downloaded: not in the released layout (<dir>/" + "/, <dir>/".join((WAN, ADAPTER, WAV2VEC)) +
                     "/, <dir>/" + VOCAL_MODEL + "):")
        lines += [f"  {p.path}: {p.what} ({p.flag}); the released one: {repo}: {p.hub_patterns()[0]}"
                  for p in foreign]
        lines.append("Put those files there, or get the released ones and pass their paths under checkpoints/:")
        lines.append("  " + download_command([x for p in foreign for x in p.hub_patterns()], "checkpoints", repo))
    lines.append("(layout: checkpoints/README.md)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the Hub


def hub_offline() -> bool:
    """HF_HUB_OFFLINE set (huggingface_hub's truthy values), or the Hub's host (HF_ENDPOINT) not reachable
    (behind a proxy huggingface_hub is left to try)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=3.0):
            return False
    except OSError:
        return True


def list_repo_files(repo: str) -> list[str]:
    from huggingface_hub import list_repo_files as _list

    return _list(repo)


def download(repo: str, files: list[str], local_dir: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=repo, allow_patterns=files, local_dir=str(local_dir))


def fetch(missing: list[Piece], repo: str = REPO_ID) -> None:
    """Download the downloadable pieces: for each, the repo files of its first `hub_names` entry that exists."""
    available = list_repo_files(repo)
    by_dir: dict[Path, list[str]] = {}
    for piece in missing:
        if not piece.downloadable:
            continue
        for pattern in piece.hub_patterns():
            files = fnmatch.filter(available, pattern)
            if files:
                by_dir.setdefault(piece.local_dir, []).extend(files)
                break
    for folder, files in by_dir.items():
        print(f"downloading {len(files)} file(s) of {repo} into {folder} (resumable)", file=sys.stderr)
        download(repo, sorted(set(files)), folder)


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):  # inference.py prints its help; nothing to check
        return 0
    missing = [p for p in pieces_from_argv(argv) if not p.present()]
    if not missing:
        return 0
    if any(p.downloadable for p in missing):
        if hub_offline():
            print("error: weight files are missing and the Hugging Face Hub is not reachable (offline: run the "
                  "commands on a machine with network access and copy the files here):\n" + report(missing),
                  file=sys.stderr)
            return 2
        try:
            fetch(missing)
        except Exception as e:  # noqa: BLE001 - any Hub/network failure: say what is missing and how to get it
            print(f"error: downloading from the Hugging Face Hub failed ({type(e).__name__}: {e}); what is "
                  f"missing:\n{report([p for p in missing if not p.present()])}", file=sys.stderr)
            return 2
        missing = [p for p in missing if not p.present()]
        if not missing:
            return 0
    print("error: weight files are missing:\n" + report(missing), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
