"""Reading the reference image (no torch: the CLI checks it before any model loads)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
_warned: set[tuple[int, int, int, int]] = set()


def open_image(path: str | os.PathLike):
    """The image at `path` as an RGB `PIL.Image` (alpha dropped, as the original's `.convert("RGB")`).
    Raises ValueError when it is missing or not a readable image."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"reference image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"reference image {path} is not a readable image ({e})") from e


def warn_if_stretched(image_size: tuple[int, int], width: int, height: int, tolerance: float = 0.10) -> bool:
    """Warn when resizing an image of `image_size` (w, h) to width x height changes its aspect ratio by more than
    `tolerance` (the original stretches without a word; a portrait face squeezed into 512x512 looks wrong).
    Returns whether the aspect changes that much (the warning itself is logged once per sizes and process)."""
    src = image_size[0] / image_size[1]
    dst = width / height
    change = max(src, dst) / min(src, dst) - 1
    if change <= tolerance:
        return False
    key = (*image_size, width, height)
    if key in _warned:
        return True
    _warned.add(key)
    log.warning("the reference image (%dx%d, aspect %.2f) is stretched to %dx%d (aspect %.2f): crop it to the "
                "output's aspect, or choose --width/--height to match (trained sizes: 512x512, 480x832, 832x480)",
                image_size[0], image_size[1], src, width, height, dst)
    return True
