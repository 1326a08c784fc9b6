"""The method learns: on a generated task with a known answer, a short CPU run beats the untrained generator,
with either discriminator family."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import draw_shapes
from travel.checkpoint import load_weights
from travel.config import DataConfig, DiscriminatorConfig, ProjectedConfig, ScratchConfig, FitConfig, GeneratorConfig, LossConfig, ModelConfig, TrainConfig
from travel.data import image_to_tensor
from travel.nets.generator import build_generator
from travel.train import fit

FAMILIES = {
    "scratch": dict(discriminator=DiscriminatorConfig(family="scratch", vec_len=16, scratch=ScratchConfig(base_channels=8, max_channels=32, depth=3, attention_level=2)),
                    siamese="shared", loss=LossConfig(), lr_g=1e-4),
    # The projected family with its defaults (FAMILY_DEFAULTS): separate S, TraVeL weight 0.2, lr_G 2e-4.
    "projected": dict(discriminator=DiscriminatorConfig(family="projected", vec_len=8, projected=ProjectedConfig(resolution=64, head_channels=16)),
                      siamese="separate", loss=LossConfig(travel=0.2), lr_g=2e-4),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_short_run_learns_colour_swap(tmp_path, family):
    # Source: red shapes; target: blue shapes (other shapes: the data are unpaired). The known answer for a
    # source image is the same picture with red and blue swapped.
    draw_shapes(tmp_path / "red", 24, colour=(220, 30, 30), size=32, seed=1)
    draw_shapes(tmp_path / "blue", 24, colour=(30, 30, 220), size=32, seed=2)
    held_out = draw_shapes(tmp_path / "test", 16, colour=(220, 30, 30), size=32, seed=3)
    source = torch.stack([image_to_tensor(Image.open(p).convert("RGB")) for p in held_out])  # [16, 3, 32, 32]
    answer = source[:, [2, 1, 0]]

    settings = FAMILIES[family]
    config = FitConfig(
        name="swap",
        model=ModelConfig(
            generator=GeneratorConfig(base_channels=8, max_channels=32, depth=3, attention_levels=(3,), norm_groups=4, warp=False),
            discriminator=settings["discriminator"], siamese=settings["siamese"],
        ),
        loss=settings["loss"],
        data=DataConfig(source=str(tmp_path / "red"), target=str(tmp_path / "blue"), load_size=32, crop_size=32),
        train=TrainConfig(steps=150, batch_size=4, lr_g=settings["lr_g"], log_every=50, sample_every=150, save_every=150, seed=0),
    )
    weights = load_weights(fit(config, tmp_path / "run").weights)
    trained, untrained = weights.build(), build_generator(weights.config).eval()
    with torch.no_grad():
        error_trained = (trained(source) - answer).abs().mean().item()
        error_untrained = (untrained(source) - answer).abs().mean().item()
        translated = trained(source)

    assert error_trained < 0.75 * error_untrained, (error_trained, error_untrained)
    # Where the source is red, the translation has turned blue.
    shape = source[:, 0] > source[:, 2] + 0.5  # [16, 32, 32] red pixels of the source
    blue_minus_red = (translated[:, 2] - translated[:, 0])[shape].mean().item()
    assert blue_minus_red > 0.5, blue_minus_red
