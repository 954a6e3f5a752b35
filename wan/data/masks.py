"""Lip and face masks from mediapipe face-mesh landmarks (the original's `lip_mask_extractor.py`, plus face masks).

Lip mask (as the original draws it, spec scripts.md §7): for every detected face, the outer lip contour as two
polygons from corner 61 to corner 291 (upper and lower lip), pixel coordinates `(int(x·W), int(y·H))`
(truncation), each filled with 255 by `cv2.fillPoly`; the implicit closing chord 291→61 makes the union cover
the whole mouth including its opening. No dilation, no blur.

Face mask (the original takes it from the StableAnimator repository's tool, not shipped): the convex hull of
the 36 face-oval landmarks (mediapipe's FACEMESH_FACE_OVAL ring: forehead 10 → right cheek → chin 152 → left
cheek), filled with 255, union over faces. It covers forehead-to-chin and cheek-to-cheek, no hair, no neck.

Both masks are single-channel uint8 `[H, W]` in {0, 255}, the size of the frame; a frame without a detected face
gives an all-zero mask (reported, never an error).

mediapipe 0.10.21 (the last release that ships the face-mesh model) pins numpy<2 / protobuf<5 and replaces cv2,
so it lives in its own venv (`bash scripts/setup_preprocess_env.sh` → `.venv-preprocess/`). This module is
therefore importable with numpy alone (cv2 and mediapipe are imported where used) and runs unchanged in both
venvs; `python -m wan.data.masks --clip DIR ...` is the entry point the dataset builder calls with the
preprocess venv's python.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

# outer lip contour, corner to corner (upstream lip_mask_extractor.py)
LIP_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIP_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
# mediapipe face_mesh_connections.FACEMESH_FACE_OVAL as an ordered ring (forehead, right side, chin, left side)
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
NUM_LANDMARKS = 468  # refine_landmarks=False, as the original

PREPROCESS_PYTHON_ENV = "STABLEAVATAR_PREPROCESS_PYTHON"
DEFAULT_VENV = ".venv-preprocess"
SETUP_COMMAND = "bash scripts/setup_preprocess_env.sh"


class MissingPreprocessEnv(RuntimeError):
    """mediapipe is not importable here and no preprocess venv was found; the message says how to make one."""


def repo_root() -> Path:
    """The checkout this module lives in (wan/data/masks.py → ../..)."""
    return Path(__file__).resolve().parents[2]


def mediapipe_available() -> bool:
    """True when `import mediapipe` would find a package in this interpreter (does not import it)."""
    return importlib.util.find_spec("mediapipe") is not None


def preprocess_python() -> Path | None:
    """The preprocess venv's python: $STABLEAVATAR_PREPROCESS_PYTHON if set, else `<repo>/.venv-preprocess/bin/python`
    if it exists, else None. A set variable that points nowhere is a user error (ValueError)."""
    env = os.environ.get(PREPROCESS_PYTHON_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise ValueError(f"{PREPROCESS_PYTHON_ENV}={env} does not exist; run `{SETUP_COMMAND}` "
                             f"and point it at .venv-preprocess/bin/python (or unset it)")
        return p
    p = repo_root() / DEFAULT_VENV / "bin" / "python"
    return p if p.is_file() else None


def missing_mediapipe_message(what: str = "face and lip masks") -> str:
    return (f"{what} need mediapipe==0.10.21, which must not go into the main environment (it downgrades numpy "
            f"and protobuf and replaces cv2). Create its own venv once with\n    {SETUP_COMMAND}\n"
            f"(writes {DEFAULT_VENV}/; set {PREPROCESS_PYTHON_ENV}=/path/to/python to use another one), then run "
            f"the command again: the scripts hand the mask step to that venv by themselves, or run it directly "
            f"with {DEFAULT_VENV}/bin/python.")


# ------------------------------------------------------------------------------------------------
# masks from landmarks (pure numpy + cv2; testable without mediapipe)


def landmark_pixels(landmarks: np.ndarray, indices: Sequence[int], height: int, width: int) -> np.ndarray:
    """int32 `[len(indices), 2]` pixel (x, y) of normalised landmarks `[468, 2]` (x/W, y/H), truncated like
    the original's `int(x * w)` (toward zero)."""
    pts = np.asarray(landmarks, dtype=np.float64)[list(indices)]
    # the original multiplies Python floats (float64) and truncates with int()
    return np.stack([np.trunc(pts[:, 0] * width), np.trunc(pts[:, 1] * height)], axis=1).astype(np.int32)


def lip_mask(faces: Iterable[np.ndarray], height: int, width: int) -> np.ndarray:
    """uint8 `[H, W]` lip mask: upper and lower outer-lip polygons of every face filled with 255."""
    import cv2

    mask = np.zeros((height, width), dtype=np.uint8)
    for lm in faces:
        cv2.fillPoly(mask, [landmark_pixels(lm, LIP_UPPER, height, width)], 255)
        cv2.fillPoly(mask, [landmark_pixels(lm, LIP_LOWER, height, width)], 255)
    return mask


def face_mask(faces: Iterable[np.ndarray], height: int, width: int) -> np.ndarray:
    """uint8 `[H, W]` face mask: the filled convex hull of every face's oval landmarks."""
    import cv2

    mask = np.zeros((height, width), dtype=np.uint8)
    for lm in faces:
        hull = cv2.convexHull(landmark_pixels(lm, FACE_OVAL, height, width))
        cv2.fillConvexPoly(mask, hull, 255)
    return mask


# ------------------------------------------------------------------------------------------------
# mediapipe


class FaceMesh:
    """mediapipe's legacy FaceMesh as the original configures it: `static_image_mode=True, max_num_faces=10`
    (refine_landmarks False, min_detection_confidence 0.5). `detect(rgb)` → list of float `[468, 2]` normalised
    (x, y) per face (empty when no face)."""

    def __init__(self, max_num_faces: int = 10, min_detection_confidence: float = 0.5):
        try:
            import mediapipe as mp
        except ImportError as e:
            raise MissingPreprocessEnv(missing_mediapipe_message()) from e
        if not hasattr(mp, "solutions"):
            raise MissingPreprocessEnv(
                f"mediapipe {getattr(mp, '__version__', '?')} has no legacy face mesh (mp.solutions; removed after "
                f"0.10.21).\n" + missing_mediapipe_message())
        self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_num_faces,
                                                     min_detection_confidence=min_detection_confidence)

    def detect(self, rgb: np.ndarray) -> list[np.ndarray]:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"detect() needs an RGB uint8 [H, W, 3] image (got {rgb.dtype} {rgb.shape})")
        result = self._mesh.process(rgb)
        faces = result.multi_face_landmarks or []
        return [np.array([(p.x, p.y) for p in f.landmark], dtype=np.float64) for f in faces]

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceMesh:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def masks_for_image(mesh: FaceMesh, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(lip mask, face mask, number of faces) for an RGB uint8 `[H, W, 3]` image."""
    h, w = rgb.shape[:2]
    faces = mesh.detect(rgb)
    return lip_mask(faces, h, w), face_mask(faces, h, w), len(faces)


# ------------------------------------------------------------------------------------------------
# folders


@dataclass
class MaskStats:
    """What `write_masks` did for one `images/` folder."""

    clip: str
    frames: int = 0           # png frames found
    written: int = 0          # frames whose masks were computed now (others existed)
    no_face: list[str] = field(default_factory=list)  # frame stems without a detected face (written now)


def _write_png(path: Path, img: np.ndarray) -> None:
    """cv2.imwrite through a temporary name, so an interrupted run never leaves a truncated mask behind
    (a later run skips existing files)."""
    import cv2

    tmp = path.with_name(f".{path.stem}.part.png")
    if not cv2.imwrite(str(tmp), img):
        raise OSError(f"cannot write {tmp}")
    os.replace(tmp, path)


def frame_files(images_dir: Path) -> list[Path]:
    """All `*.png` under `images_dir` (os.walk, as the original), in frame-number order."""
    found = [Path(root) / f for root, _, files in os.walk(images_dir) for f in files
             if f.endswith(".png") and not f.startswith(".")]

    def key(p: Path):
        tail = p.stem.rsplit("_", 1)[-1]
        return (0, int(tail), p.name) if tail.isdigit() else (1, 0, p.name)

    return sorted(found, key=key)


def write_masks(clip_dir: str | os.PathLike, mesh: FaceMesh, lip: bool = True, face: bool = True,
                log: Callable[[str], None] | None = None) -> MaskStats:
    """Masks for every frame of `clip_dir/images/*.png` into `clip_dir/lip_masks/` and/or `clip_dir/face_masks/`
    (same file names). Frames whose requested masks all exist are skipped (resumable, as the original)."""
    import cv2

    clip_dir = Path(clip_dir)
    images = clip_dir / "images"
    stats = MaskStats(clip=str(clip_dir))
    if not images.is_dir():
        raise FileNotFoundError(f"{images} does not exist")
    outs = [d for d, on in ((clip_dir / "lip_masks", lip), (clip_dir / "face_masks", face)) if on]
    for d in outs:
        d.mkdir(exist_ok=True)
    for frame in frame_files(images):
        stats.frames += 1
        targets = [d / f"{frame.stem}.png" for d in outs]
        if all(t.exists() for t in targets):
            continue
        bgr = cv2.imread(str(frame), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{frame}: not a readable image")
        lip_m, face_m, n = masks_for_image(mesh, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if n == 0:
            stats.no_face.append(frame.stem)
            if log:
                log(f"No face detected in {frame}. Saving empty mask.")
        for t, m in zip(targets, [m for m, on in ((lip_m, lip), (face_m, face)) if on]):
            _write_png(t, m)
        stats.written += 1
    return stats


def id_ranges(ids: Iterable[int], limit: int = 3) -> str:
    """Clip ids as zero-padded runs, at most `limit` of them: [3, 4, 5, 9] → "00003..00005, 00009"."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = [f"{a:05d}" if a == b else f"{a:05d}..{b:05d}" for a, b in runs[:limit]]
    if len(runs) > limit:
        text.append(f"and {len(runs) - limit} more")
    return ", ".join(text)


@dataclass
class RangeReport:
    """The clip folders `str(idx).zfill(5)` for idx in range(start, end): which exist, which were processed."""

    start: int
    end: int
    found: list[Path] = field(default_factory=list)      # folders holding images/
    missing: list[int] = field(default_factory=list)     # ids without a folder: normal, not an error
    no_images: list[int] = field(default_factory=list)   # folders without images/ (skipped)
    clips: list[MaskStats] = field(default_factory=list)  # what write_masks did for each processed folder

    def summary(self) -> str:
        """One line, however many folders are missing (the original printed one line per missing folder)."""
        n, span = self.end - self.start, f"{self.start:05d}..{self.end - 1:05d}"
        head = []
        if self.missing:
            head.append(f"{len(self.missing)} of {n} clip folders {span} do not exist ({id_ranges(self.missing)})")
        if self.no_images:
            head.append(f"{len(self.no_images)} have no images/ folder ({id_ranges(self.no_images)})")
        done = (f"processed {len(self.clips)}" if head else f"processed {len(self.clips)} clip folders {span}")
        no_face = sum(len(s.no_face) for s in self.clips)
        line = "; ".join([*head, f"{done}: {sum(s.written for s in self.clips)} frames masked, {no_face} without "
                                 "a face"])
        if not self.clips:
            line += " (is --folder_root the folder holding 00001/, 00002/, ...?)"
        return line


def scan_clip_range(folder_root: str | os.PathLike, start: int, end: int) -> RangeReport:
    """Which clip folders of range(start, end) (end exclusive, as upstream) hold `images/`; needs no mediapipe."""
    if end <= start:
        raise ValueError(f"--end ({end}) must be greater than --start ({start}); the range is end-exclusive "
                         "like the original (--start 1 --end 501 covers 00001…00500)")
    root = Path(folder_root)
    if not root.is_dir():
        raise ValueError(f"--folder_root {root} is not a folder")
    report = RangeReport(start, end)
    for idx in range(start, end):
        clip = root / str(idx).zfill(5)
        if (clip / "images").is_dir():
            report.found.append(clip)
        else:
            (report.no_images if clip.is_dir() else report.missing).append(idx)
    return report


def extract_clip_range(folder_root: str | os.PathLike, start: int, end: int, face: bool = False,
                       log: Callable[[str], None] = print) -> RangeReport:
    """The original script's loop: sub-folders `str(idx).zfill(5)` for idx in range(start, end) (end exclusive,
    as upstream), `images/` → `lip_masks/` (+ `face_masks/` when `face`). Folders without `images/` are skipped
    and summed up by `RangeReport.summary()` instead of one message each; mediapipe starts only when a folder
    exists."""
    report = scan_clip_range(folder_root, start, end)
    if not report.found:
        return report
    with FaceMesh() as mesh:
        for clip in report.found:
            s = write_masks(clip, mesh, lip=True, face=face, log=log)
            log(f"{clip}: {s.frames} frames, {s.written} new masks, {len(s.no_face)} without a face")
            report.clips.append(s)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m wan.data.masks --clip DIR [--clip DIR ...] | --clips_from FILE`: lip + face masks for each clip folder; one JSON line
    per finished clip on stdout (the dataset builder reads them for its progress bar and report)."""
    p = argparse.ArgumentParser(prog="python -m wan.data.masks", description=main.__doc__)
    p.add_argument("--clip", action="append", default=[], help="clip folder holding images/ (repeatable)")
    p.add_argument("--clips_from", type=Path, help="text file with one clip folder per line")
    p.add_argument("--no_face_masks", action="store_true", help="only lip_masks/")
    p.add_argument("--no_lip_masks", action="store_true", help="only face_masks/")
    args = p.parse_args(argv)
    clips = list(args.clip)
    if args.clips_from:
        clips += [line.strip() for line in args.clips_from.read_text().splitlines() if line.strip()]
    if not clips:
        p.error("give --clip DIR or --clips_from FILE")
    try:
        mesh = FaceMesh()
    except MissingPreprocessEnv as e:
        print(str(e), file=sys.stderr)
        return 3
    with mesh:
        for clip in clips:
            s = write_masks(clip, mesh, lip=not args.no_lip_masks, face=not args.no_face_masks)
            print(json.dumps(asdict(s)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
