#!/usr/bin/env bash
# Full training of the 1.3B DiT + audio adapter on 512x512 clips, one node (the original's train_1B_square.sh).
#   DATA=talking_face_data NUM_GPUS=4 bash train_1B_square.sh [extra flags, e.g. --resume_from_checkpoint=latest]
# DeepSpeed ZeRO-2: add --use_deepspeed --deepspeed_config=deepspeed_config/zero_stage2_config.json
# Several nodes: docs/training.md ("Multi-node").
set -euo pipefail
cd "$(dirname "$0")"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
DATA=${DATA:-talking_face_data}
CKPT=${CKPT:-checkpoints}
NUM_GPUS=${NUM_GPUS:-4}
accelerate launch --num_processes "$NUM_GPUS" --num_machines 1 --mixed_precision bf16 --dynamo_backend no \
  train_1B_square.py \
  --pretrained_model_name_or_path="$CKPT/Wan2.1-Fun-V1.1-1.3B-InP" \
  --pretrained_wav2vec_path="$CKPT/wav2vec2-base-960h" \
  --validation_reference_path=examples/case-2/reference.png \
  --validation_driven_audio_path=examples/case-2/audio.wav \
  --train_data_square_dir="$DATA/video_square_path.txt" \
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
  --output_dir=output_1B_square_dir \
  --gradient_checkpointing \
  --mixed_precision=bf16 \
  --adam_weight_decay=3e-2 \
  --adam_epsilon=1e-10 \
  --max_grad_norm=0.05 \
  --uniform_sampling \
  --motion_sub_loss \
  "$@"
