#!/usr/bin/env bash
# The long talking-avatar video of inference.sh on several GPUs of one machine (docs/multi_gpu.md).
#   NPROC=2 ./multiple_gpu_inference.sh                          # automatic layout (window-parallel here)
#   NPROC=4 ./multiple_gpu_inference.sh --ulysses_degree=2 --ring_degree=2   # the original's USP (ring: xfuser)
#   NPROC=4 ./multiple_gpu_inference.sh --window_parallel --cfg_parallel
# Every rank runs the same seed; window- and CFG-parallel give the 1-GPU video exactly; rank 0 writes it.
# Same flags as inference.sh except the original's multi-GPU overlap of 10 latent frames. Uses the project's .venv
# (its python and torchrun) when there is one.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=python TORCHRUN=torchrun
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
if [ -x .venv/bin/torchrun ]; then TORCHRUN=.venv/bin/torchrun; fi
NPROC="${NPROC:-$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
LAUNCHER="$TORCHRUN --nproc_per_node=$NPROC --nnodes=1 --node_rank=0 --master_addr=localhost \
--master_port=${MASTER_PORT:-29500}" exec bash inference.sh --overlap_window_length=10 --motion_frame=25 "$@"
