"""Self-conditioning finds sub-styles nobody labelled, and the generator follows the style it is asked for."""

from __future__ import annotations

import torch
from PIL import Image

from conftest import draw_shapes
from travel.checkpoint import load_state, load_weights
from travel.clustering import normalized_mutual_information, purity
from travel.config import (
    ClusterConfig, DataConfig, DiscriminatorConfig, FitConfig, GeneratorConfig, ModelConfig, TrainConfig,
)
from travel.data import find_images, image_to_tensor
from travel.train import fit

BACKGROUNDS = [(230, 120, 120), (120, 230, 120), (120, 120, 230)]  # three sub-styles of the target domain


def test_clusters_match_substyles_and_styles_are_followed(tmp_path):
    # Target: dark shapes on one of three pastel backgrounds (the sub-style, never given to the model).
    # Source: dark shapes on white.
    for k, background in enumerate(BACKGROUNDS):
        draw_shapes(tmp_path / "target" / f"style{k}", 12, colour=(20, 20, 20), background=background, size=32, seed=10 + k)
    draw_shapes(tmp_path / "source", 24, colour=(20, 20, 20), size=32, seed=1)
    config = FitConfig(
        name="styles",
        model=ModelConfig(
            generator=GeneratorConfig(base_channels=8, max_channels=32, depth=3, attention_levels=(3,), norm_groups=4, num_styles=3),
            discriminator=DiscriminatorConfig(base_channels=8, max_channels=32, depth=3, attention_level=2, vec_len=16),
        ),
        clusters=ClusterConfig(clusters=3, recluster_every=100),
        data=DataConfig(source=str(tmp_path / "source"), target=str(tmp_path / "target"), load_size=32, crop_size=32),
        # A short run needs larger steps than TTUR's defaults to move whole backgrounds.
        train=TrainConfig(steps=200, batch_size=4, lr_g=1e-3, lr_d=2e-3, log_every=50, sample_every=200, save_every=200),
    )
    result = fit(config, tmp_path / "run")

    # 1. The clusters are the sub-styles.
    truth = torch.tensor([int(p.parent.name[-1]) for p in find_images(tmp_path / "target")])
    labels = load_state(tmp_path / "run")["styles"]["labels"]
    assert purity(labels, truth) >= 0.9
    assert normalized_mutual_information(labels, truth) >= 0.9

    # 2. The released weights record K and the frequencies.
    weights = load_weights(result.weights)
    assert weights.config.num_styles == 3
    frequencies = weights.summary["style_frequencies"]
    assert len(frequencies) == 3 and abs(sum(frequencies) - 1) < 1e-5

    # 3. Asked for style k, the generator draws sub-style k: a nearest-colour classifier on the background
    #    of each translation names the sub-style that dominates cluster k.
    generator = weights.build()
    sources = torch.stack([image_to_tensor(Image.open(p).convert("RGB")) for p in find_images(tmp_path / "source")])
    background = sources.mean(dim=1) > 0.5  # [N, H, W]: white pixels of the source
    palette = torch.tensor(BACKGROUNDS, dtype=torch.float32) / 127.5 - 1  # [3, 3]
    for k in range(3):
        expected = int(torch.mode(truth[labels == k]).values)
        with torch.no_grad():
            translated = generator(sources, torch.full((len(sources),), k))
        colours = torch.stack([translated[i][:, background[i]].mean(dim=1) for i in range(len(sources))])  # [N, 3]
        recognised = torch.cdist(colours, palette).argmin(dim=1)
        share = (recognised == expected).float().mean().item()
        assert share >= 0.8, (k, expected, recognised.tolist())
