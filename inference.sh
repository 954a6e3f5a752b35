#!/usr/bin/env bash
# Long talking-avatar video from examples/case-2 with the released weights in ./checkpoints (see checkpoints/README.md).
# Extra flags are appended (a repeated flag overrides); LAUNCHER replaces the python (multiple_gpu_inference.sh:
# torchrun). Uses the project's .venv when there is one, else `python`.
set -euo pipefail
cd "$(dirname "$0")"
export TOKENIZERS_PARALLELISM=false
PYTHON=python
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
ARGS=(
  --pretrained_model_name_or_path=checkpoints/Wan2.1-Fun-V1.1-1.3B-InP
  --transformer_path=checkpoints/StableAvatar-1.3B/transformer3d-square.pt
  --pretrained_wav2vec_path=checkpoints/wav2vec2-base-960h
  --validation_reference_path=examples/case-2/reference.png
  --validation_driven_audio_path=examples/case-2/audio.wav
  --validation_prompts="$(cat examples/case-2/prompt.txt)"
  --output_dir=output_infer
  --seed=42
  --sample_steps=50
  --width=512 --height=512
  --overlap_window_length=5
  --clip_sample_n_frames=81
  --sample_text_guide_scale=3.0
  --sample_audio_guide_scale=5.0
  "$@"
)
# check the weight files this run reads, at the final --pretrained_model_name_or_path / --transformer_path /
# --pretrained_wav2vec_path, and fetch the missing ones (offline: stops at once saying what to download)
"$PYTHON" -m wan.checkpoints.fetch "${ARGS[@]}"
HF_HUB_OFFLINE=1 ${LAUNCHER:-$PYTHON} inference.py "${ARGS[@]}"
