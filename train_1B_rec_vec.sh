#!/usr/bin/env bash
# Mixed-resolution training (832x480 and 480x832 batches interleaved), one node (the original's
# train_1B_rec_vec.sh), fine-tuning the released square model as the README advises.
#   DATA=talking_face_data NUM_GPUS=4 bash train_1B_rec_vec.sh [extra flags]
# LoRA (the original's train_1B_rec_vec_lora.sh): add --train_lora (rank 128, alpha 64 by default).
# DeepSpeed ZeRO-2: add --use_deepspeed --deepspeed_config=deepspeed_config/zero_stage2_config.json
set -euo pipefail
cd "$(dirname "$0")"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
DATA=${DATA:-talking_face_data}
CKPT=${CKPT:-checkpoints}
NUM_GPUS=${NUM_GPUS:-4}
accelerate launch --num_processes "$NUM_GPUS" --num_machines 1 --mixed_precision bf16 --dynamo_backend no \
  train_1B_rec_vec.py \
  --pretrained_model_name_or_path="$CKPT/Wan2.1-Fun-V1.1-1.3B-InP" \
  --pretrained_wav2vec_path="$CKPT/wav2vec2-base-960h" \
  --transformer_path="$CKPT/StableAvatar-1.3B/transformer3d-square.pt" \
  --validation_reference_path=examples/case-2/reference.png \
  --validation_driven_audio_path=examples/case-2/audio.wav \
  --train_data_rec_dir="$DATA/video_rec_path.txt" \
  --train_data_vec_dir="$DATA/video_vec_path.txt" \
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
  --output_dir=output_1B_rec_vec_dir \
  --gradient_checkpointing \
  --mixed_precision=bf16 \
  --adam_weight_decay=3e-2 \
  --adam_epsilon=1e-10 \
  --max_grad_norm=0.05 \
  --uniform_sampling \
  --motion_sub_loss \
  "$@"
