#!/usr/bin/env bash
# Full training of the 1.3B DiT + audio adapter on 512x512 clips, one node (the original's train_1B_square.sh).
#   bash train_1B_square.sh [extra flags, e.g. --resume_from_checkpoint=latest]
#   env: DATA (talking_face_data), CKPT (checkpoints), NUM_GPUS, NUM_WORKERS (default: from this machine)
# The hyper-parameters are TrainConfig's defaults (= the original's .sh values; docs/training.md has the table).
# DeepSpeed ZeRO-2: add --use_deepspeed --deepspeed_config=deepspeed_config/zero_stage2_config.json
# Several nodes: docs/training.md ("Multi-node"). The launch line: scripts/train_launch.sh.
set -euo pipefail
cd "$(dirname "$0")"
DATA=${DATA:-talking_face_data}
exec bash scripts/train_launch.sh train_1B_square.py \
  --train_data_square_dir="$DATA/video_square_path.txt" \
  --output_dir=output_1B_square_dir \
  "$@"
