"""Regenerate tests/data/tiny_mdx_vocals_ref.flac: audio-separator 0.38.1's vocal stem of the tiny MDX model.

Not run by the tests (audio-separator cannot be installed beside the base stack). Run it in a scratch venv:

    python3 -m venv /tmp/asv && /tmp/asv/bin/pip install torch==2.13.0
    /tmp/asv/bin/pip install --no-deps audio-separator==0.38.1 onnx2torch-py313
    /tmp/asv/bin/pip install librosa pydub onnxruntime onnx requests pyyaml ml_collections einops julius \
        "beartype<0.19" "rotary-embedding-torch<0.7" scipy resampy imageio-ffmpeg tqdm six soundfile
    PYTHONPATH=. /tmp/asv/bin/python tests/data/make_vocals_reference.py

onnx2torch imports torchvision (never installed here): a stub module is put on sys.path; audio-separator's
`ffmpeg -version` check gets imageio-ffmpeg's executable. The model and the mix come from tests/test_vocals.py
(deterministic numpy seeds), so the test rebuilds the same inputs and compares its runner's output to this file.
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import soundfile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from test_vocals import TINY, make_mix, make_tiny_mdx  # noqa: E402


def main() -> None:
    # torchvision stub (onnx2torch imports nms/roi_align at import time; never called for a Conv2d model)
    tv = types.ModuleType("torchvision")
    tv.ops = types.ModuleType("torchvision.ops")
    tv.ops.nms = tv.ops.roi_align = lambda *a, **k: None
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, tv.ops
    import imageio_ffmpeg

    work = Path(tempfile.mkdtemp())
    (work / "bin").mkdir()
    os.symlink(imageio_ffmpeg.get_ffmpeg_exe(), work / "bin" / "ffmpeg")
    os.environ["PATH"] = f"{work / 'bin'}:{os.environ['PATH']}"

    models = work / "models"
    models.mkdir()
    model = make_tiny_mdx(models / "tiny_mdx.onnx")
    md5 = hashlib.md5(model.read_bytes()).hexdigest()  # whole file (< 10,240,000 bytes)
    (models / "mdx_model_data.json").write_text(json.dumps({md5: {
        "compensate": TINY["compensate"], "mdx_dim_f_set": TINY["dim_f"],
        "mdx_dim_t_set": int(np.log2(TINY["dim_t"])), "mdx_n_fft_scale_set": TINY["n_fft"],
        "primary_stem": "Vocals"}}))
    (models / "vr_model_data.json").write_text("{}")
    lists = ["vr_download_list", "mdx_download_list", "mdx_download_vip_list", "demucs_download_list",
             "mdx23c_download_list", "mdx23c_download_vip_list", "roformer_download_list"]
    checks = {k: {} for k in lists}
    checks["mdx_download_list"] = {"tiny": "tiny_mdx.onnx"}
    (models / "download_checks.json").write_text(json.dumps(checks))

    mix_path = work / "mix.wav"
    soundfile.write(mix_path, make_mix().T, 44100, subtype="PCM_16")

    from audio_separator.separator import Separator

    sep = Separator(output_dir=str(work / "out"), output_single_stem="vocals", model_file_dir=str(models),
                    mdx_params={"hop_length": 1024, "segment_size": TINY["dim_t"], "overlap": 0.25,
                                "batch_size": 1, "enable_denoise": False})
    sep.load_model("tiny_mdx.onnx")
    out = sep.separate(str(mix_path))
    y, sr = soundfile.read(work / "out" / out[0], dtype="int16")
    print(out, y.shape, sr, np.abs(y).max())
    soundfile.write(HERE / "tiny_mdx_vocals_ref.flac", y, sr, subtype="PCM_16")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
