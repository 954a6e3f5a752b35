"""Resumable renders: the denoising state of one video, saved next to its output, and what it must match.

A render's whole state between two steps is the latent video (the loop keeps nothing else: the noise is drawn once
from the seed, the Euler steps are deterministic, the encodings are recomputed from the inputs). After a step the
latents are written atomically to `<output_dir>/<name>.resume.pt` with the step count and a fingerprint of every
input and flag that changes the numbers; a rerun with a matching fingerprint continues from there and gives the same
video bit for bit. The final latents stay on disk until the mp4 is written, so a failing decode or write never costs
the denoising; the file is deleted once the video exists.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

FORMAT = 1


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (inputs: reference image, audio)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_identity(path: str | os.PathLike | None) -> str:
    """A cheap identity for a weight file or folder (resolved path, sizes, mtimes): hashing gigabytes per run would
    cost more than it saves. None -> "none"."""
    if path is None:
        return "none"
    p = Path(path).resolve()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return hashlib.sha256("\n".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.exists())
                          .encode()).hexdigest()[:16]


class ResumeState:
    """The resume file of one render. `fingerprint`: name -> value of everything that changes the numbers."""

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, str], every_s: float = 60.0):
        self.path = Path(path)
        self.fingerprint = {k: str(v) for k, v in fingerprint.items()}
        self.every_s = every_s
        self._last_save = time.monotonic()

    def load(self, num_steps: int) -> tuple[int, Tensor] | None:
        """(steps done, latents) of a matching saved state, or None when there is none. A state of other inputs is a
        ValueError naming each input that changed (rerun with --restart to discard it)."""
        if not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated by a crash of the filesystem, or not ours: refuse, do not guess
            raise ValueError(f"{self.path}: unreadable resume state ({e}); delete it or rerun with --restart") from e
        if saved.get("format") != FORMAT:
            raise ValueError(f"{self.path}: resume state of another format; delete it or rerun with --restart")
        old = saved["fingerprint"]
        changed = sorted(k for k in set(old) | set(self.fingerprint) if old.get(k) != self.fingerprint.get(k))
        if changed:
            detail = ", ".join(f"{k} ({old.get(k, '-')[:40]} -> {self.fingerprint.get(k, '-')[:40]})" for k in changed)
            raise ValueError(f"{self.path} holds a render of other inputs: changed {detail}. Rerun with the same "
                             "inputs to continue it, or with --restart to discard it")
        step = int(saved["step"])
        log.info("resuming %s after step %d of %d", self.path.name, step, num_steps)
        return step, saved["latents"]

    def save(self, step: int, latents: Tensor, num_steps: int, force: bool = False) -> bool:
        """Write the state after `step` steps when `every_s` seconds have passed since the last write, or always
        when `force` (the final latents). Atomic: a crash mid-write leaves the previous state."""
        if not force and time.monotonic() - self._last_save < self.every_s:
            return False
        from wan.checkpoints import atomic_save

        t0 = time.perf_counter()
        atomic_save({"format": FORMAT, "fingerprint": self.fingerprint, "step": step, "num_steps": num_steps,
                     "latents": latents.detach().to("cpu", copy=True).contiguous()}, self.path)
        self._last_save = time.monotonic()
        log.info("saved the resume state after step %d/%d (%.1f MiB, %.2f s)", step, num_steps,
                 self.path.stat().st_size / 2**20, time.perf_counter() - t0)
        return True

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
