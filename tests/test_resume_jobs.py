"""Resumable renders (SIGKILL mid-denoise and mid-decode, then the same video bit for bit) and the jobs file."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import example_speech, free_port

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "examples" / "case-1" / "reference.png"


speech = example_speech


def model_flags(tree, size=(64, 48)):
    return [sys.executable, str(ROOT / "inference.py"),
            f"--pretrained_model_name_or_path={tree / 'Wan2.1-Fun-V1.1-1.3B-InP'}",
            f"--transformer_path={tree / 'StableAvatar-1.3B' / 'transformer3d-square.pt'}",
            f"--pretrained_wav2vec_path={tree / 'wav2vec2-base-960h'}", "--model_spec=tiny", "--no_progress",
            f"--width={size[0]}", f"--height={size[1]}", "--clip_sample_n_frames=17", "--overlap_window_length=3"]


def one_video(tree, audio, out, *extra, steps=12):
    # 128x96: libx264 encodes the same frames to different streams below about 112x96 (measured: 64x48 gave 3
    # different streams in 5 encodes; 128x96 25 of 25 identical), so the video is compared at 128x96
    return [*model_flags(tree, (128, 96)), f"--validation_reference_path={IMAGE}", f"--validation_driven_audio_path={audio}",
            "--validation_prompts", "A woman is speaking", f"--output_dir={out}", f"--sample_steps={steps}",
            "--resume_every=0", *extra]


def kill_when(cmd, cwd, marker: str, delay: float = 0.0) -> str:
    """Start `cmd`, SIGKILL it `delay` s after `marker` shows up in its log; returns the log up to there."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    seen = []
    try:
        for line in p.stderr:
            seen.append(line)
            if marker in line:
                time.sleep(delay)
                break
        assert p.poll() is None, "".join(seen)[-3000:]
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    finally:
        p.kill()
        p.stdout.close()
        p.stderr.close()
    return "".join(seen)


def test_killed_renders_resume_to_the_same_video(tree, tmp_path):
    from wan.io.video import read_video_frames

    audio = speech(4.0, tmp_path / "speech.wav")
    ref = subprocess.run(one_video(tree, audio, tmp_path / "ref", "--no_resume"), capture_output=True, text=True,
                         cwd=tmp_path, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "out"
    cmd = one_video(tree, audio, out)

    kill_when(cmd, tmp_path, "saved the resume state after step 3/12")  # mid-denoise
    assert not (out / "video.mp4").exists() and (out / "video.resume.pt").exists()

    changed = subprocess.run(one_video(tree, audio, out, "--seed=43"), capture_output=True, text=True, cwd=tmp_path,
                             timeout=600)
    assert changed.returncode == 1 and "changed seed" in changed.stderr, changed.stderr[-3000:]

    log = kill_when(cmd, tmp_path, "decoding", delay=0.3)  # mid-decode, after the final latents were saved
    assert "resuming video.resume.pt after step" in log, log[-3000:]  # step 3 or a little later: killed mid-step
    assert not (out / "video.mp4").exists() and (out / "video.resume.pt").exists()

    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming video.resume.pt after step 12 of 12" in done.stderr, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["video.mp4", "video_without_audio.mp4"]  # state and temps gone
    assert np.array_equal(read_video_frames(tmp_path / "ref" / "video.mp4"),
                          read_video_frames(out / "video.mp4"))


def test_restart_discards_the_state(tree, tmp_path):
    audio = speech(2.0, tmp_path / "speech.wav")
    out = tmp_path / "out"
    kill_when(one_video(tree, audio, out, steps=400), tmp_path, "saved the resume state after step 2/400")
    r = subprocess.run(one_video(tree, audio, out, "--restart", steps=2), capture_output=True, text=True,
                       cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" not in r.stderr and (out / "video.mp4").exists() and not (out / "video.resume.pt").exists()


def test_jobs_file_loads_models_once_and_reports_failures(tree, tmp_path):
    from wan.io.video import probe

    a = speech(1.0, tmp_path / "a.wav")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(j) for j in [
        {"reference": str(IMAGE), "audio": a.name, "prompt": "A woman is talking", "output": "one"},
        {"reference": str(IMAGE), "audio": "missing.wav", "prompt": "x", "output": "two"},
        {"reference": str(IMAGE), "audio": a.name, "prompt": "A woman is singing", "output": "three", "seed": 7,
         "steps": 2},
    ]) + "\n# a comment\n")
    cmd = [*model_flags(tree), f"--jobs={jobs}", f"--output_dir={tmp_path / 'out'}", "--sample_steps=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]  # one job failed
    assert "jobs: 2 done, 0 skipped, 1 failed" in r.stdout, r.stdout
    assert "failed two:" in r.stdout and "missing.wav" in r.stdout
    assert r.stderr.count("loaded the DiT") == 1 and "models loaded once for 2 job(s)" in r.stderr
    for name in ("one", "three"):
        assert probe(tmp_path / "out" / name / "video.mp4").num_frames == 25
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert "jobs: 0 done, 2 skipped, 1 failed" in again.stdout, again.stdout
    assert "loaded" not in again.stderr  # nothing to render: no model loaded


def test_jobs_file_errors_name_the_line(tmp_path):
    import argparse

    from wan.jobs import read_jobs

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"reference": "a.png", "audio": "a.wav", "prompt": "p"}\nnot json\n'
                    '{"reference": "a.png", "audio": "a.wav", "prompt": "p", "output": "x", "colour": 1}\n'
                    '{"reference": "a.png", "audio": "a.wav", "prompt": "p", "output": "../up"}\n')
    args = argparse.Namespace(validation_reference_path=None, validation_driven_audio_path=None,
                              validation_prompts=["p"], output_dir=str(tmp_path), negative_prompt=None, width=64,
                              height=48, seed=1, sample_steps=1, sample_text_guide_scale=1.0,
                              sample_audio_guide_scale=1.0, overlap_window_length=3,
                              overlapping_weight_scheme="uniform", clip_sample_n_frames=17)
    got = read_jobs(jobs, args)
    assert [j.status for j in got] == ["failed"] * 4
    assert "line 1" in got[0].reason and "missing ['output']" in got[0].reason
    assert "line 2" in got[1].reason
    assert "unknown keys ['colour']" in got[2].reason
    assert "must be a folder name" in got[3].reason


def test_jobs_are_shared_among_torchrun_processes(tree, tmp_path):
    """Under torchrun each process renders every N-th job alone (no process group): 2 processes, 2 jobs, 1 each."""
    a = speech(1.0, tmp_path / "a.wav")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps({"reference": str(IMAGE), "audio": a.name, "prompt": "p", "output": name})
                              for name in ("first", "second")) + "\n")
    flags = model_flags(tree)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           *flags[1:],
           f"--jobs={jobs}", f"--output_dir={tmp_path / 'out'}", "--sample_steps=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("jobs of process") == 2 and r.stdout.count(": 1 done, 0 skipped, 0 failed") == 2, r.stdout
    assert (tmp_path / "out" / "first" / "video.mp4").exists() and (tmp_path / "out" / "second" / "video.mp4").exists()
