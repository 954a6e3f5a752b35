"""The training dataset in the original's layout (`LargeScaleTalkingFantasyVideos`, spec training.md §2-3).

    talking_face_data/
      square|rec|vec/speech|singing|dancing/00001/
        sub_clip.mp4         read only for its frame rate
        audio.wav            the clip's audio
        images/frame_0.png   every frame
        face_masks/frame_i.png, lip_masks/frame_i.png   single-channel 8-bit masks
      video_square_path.txt, video_rec_path.txt, video_vec_path.txt   one clip folder per line

One sample = `n_sample_frames` consecutive frames from a random start (Python `random`, inclusive range),
the reference image = the clip's FIRST frame, the matching audio slice, face/lip masks, the fixed prompt
chosen from the folder path, and the inpainting mask that keeps frame 0 only. Differences from the
original, none of which changes a returned value: the audio comes back as the raw 16 kHz slice
(`vocal_waveform`; the trainer's wav2vec2 front end normalises it exactly as the original's processor
does), the unused `motion_id` and `reference_frame_idx` are not computed, and a folder whose path names
none of the three categories raises a ValueError instead of `1/0`.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["TalkingVideoDataset", "MultiBucketDataset", "read_clip_list", "prompt_for", "collate"]

PROMPTS = (  # checked in this order, as the original does
    ("singing", "The protagonist is singing"),
    ("speech", "The protagonist is talking"),
    ("dancing", "The protagonist is simultaneously dancing and singing"),
)
IMAGE_SUFFIXES = (".png", ".jpg")


def prompt_for(clip_dir: str | os.PathLike) -> str:
    """The fixed training prompt named by the clip's path (no caption files are used)."""
    s = str(clip_dir)
    for word, prompt in PROMPTS:
        if word in s:
            return prompt
    raise ValueError(f"clip folder {s!r} names none of 'singing', 'speech', 'dancing'; put it under "
                     "square|rec|vec/<speech|singing|dancing>/ as the dataset layout requires")


def read_clip_list(txt_path: str | os.PathLike) -> list[Path]:
    """The clip folders listed in a `video_*_path.txt` (one per line, blank lines skipped).
    Relative lines are taken relative to the list file's folder (the original: to the working directory)."""
    txt_path = Path(txt_path)
    if not txt_path.is_file():
        raise ValueError(f"clip list {txt_path} does not exist; expected e.g. talking_face_data/video_square_path.txt")
    out = []
    for line in txt_path.read_text().splitlines():
        line = line.strip()
        if line:
            p = Path(line)
            out.append(p if p.is_absolute() else txt_path.parent / p)
    if not out:
        raise ValueError(f"clip list {txt_path} lists no clip folders")
    return out


def frame_files(images_dir: Path) -> list[str]:
    """Frame file names sorted numerically on the part after `frame_` (or on the whole stem)."""
    names = [n for n in os.listdir(images_dir) if n.endswith(IMAGE_SUFFIXES)]
    if not names:
        raise ValueError(f"{images_dir}: no .png/.jpg frames")

    def key(n: str) -> int:
        stem = Path(n).stem
        m = re.fullmatch(r"(?:frame_)?(\d+)", stem)
        if m is None:
            raise ValueError(f"{images_dir / n}: frame names must be frame_<i>.png or <i>.png")
        return int(m.group(1))

    return sorted(names, key=key)


def clip_fps(clip_dir: Path, num_frames: int, audio_seconds: float) -> float:
    """The frame rate as OpenCV reads it from `sub_clip.mp4`; a missing or zero rate falls back to
    frames / audio duration (the original's fallback)."""
    import cv2

    fps = 0.0
    video = clip_dir / "sub_clip.mp4"
    if video.is_file():
        cap = cv2.VideoCapture(str(video))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        cap.release()
    if not fps > 0:
        if audio_seconds <= 0:
            raise ValueError(f"{clip_dir}: no frame rate in sub_clip.mp4 and an empty audio.wav")
        fps = num_frames / audio_seconds
        log.warning("%s: no frame rate in sub_clip.mp4; using frames / audio duration = %.3f", clip_dir, fps)
    return fps


def _rgb(path: Path, width: int, height: int) -> Tensor:
    """Image -> [3, H, W] float32 in [-1, 1] (Pillow's default resize filter, no crop, x/127.5 - 1)."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB").resize((width, height)), dtype=np.float32)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1) / 127.5 - 1


def _mask(path: Path, width: int, height: int) -> Tensor | None:
    """Single-channel mask -> [H, W] float32 in [0, 1]; None when the file is missing."""
    from PIL import Image

    if not path.is_file():
        return None
    with Image.open(path) as im:
        if im.mode not in ("L", "1", "I", "F", "I;16"):
            im = im.convert("L")  # the original expects 8-bit grey; RGB masks would break its stacking
        arr = np.asarray(im.resize((width, height)), dtype=np.float32)
    return torch.from_numpy(arr.copy()) / 255


class TalkingVideoDataset(torch.utils.data.Dataset):
    """One resolution bucket of the original's dataset.

    `dataset[i]` draws the clip start with the global Python `random` (as the original);
    `dataset[(i, seed)]` draws it from `random.Random(seed)` (what the resumable sampler passes).

    Returns: pixel_values [F, 3, H, W] in [-1, 1]; reference_image [3, H, W] (= frame 0 of the clip);
    clip_pixel_values [H, W, 3] float in [0, 255]; tgt_face_masks, tgt_lip_masks [1, F, H, W] in [0, 1];
    vocal_waveform [n] float32 16 kHz (the clip's span, shorter near the end of the audio);
    pixel_value_masks [F, 1, H, W] uint8 (0 for frame 0, 1 after); masked_pixel_values [F, 3, H, W];
    text_prompt; audio_path; fps."""

    def __init__(self, clips: str | os.PathLike | Sequence[str | os.PathLike], width: int, height: int,
                 n_sample_frames: int = 81, sample_frame_rate: int = 1, sample_rate: int = 16000):
        if isinstance(clips, (str, os.PathLike)):
            self.clips = read_clip_list(clips)
        else:
            self.clips = [Path(c) for c in clips]
        if width % 16 or height % 16:
            raise ValueError(f"bucket size {width}x{height} must be a multiple of 16")
        if n_sample_frames < 1 or (n_sample_frames - 1) % 4:
            raise ValueError(f"n_sample_frames must be 4k+1 (e.g. 81), got {n_sample_frames}")
        self.width, self.height = width, height
        self.n_sample_frames, self.sample_frame_rate, self.sample_rate = n_sample_frames, sample_frame_rate, sample_rate

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        from wan.io.audio import load_audio

        idx, rng = (key[0], random.Random(key[1])) if isinstance(key, tuple) else (key, random)
        clip = self.clips[idx]
        images = clip / "images"
        if not images.is_dir():
            raise ValueError(f"{clip}: no images/ folder (see the dataset layout in docs/training.md)")
        names = frame_files(images)
        n_frames, w, h = len(names), self.width, self.height
        audio_path = clip / "audio.wav"
        audio = load_audio(audio_path, sr=self.sample_rate)
        fps = clip_fps(clip, n_frames, len(audio) / self.sample_rate)

        # 1. the frames: a window of (n-1)*rate+1 frames from a random start, n indices spread over it
        clip_length = min(n_frames, (self.n_sample_frames - 1) * self.sample_frame_rate + 1)
        start = rng.randint(0, n_frames - clip_length)
        index = np.linspace(start, start + clip_length - 1, self.n_sample_frames, dtype=int).tolist()
        pixels = torch.stack([_rgb(images / names[i], w, h) for i in index])
        reference = _rgb(images / names[start], w, h)  # the clip's first frame (a random one is drawn but unused)

        # 2. masks: same file name under face_masks/ and lip_masks/; a missing file is a mask of ones
        masks = {}
        for kind in ("face_masks", "lip_masks"):
            frames, missing = [], 0
            for i in index:
                m = _mask(clip / kind / names[i], w, h)
                if m is None:
                    missing += 1
                    m = torch.ones(h, w)
                frames.append(m)
            if missing:
                log.warning("%s: %d of %d %s missing, using masks of ones", clip, missing, len(index), kind)
            masks[kind] = torch.stack(frames)[None]

        # 3. audio: the clip's time span at 16 kHz (no error past the end: the slice is just shorter)
        t0 = index[0] / fps
        t1 = t0 + clip_length / fps
        segment = audio[int(t0 * self.sample_rate):int(t1 * self.sample_rate)]
        if segment.size == 0:
            raise ValueError(f"{audio_path}: no audio at {t0:.2f}-{t1:.2f} s (audio is {len(audio) / self.sample_rate:.2f} s)")

        # 4. inpainting condition: frame 0 kept, every later frame masked (the original's image_start_only)
        pixel_value_masks = torch.ones(self.n_sample_frames, 1, h, w, dtype=torch.uint8)
        pixel_value_masks[0] = 0
        return dict(
            pixel_values=pixels,
            reference_image=reference,
            clip_pixel_values=((reference.permute(1, 2, 0) * 0.5 + 0.5) * 255).contiguous(),
            tgt_face_masks=masks["face_masks"],
            tgt_lip_masks=masks["lip_masks"],
            vocal_waveform=torch.from_numpy(np.ascontiguousarray(segment, dtype=np.float32)),
            pixel_value_masks=pixel_value_masks,
            masked_pixel_values=pixels * (1 - pixel_value_masks),
            text_prompt=prompt_for(clip),
            audio_path=str(audio_path),
            fps=fps,
        )


class MultiBucketDataset(torch.utils.data.Dataset):
    """Several buckets behind the keys of `wan.data.buckets.PlanSampler`: `(bucket_id, index, sample_seed)`."""

    def __init__(self, datasets: Sequence[TalkingVideoDataset]):
        self.datasets = list(datasets)

    @property
    def lengths(self) -> list[int]:
        return [len(d) for d in self.datasets]

    def __len__(self) -> int:
        return sum(self.lengths)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        bucket, idx, seed = key
        sample = self.datasets[bucket][(idx, seed)]
        sample["bucket"] = bucket
        return sample


def collate(samples: list[dict]) -> dict:
    """Batch of one (the original only runs with --train_batch_size 1: audio lengths differ per clip)."""
    if len(samples) != 1:
        raise ValueError(f"only --train_batch_size 1 is supported (got {len(samples)}): clips differ in audio length")
    out = {}
    for k, v in samples[0].items():
        out[k] = v[None] if isinstance(v, Tensor) else [v]
    return out
