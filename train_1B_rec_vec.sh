#!/usr/bin/env bash
# Mixed-resolution training (832x480 and 480x832 batches interleaved), one node (the original's
# train_1B_rec_vec.sh), fine-tuning the released square model as the README advises.
#   DATA=talking_face_data NUM_GPUS=4 bash train_1B_rec_vec.sh [extra flags]
# LoRA (the original's train_1B_rec_vec_lora.sh): add --train_lora (rank 128, alpha 64 by default).
# DeepSpeed ZeRO-2: add --use_deepspeed --deepspeed_config=deepspeed_config/zero_stage2_config.json
# Shared flags and hyper-parameters: scripts/train_launch.sh.
set -euo pipefail
cd "$(dirname "$0")"
DATA=${DATA:-talking_face_data}
CKPT=${CKPT:-checkpoints}
exec bash scripts/train_launch.sh train_1B_rec_vec.py \
  --transformer_path="$CKPT/StableAvatar-1.3B/transformer3d-square.pt" \
  --train_data_rec_dir="$DATA/video_rec_path.txt" \
  --train_data_vec_dir="$DATA/video_vec_path.txt" \
  --output_dir=output_1B_rec_vec_dir \
  "$@"
