"""Where self-conditioning should cluster: k-means on frozen EfficientNet-Lite0 features of a mixed-style target's
real training images (no training at all), scored against the true styles; and the silhouette for K = 2..6.

    python benchmarks/style_clusters.py data/glyph-styles-64 [data/glyphs-64]

The first folder needs styles.json (`travel data glyphs --style-font ...`); further folders (single-style targets)
get the silhouette only. One thread is enough (about 2 minutes per 3,000 images).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from travel.train.clustering import kmeans, normalized_mutual_information, purity
from travel.lab.datasets import read_styles
from travel.lab.evaluate import load_square
from travel.nets.discriminators.projected import FrozenBackbone, map_statistics


def feature_maps(folder: Path, names: list[str], size: int = 64) -> list[torch.Tensor]:
    backbone, per_scale = FrozenBackbone(128), [[] for _ in range(4)]
    images = torch.stack([load_square(folder / f"{n}.png", size) for n in names])
    with torch.no_grad():
        for start in range(0, len(images), 64):
            for s, f in enumerate(backbone(images[start:start + 64])):
                per_scale[s].append(f)
    return [torch.cat(maps) for maps in per_scale]


def standardised(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / (x.std(0) + 1e-6)


def best_kmeans(x: torch.Tensor, k: int, tries: int = 5):
    return min((kmeans(x, k, generator=torch.Generator().manual_seed(s)) for s in range(tries)), key=lambda r: float(r.inertia))


def silhouette(x: torch.Tensor, labels: torch.Tensor) -> float:
    d, k = torch.cdist(x, x), int(labels.max()) + 1
    sizes = labels.bincount(minlength=k).double()
    mean_to = torch.stack([d[:, labels == c].sum(1) / sizes[c] for c in range(k)], 1)  # includes the point itself
    own = mean_to.gather(1, labels[:, None])[:, 0] * sizes[labels] / (sizes[labels] - 1).clamp(min=1)
    other = mean_to.scatter(1, labels[:, None], float("inf")).min(1).values
    return float(((other - own) / torch.maximum(own, other)).mean())


def main(folders: list[str]) -> None:
    torch.set_num_threads(1)
    for i, data in enumerate(map(Path, folders)):
        record = read_styles(data)
        names = sorted(p.stem for p in (data / "trainB").glob("*.png"))
        if i == 0:
            if record is None:
                raise SystemExit(f"error: {data} has no styles.json (build it with travel data glyphs --style-font ...)")
            true = torch.tensor([record["trainB"][n] for n in names])
            maps = feature_maps(data / "trainB", names)
            print(f"{data.name}: {len(names)} targets, chance purity {true.bincount().max().item() / len(true):.3f}")
            for label, x in (("pooled means, 4 scales", torch.cat([m.mean((2, 3)) for m in maps], 1)),
                             ("channel means and stds, 4 scales", map_statistics(maps)),
                             ("channel means and stds, 2 shallow scales", map_statistics(maps[:2])),
                             ("pooled means, deepest scale", maps[3].mean((2, 3)))):
                result = best_kmeans(standardised(x), len(record["styles"]))
                print(f"  {label:42s} purity {purity(result.labels, true):.3f}  NMI "
                      f"{normalized_mutual_information(result.labels, true):.3f}", flush=True)
        subset = [names[j] for j in torch.randperm(len(names), generator=torch.Generator().manual_seed(0))[:1000].tolist()]
        x = standardised(map_statistics(feature_maps(data / "trainB", subset)))
        print(f"{data.name}: silhouette of k-means on the style statistics of 1,000 targets, K = 2..6: " + ", ".join(
            f"{silhouette(x, best_kmeans(x, k).labels):.3f}" for k in range(2, 7)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
