"""Lip masks (and optionally face masks) for clip folders with mediapipe face mesh (the original's flags and layout).

    python lip_mask_extractor.py --folder_root talking_face_data/square/speech --start 1 --end 501 [--face_masks]

For idx in range(start, end) — end EXCLUSIVE, as the original (its README's `--end=500` stops at 00499) —
reads `R/<idx:05d>/images/*.png` and writes `R/<idx:05d>/lip_masks/<same name>.png` (uint8 {0,255}, outer-lip
polygons exactly as the original draws them); `--face_masks` also writes `face_masks/` (face-oval convex hull).
Existing masks are skipped; frames without a face get an empty mask. Clip folders of the range that do not exist
are normal (the README's range 1..501 on a smaller dataset): one summary line at the end names them, exit code 0.

mediapipe 0.10.21 lives in its own venv (`bash scripts/setup_preprocess_env.sh` → .venv-preprocess/). Run this
script with any python: without mediapipe it re-runs itself with $STABLEAVATAR_PREPROCESS_PYTHON or
.venv-preprocess/bin/python, or says how to create that venv.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the preprocess venv does not install the project


def main(args: argparse.Namespace) -> int:
    from wan.data import masks

    if not masks.mediapipe_available():
        try:
            py = masks.preprocess_python()
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if py is None or Path(sys.prefix).resolve() == py.parent.parent.resolve():  # already that venv
            print(f"error: {masks.missing_mediapipe_message('lip masks')}", file=sys.stderr)
            return 2
        print(f"mediapipe is not installed here; running with {py}", file=sys.stderr)
        sys.stdout.flush()
        os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])
    try:
        report = masks.extract_clip_range(args.folder_root, args.start, args.end, face=args.face_masks)
    except (ValueError, FileNotFoundError, masks.MissingPreprocessEnv) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())  # missing clip folders are summed up here, never an error
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder_root", type=str, required=True, help="folder holding 00001/, 00002/, ...")
    p.add_argument("--start", type=int, required=True, help="first clip index (inclusive)")
    p.add_argument("--end", type=int, required=True, help="last clip index (EXCLUSIVE, as the original)")
    p.add_argument("--face_masks", action="store_true", help="also write face_masks/ (not in the original)")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
