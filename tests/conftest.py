"""Suite-wide defaults and the golden fixture. What skips when, and why: docs/testing.md."""

import os
from pathlib import Path

# before anything imports huggingface_hub / transformers (they read these at import): the tests build tiny models
# on the fly and must never reach the Hub; an explicit value in the environment wins
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the lip-mask tests run mediapipe in the isolated venv of scripts/setup_preprocess_env.sh (wan.data.masks finds
# it too; set here so that subprocesses started from another folder see the same one)
_PREPROCESS_PYTHON = Path(__file__).resolve().parents[1] / ".venv-preprocess" / "bin" / "python"
if _PREPROCESS_PYTHON.is_file():
    os.environ.setdefault("STABLEAVATAR_PREPROCESS_PYTHON", str(_PREPROCESS_PYTHON))

import pytest  # noqa: E402

from wan.testing.golden import GOLDEN_SKIP_REASON, golden_dir, load_golden  # noqa: E402


@pytest.fixture
def golden():
    """golden("case") -> GoldenCase; skips when no golden folder is configured, fails when one is missing."""

    def _load(name: str):
        if golden_dir() is None:
            pytest.skip(GOLDEN_SKIP_REASON)
        return load_golden(name)

    return _load


def pytest_terminal_summary(terminalreporter):
    """One line under the summary when parity tests skipped (pytest lists skip reasons only with -rs)."""
    n = sum(1 for r in terminalreporter.stats.get("skipped", [])
            if isinstance(r.longrepr, tuple) and GOLDEN_SKIP_REASON in str(r.longrepr[2]))
    if n:
        terminalreporter.write_line(f"{n} parity tests skipped: no golden fixtures (made by running the original "
                                    "StableAvatar on tiny random weights; not in the repo) -- see docs/testing.md")


EXAMPLE_SPEECH = Path(__file__).resolve().parents[1] / "examples" / "case-2" / "audio.wav"


def example_speech(seconds: float, path: Path) -> Path:
    """`path`: a wav of the example speech (16 kHz stereo int16), cut or looped to `seconds`."""
    import numpy as np
    import soundfile as sf

    y, sr = sf.read(EXAMPLE_SPEECH, dtype="int16", always_2d=True)
    n = int(seconds * sr)
    sf.write(path, np.concatenate([y] * (n // len(y) + 1))[:n], sr, subtype="PCM_16")
    return path


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    """The tiny checkpoint tree (seed 0), written once per session; modules that need another define their own."""
    from wan.testing.tiny_checkpoints import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"), "tiny", seed=0)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (torchrun rendezvous, the app's server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
