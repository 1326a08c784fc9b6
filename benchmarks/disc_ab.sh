#!/usr/bin/env bash
# Interleaved A/B of training speed: --disc scratch against --disc projected, at 64 and 128 px, ROUNDS rounds.
#   bash benchmarks/disc_ab.sh OUT_DIR [ROUNDS] [THREADS]
# Each round runs scratch then projected at each size, so slow drifts of a shared machine hit both alike.
set -euo pipefail
out=${1:?usage: disc_ab.sh OUT_DIR [ROUNDS] [THREADS]}; rounds=${2:-3}; threads=${3:-1}
mkdir -p "$out"
for round in $(seq 1 "$rounds"); do
  for size in 64 128; do
    for disc in scratch projected; do
      OMP_NUM_THREADS=$threads travel bench speed --size "$size" --batch-size 4 --steps 8 --warmup 2 --device cpu \
        --threads "$threads" --disc "$disc" --json "$out/r$round-$size-$disc.json" > /dev/null
    done
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
for size in (64, 128):
    speed = {d: [json.loads(p.read_text())["train"]["images_per_s"] for p in sorted(out.glob(f"r*-{size}-{d}.json"))]
             for d in ("scratch", "projected")}
    s, p = statistics.median(speed["scratch"]), statistics.median(speed["projected"])
    print(f"{size} px: scratch {s:.2f} images/s, projected {p:.2f} (median of {len(speed['scratch'])}), ratio {p / s:.2f}; "
          f"rounds: {speed}")
PY
