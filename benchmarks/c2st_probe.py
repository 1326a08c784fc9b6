"""What does the two-sample test read? Re-score a checkpoint's held-out translations under transforms of both sets.

    python benchmarks/c2st_probe.py --data DATA --size 128 [--grid most-detected.png] [--seeds N]
        [--transforms "as is,silhouette"] [--by-group] CKPT|identity [...]

For each checkpoint (or `identity`, the untranslated sources), `travel eval`'s two-sample test (64 px, 300 steps)
with classifier seeds 0 .. N-1 (--seeds N, 3 by default), on: the images as they are; both sets in grey; both
reduced to silhouettes (pixels darker than near-white in any channel); both blurred (5x5 box); both at 16 px; each
image reduced to its mean colour (--transforms picks some; all by default); then the images as they are with the
halves cut between the dataset's split groups (travel.lab.evaluate.pair_groups). A transform that leaves the accuracy
where it was removes nothing the classifier needs. --by-group scores every chosen transform with group halves too
(silhouettes by group: does the shape carry over to drawings the classifier never saw?). --grid saves, for the first
checkpoint, the 16 translations the classifier finds most fake (cross-fitted over 3 pair splits), each over its
source and its real target.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from travel.lab.evaluate import find_test_set, load_test_set, pair_groups, translate_all
from travel.inference import Translator
from travel.lab.metrics import _prepare, _TwoSampleNet, two_sample_accuracy


def grey(x: torch.Tensor) -> torch.Tensor:
    return x.mean(1, keepdim=True).expand(-1, 3, -1, -1)


def silhouette(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x.min(1, keepdim=True).values > 0.9, 1.0, -1.0).expand(-1, 3, -1, -1)


def blur(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, 1)


def coarse(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(F.interpolate(x, size=16, mode="area"), size=64, mode="nearest")


def mean_colour(x: torch.Tensor) -> torch.Tensor:
    return x.mean((2, 3), keepdim=True).expand(-1, -1, 64, 64)


TRANSFORMS = {"as is": lambda x: x, "grey": grey, "silhouette": silhouette, "blur 5x5": blur, "16 px": coarse,
              "mean colour": mean_colour}


def most_detected(source: torch.Tensor, target: torch.Tensor, translation: torch.Tensor, count: int = 16) -> torch.Tensor:
    """Cross-fitted P(real) of every translation (3 random pair splits, both folds); the `count` lowest, as a grid."""
    n = source.shape[0]
    real, fake = _prepare(target, 64), _prepare(translation, 64)
    score, seen = torch.zeros(n), torch.zeros(n)
    for rep in range(3):
        rng = torch.Generator().manual_seed(rep)
        perm = torch.randperm(n, generator=rng)
        for train, test in ((perm[: n // 2], perm[n // 2:]), (perm[n // 2:], perm[: n // 2])):
            torch.manual_seed(rep)
            net = _TwoSampleNet()
            opt = torch.optim.Adam(net.parameters(), lr=2e-3, betas=(0.5, 0.999))
            for _ in range(300):
                a = train[torch.randint(0, len(train), (16,), generator=rng)]
                b = train[torch.randint(0, len(train), (16,), generator=rng)]
                loss = F.binary_cross_entropy_with_logits(net(torch.cat([real[a], fake[b]])),
                                                          torch.cat([torch.ones(16), torch.zeros(16)]))
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                score[test] += torch.sigmoid(net.eval()(fake[test]))
                seen[test] += 1
    pick = torch.argsort(score / seen)[:count]
    return make_grid(torch.cat([source[pick], target[pick], translation[pick]]) * 0.5 + 0.5, nrow=count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--data", required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--grid", help="PNG of the most detected translations of the first checkpoint")
    parser.add_argument("--seeds", type=int, default=3, help="classifier seeds 0 .. N-1")
    parser.add_argument("--transforms", default=",".join(TRANSFORMS), help="comma-separated, of: " + ", ".join(TRANSFORMS))
    parser.add_argument("--by-group", action="store_true", help="also score every transform with group halves")
    args = parser.parse_args()
    transforms = [name.strip() for name in args.transforms.split(",")]
    if args.seeds < 1 or any(name not in TRANSFORMS for name in transforms):
        parser.error(f"--seeds must be >= 1 and --transforms a list of: {', '.join(TRANSFORMS)}")
    seeds = range(args.seeds)
    test_set = find_test_set(args.data)
    source, target, _ = load_test_set(test_set, args.size)
    groups = pair_groups(args.data, test_set)
    print(f"{source.shape[0]} pairs in {len(groups.unique())} groups; classifier seeds {list(seeds)}")

    def report(ckpt: str, name: str, real: torch.Tensor, fake: torch.Tensor, by_group: bool) -> None:
        halves = "group halves" if by_group else "image halves"
        accs = [two_sample_accuracy(real, fake, seed=s, groups=groups if by_group else None)["accuracy"] for s in seeds]
        print(f"{ckpt:24s} {name:12s} {halves:13s} " + " ".join(f"{a:.3f}" for a in accs)
              + f"  mean {sum(accs) / len(accs):.3f}", flush=True)

    for index, ckpt in enumerate(args.ckpts):
        images = source if ckpt == "identity" else translate_all(
            Translator.from_pretrained(ckpt, device="cpu"), source, batch_size=8)
        for name in transforms:
            real, fake = TRANSFORMS[name](target), TRANSFORMS[name](images)
            report(ckpt, name, real, fake, by_group=False)
            if args.by_group:
                report(ckpt, name, real, fake, by_group=True)
        if not args.by_group:  # the images as they are, by group (as every report before --by-group had it)
            report(ckpt, "as is", target, images, by_group=True)
        if index == 0 and args.grid and ckpt != "identity":
            save_image(most_detected(source, target, images), args.grid)
            print(f"saved {args.grid}")


if __name__ == "__main__":
    main()
