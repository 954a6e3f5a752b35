#!/usr/bin/env bash
# Mixed-resolution training (832x480 and 480x832 batches interleaved), one node (the original's
# train_1B_rec_vec.sh), fine-tuning the released square model as the README advises.
#   bash train_1B_rec_vec.sh [extra flags]
#   env: DATA (talking_face_data), CKPT (checkpoints), NUM_GPUS, NUM_WORKERS (default: from this machine)
# The hyper-parameters are TrainConfig's defaults (= the original's .sh values; docs/training.md has the table).
# LoRA (the original's train_1B_rec_vec_lora.sh): add --train_lora (rank 128, alpha 64 by default).
# DeepSpeed ZeRO-2: add --use_deepspeed --deepspeed_config=deepspeed_config/zero_stage2_config.json
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
