"""Peak memory and time of `travel translate`'s rule at 0.25, 1, 4 and 16 megapixels, each in a fresh process.

    python benchmarks/translate_memory.py --ckpt emoji3d kaishu --threads 2 --json benchmarks/results/translate-memory.json

The picture is tests/data/coffee.jpg (a CC0 photo) resized to each size at a 2:1 aspect (0.25 MP is 720 x 360, the
issue's landscape). Each row runs in its own process: the model is loaded and warmed on a small image first, then
the peak resident memory (VmHWM, reset before the translation) above what the process held is read, beside the
rule's own estimate (`Plan.needed`) and the budget, for the first translation. Time is the translation alone (below
4 MP the second of two runs, else the first), not start-up or PNG writing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIZES = {0.25: (720, 360), 1: (1448, 724), 4: (2896, 1448), 16: (5792, 2896)}  # megapixels -> (width, height)

CHILD = r"""
import json, sys, time
import torch
ckpt, width, height, threads, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
from PIL import Image
from travel.inference import Translator
from travel.inference.memory import parse_size

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

translator = Translator.from_pretrained(ckpt, device="cpu", memory_budget=parse_size(budget))
photo = Image.open(sys.argv[6]).convert("RGB").resize((width, height), Image.BICUBIC)
translator(photo.resize((128, 64)))
plan = translator.plan(width, height)
# The peak of the first translation (a second one reuses what the allocator kept, so its rise would understate it);
# below 4 MP a second run gives the time of a warm process.
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
started = time.perf_counter()
translator(photo)
times = [time.perf_counter() - started]
peak = status("VmHWM") - before
if width * height < 4e6:
    started = time.perf_counter()
    translator(photo)
    times.append(time.perf_counter() - started)
print(json.dumps({"width": width, "height": height, "seconds": times[-1], "first_seconds": times[0], "peak_bytes": peak,
                  "planned_bytes": plan.needed, "budget_bytes": plan.budget, "tile": plan.tile,
                  "stats_pixels": plan.stats_pixels}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", nargs="+", default=["emoji3d", "kaishu"])
    parser.add_argument("--megapixels", nargs="+", type=float, default=sorted(SIZES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-budget", default="2G")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for ckpt in args.ckpt:
        for megapixels in args.megapixels:
            width, height = SIZES[megapixels]
            command = [sys.executable, "-c", CHILD, ckpt, str(width), str(height), str(args.threads), args.memory_budget,
                       str(REPO / "tests" / "data" / "coffee.jpg")]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                print(f"{ckpt} {megapixels} MP: failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            row = {"ckpt": ckpt, "megapixels": megapixels, **json.loads(done.stdout)}
            rows.append(row)
            how = f"tiles of {row['tile']} px, statistics at {row['stats_pixels'] / 1e6:.2f} MP" if row["tile"] else "one pass"
            print(
                f"{ckpt:8s} {megapixels:5g} MP {width} x {height}: {row['seconds']:7.1f} s, peak {row['peak_bytes'] / 2**20:6.0f} MiB"
                f" (planned {row['planned_bytes'] / 2**20:.0f} MiB of {row['budget_bytes'] / 2**20:.0f}), {how}", flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
