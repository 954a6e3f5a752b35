#!/usr/bin/env bash
# Long talking-avatar video from examples/case-2 with the released weights in ./checkpoints (see checkpoints/README.md).
# Extra flags are appended (a repeated flag overrides); LAUNCHER replaces `python` (multiple_gpu_inference.sh: torchrun).
set -euo pipefail
cd "$(dirname "$0")"
export TOKENIZERS_PARALLELISM=false
# fetch the released weights if checkpoints/ is incomplete (offline: stops at once saying what to download)
python -m wan.checkpoints.fetch --dir checkpoints
HF_HUB_OFFLINE=1 ${LAUNCHER:-python} inference.py \
  --pretrained_model_name_or_path=checkpoints/Wan2.1-Fun-V1.1-1.3B-InP \
  --transformer_path=checkpoints/StableAvatar-1.3B/transformer3d-square.pt \
  --pretrained_wav2vec_path=checkpoints/wav2vec2-base-960h \
  --validation_reference_path=examples/case-2/reference.png \
  --validation_driven_audio_path=examples/case-2/audio.wav \
  --validation_prompts="$(cat examples/case-2/prompt.txt)" \
  --output_dir=output_infer \
  --seed=42 \
  --sample_steps=50 \
  --width=512 --height=512 \
  --overlap_window_length=5 \
  --clip_sample_n_frames=81 \
  --sample_text_guide_scale=3.0 \
  --sample_audio_guide_scale=5.0 \
  "$@"
