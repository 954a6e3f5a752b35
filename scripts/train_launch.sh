#!/usr/bin/env bash
# The launch line and the hyper-parameters shared by train_1B_square.sh and train_1B_rec_vec.sh (the original's
# values). Usage: bash scripts/train_launch.sh TRAIN_SCRIPT.py [flags]: the flags come after the shared ones, so
# a flag given again (by the calling script or the user) overrides the shared value.
#   env: DATA (default talking_face_data), CKPT (checkpoints), NUM_GPUS (4)
set -euo pipefail
cd "$(dirname "$0")/.."
script=${1:?training script, e.g. train_1B_square.py}
shift
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
CKPT=${CKPT:-checkpoints}
NUM_GPUS=${NUM_GPUS:-4}
exec accelerate launch --num_processes "$NUM_GPUS" --num_machines 1 --mixed_precision bf16 --dynamo_backend no \
  "$script" \
  --pretrained_model_name_or_path="$CKPT/Wan2.1-Fun-V1.1-1.3B-InP" \
  --pretrained_wav2vec_path="$CKPT/wav2vec2-base-960h" \
  --validation_reference_path=examples/case-2/reference.png \
  --validation_driven_audio_path=examples/case-2/audio.wav \
  --video_sample_n_frames=81 \
  --train_batch_size=1 \
  --gradient_accumulation_steps=1 \
  --dataloader_num_workers=4 \
  --num_train_epochs=1000 \
  --checkpointing_steps=2000 \
  --validation_steps=500 \
  --learning_rate=2e-05 \
  --lr_scheduler=constant_with_warmup \
  --lr_warmup_steps=100 \
  --seed=42 \
  --gradient_checkpointing \
  --mixed_precision=bf16 \
  --adam_weight_decay=3e-2 \
  --adam_epsilon=1e-10 \
  --max_grad_norm=0.05 \
  --uniform_sampling \
  --motion_sub_loss \
  "$@"
