"""Many videos per model load: a JSON-lines jobs file (`inference.py --jobs jobs.jsonl`).

One job per line:

    {"reference": "alice.png", "audio": "alice.wav", "prompt": "A woman is talking", "output": "alice"}
    {"reference": "bob.png", "audio": "bob.mp3", "prompt": "A man is singing", "output": "bob", "seed": 7, "steps": 30}

`reference`, `audio` (relative paths: to the jobs file's folder), `prompt` and `output` (a folder under
`--output_dir` that receives video.mp4 and video_without_audio.mp4) are required; optional per-job settings:
`negative_prompt`, `seed`, `width`, `height`, `steps`, `text_guide_scale`, `audio_guide_scale`, `overlap`,
`scheme`, `clip_length` (others come from the command line's flags). Blank lines and lines starting with `#` are
skipped. Jobs whose video exists are skipped; a half-done one resumes (`wan.resume`); a failing job is reported and
the others go on. Under torchrun each process takes every N-th job on its own GPU (no process group).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path

from wan.runner import Request

log = logging.getLogger("stableavatar")

REQUIRED = ("reference", "audio", "prompt", "output")
OPTIONAL = {"negative_prompt": str, "seed": int, "width": int, "height": int, "steps": int,
            "text_guide_scale": float, "audio_guide_scale": float, "overlap": int, "scheme": str, "clip_length": int}
assert set(OPTIONAL) <= {f.name for f in fields(Request)}


@dataclass
class Job:
    line: int
    name: str
    request: Request | None = None
    status: str = "pending"  # pending | done | skipped | failed
    reason: str = ""


def read_jobs(path: str | Path, args: argparse.Namespace) -> list[Job]:
    """Parse the jobs file; a malformed line becomes a failed job (named by its line), not an error for the others."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--jobs {path} does not exist")
    base = path.resolve().parent
    jobs = []
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        job = Job(n, f"line {n}")
        jobs.append(job)
        try:
            entry = json.loads(text)
            if not isinstance(entry, dict):
                raise ValueError("a line must be a JSON object")
            job.name = str(entry.get("output", job.name))
            missing = [k for k in REQUIRED if k not in entry]
            unknown = sorted(set(entry) - set(REQUIRED) - set(OPTIONAL))
            if missing:
                raise ValueError(f"missing {missing}")
            if unknown:
                raise ValueError(f"unknown keys {unknown} (known: {list(REQUIRED) + sorted(OPTIONAL)})")
            out = Path(entry["output"])
            if out.is_absolute() or ".." in out.parts:
                raise ValueError(f"output {entry['output']!r} must be a folder name under --output_dir")
            kw = {k: OPTIONAL[k](v) for k, v in entry.items() if k in OPTIONAL}
            job.request = Request.from_args(
                args, reference=str(base / entry["reference"]), audio=str(base / entry["audio"]),
                prompt=str(entry["prompt"]), output_dir=str(Path(args.output_dir) / out), **kw)
        except (ValueError, TypeError) as e:
            job.status, job.reason = "failed", f"{path.name} line {n}: {e}"
    names = [j.request.output_dir for j in jobs if j.request is not None]
    for j in jobs:
        if j.request is not None and names.count(j.request.output_dir) > 1:
            j.status, j.reason = "failed", f"output {j.name!r} is used by several jobs"
    return jobs


def summary(jobs: list[Job]) -> str:
    counts = {s: sum(j.status == s for j in jobs) for s in ("done", "skipped", "failed")}
    lines = [f"jobs: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"]
    lines += [f"  failed {j.name}: {j.reason}" for j in jobs if j.status == "failed"]
    return "\n".join(lines)
