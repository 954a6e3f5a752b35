#!/usr/bin/env bash
# The launch line shared by train_1B_square.sh and train_1B_rec_vec.sh: accelerate on every GPU of this machine,
# plus the paths. Every hyper-parameter default is the original's .sh value and lives in ONE place,
# wan/training/config.py (TrainConfig; `python train_1B_square.py -h` lists them): nothing is repeated here.
# Usage: bash scripts/train_launch.sh TRAIN_SCRIPT.py [flags]; a flag given again (by the caller) overrides.
#   env: CKPT         weights folder (default: checkpoints)
#        NUM_GPUS     processes (default: the GPUs torch sees; 1 without any, a CPU run for smoke tests)
#        NUM_WORKERS  DataLoader workers per process (default: the CPUs per process minus one, at most 4)
# Uses the project's .venv when there is one, else `python`.
set -euo pipefail
cd "$(dirname "$0")/.."
script=${1:?training script, e.g. train_1B_square.py}
shift
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PYTHON=python
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
CKPT=${CKPT:-checkpoints}

if [ -z "${NUM_GPUS:-}" ]; then
  NUM_GPUS=0
  # ask torch only where there is an NVIDIA driver (it honours CUDA_VISIBLE_DEVICES and a CPU-only build)
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    NUM_GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
  fi
  if [ "$NUM_GPUS" -eq 0 ]; then
    echo "train_launch.sh: no CUDA GPU, training in one process on the CPU (for smoke runs; NUM_GPUS=N to override)" >&2
    NUM_GPUS=1
  fi
fi
WORKERS=()
if [ -n "${NUM_WORKERS:-}" ]; then WORKERS=(--dataloader_num_workers="$NUM_WORKERS"); fi
echo "train_launch.sh: $NUM_GPUS process(es), $PYTHON -m accelerate.commands.launch $script" >&2

exec "$PYTHON" -m accelerate.commands.launch --num_processes "$NUM_GPUS" --num_machines 1 --mixed_precision bf16 \
  --dynamo_backend no "$script" \
  --pretrained_model_name_or_path="$CKPT/Wan2.1-Fun-V1.1-1.3B-InP" \
  --pretrained_wav2vec_path="$CKPT/wav2vec2-base-960h" \
  --validation_reference_path=examples/case-2/reference.png \
  --validation_driven_audio_path=examples/case-2/audio.wav \
  "${WORKERS[@]}" \
  "$@"
