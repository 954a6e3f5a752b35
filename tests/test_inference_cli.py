"""`python inference.py ...` end to end on a tiny checkpoint tree, a real reference image and real speech."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import example_speech

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "examples" / "case-1" / "reference.png"


def speech(seconds: float, tmp_path: Path) -> Path:
    return example_speech(seconds, tmp_path / f"speech_{seconds}s.wav")


def command(tree, tmp_path, audio, *extra, image=IMAGE, width=64, height=48, clip=17, overlap=3, steps=1,
            out=None):
    """inference.py on the tiny tree; device and dtype are left to `auto` (the CPU and float32 here)."""
    out = tmp_path / "out" if out is None else out
    cmd = [sys.executable, str(ROOT / "inference.py"),
           f"--pretrained_model_name_or_path={tree / 'Wan2.1-Fun-V1.1-1.3B-InP'}",
           f"--transformer_path={tree / 'StableAvatar-1.3B' / 'transformer3d-square.pt'}",
           f"--pretrained_wav2vec_path={tree / 'wav2vec2-base-960h'}",
           f"--validation_reference_path={image}", f"--validation_driven_audio_path={audio}",
           "--validation_prompts", "A woman is speaking", f"--output_dir={out}", "--seed=42",
           f"--sample_steps={steps}", f"--width={width}", f"--height={height}", f"--clip_sample_n_frames={clip}",
           f"--overlap_window_length={overlap}", "--no_progress", "--model_spec=tiny",
           "--config_path=deepspeed_config/wan2.1/wan_civitai.yaml", "--motion_frame=25", *extra]
    return cmd, out


def run(tree, tmp_path, audio, *extra, **kw):
    cmd, out = command(tree, tmp_path, audio, *extra, **kw)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    return r, out


def expected_frames(num_samples: int) -> int:
    f = num_samples // 640
    return 4 * ((f - 1) // 4) + 1


# 0.5 s: shorter than one window; 3.3 s: exactly one window (the original hangs); 60 s: 23 windows, 1,497 frames
@pytest.mark.parametrize("seconds,clip,overlap", [(0.5, 81, 5), (3.3, 81, 5), (60.0, 81, 5)])
def test_inference_writes_mp4_with_audio(tree, tmp_path, seconds, clip, overlap):
    from wan.io.video import probe

    audio = speech(seconds, tmp_path)
    r, out = run(tree, tmp_path, audio, clip=clip, overlap=overlap)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "device cpu, dtype float32 (auto)" in r.stderr, r.stderr[-3000:]  # a CPU just works
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


BAD_INPUTS = ["missing_image", "corrupt_image", "missing_audio", "corrupt_audio", "too_short_audio", "bad_size",
              "bad_overlap", "overlap_too_long", "bad_clip", "zero_steps", "output_dir_is_a_file", "fast_with_offload",
              "bf16_on_cpu", "cuda_without_cuda", "missing_weights", "missing_lora"]
NEEDS_TORCH = {"bf16_on_cpu", "cuda_without_cuda", "missing_weights", "missing_lora"}  # checked after `import torch`


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_requests_fail_before_any_model_loads(tree, tmp_path, case):
    """One `error:` line, no traceback, no output, and no model loaded. The checks that need no torch take well under
    a second of the process's CPU time (measured: ~0.1 s; CPU time, not wall time, so a loaded machine cannot fail
    it); the device checks import torch first (~1.5 s of CPU time here), then stop."""
    import resource
    import shutil

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
    elif case == "too_short_audio":
        audio = speech(0.02, tmp_path)  # 320 samples: less than one video frame
    elif case == "bad_size":
        kw["width"] = 60
    elif case == "bad_overlap":
        extra = ["--overlap_window_length=1"]
    elif case == "overlap_too_long":
        extra = ["--overlap_window_length=5"]  # = the 5 latent frames of a 17-frame window
    elif case == "bad_clip":
        kw["clip"] = 18
    elif case == "zero_steps":
        kw["steps"] = 0
    elif case == "output_dir_is_a_file":
        kw["out"] = tmp_path / "a_file"
        kw["out"].write_text("x")
    elif case == "fast_with_offload":
        extra = ["--fast", "--GPU_memory_mode=sequential_cpu_offload"]
    elif case == "bf16_on_cpu":
        extra = ["--dtype=bf16"]
    elif case == "cuda_without_cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        extra = ["--device=cuda"]
    elif case == "missing_weights":
        broken = tmp_path / "tree"
        shutil.copytree(tree, broken)
        (broken / "Wan2.1-Fun-V1.1-1.3B-InP" / "Wan2.1_VAE.pth").unlink()
        tree = broken
    elif case == "missing_lora":
        extra = [f"--lora_path={tmp_path / 'nope.pt'}"]
    cmd, out = command(tree, tmp_path, audio, *extra, **kw)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert [line.startswith("error:") for line in r.stderr.splitlines()].count(True) == 1, r.stderr[-3000:]
    assert "loaded" not in r.stderr, "a model was loaded before the error"
    if case == "missing_weights":
        assert "Wan2.1_VAE.pth" in r.stderr
    if case not in NEEDS_TORCH:
        assert cpu_s < 3.0, f"{cpu_s:.2f} s of CPU time before the error"
    if case != "output_dir_is_a_file":
        assert not out.exists(), "the output folder was created for a failing request"


def test_ctrl_c_exits_130_without_partial_files(tree, tmp_path):
    """SIGINT during the denoising loop: exit 130, one line, nothing written (and no temporary files)."""
    import signal
    import time

    cmd, out = command(tree, tmp_path, speech(20.0, tmp_path), steps=50)
    # a shell without job control starts background commands with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: give the child the default disposition, as a terminal would
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in p.stderr:  # wait for the end of the model loading: the loop starts right after
            if "model loading took" in line:
                break
        time.sleep(0.5)
        assert p.poll() is None, "finished before it could be interrupted"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("interrupted"), err[-3000:]
    # only the render state may be there (kept on purpose: a rerun continues from it)
    assert not out.exists() or {p.name for p in out.iterdir()} <= {"video.resume.pt"}, list(out.iterdir())


def test_help_shows_every_default_and_every_flag_has_help():
    sys.path.insert(0, str(ROOT))
    try:
        import inference
    finally:
        sys.path.remove(str(ROOT))
    parser = inference.build_parser()
    for action in parser._actions:
        assert action.help and action.help.strip(), f"{action.option_strings} has no help"
    text = parser.format_help()
    assert "(default: 10)" in text and "(default: 4.0)" in text and "(default: auto)" in text


def test_one_source_for_generation_defaults():
    """generate()'s defaults are PipelineConfig's (inference.sh's values); the CLI keeps the original's argparse
    values only where ORIGINAL_CLI_DEFAULTS says so, and takes the rest from PipelineConfig too."""
    import inspect

    sys.path.insert(0, str(ROOT))
    try:
        import inference
    finally:
        sys.path.remove(str(ROOT))
    from wan.configs import ORIGINAL_CLI_DEFAULTS, PipelineConfig
    from wan.pipeline import StableAvatarPipeline

    params = inspect.signature(StableAvatarPipeline.generate).parameters
    for name in ("width", "height", "num_inference_steps", "seed", "text_guide_scale", "audio_guide_scale",
                 "overlap_window_length", "overlapping_weight_scheme", "clip_length"):
        assert params[name].default is None, name
    args = inference.build_parser().parse_args(["--pretrained_model_name_or_path=x", "--pretrained_wav2vec_path=x",
                                                "--validation_reference_path=x", "--validation_driven_audio_path=x"])
    pc = PipelineConfig()
    assert ORIGINAL_CLI_DEFAULTS == {"text_guide_scale": 5.0, "audio_guide_scale": 4.0, "overlap_window_length": 10}
    assert (args.sample_text_guide_scale, args.sample_audio_guide_scale, args.overlap_window_length) == (5.0, 4.0, 10)
    assert (args.width, args.height, args.seed, args.sample_steps, args.clip_sample_n_frames,
            args.overlapping_weight_scheme) == (pc.width, pc.height, pc.seed, pc.sample_steps,
                                                pc.clip_sample_n_frames, pc.overlapping_weight_scheme)
    # inference.sh passes PipelineConfig's values for the three the original's argparse has otherwise
    sh = (ROOT / "inference.sh").read_text()
    assert f"--overlap_window_length={pc.overlap_window_length}" in sh
    assert f"--sample_text_guide_scale={pc.text_guide_scale}" in sh
    assert f"--sample_audio_guide_scale={pc.audio_guide_scale}" in sh


def test_lora_path_is_merged(tree, tmp_path):
    import torch

    from wan.checkpoints.dit import load_dit
    from wan.io.video import probe
    from wan.checkpoints.lora import add_lora, save_lora

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
