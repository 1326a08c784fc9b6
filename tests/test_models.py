"""The networks: generator shapes at odd sizes and output range, spectral norm on every discriminator weight layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from travel.compat import read_fit_config, read_generator_config
from travel.config import ScratchConfig, DiscriminatorConfig, FitConfig, GeneratorConfig, ModelConfig, from_dict, to_dict
from travel.errors import ConfigError
from travel.nets.blocks import AttentionContext, SelfAttention, pad_to_multiple, warp
from travel.nets.discriminators import build_discriminator
from travel.nets.discriminators.scratch import ScratchDiscriminator as Discriminator
from travel.nets.generator import Generator, build_generator

TINY_G = dict(base_channels=8, max_channels=16, norm_groups=4)


def tiny_d(depth: int, attention_level: int, **kwargs) -> DiscriminatorConfig:
    """A small scratch discriminator (the family these tests are about)."""
    encoder = ScratchConfig(base_channels=8, max_channels=16, depth=depth, attention_level=attention_level)
    return DiscriminatorConfig(family="scratch", vec_len=8, scratch=encoder, **kwargs)


def scrambled(generator: Generator, seed: int = 0) -> Generator:
    """A generator whose output head is far from its zero start, so the output is not just the input."""
    torch.manual_seed(seed)
    nn.init.normal_(generator.head.weight, std=2.0)
    nn.init.normal_(generator.head.bias, std=2.0)
    return generator


# ---------------------------------------------------------------------------------------------
# Generator.


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("depth, attention", [(2, (1, 2)), (4, (3, 4))])
@pytest.mark.parametrize("height, width", [(1, 1), (5, 7), (33, 17), (100, 3), (3, 100), (16, 16)])
def test_generator_keeps_any_size_and_stays_in_range(height, width, depth, attention, residual):
    torch.manual_seed(0)
    generator = scrambled(build_generator(GeneratorConfig(depth=depth, attention_levels=attention, residual=residual, **TINY_G)))
    source = (torch.rand(2, 3, height, width) * 2 - 1).requires_grad_(True)  # [N, C, H, W] in [-1, 1]
    translation = generator(source)
    assert translation.shape == (2, 3, height, width)
    assert torch.isfinite(translation).all()
    assert translation.min() >= -1 and translation.max() <= 1
    translation.sum().backward()  # odd sizes must train too, not only run
    assert torch.isfinite(source.grad).all()


def test_generator_output_range_for_saturated_inputs():
    generator = scrambled(build_generator(GeneratorConfig(depth=2, attention_levels=(2,), **TINY_G)))
    source = torch.tensor([-1.0, 1.0]).repeat(1, 3, 8, 4)  # [1, 3, 8, 8]: exactly the range ends
    translation = generator(source)
    assert torch.isfinite(translation).all() and translation.abs().max() <= 1


def test_untrained_residual_generator_is_the_identity():
    generator = build_generator(GeneratorConfig(depth=2, attention_levels=(2,), residual=True, **TINY_G))
    source = torch.rand(2, 3, 9, 13) * 1.9 - 0.95  # inside the clamp at +-0.999
    assert torch.allclose(generator(source), source, atol=1e-5)


@pytest.mark.parametrize("skip_from", [0, 1, 2])
def test_skip_from_drops_the_skips_below_it(skip_from):
    """--skip-from N: the decoder at levels below N sees only the upsampled deeper features (issue 18's lever for
    moving strokes); the residual generator still starts as the identity, and saved configs without the key keep
    every skip."""
    cfg = GeneratorConfig(depth=3, attention_levels=(3,), skip_from=skip_from, **TINY_G)
    generator = build_generator(cfg)
    for level, (_, conv) in zip(range(cfg.depth - 1, -1, -1), generator.up):
        skip = cfg.width(level) if level >= skip_from else 0
        assert conv.conv.in_channels == cfg.width(level) + skip, level
    source = torch.rand(2, 3, 9, 13) * 1.9 - 0.95
    assert torch.allclose(generator(source), source, atol=1e-5)
    scrambled(generator)(source).sum().backward()  # trains at odd sizes without the skips too
    saved = to_dict(cfg)
    del saved["skip_from"]
    assert from_dict(GeneratorConfig, saved).skip_from == 0


@pytest.mark.parametrize("size, level", [((12, 16), 0), ((12, 16), 1), ((24, 20), 2)])
def test_warp_moves_by_whole_pixels_of_the_full_image(size, level):
    """A displacement of (+2, -4) full-resolution pixels samples each position 2 to the right and 4 up, at any
    level of the U-Net (a 2**level downsampling moves by 2 / 2**level and 4 / 2**level of its own pixels) and at
    any image size; beyond the edge the border is repeated. Bilinear weights at whole pixels are 0 and 1 up to
    float rounding of the grid (about 1e-7), hence the tolerance."""
    scale = 2**level
    x = torch.rand(2, 3, size[0] // scale, size[1] // scale)
    flow = torch.tensor([2.0 * scale, -4.0 * scale])[None, :, None, None].expand(2, 2, *x.shape[-2:])
    moved = warp(x, flow, torch.Size(size))
    cols = (torch.arange(x.shape[-1]) + 2).clamp(max=x.shape[-1] - 1)
    rows = (torch.arange(x.shape[-2]) - 4).clamp(min=0)
    assert torch.allclose(moved, x[:, :, rows][:, :, :, cols], atol=1e-5)
    assert torch.allclose(warp(x, torch.zeros_like(flow), torch.Size(size)), x, atol=1e-5)


def test_warp_generator_starts_as_the_identity_and_learns_its_displacement():
    """--warp: flow heads at every decoder level start at zero, so the generator is still the identity; a loss
    reaches them (they learn), and a trained flow moves the output. Saved configs without the key do not warp."""
    cfg = GeneratorConfig(depth=3, attention_levels=(3,), warp=True, **TINY_G)
    generator = build_generator(cfg)
    assert len(generator.flow) == cfg.depth
    source = torch.rand(2, 3, 9, 13) * 1.9 - 0.95
    assert torch.allclose(generator(source), source, atol=1e-5)
    generator(source).square().sum().backward()
    assert all(head.weight.grad.abs().sum() > 0 for head in generator.flow)
    with torch.no_grad():
        generator.flow[-1].bias.copy_(torch.tensor([1.0, 0.0]))  # one pixel to the right, at full resolution
    shifted = generator(source)
    assert torch.allclose(shifted[..., :-1], source[..., 1:], atol=1e-4)
    saved = to_dict(cfg)
    del saved["warp"]  # a schema-1 file from before the setting (travel.compat)
    assert read_generator_config(saved, 1).warp is False and not build_generator(read_generator_config(saved, 1)).flow


def test_skip_from_beyond_the_depth_is_a_config_error():
    with pytest.raises(ConfigError, match="skip_from"):
        GeneratorConfig(depth=2, attention_levels=(2,), skip_from=3, warp=False)


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_replicate_padding_hides_the_border(padding):
    """With zero padding every layer can tell the border from the middle (G can paint frames); with
    replicate padding a flat image stays flat, so nothing in G knows where the border is."""
    generator = scrambled(build_generator(GeneratorConfig(depth=2, attention_levels=(2,), padding=padding, **TINY_G)))
    for module in generator.modules():
        if isinstance(module, SelfAttention):
            module.gate.data.fill_(0.5)  # attention open too
    with torch.no_grad():
        translation = generator(torch.full((1, 3, 24, 20), 0.3))
    spread = (translation - translation.mean(dim=(2, 3), keepdim=True)).abs().max().item()
    if padding == "replicate":
        assert spread < 1e-5
    else:
        assert spread > 1e-2  # the zero-padded generator does respond to the border


def test_saved_configs_without_padding_mean_zeros():
    """Checkpoints written before the setting existed were trained with zero padding."""
    data = to_dict(GeneratorConfig(padding="replicate", warp=False))
    del data["padding"]  # a schema-1 file from before the setting (travel.compat)
    assert read_generator_config(data, 1).padding == "zeros"
    assert read_generator_config(data | {"padding": "replicate"}, 1).padding == "replicate"
    # New configs (the default) use replicate padding; a whole saved run config without the key still means zeros.
    assert GeneratorConfig(warp=False).padding == "replicate"
    saved = json.loads((Path(__file__).parent / "data" / "run-355b766" / "old" / "config.json").read_text())
    del saved["model"]["generator"]["padding"]
    assert read_fit_config(saved, 1).model.generator.padding == "zeros"
    with pytest.raises(ConfigError, match="padding"):
        GeneratorConfig(padding="reflect", warp=False)


def test_generator_rejects_a_wrong_shape():
    generator = build_generator(GeneratorConfig(depth=2, attention_levels=(2,), **TINY_G))
    with pytest.raises(ValueError, match="expected"):
        generator(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="expected"):
        generator(torch.zeros(1, 1, 16, 16))


def test_style_conditions_the_decoder():
    generator = scrambled(build_generator(GeneratorConfig(depth=2, attention_levels=(2,), num_styles=3, **TINY_G)))
    for module in generator.modules():
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight)  # they start at zero (unconditional); give the styles a difference
    source = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        default = generator(source)
        style0 = generator(source, torch.tensor([0, 0]))
        style1 = generator(source, torch.tensor([1, 1]))
    assert torch.equal(default, style0)  # no style given means style 0
    assert not torch.allclose(style0, style1)


def test_pad_to_multiple_reflects_and_replicates():
    image = torch.arange(12.0).reshape(1, 1, 3, 4)  # [1, 1, 3, 4]
    padded = pad_to_multiple(image, 4)  # to 4 x 4: one row at the bottom, reflected
    assert padded.shape == (1, 1, 4, 4)
    assert torch.equal(padded[..., 3, :], image[..., 1, :])
    tiny = torch.tensor([[[[5.0]]]])  # 1 x 1 cannot reflect: replicate
    assert torch.equal(pad_to_multiple(tiny, 4), torch.full((1, 1, 4, 4), 5.0))
    assert pad_to_multiple(padded, 4) is padded  # already a multiple


def test_self_attention_starts_as_the_identity():
    attention = SelfAttention(16)
    features = torch.randn(2, 16, 5, 3)
    assert float(attention.gate.detach()) == 0.0
    assert torch.equal(attention(features), features)


@pytest.mark.parametrize("with_context", [False, True])
def test_cpu_attention_matches_scaled_dot_product_attention(with_context):
    """The CPU path (explicit matmul + softmax) computes SDPA's attention, with and without tiling's shared context."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    attention = SelfAttention(16)
    with torch.no_grad():
        attention.gate.fill_(0.7)
    x = torch.randn(2, 16, 6, 5)
    q = attention.query(x).flatten(2).transpose(1, 2)
    k = attention.key(x).flatten(2).transpose(1, 2)
    v = attention.value(x).flatten(2).transpose(1, 2)
    if with_context:
        other = torch.randn(1, 16, 4, 7)
        context = AttentionContext(attention.key(other).flatten(2).transpose(1, 2), attention.value(other).flatten(2).transpose(1, 2))
        attention.context = context
        k, v = (t.expand(2, -1, -1) for t in context[:2])
    reference = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
    expected = x + 0.7 * reference.transpose(1, 2).reshape(x.shape)
    out = attention(x)
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, x, atol=1e-2)  # the gate is open: attention changed something
    out.sum().backward()  # and it trains
    assert attention.query.weight.grad is not None and attention.query.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Discriminator.


def weight_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def assert_spectral(module: nn.Module) -> int:
    layers = weight_layers(module)
    for layer in layers:
        assert parametrize.is_parametrized(layer, "weight"), layer
        assert any(isinstance(p, _SpectralNorm) for p in layer.parametrizations.weight), layer
    return len(layers)


@pytest.mark.parametrize("rotation_head", [False, True])
@pytest.mark.parametrize("depth, attention_level", [(2, 1), (3, 0), (4, 2)])
def test_every_discriminator_weight_layer_is_spectrally_normalised(depth, attention_level, rotation_head):
    disc = build_discriminator(tiny_d(depth, attention_level, rotation_head=rotation_head))
    # stem + one conv per level + query/key/value of the attention block + head (+ rotation head)
    expected = 1 + depth + (3 if attention_level else 0) + 1 + (1 if rotation_head else 0)
    assert assert_spectral(disc) == expected


def test_separate_siamese_network_is_spectrally_normalised_and_has_its_own_weights():
    from travel.train.step import build_nets

    model = ModelConfig(
        generator=GeneratorConfig(depth=2, attention_levels=(2,), **TINY_G),
        discriminator=tiny_d(2, 1),
        siamese="separate",
    )
    nets = build_nets(FitConfig(model=model), torch.device("cpu"))
    assert isinstance(nets.siamese, Discriminator) and nets.embed is nets.siamese
    assert assert_spectral(nets.siamese) == assert_spectral(nets.discriminator) > 0
    d_storage = {p.data_ptr() for p in nets.discriminator.parameters()}
    assert not d_storage & {p.data_ptr() for p in nets.siamese.parameters()}

    shared = build_nets(FitConfig(model=ModelConfig(generator=model.generator, discriminator=model.discriminator)), torch.device("cpu"))
    assert shared.siamese is None and shared.embed is shared.discriminator


def test_spectral_norm_holds_every_largest_singular_value_near_one():
    torch.manual_seed(0)
    disc = build_discriminator(tiny_d(2, 1, rotation_head=True)).train()
    with torch.no_grad():
        for layer in weight_layers(disc):
            layer.parametrizations.weight.original.mul_(25.0)  # far from norm 1 before normalisation
        for _ in range(30):  # one power iteration per forward in training mode
            disc(torch.randn(2, 3, 16, 16))
            disc.rotation_logits(disc.features(torch.randn(2, 3, 16, 16)))
        for layer in weight_layers(disc):
            sigma = torch.linalg.matrix_norm(layer.weight.flatten(1), ord=2)
            assert abs(float(sigma) - 1.0) < 0.05, (layer, float(sigma))


@pytest.mark.parametrize("height, width", [(16, 16), (24, 40), (8, 8)])
def test_discriminator_shapes(height, width):
    disc = build_discriminator(tiny_d(2, 1, rotation_head=True))
    images = torch.rand(3, 3, height, width) * 2 - 1
    features = disc.features(images)
    assert features.shape == (3, disc.feature_dim)
    assert disc(images).shape == (3, 8)
    assert disc.rotation_logits(features).shape == (3, 4)


def test_rotation_logits_need_a_rotation_head():
    disc = build_discriminator(tiny_d(2, 1))
    with pytest.raises(RuntimeError, match="rotation head"):
        disc.rotation_logits(torch.zeros(1, disc.feature_dim))


def test_large_maps_attend_to_block_means_exactly_when_blocks_are_constant(monkeypatch):
    """Above MAX_ATTENTION_CONTEXT positions, keys and values are s x s block means, edge blocks weighted by what they
    cover: on a map whose features are constant within each block (edge blocks included) that is the full attention."""
    import travel.nets.blocks as models
    from travel.nets.blocks import attend, context_pooling

    torch.manual_seed(0)
    attention = SelfAttention(16)
    with torch.no_grad():
        attention.gate.fill_(1.0)
    monkeypatch.setattr(models, "MAX_ATTENTION_CONTEXT", 30)
    assert context_pooling(10, 11) == 2  # 5 x 6 = 30 blocks, the last column of blocks one position wide
    blocks = torch.randn(1, 16, 5, 6)
    x = blocks.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)[..., :10, :11]  # [1, 16, 10, 11]
    q, k, v = (m(x).flatten(2).transpose(1, 2) for m in (attention.query, attention.key, attention.value))
    full = x + attend(q, k, v).transpose(1, 2).reshape(x.shape)  # every one of the 110 positions
    pooled = attention(x)
    assert attention.keys_values(x).keys.shape[1] == 30
    # Equal in exact arithmetic; the pooled sums run in another order than the full ones, so a float tolerance.
    assert torch.allclose(pooled, full, atol=1e-5)
    # Without the edge weights the one-wide blocks would count as much as full ones: a visible difference.
    context = attention.keys_values(x)
    unweighted = x + attend(q, context.keys, context.values).transpose(1, 2).reshape(x.shape)
    assert (unweighted - full).abs().max() > 1e-3
    # A map that fits is never pooled: maps of training size compute what they always did.
    small = torch.randn(2, 16, 5, 6)
    assert attention.keys_values(small).keys.shape[1] == 30 and attention.keys_values(small).bias is None


def test_the_fused_cpu_path_computes_what_the_score_matrix_does(monkeypatch):
    """Above EXPLICIT_ATTENTION_PAIRS the CPU runs SDPA's fused kernel on zero-padded queries and keys (bounded
    memory); it computes the same attention up to float rounding (summation order differs, so a tolerance)."""
    import travel.nets.blocks as models
    from travel.nets.blocks import attend

    torch.manual_seed(1)
    q, k, v = torch.randn(2, 300, 4), torch.randn(2, 200, 4), torch.randn(2, 200, 32)
    bias = torch.log(torch.rand(200) * 0.9 + 0.1)
    explicit = attend(q, k, v, bias)
    monkeypatch.setattr(models, "EXPLICIT_ATTENTION_PAIRS", 0)
    fused = attend(q, k, v, bias)
    assert torch.allclose(fused, explicit, atol=1e-5)


@pytest.mark.parametrize("family", ["scratch", "projected"])
def test_every_family_in_the_registry_builds_what_the_interface_says(family):
    """The training loop asks D and S for nothing but travel.nets.discriminators.base's interface: each registered
    family's networks satisfy it, with vectors of the shapes it promises."""
    from travel.config import ProjectedConfig, resolve
    from travel.nets.discriminators import REGISTRY, build_siamese
    from travel.nets.discriminators.base import Discriminator as DiscriminatorInterface
    from travel.nets.discriminators.base import Embedding

    assert set(REGISTRY) == {"scratch", "projected"}
    disc_cfg = DiscriminatorConfig(family=family, vec_len=6, rotation_head=True, scratch=ScratchConfig(base_channels=8, depth=2),
                                   projected=ProjectedConfig(resolution=32, head_channels=4))
    cfg = resolve(FitConfig(model=ModelConfig(discriminator=disc_cfg))).model.discriminator
    disc, siamese = build_discriminator(cfg), build_siamese(cfg)
    assert isinstance(disc, DiscriminatorInterface) and isinstance(siamese, Embedding)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    vectors, features = disc(images), disc.features(images)
    if disc.patch_weights is None:
        assert vectors.shape == (2, 6)
    else:
        assert vectors.shape == (2, disc.patch_weights.shape[0], 6)
    assert disc.rotation_logits(features).shape == (2, 4)
    assert siamese(images).shape[-1] == 6
