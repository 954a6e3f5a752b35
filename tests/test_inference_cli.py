"""`python inference.py ...` end to end on a tiny checkpoint tree, a real reference image and real speech."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "examples" / "case-2" / "audio.wav"
IMAGE = ROOT / "examples" / "case-1" / "reference.png"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"), "tiny", seed=0)


def speech(seconds: float, tmp_path: Path) -> Path:
    """A wav of the example speech (stereo 16 kHz), cut or looped to `seconds`."""
    y, sr = sf.read(SPEECH, dtype="int16", always_2d=True)
    n = int(seconds * sr)
    y = np.concatenate([y] * (n // len(y) + 1))[:n]
    p = tmp_path / f"speech_{seconds}s.wav"
    sf.write(p, y, sr, subtype="PCM_16")
    return p


def run(tree, tmp_path, audio, *extra, image=IMAGE, width=64, height=48, clip=17, overlap=3, steps=1):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "inference.py"),
           f"--pretrained_model_name_or_path={tree / 'Wan2.1-Fun-V1.1-1.3B-InP'}",
           f"--transformer_path={tree / 'StableAvatar-1.3B' / 'transformer3d-square.pt'}",
           f"--pretrained_wav2vec_path={tree / 'wav2vec2-base-960h'}",
           f"--validation_reference_path={image}", f"--validation_driven_audio_path={audio}",
           "--validation_prompts", "A woman is speaking", f"--output_dir={out}", "--seed=42",
           f"--sample_steps={steps}", f"--width={width}", f"--height={height}", f"--clip_sample_n_frames={clip}",
           f"--overlap_window_length={overlap}", "--device=cpu", "--dtype=fp32", "--no_progress", "--model_spec=tiny",
           "--config_path=deepspeed_config/wan2.1/wan_civitai.yaml", "--motion_frame=25", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    return r, out


def expected_frames(num_samples: int) -> int:
    f = num_samples // 640
    return 4 * ((f - 1) // 4) + 1


@pytest.mark.parametrize("seconds,clip,overlap", [(0.5, 81, 5), (3.3, 81, 5), (180.0, 17, 3)])
def test_inference_writes_mp4_with_audio(tree, tmp_path, seconds, clip, overlap):
    from wan.io.video import probe

    audio = speech(seconds, tmp_path)
    r, out = run(tree, tmp_path, audio, clip=clip, overlap=overlap)
    assert r.returncode == 0, r.stderr[-3000:]
    n = int(seconds * 16000)
    info = probe(out / "video.mp4")
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert info.num_frames == expected_frames(n)
    assert (info.width, info.height) == (64, 48)
    assert abs(info.audio_duration - info.num_frames / 25) < 0.05
    plain = probe(out / "video_without_audio.mp4")
    assert plain.num_frames == info.num_frames and not plain.has_audio
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_silent_audio_and_empty_prompt_give_a_video(tree, tmp_path):
    from wan.io.video import probe

    p = tmp_path / "silence.wav"
    sf.write(p, np.zeros(16000, dtype=np.float32), 16000)
    r, out = run(tree, tmp_path, p, "--validation_prompts", "")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "silent" in r.stderr
    assert probe(out / "video.mp4").num_frames == expected_frames(16000)


@pytest.mark.parametrize("case", ["missing_image", "corrupt_image", "missing_audio", "corrupt_audio", "bad_size",
                                  "bad_overlap"])
def test_bad_inputs_fail_cleanly(tree, tmp_path, case):
    audio = speech(1.0, tmp_path)
    kw = {}
    extra = []
    if case == "missing_image":
        kw["image"] = tmp_path / "nope.png"
    elif case == "corrupt_image":
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not an image")
        kw["image"] = bad
    elif case == "missing_audio":
        audio = tmp_path / "nope.wav"
    elif case == "corrupt_audio":
        audio = tmp_path / "bad.wav"
        audio.write_bytes(b"RIFF....garbage")
    elif case == "bad_size":
        kw["width"] = 60
    elif case == "bad_overlap":
        extra = ["--overlap_window_length=1"]
    r, out = run(tree, tmp_path, audio, *extra, **kw)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "error:" in r.stderr
    assert not out.exists() or not any(out.iterdir()), "partial output left behind"


def test_lora_path_is_merged(tree, tmp_path):
    import torch

    from wan.checkpoints.dit import load_dit
    from wan.io.video import probe
    from wan.training.lora import add_lora, save_lora

    dit = load_dit(tree / "Wan2.1-Fun-V1.1-1.3B-InP", tree / "StableAvatar-1.3B" / "transformer3d-square.pt",
                   dtype=torch.float32)
    add_lora(dit, rank=4, alpha=4)
    with torch.no_grad():
        for n, p in dit.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    lora = tmp_path / "lora.pt"
    save_lora(dit, lora)
    r, out = run(tree, tmp_path, speech(1.0, tmp_path), f"--lora_path={lora}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert probe(out / "video.mp4").num_frames == expected_frames(16000)


def test_fast_and_teacache_flags(tree, tmp_path):
    """--fast, --enable_teacache and --fp8 run end to end (eager on CPU). Their numbers are checked in-process
    (tests/test_fast.py: fast vs reference precision, TeaCache threshold 0 == fast path); decoded mp4 frames are not
    compared here: the encode is byte-reproducible, but CPU float results depend on the thread count."""
    from wan.io.video import probe

    audio = speech(1.0, tmp_path)
    for i, extra in enumerate((["--fast"], ["--enable_teacache", "--teacache_threshold=0.05"], ["--fp8"])):
        (tmp_path / str(i)).mkdir()
        r, out = run(tree, tmp_path / str(i), audio, *extra, steps=2)
        assert r.returncode == 0, r.stderr[-3000:]
        assert probe(out / "video.mp4").num_frames == expected_frames(16000)
    r, _ = run(tree, tmp_path, audio, "--fast", "--GPU_memory_mode=sequential_cpu_offload")
    assert r.returncode != 0 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_bf16_on_cpu_is_a_clear_error():
    """CPU autocast does not run the original's float32 norms: bf16 on the CPU stops at once with the fix."""
    import torch

    from wan.pipeline import StableAvatarPipeline

    pipe = StableAvatarPipeline(None, None, None, None, None, device="cpu", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="--dtype fp32"):
        pipe.generate(np.zeros((48, 64, 3), np.uint8), np.zeros(16000, np.float32), "x", width=64, height=48)
