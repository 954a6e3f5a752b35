"""Lip/face masks: geometry of the mask drawing (main venv), mediapipe on the real case-1 image (preprocess venv).

The mediapipe tests run `python -m wan.data.masks` / `lip_mask_extractor.py` with the preprocess venv's python
($STABLEAVATAR_PREPROCESS_PYTHON or .venv-preprocess/); they skip when neither exists and fail when the variable
points nowhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wan.data import masks as M

ROOT = Path(__file__).resolve().parents[1]
CASE1 = Path(__file__).parent / "data" / "case-1-reference-256.png"  # 790×790 original, LANCZOS to 256×256
# boxes read off the image by eye (x0, y0, x1, y1 as fractions): the face (brows to chin, cheek to cheek) and mouth
FACE_BOX = (0.28, 0.22, 0.76, 0.80)
MOUTH_BOX = (0.38, 0.50, 0.65, 0.70)


def preprocess_python() -> Path:
    try:
        py = M.preprocess_python()
    except ValueError as e:
        pytest.fail(str(e))
    if py is None:
        pytest.skip(f"no preprocess venv (mediapipe 0.10.21): run `{M.SETUP_COMMAND}` "
                    f"or set {M.PREPROCESS_PYTHON_ENV}")
    return py


def _ellipse(cx, cy, a, b, angles):
    return np.stack([cx + a * np.cos(angles), cy + b * np.sin(angles)], axis=1)


def test_lip_and_face_mask_geometry():
    """Landmarks placed on known shapes: lip corners 61/291 at the ends of an ellipse's major axis, upper lip on its
    top half, lower lip on its bottom half → the union is the ellipse; the face oval on a circle → its disc."""
    h, w = 200, 300
    lm = np.full((M.NUM_LANDMARKS, 2), 0.5)
    up = _ellipse(0.5, 0.6, 0.2, 0.1, np.linspace(np.pi, 2 * np.pi, len(M.LIP_UPPER)))  # y up = smaller
    lo = _ellipse(0.5, 0.6, 0.2, 0.1, np.linspace(np.pi, 0, len(M.LIP_LOWER)))
    lm[list(M.LIP_UPPER)] = up
    lm[list(M.LIP_LOWER)] = lo
    ring = _ellipse(0.5, 0.5, 0.3, 0.45, np.linspace(0, 2 * np.pi, len(M.FACE_OVAL), endpoint=False))
    lm[list(M.FACE_OVAL)] = ring
    lip = M.lip_mask([lm], h, w)
    face = M.face_mask([lm], h, w)
    assert lip.dtype == np.uint8 and lip.shape == (h, w) and set(np.unique(lip)) == {0, 255}
    ellipse_area = np.pi * (0.2 * w) * (0.1 * h)
    assert abs((lip > 0).sum() / ellipse_area - 1) < 0.08
    ys, xs = np.nonzero(lip)
    assert abs(xs.mean() - 0.5 * w) < 2 and abs(ys.mean() - 0.6 * h) < 2
    assert abs((face > 0).sum() / (np.pi * 0.3 * w * 0.45 * h) - 1) < 0.05
    # two faces: union; no face: empty
    lm2 = lm.copy()
    lm2[:, 0] -= 0.3
    assert (M.lip_mask([lm, lm2], h, w) > 0).sum() > 1.8 * (lip > 0).sum()
    assert M.lip_mask([], h, w).max() == 0 and M.face_mask([], h, w).max() == 0


def test_pixel_coordinates_truncate_like_the_original():
    lm = np.zeros((M.NUM_LANDMARKS, 2))
    lm[61] = (0.4999, 0.2999)  # int(0.4999·100) = 49, int(0.2999·10) = 2
    lm[291] = (-0.001, 1.0)  # int() truncates toward zero: 0, not -1
    px = M.landmark_pixels(lm, [61, 291], 10, 100)
    assert px.tolist() == [[49, 2], [0, 10]] and px.dtype == np.int32


def test_id_ranges():
    assert M.id_ranges([]) == ""
    assert M.id_ranges([7]) == "00007"
    assert M.id_ranges(range(3, 501)) == "00003..00500"
    assert M.id_ranges([9, 3, 4, 5, 12]) == "00003..00005, 00009, 00012"
    assert M.id_ranges([1, 3, 5, 7, 8], limit=2) == "00001, 00003, and 2 more"


def test_missing_clip_folders_are_summed_up(tmp_path):
    """The README's range (--start 1 --end 501) over 2 clip folders: no mediapipe needed to find them, one summary
    line for the 498 missing ones (upstream printed 498 lines); a folder without images/ is counted apart."""
    for idx in (1, 2):
        (tmp_path / f"{idx:05d}" / "images").mkdir(parents=True)
    r = M.scan_clip_range(tmp_path, 1, 501)
    assert r.found == [tmp_path / "00001", tmp_path / "00002"] and r.missing == list(range(3, 501))
    assert r.summary() == ("498 of 500 clip folders 00001..00500 do not exist (00003..00500); processed 0: "
                           "0 frames masked, 0 without a face (is --folder_root the folder holding 00001/, 00002/, "
                           "...?)")
    (tmp_path / "00250").mkdir()  # a clip folder without frames
    r = M.scan_clip_range(tmp_path, 1, 501)
    assert r.missing == [*range(3, 250), *range(251, 501)] and r.no_images == [250]
    assert r.summary().startswith("497 of 500 clip folders 00001..00500 do not exist (00003..00249, "
                                  "00251..00500); 1 have no images/ folder (00250); processed 0")
    assert M.scan_clip_range(tmp_path, 1, 3).summary().startswith("processed 0 clip folders 00001..00002: ")
    with pytest.raises(ValueError, match="end-exclusive"):
        M.scan_clip_range(tmp_path, 5, 5)
    with pytest.raises(ValueError, match="is not a folder"):
        M.scan_clip_range(tmp_path / "nope", 1, 2)


class _FakeMesh:
    """Stands in for mediapipe's face mesh: one face (all landmarks at the centre) unless the frame is grey."""

    def __init__(self, *args, **kwargs):
        pass

    def detect(self, rgb):
        return [] if (rgb == 128).all() else [np.full((M.NUM_LANDMARKS, 2), 0.5)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def test_extract_clip_range_reports_missing_folders_once(tmp_path, monkeypatch):
    """The whole loop with a stand-in face mesh: 2 existing clip folders of 500, lip (+ face) masks written, one
    summary, no per-folder "does not exist" line."""
    import cv2

    monkeypatch.setattr(M, "FaceMesh", _FakeMesh)
    for idx in (1, 2):
        (tmp_path / f"{idx:05d}" / "images").mkdir(parents=True)
        cv2.imwrite(str(tmp_path / f"{idx:05d}" / "images" / "frame_0.png"), np.full((32, 48, 3), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "00002" / "images" / "frame_1.png"), np.full((32, 48, 3), 128, np.uint8))
    lines: list[str] = []
    r = M.extract_clip_range(tmp_path, 1, 501, log=lines.append)
    assert not any("does not exist" in l for l in lines)
    assert [s.written for s in r.clips] == [1, 2] and r.clips[1].no_face == ["frame_1"]
    assert (tmp_path / "00002" / "lip_masks" / "frame_1.png").is_file()
    assert not (tmp_path / "00001" / "face_masks").exists()
    assert r.summary() == ("498 of 500 clip folders 00001..00500 do not exist (00003..00500); processed 2: "
                           "3 frames masked, 1 without a face")
    r = M.extract_clip_range(tmp_path, 1, 501, face=True, log=lines.append)  # --face_masks: same summary
    assert (tmp_path / "00002" / "face_masks" / "frame_1.png").is_file()
    assert r.summary().startswith("498 of 500 clip folders 00001..00500 do not exist (00003..00500); processed 2")
    monkeypatch.setattr(M, "FaceMesh", None)  # nothing to process: mediapipe is never started
    assert M.extract_clip_range(tmp_path, 3, 10).clips == []


def test_missing_mediapipe_gives_a_hint(monkeypatch):
    if M.mediapipe_available():
        pytest.skip("mediapipe is importable in this interpreter")
    with pytest.raises(M.MissingPreprocessEnv, match="setup_preprocess_env.sh"):
        M.FaceMesh()
    monkeypatch.setenv(M.PREPROCESS_PYTHON_ENV, "/nonexistent/python")
    with pytest.raises(ValueError, match="does not exist"):
        M.preprocess_python()


def _stats(mask):
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return xs.mean() / w, ys.mean() / h, (mask > 0).mean()


def test_masks_on_case1_and_no_face(tmp_path):
    """Real image through mediapipe 0.10.21 (preprocess venv): lip mask on the mouth, face mask on the face,
    a grey frame → empty masks, reported."""
    py = preprocess_python()
    import cv2

    clip = tmp_path / "00001"
    (clip / "images").mkdir(parents=True)
    shutil.copy(CASE1, clip / "images" / "frame_0.png")
    cv2.imwrite(str(clip / "images" / "frame_1.png"), np.full((256, 256, 3), 128, np.uint8))
    r = subprocess.run([str(py), "-m", "wan.data.masks", "--clip", str(clip)], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["frames"] == 2 and report["written"] == 2 and report["no_face"] == ["frame_1"]
    lip = cv2.imread(str(clip / "lip_masks" / "frame_0.png"), cv2.IMREAD_UNCHANGED)
    face = cv2.imread(str(clip / "face_masks" / "frame_0.png"), cv2.IMREAD_UNCHANGED)
    assert lip.shape == face.shape == (256, 256) and lip.dtype == np.uint8 and set(np.unique(lip)) == {0, 255}
    lx, ly, la = _stats(lip)
    fx, fy, fa = _stats(face)
    print(f"case-1 256px: lip centroid ({lx:.3f}, {ly:.3f}) area {la:.4f}; face centroid ({fx:.3f}, {fy:.3f}) "
          f"area {fa:.4f}")
    assert MOUTH_BOX[0] < lx < MOUTH_BOX[2] and MOUTH_BOX[1] < ly < MOUTH_BOX[3]
    assert FACE_BOX[0] < fx < FACE_BOX[2] and FACE_BOX[1] < fy < FACE_BOX[3]
    assert 0.008 < la < 0.05 and 0.08 < fa < 0.35
    assert ((lip > 0) & (face == 0)).sum() == 0  # the mouth lies inside the face
    ys, xs = np.nonzero(face)
    assert xs.min() / 256 > FACE_BOX[0] - 0.05 and xs.max() / 256 < FACE_BOX[2] + 0.05  # no hair/background
    for sub in ("lip_masks", "face_masks"):
        assert cv2.imread(str(clip / sub / "frame_1.png"), cv2.IMREAD_UNCHANGED).max() == 0
    # resumable: a second run computes nothing
    r = subprocess.run([str(py), "-m", "wan.data.masks", "--clip", str(clip)], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert json.loads(r.stdout.strip().splitlines()[-1])["written"] == 0


def test_lip_mask_extractor_cli(tmp_path):
    """Original flags and layout, end exclusive; run with the main venv's python it hands over to the preprocess
    venv by itself."""
    preprocess_python()
    for idx in (1, 2, 3):
        (tmp_path / f"{idx:05d}" / "images").mkdir(parents=True)
        shutil.copy(CASE1, tmp_path / f"{idx:05d}" / "images" / "frame_0.png")
    cmd = [sys.executable, str(ROOT / "lip_mask_extractor.py"), "--folder_root", str(tmp_path), "--start", "1",
           "--end", "3"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "00001" / "lip_masks" / "frame_0.png").is_file()
    assert (tmp_path / "00002" / "lip_masks" / "frame_0.png").is_file()
    assert not (tmp_path / "00003" / "lip_masks").exists()  # end exclusive
    assert not (tmp_path / "00001" / "face_masks").exists()  # the original writes lip masks only
    assert "00004" not in r.stdout
    # the README's range over 3 clip folders: one summary line, not 497 "does not exist" lines, exit code 0
    cmd[-3:] = ["1", "--end", "501", "--face_masks"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "does not exist" not in r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == ("497 of 500 clip folders 00001..00500 do not exist (00004..00500); "
                                         "processed 3: 3 frames masked, 0 without a face")
    assert (tmp_path / "00003" / "face_masks" / "frame_0.png").is_file()


def test_lip_mask_extractor_without_venv(tmp_path):
    """No mediapipe, no preprocess venv → a message with the setup command, no traceback; --help always works."""
    env = dict(os.environ)
    env.pop(M.PREPROCESS_PYTHON_ENV, None)
    script = tmp_path / "lip_mask_extractor.py"
    shutil.copy(ROOT / "lip_mask_extractor.py", script)
    shutil.copytree(ROOT / "wan" / "data", tmp_path / "wan" / "data", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "wan" / "__init__.py").write_text("")
    h = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, env=env)
    assert h.returncode == 0 and "--folder_root" in h.stdout
    if M.mediapipe_available():
        pytest.skip("mediapipe is importable in this interpreter")
    r = subprocess.run([sys.executable, str(script), "--folder_root", str(tmp_path), "--start", "1", "--end", "2"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "setup_preprocess_env.sh" in r.stderr and "Traceback" not in r.stderr
