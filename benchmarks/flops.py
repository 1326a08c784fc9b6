"""FLOPs per image of the generator and discriminator for candidate widths, counted on the meta device (no compute).

    python benchmarks/flops.py

A training step costs about 4 generator forwards (one without gradient in D's step, forward + backward in
G's) and about 18 discriminator forwards per image (real, translation, source and translation again for the
shared TraVeL terms in D's step, each with backward; two more with input gradients in G's step).
"""

import torch
from torch.utils.flop_counter import FlopCounterMode

from travel.options import fit_config
from travel.nets.discriminators import build_discriminator
from travel.nets.generator import build_generator


def forward_flops(module: torch.nn.Module, size: int) -> float:
    image = torch.empty(1, 3, size, size, device="meta")
    with FlopCounterMode(display=False) as counter:
        module(image)
    return counter.get_total_flops() / 1e9


def main() -> None:
    print("| crop | channels | G GFLOP | D GFLOP | est. train GFLOP/image (4 G + 18 D) | G inference GFLOP |")
    print("|---|---|---|---|---|---|")
    for size in (64, 128, 256):
        for channels in (32, 24, 16):
            # The scratch D: these counts are its architecture (bench speed counts the projected one on real weights).
            model = fit_config(size=size, channels=channels, disc="scratch").model
            with torch.device("meta"):
                generator, discriminator = build_generator(model.generator), build_discriminator(model.discriminator)
            g, d = forward_flops(generator, size), forward_flops(discriminator, size)
            print(f"| {size} | {channels} | {g:.2f} | {d:.2f} | {4 * g + 18 * d:.0f} | {g:.2f} |")


if __name__ == "__main__":
    main()
