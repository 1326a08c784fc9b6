"""How far a `--warp` generator moves pixels on held-out images: displacement statistics and a sheet.

    python benchmarks/warp_flow.py --data DATA --size 128 [--sheet flow.png] CKPT [CKPT ...]

For each checkpoint, the full-resolution displacement the generator resamples its input along (the last call of
travel.nets.generator.warp), over the whole test set: mean length in pixels, its 99th percentile and maximum, and the
share of pixels moved more than 1 px. The sheet has the sources on top, then for each checkpoint its
translations and the displacement length (white = still, black = 4 px or more).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torchvision.utils import make_grid

import travel.nets.generator
from travel.data import tensor_to_image
from travel.lab.evaluate import find_test_set, load_test_set
from travel.inference import Translator


@contextlib.contextmanager
def recorded_flows() -> Iterator[list[torch.Tensor]]:
    """Collect the displacement [N, 2, H, W] of every warp of a full-resolution RGB image while inside."""
    flows: list[torch.Tensor] = []
    original = travel.nets.generator.warp

    def spy(x: torch.Tensor, flow: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if x.shape[1] == 3 and tuple(x.shape[-2:]) == tuple(size):
            flows.append(flow.detach())
        return original(x, flow, size)

    travel.nets.generator.warp = spy
    try:
        yield flows
    finally:
        travel.nets.generator.warp = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--data", required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--sheet", help="write a sheet of translations and displacement lengths here")
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--stride", type=int, default=28, help="the sheet takes every N-th test pair")
    args = parser.parse_args()
    source, _, _ = load_test_set(find_test_set(args.data), args.size)
    pick = torch.arange(0, source.shape[0], args.stride)[: args.count]
    rows = [source[pick]]
    for ckpt in args.ckpts:
        generator = Translator.from_pretrained(ckpt, device="cpu").generator
        if not generator.cfg.warp:
            print(f"{ckpt}: not a --warp generator; skipped")
            continue
        with torch.no_grad(), recorded_flows() as flows:
            for start in range(0, source.shape[0], 16):
                generator(source[start:start + 16])
            length = torch.cat(flows).norm(dim=1)  # [N, H, W] pixels
            flows.clear()
            picked = generator(source[pick])
            picked_length = flows[0].norm(dim=1, keepdim=True)
        print(f"{ckpt}: mean {length.mean():.3f} px, 99th percentile {length.flatten().quantile(0.99):.2f} px, "
              f"max {length.max():.2f} px, moved > 1 px {(length > 1).float().mean():.3f}")
        rows += [picked, (1 - 2 * (picked_length / 4).clamp(0, 1)).expand(-1, 3, -1, -1)]
    if args.sheet:
        grid = make_grid(torch.cat(rows).float(), nrow=len(pick), padding=2, pad_value=1.0)
        tensor_to_image(grid).save(args.sheet)
        print(f"saved {args.sheet}: rows = sources, then per checkpoint its translations and displacement lengths "
              f"(black = 4 px or more): " + ", ".join(Path(c).parent.name for c in args.ckpts))


if __name__ == "__main__":
    main()
