"""Dataset builder: a folder of raw talking-head videos → the training layout of the original (spec training.md §2).

    python -m wan.data.prepare --videos raw_videos/ --out talking_face_data --bucket square [--category speech]

writes, per accepted video (clip ids 00001, 00002, ... without gaps in the sorted order of the file names, new
videos appended; a rejected video takes no id):

    talking_face_data/<bucket>/<category>/00001/
        sub_clip.mp4            the clip at the bucket size (H.264 + AAC), read only for its fps by the loader
        audio.wav               the audio track, 16-bit PCM, 44.1 kHz, source channels (as audio_extractor.py)
        images/frame_0.png …    every frame, RGB, the bucket size (ffmpeg's frame_%d numbering from 0)
        face_masks/frame_i.png  face-oval convex hull, uint8 {0,255} (wan/data/masks.py)
        lip_masks/frame_i.png   outer-lip polygons, uint8 {0,255} (as lip_mask_extractor.py)
    talking_face_data/video_<bucket>_path.txt   one absolute clip folder per line (all categories of the bucket)

Frames: resampled to `--fps` (default 25, the inference rate; frames dropped/repeated on the time axis), centre-
cropped to the bucket's aspect ratio and resized to 512×512 (square), 832×480 (rec) or 480×832 (vec) (W×H).

Rejected (reported, remembered so a rerun skips them, no clip id used up): no video/audio track, fewer than
`--min_frames` frames (default 81 = one training window), no face in any frame or in more than
`--max_no_face` of the frames. Frames without a face inside an accepted clip get empty masks and are counted in
the report.

A clip is built in `<bucket>/<category>/.work/<source name>/` and renamed to the next free id only once it is
accepted (after its masks), so the kept clips are numbered without gaps.

Resumable: `<bucket>/<category>/prepare_state.json` records every source's stage (and its clip id once it has
one); finished and rejected videos are skipped, a half-written clip is redone, masks already written are kept.
States of the first version (where rejected videos had used up ids) are read as they are: their clips keep their
ids, the ids their rejections had taken are freed, new clips get the next ids.

Masks need mediapipe 0.10.21, which lives in its own venv (`bash scripts/setup_preprocess_env.sh`). When
mediapipe is not importable here the mask step runs as a subprocess with that venv's python
($STABLEAVATAR_PREPROCESS_PYTHON or .venv-preprocess/bin/python): `python -m wan.data.masks --clips_from FILE`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from wan.data import masks as M
from wan.data.media import BUCKETS

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
CATEGORIES = ("speech", "singing", "dancing")  # the loader derives the prompt from these folder names
STATE_FILE = "prepare_state.json"


@dataclass
class Options:
    videos: Path
    out: Path
    bucket: str = "square"
    category: str = "speech"
    fps: int = 25
    min_frames: int = 81
    max_no_face: float = 0.5
    masks: bool = True
    progress: bool = True


@dataclass
class Report:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    no_face_frames: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class State:
    """`prepare_state.json`: {"version": 2, "sources": {source file name → entry}}. An entry is
    {"status": "extracted", "frames"} while its clip waits in `.work/` for masks, {"status": "done", "clip": "00001",
    "frames", "no_face_frames"} once accepted, {"status": "rejected", "reason"} (no clip id). An entry may hold its
    "clip" before "done": the id is reserved just before the clip is renamed to it (an interrupted run resumes
    there)."""

    VERSION = 2

    def __init__(self, path: Path):
        self.path = path
        data = json.loads(path.read_text()) if path.is_file() else {"version": self.VERSION, "sources": {}}
        version = data.get("version", 1)  # version 1 (no key): every source took an id when first seen
        if version > self.VERSION:
            raise ValueError(f"{path} was written by a newer dataset builder (state version {version}); update "
                             "this checkout or build into another --out")
        self.entries: dict[str, dict] = data["sources"]
        self.upgraded = version < self.VERSION
        self.freed_ids: list[str] = []  # ids that version-1 rejections had used up (their folders were removed)
        for e in self.entries.values():
            if e.get("status") == "rejected" and "clip" in e:
                self.freed_ids.append(e.pop("clip"))

    def next_clip_id(self) -> str:
        """One past the highest id of the state and of the clip folders beside it (never a folder we do not own)."""
        used = [int(e["clip"]) for e in self.entries.values() if "clip" in e]
        used += [int(p.name) for p in self.path.parent.iterdir() if p.is_dir() and p.name.isdigit()]
        return str(max(used, default=0) + 1).zfill(5)

    def set(self, source: str, **kv) -> None:
        self.entries.setdefault(source, {}).update(kv)
        self.save()

    def reject(self, source: str, reason: str) -> None:
        self.entries[source] = {"status": "rejected", "reason": reason}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.part")
        tmp.write_text(json.dumps({"version": self.VERSION, "sources": self.entries}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def _bar(it, progress: bool, **kw):
    if not progress:
        return it
    from tqdm import tqdm

    return tqdm(it, **kw)


def _mask_runner() -> list[str] | None:
    """Command prefix that runs `wan.data.masks`: None = in this process; else [python of the preprocess venv]."""
    if M.mediapipe_available():
        return None
    py = M.preprocess_python()
    if py is None:
        raise M.MissingPreprocessEnv(M.missing_mediapipe_message("the dataset builder's mask step") +
                                     "\nOr pass --no_masks to build the rest (the loader then uses all-ones masks).")
    return [str(py)]


def extract_clip(video: Path, clip_dir: Path, width: int, height: int, fps: int, min_frames: int) -> int:
    """Frames, audio.wav and sub_clip.mp4 of one video into `clip_dir` (created fresh). Returns the frame count;
    raises ValueError with the rejection reason."""
    import av
    import cv2

    from wan.data.media import extract_audio, fit_to_bucket, frames_at_fps
    from wan.io.audio import load_audio
    from wan.io.video import Mp4Writer

    try:
        with av.open(str(video)) as c:
            has_video, has_audio = bool(c.streams.video), bool(c.streams.audio)
    except av.error.FFmpegError as e:
        raise ValueError(f"unreadable ({e})") from e
    if not has_video:
        raise ValueError("no video track")
    if not has_audio:
        raise ValueError("no audio")
    if clip_dir.exists():
        shutil.rmtree(clip_dir)
    images = clip_dir / "images"
    images.mkdir(parents=True)
    extract_audio(video, clip_dir / "audio.wav", sample_rate=44100)
    speech = load_audio(video, sr=16000)
    if np.abs(speech).max() < 1e-4:
        raise ValueError("no audio (the track is silent)")
    n = 0
    with Mp4Writer(clip_dir / "sub_clip.mp4", width=width, height=height, fps=fps, audio=speech) as w:
        for rgb in frames_at_fps(video, fps):
            img = fit_to_bucket(rgb, width, height)
            # PNG level 1: 3-4x faster than the default for about 10 % more disk
            cv2.imwrite(str(images / f"frame_{n}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_PNG_COMPRESSION, 1])
            w.write(img[None])
            n += 1
        if n < min_frames:
            w.abort()
            raise ValueError(f"too short ({n} frames at {fps} fps < --min_frames {min_frames})")
    return n


def run_masks(clip_dirs: list[Path], progress: bool) -> dict[str, M.MaskStats]:
    """Lip + face masks for each clip: in-process with mediapipe, else through the preprocess venv's python."""
    out: dict[str, M.MaskStats] = {}
    if not clip_dirs:
        return out
    runner = _mask_runner()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(clip_dirs), desc="masks", unit="clip")
    if runner is None:
        with M.FaceMesh() as mesh:
            for d in clip_dirs:
                out[str(d)] = M.write_masks(d, mesh)
                if bar:
                    bar.update(1)
        if bar:
            bar.close()
        return out
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(str(d) for d in clip_dirs))
        listing = f.name
    env = dict(os.environ, PYTHONPATH=str(M.repo_root()), GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="3")
    err = tempfile.TemporaryFile("w+")
    try:
        proc = subprocess.Popen([*runner, "-m", "wan.data.masks", "--clips_from", listing], stdout=subprocess.PIPE,
                                stderr=err, text=True, cwd=str(M.repo_root()), env=env)
        for line in proc.stdout:
            if line.startswith("{"):
                s = M.MaskStats(**json.loads(line))
                out[s.clip] = s
                if bar:
                    bar.update(1)
        rc = proc.wait()
        if bar:
            bar.close()
        if rc != 0:
            err.seek(0)
            tail = "\n".join(l for l in err.read().splitlines() if not l.startswith(("W0000", "I0000")))[-3000:]
            raise RuntimeError(f"the mask step ({runner[0]} -m wan.data.masks) failed with exit code {rc}:\n{tail}")
    finally:
        os.unlink(listing)
        err.close()
    return out


def write_path_list(out: Path, bucket: str) -> Path:
    """`video_<bucket>_path.txt`: every finished clip of the bucket (all categories), absolute, sorted."""
    lines = []
    for state_file in sorted((out / bucket).glob(f"*/{STATE_FILE}")):
        for e in State(state_file).entries.values():
            if e.get("status") == "done":
                lines.append(str((state_file.parent / e["clip"]).resolve()))
    path = out / f"video_{bucket}_path.txt"
    path.write_text("".join(f"{l}\n" for l in sorted(lines)))
    return path


def prepare(opts: Options) -> Report:
    """Build / update the dataset (see the module docstring). Returns what happened in this run."""
    if opts.bucket not in BUCKETS:
        raise ValueError(f"--bucket {opts.bucket!r}: use one of {sorted(BUCKETS)}")
    if opts.category not in CATEGORIES:
        raise ValueError(f"--category {opts.category!r}: use one of {CATEGORIES} (the training loader derives "
                         "the prompt from it)")
    if not opts.videos.is_dir():
        raise ValueError(f"--videos {opts.videos} is not a folder")
    if opts.fps <= 0:
        raise ValueError(f"--fps must be a positive integer (got {opts.fps})")
    if opts.masks:
        _mask_runner()  # fail before any work when the mask step cannot run
    width, height = BUCKETS[opts.bucket]
    root = opts.out / opts.bucket / opts.category
    root.mkdir(parents=True, exist_ok=True)
    state = State(root / STATE_FILE)
    report = Report()
    videos = sorted(p for p in opts.videos.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not videos:
        raise ValueError(f"--videos {opts.videos} holds no video files ({', '.join(VIDEO_EXTENSIONS)})")

    if state.upgraded:
        state.save()  # as version 2, so the note below is given once
        if state.freed_ids:
            report.notes.append(
                f"{STATE_FILE} came from an earlier builder, where rejected videos used up clip ids "
                f"({M.id_ranges(int(c) for c in state.freed_ids)}): existing clips keep their ids (gaps stay), "
                "new clips are numbered after the highest one")
    work = root / ".work"  # clips wait here, without an id, until they are accepted

    def discard(src: str, reason: str, *dirs: Path) -> None:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        clip = state.entries.get(src, {}).get("clip")
        if clip:  # an id reserved by an interrupted run, or a finished clip whose frames were deleted
            shutil.rmtree(root / clip, ignore_errors=True)
        state.reject(src, reason)
        report.rejected[src] = reason

    # 1. extract every new video into .work/<name>/ (a rejection here takes no id)
    to_mask: dict[str, Path] = {}
    for video in _bar(videos, opts.progress, desc=f"extract {opts.bucket}/{opts.category}", unit="video"):
        src = video.name
        entry = state.entries.get(src, {})
        status, clip = entry.get("status"), entry.get("clip")
        if status == "rejected" or (status == "done" and clip and (root / clip / "images").is_dir()):
            report.skipped.append(src)
            continue
        staged = work / src
        ready = [d for d in (staged, *([root / clip] if clip else [])) if (d / "sub_clip.mp4").is_file()]
        if status == "extracted" and ready:  # interrupted in the mask step or in the rename (or a version-1 state)
            to_mask[src] = ready[0]
            continue
        try:
            n = extract_clip(video, staged, width, height, opts.fps, opts.min_frames)
        except ValueError as e:
            discard(src, str(e), staged)
            continue
        state.set(src, status="extracted", frames=n)
        to_mask[src] = staged

    # 2. masks (one mediapipe start for all clips)
    stats = run_masks(list(to_mask.values()), opts.progress) if opts.masks else {}

    # 3. accept or reject; an accepted clip gets the next id, in the sorted order of the file names
    for src, clip_dir in to_mask.items():
        s = stats.get(str(clip_dir))
        if opts.masks and s is None:
            raise RuntimeError(f"the mask step returned nothing for {clip_dir}")
        no_face = len(s.no_face) if s else 0
        frames = s.frames if s else state.entries[src].get("frames", 0)
        reason = None
        if s and no_face == frames:
            reason = "no face (in any frame)"
        elif s and no_face > opts.max_no_face * frames:
            reason = f"no face in {no_face} of {frames} frames (> --max_no_face {opts.max_no_face})"
        if reason:
            discard(src, reason, clip_dir)
            continue
        clip = state.entries[src].get("clip") or state.next_clip_id()
        target = root / clip
        if clip_dir != target:
            state.set(src, clip=clip)  # reserved before the rename, so an interruption cannot lose or reuse it
            if target.exists():  # a half-renamed or half-written clip of this source
                shutil.rmtree(target)
            os.replace(clip_dir, target)
        state.set(src, status="done", frames=frames, no_face_frames=no_face)
        report.done.append(src)
        if no_face:
            report.no_face_frames[src] = no_face
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()
    write_path_list(opts.out, opts.bucket)
    return report


def print_report(report: Report, opts: Options) -> None:
    print(f"{len(report.done)} clips finished, {len(report.skipped)} already processed (skipped), "
          f"{len(report.rejected)} rejected -> {opts.out / f'video_{opts.bucket}_path.txt'}")
    for src, n in sorted(report.no_face_frames.items()):
        print(f"  kept with empty masks on {n} frames without a face: {src}")
    for src, why in sorted(report.rejected.items()):
        print(f"  rejected {src}: {why}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"state and all earlier rejections: {opts.out / opts.bucket / opts.category / STATE_FILE}")


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m wan.data.prepare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=Path, required=True, help="folder of raw videos (mp4/mov/mkv/webm/avi)")
    p.add_argument("--out", type=Path, default=Path("talking_face_data"), help="dataset root")
    p.add_argument("--bucket", choices=sorted(BUCKETS), default="square",
                   help="square 512x512, rec 832x480, vec 480x832 (WxH)")
    p.add_argument("--category", choices=CATEGORIES, default="speech", help="sub-folder; sets the training prompt")
    p.add_argument("--fps", type=int, default=25, help="output frame rate (frames resampled on the time axis)")
    p.add_argument("--min_frames", type=int, default=81, help="reject shorter clips (81 = one training window)")
    p.add_argument("--max_no_face", type=float, default=0.5,
                   help="reject clips with more than this fraction of frames without a face")
    p.add_argument("--no_masks", action="store_true", help="skip face/lip masks (no mediapipe venv needed)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    return Options(videos=a.videos, out=a.out, bucket=a.bucket, category=a.category, fps=a.fps,
                   min_frames=a.min_frames, max_no_face=a.max_no_face, masks=not a.no_masks,
                   progress=not a.no_progress)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        report = prepare(opts)
    except (ValueError, M.MissingPreprocessEnv, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(report, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
