"""Known answers of `travel fit` and `travel translate` on tiny generated data, to show a change leaves them alone.

    python benchmarks/known_answers.py --out benchmarks/results/known-answers-DATE.json
    python benchmarks/known_answers.py --compare before.json after.json

Records, on one thread, through the command line (the contract a restructure must keep): for both discriminator
families with and without the warp, with --clusters 2 and with --rotation, a 30-step fit's loss trace (every logged
term, every step) and a digest of the released weights' tensors; a run stopped at step 15 and resumed to 30 (its
digest must equal the uninterrupted run's); and the shipped emoji3d and kaishu on the bundled examples (a digest of
each output's pixels). --compare prints what differs between two such files: loss traces and digests bit for bit,
translations also as the largest pixel difference (the tool writes the outputs next to the JSON for that).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
COMMON = ["--size", "32", "--load-size", "36", "--steps", "30", "--batch-size", "2", "--channels", "8", "--depth", "3",
          "--log-every", "1", "--save-every", "15", "--sample-every", "1000", "--seed", "0", "--device", "cpu"]
RUNS = {
    "projected-warp": [],
    "projected-nowarp": ["--no-warp"],
    "scratch-warp": ["--disc", "scratch"],
    "scratch-nowarp": ["--disc", "scratch", "--no-warp"],
    "projected-clusters2": ["--clusters", "2"],
    "projected-rotation": ["--rotation"],
    "scratch-clusters2-rotation": ["--disc", "scratch", "--clusters", "2", "--rotation"],
}
EXAMPLES = {"emoji3d": "examples/emoji", "kaishu": "examples/glyphs"}


def shapes(folder: Path, count: int, colour: tuple[int, int, int], seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rng = random.Random(seed * 1000 + i)
        image = Image.new("RGB", (40, 40), (255, 255, 255))
        extent = rng.randint(10, 20)
        x, y = rng.randint(2, 38 - extent), rng.randint(2, 38 - extent)
        (ImageDraw.Draw(image).ellipse if rng.random() < 0.5 else ImageDraw.Draw(image).rectangle)(
            [x, y, x + extent, y + extent], fill=colour
        )
        image.save(folder / f"{i:03d}.png")


def travel(*args: str, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRAVEL_RUNS": str(cwd / "runs")}
    done = subprocess.run([sys.executable, "-m", "travel", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"travel {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def weights_digest(path: Path) -> str:
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + tensors[name].tobytes())
    return digest.hexdigest()


def loss_trace(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timeless = {"images_per_s", "seconds", "time", "elapsed_s", "date"}
    return [{k: v for k, v in line.items() if k not in timeless and not k.endswith("_s")} for line in lines]


def record(out: Path) -> None:
    report: dict = {"fits": {}, "resume": {}, "translations": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shapes(work / "red", 12, (220, 30, 30), 1)
        shapes(work / "blue", 12, (30, 30, 220), 2)
        for name, extra in RUNS.items():
            travel("fit", "--src", "red", "--dst", "blue", "--name", name, *COMMON, *extra, cwd=work)
            run = work / "runs" / name
            report["fits"][name] = {"weights": weights_digest(run / f"{name}.safetensors"), "trace": loss_trace(run)}
            print(f"{name}: {report['fits'][name]['weights'][:16]}", flush=True)
        steps15 = [a if a != "30" else "15" for a in COMMON]
        travel("fit", "--src", "red", "--dst", "blue", "--name", "resumed", *steps15, cwd=work)
        travel("fit", "--resume", str(work / "runs" / "resumed"), "--steps", "30", cwd=work)
        resumed = weights_digest(work / "runs" / "resumed" / "resumed.safetensors")
        report["resume"] = {"weights": resumed, "equals_uninterrupted": resumed == report["fits"]["projected-warp"]["weights"]}
        print(f"resumed: {resumed[:16]} (same as uninterrupted: {report['resume']['equals_uninterrupted']})", flush=True)
    pixels = out.with_suffix("")
    pixels.mkdir(parents=True, exist_ok=True)
    for ckpt, folder in EXAMPLES.items():
        travel("translate", str(REPO / folder), "--ckpt", ckpt, "--out", str(pixels / ckpt), "-q", cwd=REPO)
        for path in sorted((pixels / ckpt).glob("*.png")):
            array = np.asarray(Image.open(path).convert("RGB"))
            report["translations"][f"{ckpt}/{path.name}"] = hashlib.sha256(array.tobytes()).hexdigest()
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out} (translations in {pixels}/)")


def compare(before_path: Path, after_path: Path) -> int:
    before, after = (json.loads(p.read_text()) for p in (before_path, after_path))
    differing = 0
    for name in before["fits"]:
        a, b = before["fits"][name], after["fits"].get(name)
        same = b is not None and a["weights"] == b["weights"] and a["trace"] == b["trace"]
        differing += not same
        print(f"fit {name}: {'identical' if same else 'DIFFERS'}")
    same = before["resume"] == after["resume"]
    differing += not same
    print(f"resume: {'identical' if same else 'DIFFERS'} (equals uninterrupted: {after['resume'].get('equals_uninterrupted')})")
    for key, digest in before["translations"].items():
        other = after["translations"].get(key)
        if other == digest:
            print(f"translate {key}: identical")
            continue
        differing += 1
        a = np.asarray(Image.open(before_path.with_suffix("") / key), dtype=int)
        b = np.asarray(Image.open(after_path.with_suffix("") / key), dtype=int)
        print(f"translate {key}: DIFFERS, largest pixel difference {np.abs(a - b).max()}, "
              f"share of pixels that differ {(a != b).any(axis=-1).mean():.4f}")
    return differing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path)
    args = parser.parse_args()
    if args.compare:
        raise SystemExit(1 if compare(*args.compare) else 0)
    if not args.out:
        parser.error("--out or --compare")
    record(args.out)


if __name__ == "__main__":
    main()
