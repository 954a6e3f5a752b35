"""Data preparation: audio_extractor.py, the dataset builder (wan.data.prepare) into the training layout.

The talking-head video is the case-1 fixture animated (small shifts) with the start of examples/case-2's speech;
the builder's mask step needs the preprocess venv (skips without it, see tests/test_masks.py), the rest does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wan.data import masks as M

ROOT = Path(__file__).resolve().parents[1]
CASE1 = Path(__file__).parent / "data" / "case-1-reference-256.png"
SPEECH = ROOT / "examples" / "case-2" / "audio.wav"


def _speech(seconds: float) -> np.ndarray:
    from wan.io.audio import load_audio

    return load_audio(SPEECH)[16000: 16000 + int(seconds * 16000)]  # skip the first second (leading silence)


def _face_frames(n: int, grey_tail: int = 0) -> np.ndarray:
    import cv2

    img = cv2.cvtColor(cv2.imread(str(CASE1)), cv2.COLOR_BGR2RGB)
    frames = []
    for i in range(n):
        dx, dy = int(3 * np.sin(i / 3)), int(2 * np.cos(i / 4))  # a little head motion
        frames.append(np.roll(img, (dy, dx), axis=(0, 1)) if i < n - grey_tail else np.full_like(img, 128))
    return np.stack(frames)


def _write_video(path: Path, frames: np.ndarray, fps: int, audio: np.ndarray | None) -> Path:
    from wan.io.video import Mp4Writer

    with Mp4Writer(path, width=frames.shape[2], height=frames.shape[1], fps=fps, audio=audio) as w:
        w.write(frames)
    return path


# ------------------------------------------------------------------------------------------------
# audio_extractor.py


def test_audio_extractor(tmp_path):
    import soundfile

    speech = _speech(1.0)
    video = _write_video(tmp_path / "v.mp4", _face_frames(25), 25, speech)
    out = tmp_path / "a.wav"
    r = subprocess.run([sys.executable, str(ROOT / "audio_extractor.py"), "--video_path", str(video),
                        "--saved_audio_path", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    info = soundfile.info(out)
    assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
    assert abs(info.duration - 1.0) < 0.05
    # same content as the muxed speech (AAC round trip): correlate at 16 kHz
    from wan.io.audio import load_audio

    y = load_audio(out)[: len(speech)]
    assert np.corrcoef(y[2000:14000], speech[2000:14000])[0, 1] > 0.95

    silent = _write_video(tmp_path / "silent.mp4", _face_frames(5), 25, None)
    r = subprocess.run([sys.executable, str(ROOT / "audio_extractor.py"), "--video_path", str(silent),
                        "--saved_audio_path", str(tmp_path / "b.wav")], capture_output=True, text=True)
    assert r.returncode == 2 and "no audio track" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("script", ["audio_extractor.py", "vocal_seperator.py", "lip_mask_extractor.py"])
def test_help_without_the_project_installed(script):
    """--help must not import anything heavy (system python, no numpy/av/onnxruntime/mediapipe needed)."""
    r = subprocess.run([sys.executable, "-S", "-I", str(ROOT / script), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr


# ------------------------------------------------------------------------------------------------
# dataset builder


@pytest.fixture(scope="module")
def raw_videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    # 36 frames at 30 fps = 1.2 s → 30 frames at 25 fps; the last 3 source frames have no face
    _write_video(d / "talk.mp4", _face_frames(36, grey_tail=3), 30, _speech(1.2))
    _write_video(d / "mute.mp4", _face_frames(30), 25, None)
    _write_video(d / "short.mp4", _face_frames(6), 25, _speech(0.24))
    _write_video(d / "empty_room.mp4", np.full((30, 256, 256, 3), 90, np.uint8), 25, _speech(1.2))
    return d


def _run(videos: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wan.data.prepare", "--videos", str(videos), "--out", str(out),
                           "--bucket", "square", "--min_frames", "20", "--no_progress", *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def _check_clip(clip: Path, n: int, masks: bool) -> None:
    """The layout of training.md §2, file by file."""
    from PIL import Image

    from wan.io.video import probe

    names = {p.name for p in clip.iterdir()}
    assert names == ({"sub_clip.mp4", "audio.wav", "images", "face_masks", "lip_masks"} if masks
                     else {"sub_clip.mp4", "audio.wav", "images"})
    frames = sorted(p.name for p in (clip / "images").iterdir())
    assert frames == sorted(f"frame_{i}.png" for i in range(n))
    im = Image.open(clip / "images" / "frame_0.png")
    assert im.size == (512, 512) and im.mode == "RGB"
    info = probe(clip / "sub_clip.mp4")
    assert (info.num_frames, info.fps, info.width, info.height, info.has_audio) == (n, 25.0, 512, 512, True)
    import cv2

    assert cv2.VideoCapture(str(clip / "sub_clip.mp4")).get(cv2.CAP_PROP_FPS) == 25.0  # what the loader reads
    import soundfile

    a = soundfile.info(clip / "audio.wav")
    assert a.samplerate == 44100 and a.subtype == "PCM_16" and abs(a.duration - n / 25) < 0.06
    if masks:
        for sub in ("face_masks", "lip_masks"):
            assert sorted(p.name for p in (clip / sub).iterdir()) == frames
            m = Image.open(clip / sub / "frame_0.png")
            assert m.mode == "L" and m.size == (512, 512)


def test_builder_without_masks(raw_videos, tmp_path):
    out = tmp_path / "talking_face_data"
    r = _run(raw_videos, out, "--no_masks")
    assert r.returncode == 0, r.stderr
    state = json.loads((out / "square" / "speech" / "prepare_state.json").read_text())["sources"]
    assert {k: v["status"] for k, v in state.items()} == {
        "empty_room.mp4": "done", "mute.mp4": "rejected", "short.mp4": "rejected", "talk.mp4": "done"}
    assert state["mute.mp4"]["reason"] == "no audio" and state["short.mp4"]["reason"].startswith("too short")
    assert "rejected mute.mp4: no audio" in r.stdout
    # clip ids follow the sorted file names of the kept videos, without gaps; nothing of the rejected ones is left
    assert sorted(p.name for p in (out / "square" / "speech").iterdir() if p.is_dir()) == ["00001", "00002"]
    assert state["talk.mp4"]["clip"] == "00002" and "clip" not in state["mute.mp4"]
    _check_clip(out / "square" / "speech" / "00002", 30, masks=False)
    lines = (out / "video_square_path.txt").read_text().splitlines()
    assert lines == [str((out / "square" / "speech" / c).resolve()) for c in ("00001", "00002")]


def _build(videos: Path, out: Path):
    from wan.data.prepare import Options, prepare

    return prepare(Options(videos=videos, out=out, min_frames=20, masks=False, progress=False))


def _clip_ids(out: Path) -> dict[str, str]:
    state = json.loads((out / "square" / "speech" / "prepare_state.json").read_text())
    assert state["version"] == 2
    return {k: v.get("clip", v["status"]) for k, v in state["sources"].items()}


def test_rejected_videos_take_no_clip_id(tmp_path, monkeypatch):
    """3 videos, the middle one without audio → clips 00001, 00002; a 4th video → 00003, nothing redone; a run
    interrupted between reserving an id and renaming the clip resumes without extracting again."""
    import wan.data.prepare as P

    extracted = []
    extract = P.extract_clip
    monkeypatch.setattr(P, "extract_clip", lambda video, *a: extracted.append(video.name) or extract(video, *a))
    raw, out = tmp_path / "raw", tmp_path / "talking_face_data"
    raw.mkdir()
    talk = _write_video(raw / "a.mp4", _face_frames(21), 25, _speech(0.84))
    _write_video(raw / "b.mp4", _face_frames(21), 25, None)
    (raw / "c.mp4").write_bytes(talk.read_bytes())
    r = _build(raw, out)
    assert (r.done, r.rejected) == (["a.mp4", "c.mp4"], {"b.mp4": "no audio"})
    assert _clip_ids(out) == {"a.mp4": "00001", "b.mp4": "rejected", "c.mp4": "00002"}
    clips = out / "square" / "speech"
    assert sorted(p.name for p in clips.iterdir()) == ["00001", "00002", "prepare_state.json"]  # no .work/ left
    mtime = (clips / "00002" / "images" / "frame_0.png").stat().st_mtime_ns

    (raw / "d.mp4").write_bytes(talk.read_bytes())
    extracted.clear()
    r = _build(raw, out)
    assert (r.done, r.skipped, extracted) == (["d.mp4"], ["a.mp4", "b.mp4", "c.mp4"], ["d.mp4"])
    assert _clip_ids(out)["d.mp4"] == "00003"
    assert (clips / "00002" / "images" / "frame_0.png").stat().st_mtime_ns == mtime
    assert (out / "video_square_path.txt").read_text().splitlines() == [
        str((clips / c).resolve()) for c in ("00001", "00002", "00003")]

    # interrupted right after the id was reserved: the clip still waits in .work/, the rerun only renames it
    (raw / "e.mp4").write_bytes(talk.read_bytes())

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(P.os, "replace", lambda src, dst, replace=P.os.replace: (
        interrupted(src, dst) if Path(dst).name == "00004" else replace(src, dst)))
    with pytest.raises(KeyboardInterrupt):
        _build(raw, out)
    assert json.loads((clips / "prepare_state.json").read_text())["sources"]["e.mp4"] == {
        "clip": "00004", "frames": 21, "status": "extracted"}
    monkeypatch.undo()
    monkeypatch.setattr(P, "extract_clip", lambda video, *a: extracted.append(video.name) or extract(video, *a))
    extracted.clear()
    r = _build(raw, out)
    assert (r.done, extracted, _clip_ids(out)["e.mp4"]) == (["e.mp4"], [], "00004")
    _check_clip(clips / "00004", 21, masks=False)
    assert not (clips / ".work").exists()


def test_state_of_the_first_version(tmp_path):
    """A prepare_state.json of the first builder (no version; rejected videos had used up ids): finished clips keep
    their ids, the rejection's id is dropped, a new video is numbered after the highest id, a note says so once."""
    raw, out = tmp_path / "raw", tmp_path / "talking_face_data"
    raw.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):  # never opened: finished or rejected before
        (raw / name).write_bytes(b"")
    _write_video(raw / "d.mp4", _face_frames(21), 25, _speech(0.84))
    clips = out / "square" / "speech"
    for c in ("00001", "00003"):
        (clips / c / "images").mkdir(parents=True)
    done = {"status": "done", "frames": 21, "no_face_frames": 0}
    (clips / "prepare_state.json").write_text(json.dumps({"sources": {
        "a.mp4": {"clip": "00001", **done}, "b.mp4": {"clip": "00002", "status": "rejected", "reason": "no audio"},
        "c.mp4": {"clip": "00003", **done}}}))
    r = _build(raw, out)
    assert (r.done, r.skipped) == (["d.mp4"], ["a.mp4", "b.mp4", "c.mp4"])
    assert _clip_ids(out) == {"a.mp4": "00001", "b.mp4": "rejected", "c.mp4": "00003", "d.mp4": "00004"}
    assert len(r.notes) == 1 and "used up clip ids (00002)" in r.notes[0]
    assert _build(raw, out).notes == []
    st = json.loads((clips / "prepare_state.json").read_text())
    (clips / "prepare_state.json").write_text(json.dumps({**st, "version": 3}))
    with pytest.raises(ValueError, match="newer dataset builder"):
        _build(raw, out)


@pytest.fixture(scope="module")
def built_with_masks(raw_videos, tmp_path_factory):
    if not M.mediapipe_available() and M.preprocess_python() is None:
        pytest.skip(f"no preprocess venv (mediapipe 0.10.21): run `{M.SETUP_COMMAND}`")
    out = tmp_path_factory.mktemp("built") / "talking_face_data"
    r = _run(raw_videos, out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_builder_with_masks_resumable(raw_videos, built_with_masks):
    out, r = built_with_masks
    clips = out / "square" / "speech"
    state = json.loads((clips / "prepare_state.json").read_text())["sources"]
    assert state["empty_room.mp4"]["status"] == "rejected"
    assert state["empty_room.mp4"]["reason"] == "no face (in any frame)"
    talk = state["talk.mp4"]
    assert talk["status"] == "done" and talk["frames"] == 30
    assert talk["clip"] == "00001"  # empty_room.mp4 sorts first, but a rejection in the mask step takes no id either
    assert 1 <= talk["no_face_frames"] <= 3  # the grey tail: kept, empty masks, reported
    assert "frames without a face: talk.mp4" in r.stdout
    clip = clips / talk["clip"]
    _check_clip(clip, 30, masks=True)
    import cv2

    lip0 = cv2.imread(str(clip / "lip_masks" / "frame_0.png"), cv2.IMREAD_UNCHANGED)
    assert 0.008 < (lip0 > 0).mean() < 0.05
    assert cv2.imread(str(clip / "lip_masks" / "frame_29.png"), cv2.IMREAD_UNCHANGED).max() == 0
    assert (out / "video_square_path.txt").read_text().splitlines() == [str(clip.resolve())]

    # resumable: an interrupted clip (stage "extracted", one mask missing) is finished, everything else skipped
    (clip / "lip_masks" / "frame_5.png").unlink()
    st = json.loads((clips / "prepare_state.json").read_text())
    st["sources"]["talk.mp4"]["status"] = "extracted"
    (clips / "prepare_state.json").write_text(json.dumps(st))
    mtime = (clip / "images" / "frame_0.png").stat().st_mtime_ns
    r = _run(raw_videos, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 clips finished, 3 already processed" in r.stdout and "note:" not in r.stdout
    assert (clip / "lip_masks" / "frame_5.png").is_file()
    assert (clip / "images" / "frame_0.png").stat().st_mtime_ns == mtime
    r = _run(raw_videos, out)
    assert "0 clips finished, 4 already processed" in r.stdout


def test_builder_errors(tmp_path):
    r = _run(tmp_path / "missing", tmp_path / "out", "--no_masks")
    assert r.returncode == 2 and "is not a folder" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "empty").mkdir()
    r = _run(tmp_path / "empty", tmp_path / "out", "--no_masks")
    assert r.returncode == 2 and "holds no video files" in r.stderr


def test_training_loader_reads_the_built_dataset(built_with_masks):
    """The training dataset (wan.data.dataset, another issue) reads what the builder wrote."""
    dataset = pytest.importorskip("wan.data.dataset")
    out, _ = built_with_masks
    ds = dataset.TalkingVideoDataset(out / "video_square_path.txt", width=512, height=512, n_sample_frames=25)
    assert len(ds) == 1
    s = ds[(0, 0)]
    assert tuple(s["pixel_values"].shape) == (25, 3, 512, 512) and s["fps"] == 25.0
    assert s["text_prompt"] == "The protagonist is talking"
    lip, face = s["tgt_lip_masks"], s["tgt_face_masks"]
    assert tuple(lip.shape) == tuple(face.shape) == (1, 25, 512, 512)
    assert 0.005 < float(lip[0, 0].mean()) < 0.05 and 0.05 < float(face[0, 0].mean()) < 0.4  # not all-ones
    assert abs(s["vocal_waveform"].numel() - 16000) < 400  # 25 frames at 25 fps = 1 s of 16 kHz audio
