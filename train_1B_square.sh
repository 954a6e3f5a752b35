#!/usr/bin/env bash
# Training launcher (512x512 bucket). Not yet available: train_1B_square.py exits with a message.
set -euo pipefail
cd "$(dirname "$0")"
accelerate launch --num_processes 1 train_1B_square.py "$@"
