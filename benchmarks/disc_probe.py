"""Does each part of a run's projected discriminator still tell real targets from translations?

    python benchmarks/disc_probe.py --data DATA [--split train|test] [--augment] RUN_DIR [RUN_DIR ...]

Loads the resume state of each run (its discriminator and EMA generator), loads the first `--count` source and
target images of the split at the run's load size (as `travel eval` loads a test set), takes the same random crops
of both (the run's training crop size), translates the sources, and
reports for the frozen-feature heads and, when the run has one, the pixel-space branch (`--pixel-weight`): the mean
anchor distance d of the real targets and of the translations, and their separation, P(d(translation) > d(real))
over all pairs (1 = every translation judged less real than every target, 0.5 = chance). `--augment` passes both
through the run's differentiable augmentation first, as D sees them in training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from travel.augment import DiffAugment
from travel.checkpoint import load_state, state_config

from travel.lab.evaluate import find_test_set, load_test_set
from travel.losses import anchor_distance, per_image
from travel.nets.discriminators import build_discriminator
from travel.nets.generator import build_generator


def separation(real: torch.Tensor, fake: torch.Tensor) -> float:
    """P(d(fake) > d(real)) over all (real, fake) pairs."""
    return float((fake[None, :] > real[:, None]).float().mean())


@torch.no_grad()
def probe(run: Path, data: Path, split: str, count: int, augment: bool, seed: int = 0) -> dict[str, dict[str, float]]:
    state = load_state(run)
    config = state_config(state, name=str(run))  # any schema this travel reads
    disc = build_discriminator(config.model.discriminator)
    disc.load_state_dict(state["discriminator"])
    gen = build_generator(config.model.generator)
    gen.load_state_dict(state["ema"])
    disc.eval(), gen.eval()
    source, target, _ = load_test_set(find_test_set(data, split=split, limit=count), config.data.load_size)
    torch.manual_seed(seed)
    aug = DiffAugment(colour=config.data.augment_colour) if augment else (lambda x: x)
    crop, rng = config.data.crop_size, torch.Generator().manual_seed(seed)
    real, fake = [], []
    for k in range(0, min(len(source), len(target)), 16):
        i, j = (int(v) for v in torch.randint(0, source.shape[-1] - crop + 1, (2,), generator=rng))
        a, b = source[k:k + 16, :, i:i + crop, j:j + crop], target[k:k + 16, :, i:i + crop, j:j + crop]
        real.append(disc(aug(b)))
        fake.append(disc(aug(gen(a))))
    anchor = torch.zeros(config.model.discriminator.vec_len)
    d_real, d_fake = anchor_distance(torch.cat(real), anchor), anchor_distance(torch.cat(fake), anchor)  # [N, P]
    weights = disc.patch_weights
    pixel = getattr(disc, "pixel", None) is not None
    heads = slice(0, d_real.shape[1] - 1 if pixel else d_real.shape[1])
    parts = {"heads": (per_image(d_real[:, heads], weights[heads]), per_image(d_fake[:, heads], weights[heads]))}
    if pixel:
        parts["pixel"] = (d_real[:, -1], d_fake[:, -1])
    return {name: {"d_real": float(r.mean()), "d_fake": float(f.mean()), "separation": separation(r, f)}
            for name, (r, f) in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", choices=("train", "test"), default="test")
    parser.add_argument("--count", type=int, default=160)
    parser.add_argument("--augment", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        for name, row in probe(run, args.data, args.split, args.count, args.augment).items():
            print(f"{run.name:28s} {name:6s} d real {row['d_real']:.3f}  d translation {row['d_fake']:.3f}  "
                  f"separation {row['separation']:.3f}")


if __name__ == "__main__":
    main()
