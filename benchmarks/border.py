"""How much a translator paints along the image border: L1 against the ground truth in the outer ring
of pixels beside L1 in the interior, for the translation and for the identity (the source itself).

A generator that draws a frame (zero padding tells it where the border is) has a ring L1 far above the
identity's; on the emoji benchmark, whose images have white margins, the identity's ring L1 is 0.
Paired test sets only (testA/testB, same names).

    python benchmarks/border.py --ckpt RUN_OR_WEIGHTS --data /work/data/emoji-128 --size 128 [--ring 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys

import torch

from travel.errors import TravelError
from travel.lab.evaluate import find_test_set, load_test_set, translate_all, write_report
from travel.inference import Translator, resolve_checkpoint


def ring_mask(size: int, ring: int) -> torch.Tensor:
    """[size, size] bool, True within `ring` pixels of any edge."""
    mask = torch.ones(size, size, dtype=torch.bool)
    mask[ring:size - ring, ring:size - ring] = False
    return mask


def ring_and_interior_l1(images: torch.Tensor, target: torch.Tensor, ring: int) -> tuple[float, float]:
    """Mean absolute difference (in [0, 1] units) in the border ring and in the rest."""
    error = (images - target).abs().mean(dim=1) / 2  # [N, H, W], [-1, 1] -> [0, 1]
    mask = ring_mask(images.shape[-1], ring)
    return error[:, mask].mean().item(), error[:, ~mask].mean().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--ring", type=int, default=2, help="border width in pixels")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not 1 <= args.ring < args.size // 2:
        parser.error(f"--ring must be in 1..{args.size // 2 - 1} for --size {args.size}")
    try:
        test_set = find_test_set(args.data)
        if not test_set.paired:
            raise TravelError(f"{args.data}: the test set is not paired (testA/testB with the same names)")
        source, target, _ = load_test_set(test_set, args.size)
        translator = Translator.from_pretrained(resolve_checkpoint(args.ckpt), device="cpu")
        translation = translate_all(translator, source, batch_size=args.batch_size)
    except TravelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = {}
    for name, images in (("translation", translation), ("identity", source)):
        ring, interior = ring_and_interior_l1(images, target, args.ring)
        rows[name] = {"ring_l1": ring, "interior_l1": interior}
    print(f"{args.ckpt} on {args.data} ({len(source)} pairs, {args.size} px, outer {args.ring} px ring)")
    print(f"{'':12} {'ring L1':>8} {'interior L1':>12}")
    for name, row in rows.items():
        print(f"{name:12} {row['ring_l1']:8.4f} {row['interior_l1']:12.4f}")
    if args.json:  # atomically, like travel eval's report
        try:
            write_report({"ckpt": args.ckpt, "data": args.data, "size": args.size, "ring": args.ring, "rows": rows}, args.json)
        except TravelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
