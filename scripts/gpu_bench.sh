#!/usr/bin/env bash
# The GPU-machine runs behind BENCHMARKS.md's speed (issue 7) and multi-GPU (issue 8) tables, in the groups the
# device tool's 10-minute calls allow. Run from the repo root on a machine with 2 GPUs (kind nvidia-h200-x2), with
# the wheels of ../shared/gpu (core) installed and the repo on PYTHONPATH:
#   bash scripts/gpu_bench.sh speed   OUT_DIR   # GPU 0: SDPA variants, DiT fast / fp8 (+ precision), then the 5 s
#                                               #   clip with TeaCache 0.1; GPU 1: the 5 s clip, 50 steps, --fast
#   bash scripts/gpu_bench.sh multi   OUT_DIR   # 1 vs 2 GPUs (window / CFG / Ulysses), equality
#   bash scripts/gpu_bench.sh extra   OUT_DIR   # a 30 s clip's memory, Ulysses' relative error
#   bash scripts/gpu_bench.sh fastmulti OUT_DIR # --fast on 1 GPU vs --fast --window_parallel on 2
# Every command's JSON and log land in OUT_DIR.
set -uo pipefail
what=${1:?speed|multi}
out=${2:?output folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=python3
t() { timeout "$@"; }   # each command under its own limit: one hang does not take the others' figures

case "$what" in
speed)
  (CUDA_VISIBLE_DEVICES=1 t 560 $py -m wan.bench pipeline --fast --sizes 480x832 --seconds 5 --steps 50 \
      --json "$out/pipe_fast_5s_50.json" > "$out/gpu1.log" 2>&1) &
  {
    nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.limit --format=csv
    CUDA_VISIBLE_DEVICES=0 t 90 $py -m wan.bench attention --sizes 480x832 512x512 --runs 5 --warmup 2 \
      --json "$out/attention.json"
    CUDA_VISIBLE_DEVICES=0 t 200 $py -m wan.bench dit --fast --precision --sizes 480x832 512x512 --runs 5 \
      --warmup 2 --json "$out/dit_fast.json"
    CUDA_VISIBLE_DEVICES=0 t 200 $py -m wan.bench dit --fp8 --precision --sizes 480x832 512x512 --runs 5 \
      --warmup 2 --json "$out/dit_fp8.json"
    CUDA_VISIBLE_DEVICES=0 t 300 $py -m wan.bench pipeline --teacache 0.1 --sizes 480x832 --seconds 5 --steps 50 \
      --json "$out/pipe_teacache.json"
  } > "$out/gpu0.log" 2>&1
  wait
  ;;
multi)
  one=$(mktemp -d)/one.pt   # latents too big to come back; stays on the machine
  {
    CUDA_VISIBLE_DEVICES=0 t 240 $py -m wan.distributed.bench --size 480x832 --seconds 15 --steps 3 --save $one \
      --json "$out/mg_1gpu.json"
    for mode in --window_parallel --cfg_parallel "--ulysses_degree 2"; do
      t 150 torchrun --nproc_per_node 2 -m wan.distributed.bench --size 480x832 --seconds 15 --steps 3 \
        --compare $one $mode --json "$out/mg_2gpu${mode// /_}.json"
    done
  } > "$out/multi.log" 2>&1
  ;;
extra)  # attention layouts, DiT fast again, memory over a longer clip (GPU 1); Ulysses' relative error (both)
  (
    CUDA_VISIBLE_DEVICES=1 t 90 $py -m wan.bench attention --sizes 480x832 --runs 5 --warmup 2 --json "$out/attention2.json"
    CUDA_VISIBLE_DEVICES=1 t 200 $py -m wan.bench dit --fast --precision --sizes 480x832 512x512 --runs 5 --warmup 2 \
      --json "$out/dit_fast_padq.json"
    CUDA_VISIBLE_DEVICES=1 t 200 $py -m wan.bench pipeline --fast --sizes 480x832 --seconds 30 --steps 1 \
      --json "$out/pipe_fast_30s_1.json"
  ) > "$out/gpu1.log" 2>&1 &
  one=$(mktemp -d)/one.pt   # latents too big to come back; stays on the machine
  {
    CUDA_VISIBLE_DEVICES=0 t 240 $py -m wan.distributed.bench --size 480x832 --seconds 15 --steps 3 --save $one \
      --json "$out/mg_1gpu_b.json"
    wait
    t 150 torchrun --nproc_per_node 2 -m wan.distributed.bench --size 480x832 --seconds 15 --steps 3 \
      --compare $one --ulysses_degree 2 --json "$out/mg_2gpu_usp_b.json"
  } > "$out/multi.log" 2>&1
  ;;
fastmulti)  # the fast path (compiled) on 1 GPU and window-parallel on 2, equality
  tmpd=$(mktemp -d)
  {
    CUDA_VISIBLE_DEVICES=0 t 200 $py -m wan.distributed.bench --fast --size 480x832 --seconds 15 --steps 3 \
      --save "$tmpd/onef.pt" --json "$out/mg_1gpu_fast.json" &&
    t 200 torchrun --nproc_per_node 2 -m wan.distributed.bench --fast --window_parallel --size 480x832 --seconds 15 \
      --steps 3 --compare "$tmpd/onef.pt" --json "$out/mg_2gpu_window_fast.json"
  } > "$out/fast_multi.log" 2>&1
  ;;
*) echo "unknown group $what" >&2; exit 2 ;;
esac
ls -la "$out"
