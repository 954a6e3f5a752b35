"""Write a tiny training dataset in the original's layout: synthetic clips, masks, audio and the path lists.

    python -m wan.testing.tiny_dataset --out DIR [--buckets square rec vec] [--clips 2] [--frames 14]

Each clip is a bright square moving over a plain background, a lip mask inside a face mask, a tone whose pitch
depends on the clip, and `sub_clip.mp4` (read only for its frame rate). Bucket sizes are tiny (`SIZES`), for the
tiny model (`--model_spec tiny`); the training command needs the same `--bucket_sizes` (printed). Tests and the
CPU smoke run (docs/training.md) use it; real data comes from `python -m wan.data.prepare`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

FPS = 25
# (width, height) per bucket name: multiples of 16, the shapes of the real buckets (square, landscape, portrait)
SIZES: dict[str, tuple[int, int]] = {"square": (32, 32), "rec": (48, 32), "vec": (32, 48)}
CATEGORIES = ("speech", "singing", "dancing")  # the folder name sets the training prompt


def make_clip(folder: Path, num_frames: int, width: int, height: int, seed: int, fps: int = FPS,
              masks: bool = True) -> Path:
    """One clip folder in the original layout: a moving bright square, a lip mask inside a face mask,
    a tone whose pitch follows the seed, sub_clip.mp4 at `fps` (read only for its rate)."""
    import soundfile as sf
    from PIL import Image

    from wan.io.video import Mp4Writer

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "face_masks", "lip_masks"):
        (folder / sub).mkdir(exist_ok=True)
    bg = rng.integers(40, 200, size=3)
    frames = []
    for i in range(num_frames):
        img = np.zeros((height, width, 3), np.uint8) + bg.astype(np.uint8)
        x = (i * 2) % max(1, width - height // 3)
        s = height // 3
        img[s:2 * s, x:x + s] = (250, 230, 200)
        frames.append(img)
        Image.fromarray(img).save(folder / "images" / f"frame_{i}.png")
        if masks:
            face = np.zeros((height, width), np.uint8)
            face[s:2 * s, x:x + s] = 255
            lip = np.zeros((height, width), np.uint8)
            lip[s + s // 2:2 * s, x + s // 4:x + s - s // 4] = 255
            Image.fromarray(face).save(folder / "face_masks" / f"frame_{i}.png")
            Image.fromarray(lip).save(folder / "lip_masks" / f"frame_{i}.png")
    n = int(num_frames / fps * 16000)
    t = np.arange(n) / 16000
    sf.write(folder / "audio.wav", (0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t)).astype(np.float32), 16000)
    with Mp4Writer(folder / "sub_clip.mp4", width, height, fps=fps) as w:
        w.write(np.stack(frames))
    return folder


def make_dataset(root: Path, buckets: dict[str, tuple[int, int]], clips_per_bucket: int = 2,
                 num_frames: int = 24) -> dict[str, Path]:
    """`root/<bucket>/{speech,singing,dancing}/0000k/` clips and `root/video_<bucket>_path.txt` lists (absolute
    paths); returns the list file of each bucket."""
    root = Path(root).resolve()
    lists = {}
    for b, (w, h) in buckets.items():
        lines = []
        for k in range(clips_per_bucket):
            clip = make_clip(root / b / CATEGORIES[k % 3] / f"{k + 1:05d}", num_frames, w, h, seed=k)
            lines.append(str(clip))
        lists[b] = root / f"video_{b}_path.txt"
        lists[b].write_text("\n".join(lines) + "\n")
    return lists


def main(args: argparse.Namespace) -> None:
    lists = make_dataset(Path(args.out), {b: SIZES[b] for b in args.buckets}, args.clips, args.frames)
    size = {b: f"{w}x{h}" for b, (w, h) in SIZES.items()}
    for b, path in lists.items():
        print(f"{b}: {args.clips} clips of {args.frames} frames at {size[b]} -> {path}")
    common = "--model_spec=tiny --video_sample_n_frames=9"
    if "square" in lists:
        print(f"train_1B_square.py flags: --train_data_square_dir={lists['square']} --bucket_sizes {size['square']} "
              + common)
    if "rec" in lists and "vec" in lists:
        print(f"train_1B_rec_vec.py flags: --train_data_rec_dir={lists['rec']} --train_data_vec_dir={lists['vec']} "
              f"--bucket_sizes {size['rec']} {size['vec']} " + common)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="dataset folder to write (like talking_face_data/)")
    p.add_argument("--buckets", nargs="+", default=["square"], choices=list(SIZES),
                   help="buckets to write: square for train_1B_square.py, rec vec for train_1B_rec_vec.py")
    p.add_argument("--clips", type=int, default=2, help="clips per bucket")
    p.add_argument("--frames", type=int, default=14, help="frames per clip (the clips are 25 fps)")
    main(p.parse_args())
