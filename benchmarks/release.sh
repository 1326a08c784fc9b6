#!/usr/bin/env bash
# Ship a trained run: its EMA generator as weights/NAME.safetensors (float16 storage), scored by `travel eval` on
# the dataset's held-out test split (identity baseline beside it) into benchmarks/results/release-NAME.json.
#
#   benchmarks/release.sh RUN_DIR NAME DATA_DIR EVAL_SIZE
#   benchmarks/release.sh benchmarks/runs/glyphs64-c16-base-s1500 kaishu /work/data/glyphs-64 64
#
# Then copy the eval table into the model card, weights/README.md.
set -euo pipefail
run=$1 name=$2 data=$3 size=$4
here=$(cd "$(dirname "$0")" && pwd)
weights=$here/../weights/$name.safetensors
travel export --ckpt "$run" --safetensors "$weights" --half
ls -l "$weights"
travel eval --ckpt "$weights" --data "$data" --size "$size" --out "$here/results/release-$name.json"
