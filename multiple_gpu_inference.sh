#!/usr/bin/env bash
# The long talking-avatar video of inference.sh on several GPUs of one machine (docs/multi_gpu.md).
#   NPROC=2 ./multiple_gpu_inference.sh                          # automatic layout (window-parallel here)
#   NPROC=4 ./multiple_gpu_inference.sh --ulysses_degree=2 --ring_degree=2   # the original's USP (ring: xfuser)
#   NPROC=4 ./multiple_gpu_inference.sh --window_parallel --cfg_parallel
# Every rank runs the same seed; window- and CFG-parallel give the 1-GPU video exactly; rank 0 writes it.
set -euo pipefail
cd "$(dirname "$0")"
export TOKENIZERS_PARALLELISM=false
NPROC="${NPROC:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
python -m wan.checkpoints.fetch --dir checkpoints
HF_HUB_OFFLINE=1 torchrun --nproc_per_node="$NPROC" --nnodes=1 --node_rank=0 --master_addr=localhost \
  --master_port="${MASTER_PORT:-29500}" inference.py \
  --pretrained_model_name_or_path=checkpoints/Wan2.1-Fun-V1.1-1.3B-InP \
  --transformer_path=checkpoints/StableAvatar-1.3B/transformer3d-square.pt \
  --pretrained_wav2vec_path=checkpoints/wav2vec2-base-960h \
  --validation_reference_path=examples/case-2/reference.png \
  --validation_driven_audio_path=examples/case-2/audio.wav \
  --validation_prompts="$(cat examples/case-2/prompt.txt)" \
  --output_dir=output_infer \
  --seed=42 \
  --motion_frame=25 \
  --sample_steps=50 \
  --width=512 --height=512 \
  --overlap_window_length=10 \
  --sample_text_guide_scale=3.0 \
  --sample_audio_guide_scale=5.0 \
  "$@"
