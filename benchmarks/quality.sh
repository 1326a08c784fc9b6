#!/usr/bin/env bash
# One quality benchmark: train on a dataset's train split for a fixed budget, then score the held-out test
# split with `travel eval` (identity baseline beside it). Results land in benchmarks/results/NAME.{json,log}.
#
#   benchmarks/quality.sh NAME DATA_DIR SIZE STEPS [extra `travel fit` flags...]
#   benchmarks/quality.sh glyphs64-base /work/data/glyphs-64 64 2000 --channels 16
#
# Build the datasets first (benchmarks/README.md). Runs are seeded; wall-clock depends on the machine.
set -euo pipefail
name=$1 data=$2 size=$3 steps=$4
shift 4
here=$(cd "$(dirname "$0")" && pwd)
runs=${TRAVEL_BENCH_RUNS:-$here/runs}
results=$here/results
mkdir -p "$runs" "$results"
start=$(date +%s)
travel fit --data "$data" --name "$name" --run-dir "$runs/$name" --size "$size" --load-size "$size" \
    --steps "$steps" --sample-every "${SAVE_EVERY:-$steps}" --save-every "${SAVE_EVERY:-$steps}" --log-every 25 "$@" 2>&1 | tail -n 3 | tee "$results/$name.log"
end=$(date +%s)
echo "train_seconds=$((end - start))" | tee -a "$results/$name.log"
# One thread for scoring: the two-sample test's classifier follows another trajectory with another thread count
# (one checkpoint measured 0.613 at two threads, 0.714 at one), and every table in docs/BENCHMARKS.md is scored so.
OMP_NUM_THREADS=1 travel eval --ckpt "$runs/$name" --data "$data" --size "$size" --out "$results/$name.json" 2>&1 | tee -a "$results/$name.log"
