"""Older run folders and weights keep working (travel.compat): a real schema-1 run, checked in at tests/data/run-355b766.

That folder was written by travel at commit 355b766 (2026-11-23: before the projected family, the warp, the feature
mixing, the pixel branch and the rotation switch existed), with
    travel fit --src red --dst blue --name old --steps 2 --channels 4 --depth 2 --size 16 --load-size 18
        --batch-size 2 --log-every 1 --sample-every 1000 --save-every 2 --seed 0 --device cpu --vec-len 8
on one thread; old-resumed-to-4.safetensors is what the same code wrote after `travel fit --resume old --steps 4`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from travel.checkpoint import load_run_config, load_state, load_weights, state_config
from travel.cli import app
from travel.compat import ABSENT_IN_1, dump_run_config, read_fit_config, read_run_config
from travel.config import FitConfig, resolve, to_dict

OLD = Path(__file__).parent / "data" / "run-355b766"
runner = CliRunner()


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A copy of the old run with its data beside it. config.json names the folders it trained on by absolute path
    (/tmp/oldgen/...); only those two strings are pointed at the copy."""
    shutil.copytree(OLD, tmp_path / "old-run")
    run = tmp_path / "old-run" / "old"
    config = json.loads((run / "config.json").read_text())
    config["data"]["source"], config["data"]["target"] = str(tmp_path / "old-run" / "red"), str(tmp_path / "old-run" / "blue")
    (run / "config.json").write_text(json.dumps(config, indent=2))
    return run


def test_keys_an_old_config_lacks_read_as_their_old_meaning():
    text = (OLD / "old" / "config.json").read_text()
    for key in ('"family"', '"warp"', '"mixing"', '"pixel_weight"', '"features"', '"rotation"'):
        assert key not in text  # the file really predates them
    config = read_run_config(text)
    g, d = config.model.generator, config.model.discriminator
    assert g.warp is False and g.padding == "zeros"  # today's defaults are True and replicate
    assert d.family == "scratch" and config.model.siamese == "shared"  # today's default is projected, separate
    assert (d.vec_len, d.scratch.base_channels, d.scratch.depth, d.scratch.attention_level) == (8, 4, 2, 1)
    assert config.loss.rotation is False and config.loss.travel == 10.0 and config.train.lr_g == 1e-4
    assert config.clusters.features == "discriminator"
    assert resolve(config) == config  # nothing left to resolve: an old run reads as complete
    # And what a new run writes reads back as itself.
    assert read_run_config(dump_run_config(config)) == config


def test_the_rotation_switch_of_schema_1_was_a_positive_weight():
    saved = json.loads((OLD / "old" / "config.json").read_text())
    assert read_fit_config(saved, 1).loss.rotation is False
    saved["loss"]["rotation_d"] = 0.5
    saved["model"]["discriminator"]["rotation_head"] = True
    rotating = read_fit_config(saved, 1)
    assert rotating.loss.rotation is True and rotating.loss.rotation_d == 0.5


def test_every_absent_key_names_a_setting_of_today():
    """ABSENT_IN_1 must not drift from the dataclasses: each key exists today where schema 2 puts it."""
    today = to_dict(FitConfig())
    flat = {**today["model"]["generator"], **today["model"]["discriminator"], **today["model"]["discriminator"]["scratch"],
            **today["model"]["discriminator"]["projected"]}
    for (section, key) in ABSENT_IN_1:
        assert key in (flat if section in ("generator", "discriminator") else today[section]), (section, key)


def test_an_unknown_schema_is_refused_in_one_line():
    from travel.errors import ConfigError

    with pytest.raises(ConfigError, match="schema version '9'"):
        read_fit_config({}, 9)


def test_old_weights_load_and_translate(tmp_path):
    weights = load_weights(OLD / "old" / "old.safetensors")
    assert weights.metadata["schema_version"] == "1"
    assert weights.config.warp is False and weights.config.padding == "zeros"
    source = OLD / "red" / "0.png"
    result = runner.invoke(app, ["translate", str(source), "--ckpt", str(OLD / "old" / "old.safetensors"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "0.old.png").is_file()


def test_an_old_run_resumes_where_it_stopped_as_the_old_code_did(old_run):
    state = load_state(old_run)
    assert state["schema_version"] == 1 and state["step"] == 2
    assert state_config(state, name="old").model == load_run_config(old_run).model
    result = runner.invoke(app, ["fit", "--resume", str(old_run), "--steps", "4"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["step"] for line in (old_run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    ours = load_weights(old_run / "old.safetensors")
    theirs = load_weights(OLD / "old-resumed-to-4.safetensors")
    assert ours.config == theirs.config and ours.config.warp is False
    # Bit for bit on the machine that made the file (2026-12-08, AMD EPYC: sha256 of the tensors equal). Elsewhere the
    # kernels may round differently; each of the two Adam steps moves a weight by at most lr * |g| / sqrt(v_hat) <=
    # lr / sqrt(1 - beta2) = 1e-4 / sqrt(0.1) = 3.2e-4, so two steps' worth, 6.4e-4, bounds any difference, and the
    # EMA of the weights (what the file holds) moves less than the weights. 1.3e-3 allows twice that.
    for key, tensor in theirs.state.items():
        torch.testing.assert_close(ours.state[key], tensor, atol=1.3e-3, rtol=0)
    # The resumed run keeps its old meaning and now saves it in today's schema.
    saved = json.loads((old_run / "config.json").read_text())
    assert saved["schema_version"] == 2 and saved["model"]["generator"]["warp"] is False
    assert saved["model"]["discriminator"]["family"] == "scratch"


@pytest.mark.parametrize("section", ["model", "loss", "data"])
def test_a_damaged_old_config_is_one_line(old_run, section):
    from travel.errors import CheckpointError

    config = json.loads((old_run / "config.json").read_text())
    config[section] = [1, 2]
    (old_run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"FitConfig.{section}: expected an object"):
        load_run_config(old_run)
    result = runner.invoke(app, ["fit", "--resume", str(old_run)])
    assert result.exit_code == 2 and "Traceback" not in result.output and "expected an object" in result.output
