import os
import subprocess
import sys
import time

from wan.checkpoints.fetch import REQUIRED, missing_files
from wan.testing.tiny_checkpoints import write_tiny_checkpoints


def test_offline_incomplete_tree_stops_at_once_with_instructions(tmp_path):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "wan.checkpoints.fetch", "--dir", str(tmp_path)], capture_output=True,
                       text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert "huggingface-cli download FrancisRing/StableAvatar" in r.stderr
    assert "transformer3d-square.pt" in r.stderr and "Wan2.1_VAE.pth" in r.stderr
    assert time.perf_counter() - t0 < 30


def test_tiny_tree_is_complete(tmp_path):
    write_tiny_checkpoints(tmp_path, "tiny")
    assert missing_files(tmp_path) == []
    assert len(missing_files(tmp_path / "nothing")) == len(REQUIRED)
