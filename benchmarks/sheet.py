"""A sample sheet of held-out pairs: sources (top row), ground truth, then one row per checkpoint.

    python benchmarks/sheet.py --data DATA --size 64 --out sheet.png CKPT [CKPT ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.utils import make_grid

from travel.data import tensor_to_image
from travel.lab.evaluate import find_test_set, load_test_set, translate_all
from travel.inference import Translator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--data", required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--stride", type=int, default=50, help="take every N-th test pair, so the sheet spans the set")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    test_set = find_test_set(args.data)
    source, target, _ = load_test_set(test_set, args.size)
    pick = torch.arange(0, source.shape[0], args.stride)[: args.count]
    rows = [source[pick], target[pick]]
    for ckpt in args.ckpts:
        rows.append(translate_all(Translator.from_pretrained(ckpt, device="cpu"), source[pick], batch_size=8))
    grid = make_grid(torch.cat(rows).float(), nrow=len(pick), padding=2, pad_value=1.0)
    tensor_to_image(grid).save(args.out)
    print(f"saved {args.out}: rows = source, ground truth, " + ", ".join(Path(c).name for c in args.ckpts))


if __name__ == "__main__":
    main()
