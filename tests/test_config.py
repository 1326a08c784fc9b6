"""Config dataclasses: JSON round trip, unknown keys and wrong types rejected, validation errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from travel.config import (
    ClusterConfig,
    DataConfig,
    DiscriminatorConfig, ProjectedConfig, ScratchConfig,
    FitConfig,
    GeneratorConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    attention_levels_for,
    from_dict,
    to_dict,
    resolve,
    to_json,
)
from travel.errors import ConfigError, TravelError


def non_default_config() -> FitConfig:
    """Every section away from its defaults, so a round trip that drops or resets a field shows."""
    return FitConfig(
        name="apples2oranges",
        model=ModelConfig(
            generator=GeneratorConfig(base_channels=16, max_channels=64, depth=3, attention_levels=(2, 3), norm_groups=4, warp=False),
            discriminator=DiscriminatorConfig(family="scratch", vec_len=7, rotation_head=True, scratch=ScratchConfig(base_channels=16, max_channels=64, depth=3, attention_level=1)),
            siamese="separate",
        ),
        loss=LossConfig(travel=3.5, dist=0.25, margin=2.0, r1_gamma=0.1, rotation=True, rotation_d=1.0, rotation_g_decay=False),
        data=DataConfig(source="/data/a", target="/data/b", load_size=40, crop_size=32, flip=False, workers=2),
        train=TrainConfig(steps=123, batch_size=3, lr_g=2e-4, seed=7, device="cpu", precision="fp32", log_every=5),
    )


def test_json_round_trip_preserves_every_field():
    config = non_default_config()
    text = to_json(config)
    rebuilt = from_dict(FitConfig, json.loads(text))
    assert rebuilt == config
    assert to_json(rebuilt) == text
    # Tuples come back as tuples (JSON has only lists), so equality and hashing hold.
    assert isinstance(rebuilt.model.generator.attention_levels, tuple)
    assert hash(rebuilt.model) == hash(config.model)


def test_missing_keys_take_defaults():
    assert from_dict(FitConfig, {}) == FitConfig()
    rebuilt = from_dict(FitConfig, {"train": {"steps": 5}})
    assert rebuilt.train == TrainConfig(steps=5)
    assert rebuilt.model == ModelConfig()


def test_integer_is_accepted_for_a_float_field():
    rebuilt = from_dict(TrainConfig, {"lr_g": 1})
    assert rebuilt.lr_g == 1.0 and isinstance(rebuilt.lr_g, float)


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"nmae": "x"}, "nmae"),
        ({"train": {"stpes": 10}}, "stpes"),
        ({"model": {"generator": {"widht": 8}}}, "widht"),
    ],
)
def test_unknown_keys_are_rejected(data, needle):
    with pytest.raises(ConfigError, match=needle):
        from_dict(FitConfig, data)


@pytest.mark.parametrize(
    "data",
    [
        {"train": {"steps": "10"}},  # a string for an int
        {"train": {"steps": 1.5}},  # a float for an int
        {"train": {"steps": True}},  # a bool is not an int here
        {"train": {"lr_g": "fast"}},
        {"train": {"lr_g": False}},
        {"data": {"flip": "yes"}},
        {"data": {"flip": 1}},
        {"data": {"source": 3}},
        {"name": None},
        {"model": {"generator": {"attention_levels": 3}}},  # not a list
        {"model": {"generator": {"attention_levels": ["a"]}}},
        {"model": {"siamese": "both"}},  # not one of the Literal's values
        {"train": {"device": "tpu"}},
        {"train": {"precision": "fp8"}},
        {"model": []},  # a section that is not an object
        {"loss": "strong"},
    ],
)
def test_wrong_types_are_rejected_with_config_error(data):
    with pytest.raises(ConfigError):
        from_dict(FitConfig, data)


def test_from_dict_rejects_a_non_object():
    with pytest.raises(ConfigError, match="expected an object"):
        from_dict(FitConfig, [1, 2])


@pytest.mark.parametrize(
    "build, needle",
    [
        (lambda: TrainConfig(steps=0), "steps"),
        (lambda: TrainConfig(steps=-3), "steps"),
        (lambda: TrainConfig(batch_size=1), "batch_size: must be >= 2"),
        (lambda: TrainConfig(lr_g=0.0), "lr_g: must be > 0"),
        (lambda: TrainConfig(lr_d=float("nan")), "lr_d: must be > 0"),
        (lambda: TrainConfig(beta1=1.0), "betas"),
        (lambda: TrainConfig(d_steps=0), "d_steps"),
        (lambda: TrainConfig(ema_beta=1.0), "ema_beta"),
        (lambda: TrainConfig(log_every=0), "log_every"),
        (lambda: TrainConfig(save_every=0), "save_every"),
        (lambda: TrainConfig(device="tpu"), "device"),  # type: ignore[arg-type]
        (lambda: DataConfig(load_size=16, crop_size=32), "load size"),
        (lambda: DataConfig(load_size=8, crop_size=4), "crop size"),
        (lambda: DataConfig(workers=-1), "workers"),
        (lambda: GeneratorConfig(channels=2, warp=False), "channels"),
        (lambda: GeneratorConfig(depth=0, warp=False), "depth"),
        (lambda: GeneratorConfig(depth=9, warp=False), "depth"),
        (lambda: GeneratorConfig(depth=2, attention_levels=(3,), warp=False), "attention_levels"),
        (lambda: GeneratorConfig(base_channels=64, max_channels=32, warp=False), "max_channels"),
        (lambda: DiscriminatorConfig(family="scratch", vec_len=0), "vec_len"),
        (lambda: DiscriminatorConfig(family="scratch", scratch=ScratchConfig(depth=2, attention_level=3)), "attention_level"),
        (lambda: ModelConfig(siamese="both"), "siamese"),  # type: ignore[arg-type]
        (lambda: ModelConfig(generator=GeneratorConfig(channels=1, warp=False)), "channels"),
        (lambda: LossConfig(travel=-1.0), "travel"),
        (lambda: LossConfig(adv=float("nan")), "adv"),
        (lambda: FitConfig(name="a/b"), "name"),
        (lambda: FitConfig(name=""), "name"),
        (lambda: resolve(FitConfig(loss=LossConfig(rotation=True),
                                  model=ModelConfig(discriminator=DiscriminatorConfig(rotation_head=False)))), "rotation head"),
        (lambda: resolve(FitConfig(clusters=ClusterConfig(clusters=3),
                                  model=ModelConfig(generator=GeneratorConfig(num_styles=2)))), "num_styles"),
    ],
)
def test_validation_errors(build, needle):
    with pytest.raises(ConfigError, match=needle):
        build()


def test_validation_runs_on_from_dict_too():
    with pytest.raises(ConfigError, match="batch_size") as caught:
        from_dict(FitConfig, {"train": {"batch_size": 1}})
    assert caught.value.setting == "TrainConfig.batch_size"  # the command line shows --batch-size instead


def test_config_error_is_a_travel_error_and_a_value_error():
    with pytest.raises(TravelError):
        TrainConfig(steps=0)
    with pytest.raises(ValueError):
        TrainConfig(steps=0)


def test_configs_are_frozen():
    config = FitConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.steps = 3  # type: ignore[misc]


def test_to_dict_is_plain_json():
    data = to_dict(non_default_config())
    assert json.loads(json.dumps(data)) == json.loads(to_json(non_default_config()))
    assert set(data) == {f.name for f in dataclasses.fields(FitConfig)}


def test_widths_double_and_cap():
    cfg = GeneratorConfig(base_channels=8, max_channels=32, depth=4, warp=False)
    assert [cfg.width(level) for level in range(5)] == [8, 16, 32, 32, 32]
    assert cfg.multiple == 16


def test_attention_levels_for_the_crop():
    # 128 px: level 1 is 64 px (too big), levels 2..4 are 32, 16 and 8 px.
    assert attention_levels_for(128, 4) == (2, 3, 4)
    assert attention_levels_for(16, 2) == (1, 2)
    assert attention_levels_for(512, 3) == ()
