"""wan.checkpoints.fetch (run by inference.sh): checks and fetches only what the run reads, at the flags' paths;
the Hub is monkeypatched (no network)."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from wan.checkpoints import fetch

WAN, ADAPTER, W2V = "Wan2.1-Fun-V1.1-1.3B-InP", "StableAvatar-1.3B", "wav2vec2-base-960h"
NEEDED = {  # what a run with transformer3d-square.pt reads, as the repo names it
    f"{WAN}/config.json", f"{WAN}/diffusion_pytorch_model.safetensors", f"{WAN}/Wan2.1_VAE.pth",
    f"{WAN}/models_t5_umt5-xxl-enc-bf16.pth", f"{WAN}/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
    f"{WAN}/google/umt5-xxl/spiece.model", f"{WAN}/google/umt5-xxl/tokenizer.json",
    f"{WAN}/google/umt5-xxl/tokenizer_config.json", f"{WAN}/google/umt5-xxl/special_tokens_map.json",
    f"{ADAPTER}/transformer3d-square.pt",
    f"{W2V}/config.json", f"{W2V}/preprocessor_config.json", f"{W2V}/model.safetensors",
}
# a repo listing like FrancisRing/StableAvatar's: more than a run reads
REPO_FILES = sorted(NEEDED | {
    ".gitattributes", "README.md", "Kim_Vocal_2.onnx", f"{ADAPTER}/transformer3d-rec-vec.pt",
    f"{WAN}/xlm-roberta-large/tokenizer.json", f"{WAN}/xlm-roberta-large/sentencepiece.bpe.model",
    f"{W2V}/pytorch_model.bin", f"{W2V}/tf_model.h5", f"{W2V}/vocab.json", f"{W2V}/tokenizer_config.json",
})


def flags(wan: Path, transformer: Path | None, w2v: Path) -> list[str]:
    out = [f"--pretrained_model_name_or_path={wan}", f"--pretrained_wav2vec_path={w2v}", "--seed=42"]
    return out + ([f"--transformer_path={transformer}"] if transformer else [])


def put(root: Path, files) -> None:
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"x")


@pytest.fixture
def hub(monkeypatch):
    """An online Hub serving REPO_FILES; records every download and writes the files it was asked for."""
    calls = []

    def download(repo, files, local_dir):
        assert repo == "FrancisRing/StableAvatar"
        calls.append((Path(local_dir), sorted(files)))
        put(Path(local_dir), files)

    monkeypatch.setattr(fetch, "hub_offline", lambda: False)
    monkeypatch.setattr(fetch, "list_repo_files", lambda repo: REPO_FILES)
    monkeypatch.setattr(fetch, "download", download)
    return calls


@pytest.fixture
def no_hub(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the Hub was contacted")

    for name in ("hub_offline", "list_repo_files", "download"):
        monkeypatch.setattr(fetch, name, fail)


def test_complete_tree_contacts_nothing(tmp_path, no_hub):
    put(tmp_path, NEEDED)
    assert fetch.main(flags(tmp_path / WAN, tmp_path / ADAPTER / "transformer3d-square.pt", tmp_path / W2V)) == 0
    assert fetch.main(["--help"]) == 0  # inference.py's help: nothing checked


def test_fetches_only_what_the_run_reads_at_the_final_flag_paths(tmp_path, hub, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default ./checkpoints must stay untouched
    a, b = tmp_path / "a", tmp_path / "models" / "b"
    argv = [f"--transformer_path={a / ADAPTER / 'transformer3d-square.pt'}"]  # inference.sh's default ...
    argv += flags(a / WAN, a / ADAPTER / "transformer3d-rec-vec.pt", b / W2V)  # ... overridden by a later flag
    assert fetch.main(argv) == 0
    got = dict(hub)
    assert set(got) == {a, b}
    assert got[a] == sorted(NEEDED - {f"{ADAPTER}/transformer3d-square.pt"} - {f for f in NEEDED if f.startswith(W2V)}
                            | {f"{ADAPTER}/transformer3d-rec-vec.pt"})
    assert got[b] == [f"{W2V}/config.json", f"{W2V}/model.safetensors", f"{W2V}/preprocessor_config.json"]
    assert not (tmp_path / "checkpoints").exists()
    hub.clear()
    assert fetch.main(argv) == 0 and hub == []  # now complete: nothing more


def test_fetches_only_the_missing_files(tmp_path, hub):
    put(tmp_path, NEEDED - {f"{WAN}/Wan2.1_VAE.pth", f"{W2V}/model.safetensors"})
    assert fetch.main(flags(tmp_path / WAN, tmp_path / ADAPTER / "transformer3d-square.pt", tmp_path / W2V)) == 0
    assert hub == [(tmp_path, sorted([f"{W2V}/model.safetensors", f"{WAN}/Wan2.1_VAE.pth"]))]


def test_paths_outside_the_released_layout_are_reported_not_fetched(tmp_path, hub, capsys):
    put(tmp_path, NEEDED)
    mine = tmp_path / ADAPTER / "my-finetune.pt"  # someone's own weights: not on the Hub, even in the folder
    assert fetch.main(flags(tmp_path / WAN, mine, tmp_path / "my_w2v")) == 2
    assert hub == []
    err = capsys.readouterr().err
    assert "not in the released layout" in err
    assert f"{mine}: the StableAvatar DiT weights (--transformer_path)" in err
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        assert f"{tmp_path / 'my_w2v' / name}: " in err and f"FrancisRing/StableAvatar: {W2V}/{name}" in err
    assert (f"hf download FrancisRing/StableAvatar --include {ADAPTER}/transformer3d-square.pt --include "
            f"{W2V}/config.json") in err


def test_a_failed_download_says_what_is_missing(tmp_path, hub, monkeypatch, capsys):
    put(tmp_path, NEEDED - {f"{WAN}/Wan2.1_VAE.pth"})

    def broken(repo, files, local_dir):
        raise OSError("connection reset")

    monkeypatch.setattr(fetch, "download", broken)
    assert fetch.main(flags(tmp_path / WAN, tmp_path / ADAPTER / "transformer3d-square.pt", tmp_path / W2V)) == 2
    err = capsys.readouterr().err
    assert "failed (OSError: connection reset)" in err
    assert f"--include {WAN}/Wan2.1_VAE.pth --local-dir {tmp_path}" in err


def offline_report(tmp_path, argv, monkeypatch, capsys) -> str:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch.main(argv) == 2
    return capsys.readouterr().err


def test_offline_message_names_the_files_the_source_and_a_working_command(tmp_path, monkeypatch, capsys):
    """The printed `hf download` commands, run through huggingface_hub's own CLI (>= 1.0; its downloader
    monkeypatched over REPO_FILES), fetch exactly the missing files into the flags' folders."""
    cli = pytest.importorskip("huggingface_hub.cli.download")
    from huggingface_hub.cli.hf import app

    a, b = tmp_path / "a", tmp_path / "b"
    put(a, [f"{WAN}/config.json"])
    argv = flags(a / WAN, a / ADAPTER / "transformer3d-square.pt", b / W2V)
    err = offline_report(tmp_path, argv, monkeypatch, capsys)
    assert "not reachable (offline" in err and "huggingface-cli" not in err
    assert "https://huggingface.co/FrancisRing/StableAvatar" in err
    assert f"{a / WAN / 'Wan2.1_VAE.pth'}: the Wan VAE (--pretrained_model_name_or_path)" in err
    assert f"{b / W2V / 'preprocessor_config.json'}: the wav2vec2 feature extractor config" in err
    commands = [line.strip() for line in err.splitlines() if line.strip().startswith("hf download ")]
    assert len(commands) == 2  # one per --local-dir

    import fnmatch

    fetched = []

    def snapshot_download(*, repo_id, allow_patterns, local_dir, **kw):
        files = [f for f in REPO_FILES if any(fnmatch.fnmatch(f, p) for p in allow_patterns)]
        fetched.append((Path(local_dir), files))
        put(Path(local_dir), files)
        return str(local_dir)

    monkeypatch.setattr(cli, "snapshot_download", snapshot_download)
    for command in commands:
        argv_hf = shlex.split(command)
        assert argv_hf[:2] == ["hf", "download"]
        try:
            app.main(args=argv_hf[1:], prog_name="hf", standalone_mode=False)
        except SystemExit as e:  # pragma: no cover - a parse error
            raise AssertionError(f"`{command}`: exit {e.code}") from e
    assert {d for d, _ in fetched} == {a, b}
    assert f"{W2V}/pytorch_model.bin" in dict(fetched)[b]  # both weight names are asked (the repo has one)
    extra = [f for _, files in fetched for f in files if "xlm-roberta-large/" in f or "rec-vec" in f or "Kim" in f]
    assert not extra, (extra, commands)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(fetch, "hub_offline", lambda: pytest.fail("the Hub was contacted"))
    assert fetch.main(argv) == 0  # the commands made the tree complete


def test_vocal_model_message_names_the_repo_and_command(tmp_path):
    text = fetch.report([fetch.vocal_model_piece(tmp_path / "ck" / "Kim_Vocal_2.onnx")])
    assert "https://huggingface.co/FrancisRing/StableAvatar" in text
    assert f"hf download FrancisRing/StableAvatar --include Kim_Vocal_2.onnx --local-dir {tmp_path / 'ck'}" in text
    other = fetch.report([fetch.vocal_model_piece(tmp_path / "UVR-MDX-NET-Voc_FT.onnx")])
    assert "not in the released layout" in other and "--include Kim_Vocal_2.onnx --local-dir checkpoints" in other


def test_vocal_separator_says_where_kim_vocal_2_comes_from(tmp_path):
    pytest.importorskip("onnxruntime")
    from wan.data.vocals import MDXSeparator

    with pytest.raises(FileNotFoundError, match="hf download FrancisRing/StableAvatar --include Kim_Vocal_2.onnx"):
        MDXSeparator(tmp_path / "Kim_Vocal_2.onnx")


def test_pieces_are_what_the_loaders_read(tmp_path):
    """On the tiny tree: the files `pieces` does not ask for can all be deleted and the pipeline still loads; every
    file it asks for is reported when it is moved away (inference.py's check before loading uses `pieces` too)."""
    import torch

    from wan.configs import get_config
    from wan.pipeline import StableAvatarPipeline
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    write_tiny_checkpoints(tmp_path, "tiny")
    paths = (tmp_path / WAN, tmp_path / ADAPTER / "transformer3d-square.pt", tmp_path / W2V)
    assert not [p for p in fetch.pieces(*paths) if not p.present()]
    unneeded = []
    for f in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        f.rename(f.with_name(f.name + ".away"))
        try:
            if not [p.path for p in fetch.pieces(*paths) if not p.present()]:
                unneeded.append(f)
        finally:
            f.with_name(f.name + ".away").rename(f)
    assert (tmp_path / W2V / "preprocessor_config.json") not in unneeded  # read by the feature extractor
    for f in unneeded:  # one by one: of alternatives (tokenizer.json / spiece.model) the last one stays
        f.rename(f.with_name(f.name + ".away"))
        if [p for p in fetch.pieces(*paths) if not p.present()]:
            f.with_name(f.name + ".away").rename(f)
    StableAvatarPipeline.from_checkpoints(*paths, device="cpu", dtype=torch.float32, spec=get_config("tiny"))


def test_inference_sh_checks_the_flag_paths_not_checkpoints(tmp_path):
    """`bash inference.sh` with weight paths given by flag: the fetch step reports those paths (offline) and stops
    before inference.py runs."""
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run(["bash", str(repo / "inference.sh"), f"--pretrained_model_name_or_path={tmp_path / WAN}",
                        f"--pretrained_wav2vec_path={tmp_path / W2V}"], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"--local-dir {tmp_path}" in r.stderr
    assert f"checkpoints/{WAN}/config.json" not in r.stderr.replace(str(tmp_path), "")
    assert "usage: inference.py" not in r.stderr


def test_module_entry_point_takes_the_whole_argv(tmp_path):
    r = subprocess.run([sys.executable, "-m", "wan.checkpoints.fetch", f"--pretrained_model_name_or_path={tmp_path}/x",
                        f"--pretrained_wav2vec_path={tmp_path / W2V}", "--validation_prompts=--hello", "--width=512"],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert r.returncode == 2
    assert f"{tmp_path}/x/config.json: the Wan2.1-Fun DiT config" in r.stderr
    assert "not in the released layout" in r.stderr
