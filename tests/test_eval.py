"""`travel eval`: finding paired and unpaired test sets, scoring against the identity baseline, the JSON report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import draw_shapes, styled_fit_config, stripe_ink
from travel.checkpoint import save_weights
from travel.cli import app
from travel.config import GeneratorConfig
from travel.errors import DataError, TravelError
from travel.lab.evaluate import (
    EvalSettings, InceptionFeatures, default_output_path, find_test_set, format_table, load_test_set, score,
)
from travel.nets.generator import build_generator

runner = CliRunner()
QUICK = ["--c2st-steps", "5", "--size", "32"]


def _test_set(root: Path, *, paired: bool = True, count: int = 8) -> Path:
    """testA: red shapes; testB: the same shapes in blue (same names when paired)."""
    draw_shapes(root / "testA", count, colour=(220, 30, 30), size=36, seed=1)
    paths = draw_shapes(root / "testB", count, colour=(30, 30, 220), size=36, seed=1)
    if not paired:
        for path in paths:
            path.rename(path.with_name(f"b_{path.name}"))
    return root


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    cfg = GeneratorConfig(base_channels=8, max_channels=16, depth=2, attention_levels=(2,), norm_groups=4, warp=False)
    path = tmp_path / "ckpt" / "red2blue.safetensors"
    save_weights(path, build_generator(cfg).eval(), source_domain="red", target_domain="blue", image_size=32, summary={})
    return path


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> Path:
    """A randomly initialised torchvision inception_v3 state dict: the real weights are not available offline.

    Freshly initialised batch-norm statistics shrink activations to zero over ~90 layers, which would make every
    feature vector the same; one forward pass in training mode gives the layers batch statistics to use instead.
    """
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0  # running statistics = this batch's
    with torch.no_grad():
        model.train()(torch.rand(2, 3, 299, 299) * 2 - 1)
    path = tmp_path_factory.mktemp("inception") / "inception_v3_random.pth"
    torch.save(model.state_dict(), path)
    return path


# ---------------------------------------------------------------------------------------------
# Test sets.


def test_find_test_set_pairs_by_file_name(tmp_path):
    test_set = find_test_set(_test_set(tmp_path), limit=5)
    assert test_set.paired
    assert [p.name for p in test_set.source] == [p.name for p in test_set.target] == [f"{i:03d}.png" for i in range(5)]
    assert test_set.source[0].parent.name == "testA" and test_set.target[0].parent.name == "testB"


def test_find_test_set_unpaired_and_partly_paired(tmp_path):
    unpaired = find_test_set(_test_set(tmp_path / "u", paired=False, count=6))
    assert not unpaired.paired and len(unpaired.source) == len(unpaired.target) == 6 and not unpaired.notes
    root = _test_set(tmp_path / "p", count=4)
    (root / "testB" / "003.png").rename(root / "testB" / "other.png")
    partly = find_test_set(root)
    assert not partly.paired and "3 file names" in partly.notes[0]


def test_find_test_set_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        find_test_set(tmp_path / "missing")
    (tmp_path / "d" / "testA").mkdir(parents=True)
    with pytest.raises(DataError, match="testB"):
        find_test_set(tmp_path / "d")
    (tmp_path / "d" / "testB").mkdir()
    with pytest.raises(DataError, match="no images"):
        find_test_set(tmp_path / "d")
    with pytest.raises(TravelError):
        EvalSettings(limit=0)


def test_unreadable_image_drops_its_pair(tmp_path):
    root = _test_set(tmp_path, count=4)
    (root / "testA" / "001.png").write_bytes(b"not a png")
    source, target, skipped = load_test_set(find_test_set(root), 32)
    assert source.shape == target.shape == (3, 3, 32, 32)
    assert len(skipped) == 1 and "001.png" in skipped[0]


# ---------------------------------------------------------------------------------------------
# Scores.


def test_score_perfect_translation_beats_identity(tmp_path):
    source, target, _ = load_test_set(find_test_set(_test_set(tmp_path)), 32)
    rows = score(source=source, target=target, translation=target.clone(), paired=True,
                 settings=EvalSettings(c2st_steps=40))
    perfect, identity = rows["translation"], rows["identity"]
    assert perfect["l1"] == pytest.approx(0.0) and perfect["ssim"] == pytest.approx(1.0, abs=1e-4)
    assert perfect["retrieval"] == 1.0
    assert identity["l1"] > 0.05 and identity["ssim"] < perfect["ssim"]
    # Red vs blue copies of the targets are trivial to tell apart; the targets themselves are not.
    assert identity["c2st_accuracy"] >= 0.9 and perfect["c2st_accuracy"] <= 0.75
    assert perfect["kid"] is None and perfect["fid"] is None


def test_score_unpaired_has_realism_only(tmp_path):
    source, target, _ = load_test_set(find_test_set(_test_set(tmp_path, paired=False)), 32)
    rows = score(source=source, target=target, translation=source, paired=False, settings=EvalSettings(c2st_steps=5))
    for row in rows.values():
        assert row["l1"] is None and row["ssim"] is None and row["retrieval"] is None
        assert 0.0 <= row["c2st_accuracy"] <= 1.0


def test_inception_kid_fid_zero_for_a_copy_of_the_targets(tmp_path, inception_file):
    source, target, _ = load_test_set(find_test_set(_test_set(tmp_path, count=4)), 32)
    inception = InceptionFeatures(inception_file, device=torch.device("cpu"))
    features = inception(target[:2])
    assert features.shape == (2, 2048) and features.std(axis=0).mean() > 1e-3  # not collapsed
    rows = score(source=source, target=target, translation=target.clone(), paired=True,
                 settings=EvalSettings(c2st_steps=1, kid_subsets=5), inception=inception)
    assert rows["translation"]["fid"] == pytest.approx(0.0, abs=1e-3)
    assert rows["translation"]["fid"] < rows["identity"]["fid"]
    assert rows["translation"]["kid"] < rows["identity"]["kid"]


def test_inception_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("hello")
    with pytest.raises(TravelError, match="cannot read weights"):
        InceptionFeatures(bad, device=torch.device("cpu"))
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(TravelError, match="inception_v3"):
        InceptionFeatures(other, device=torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# The command.


def test_eval_command_paired_writes_report_beside_checkpoint(tmp_path, checkpoint):
    data = _test_set(tmp_path / "shapes")
    result = runner.invoke(app, ["eval", "--ckpt", str(checkpoint), "--data", str(data), *QUICK])
    assert result.exit_code == 0, result.output
    path = checkpoint.parent / "red2blue.eval-shapes-test.json"
    assert path.is_file() and not list(checkpoint.parent.glob(".*.tmp"))
    report = json.loads(path.read_text())
    assert report["checkpoint"] == "red2blue" and report["paired"] is True
    assert report["counts"] == {"source": 8, "target": 8, "skipped": 0}
    assert report["settings"]["size"] == 32 and report["settings"]["seed"] == 0 and report["date"]
    for row in ("translation", "identity"):
        metrics = report["metrics"][row]
        assert 0 <= metrics["l1"] <= 1 and -1 <= metrics["ssim"] <= 1 and 0 <= metrics["retrieval"] <= 1
        assert metrics["kid"] is None
    assert any("KID/FID skipped" in note for note in report["notes"])
    assert "translation" in result.stdout and "identity" in result.stdout and "retrieval" in result.stdout
    assert format_table(report).splitlines()[1].split()[:2] == ["L1", "SSIM"]


def test_eval_command_unpaired_with_limit_and_out(tmp_path, checkpoint, inception_file):
    data = _test_set(tmp_path / "shapes", paired=False)
    out = tmp_path / "reports" / "r.json"
    result = runner.invoke(app, ["eval", "--ckpt", str(checkpoint), "--data", str(data), "--limit", "4", "--out", str(out),
                                 "--inception-weights", str(inception_file), *QUICK])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["paired"] is False and report["counts"]["source"] == report["counts"]["target"] == 4
    assert report["metrics"]["translation"]["l1"] is None
    assert report["metrics"]["translation"]["fid"] >= 0 and report["metrics"]["identity"]["kid"] is not None
    assert "L1" not in result.stdout.splitlines()[1] and "FID" in result.stdout


def test_eval_command_tiny_set_skips_the_two_sample_test(tmp_path, checkpoint):
    data = _test_set(tmp_path / "shapes", count=4)
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["eval", "--ckpt", str(checkpoint), "--data", str(data), "--limit", "2", "--out", str(out), *QUICK])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["metrics"]["translation"]["c2st_accuracy"] is None and report["metrics"]["translation"]["l1"] is not None
    assert any("two-sample test skipped" in note for note in report["notes"])


def test_eval_two_sample_seeds_and_group_split_in_the_report(tmp_path, checkpoint):
    from travel.lab.metrics import two_sample_accuracy

    data = _test_set(tmp_path / "shapes")
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["eval", "--ckpt", str(checkpoint), "--data", str(data), "--out", str(out),
                                 "--c2st-seeds", "3", "--no-backbone", *QUICK])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["settings"]["c2st_seeds"] == 3 and "C2ST group" in result.stdout
    source, target, _ = load_test_set(find_test_set(data), 32)
    identity = report["metrics"]["identity"]
    # c2st_accuracy is still the --seed classifier alone, as in every report before --c2st-seeds: the same computation.
    assert identity["c2st_accuracy"] == two_sample_accuracy(target, source, seed=0, steps=5)["accuracy"]
    seeds = [two_sample_accuracy(target, source, seed=s, steps=5)["accuracy"] for s in range(3)]
    assert identity["c2st_mean"] == pytest.approx(sum(seeds) / 3) and identity["c2st_std"] >= 0
    # No dataset card: each pair is its own group.
    grouped = [two_sample_accuracy(target, source, seed=s, steps=5, groups=torch.arange(8))["accuracy"] for s in range(3)]
    assert identity["c2st_group"] == pytest.approx(sum(grouped) / 3)
    bad = runner.invoke(app, ["eval", "--ckpt", str(checkpoint), "--data", str(data), "--c2st-seeds", "0", *QUICK])
    assert bad.exit_code == 2 and "--c2st-seeds" in bad.output


def test_emoji_sets_group_the_skin_tones_of_one_emoji(tmp_path):
    from travel.lab.datasets import split_groups

    names = ["1f44d", "1f44d-1f3fb", "1f44d-1f3ff", "1f469-1f3fd-200d-1f4bb", "1f469-200d-1f4bb", "2764"]
    assert split_groups(tmp_path, names) == names  # no card: one group per pair
    (tmp_path / "dataset_card.json").write_text(json.dumps({"builder": "travel.lab.datasets.build_emoji", "dataset": "emoji"}))
    groups = split_groups(tmp_path, names)
    assert groups[0] == groups[1] == groups[2] and groups[3] == groups[4]
    assert len({groups[0], groups[3], groups[5]}) == 3


def test_a_groups_file_names_the_near_duplicates(tmp_path):
    from travel.lab.datasets import split_groups

    names = ["cat-1", "cat-2", "dog-1", "dog"]
    (tmp_path / "groups.json").write_text(json.dumps({"cat-1": "cat", "cat-2": "cat", "dog-1": "dog"}))
    groups = split_groups(tmp_path, names)
    assert groups[0] == groups[1] and len(set(groups)) == 3
    # "dog" is not in the file: a group of its own, even though a listed group has the same name.
    assert groups[2] != groups[3]
    # The file wins over the emoji card's own grouping.
    (tmp_path / "dataset_card.json").write_text(json.dumps({"builder": "travel.lab.datasets.build_emoji", "dataset": "emoji"}))
    assert split_groups(tmp_path, names) == groups


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"cat-1": "cat",', "not readable JSON"),
        ('["cat-1", "cat-2"]', "expected an object mapping test pair names to group names"),
        ('{"cat-1": 3}', "expected an object mapping test pair names to group names"),
        ('{"cat-9": "cat"}', "1 name(s) are not test pairs, e.g. 'cat-9'"),
    ],
)
def test_a_bad_groups_file_is_refused_in_one_line(tmp_path, content, message):
    from travel.lab.datasets import split_groups

    (tmp_path / "groups.json").write_text(content)
    with pytest.raises(DataError, match=re.escape(message)):
        split_groups(tmp_path, ["cat-1", "cat-2"])


def test_eval_cuts_the_group_halves_along_a_groups_file(tmp_path, checkpoint):
    from travel.lab.metrics import two_sample_accuracy

    data = _test_set(tmp_path / "shapes")
    names = sorted(p.stem for p in (data / "testA").iterdir())
    assert len(names) == 8
    (data / "groups.json").write_text(json.dumps({name: f"g{i // 2}" for i, name in enumerate(names)}))  # 4 pairs of 2
    out = tmp_path / "r.json"
    args = ["eval", "--ckpt", str(checkpoint), "--data", str(data), "--c2st-seeds", "2", "--no-backbone", *QUICK]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    identity = json.loads(out.read_text())["metrics"]["identity"]
    source, target, _ = load_test_set(find_test_set(data), 32)
    groups = torch.arange(8) // 2  # the test set is in sorted name order, as the file was written
    grouped = [two_sample_accuracy(target, source, seed=s, steps=5, groups=groups)["accuracy"] for s in range(2)]
    assert identity["c2st_group"] == pytest.approx(sum(grouped) / 2)
    # A typo in the file stops eval with one line before any translating.
    (data / "groups.json").write_text(json.dumps({"no-such-image": "g0"}))
    bad = runner.invoke(app, args)
    assert bad.exit_code == 2 and "no-such-image" in bad.output and "Traceback" not in bad.output
    assert "translating" not in bad.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{tmp}/missing"], "no such folder"),
        (["--ckpt", "no-such-model"], "no checkpoint named"),
        (["--size", "4"], "--size"),
        (["--inception-weights", "{tmp}/none.pth"], "no such weights file"),
    ],
)
def test_eval_command_errors_are_one_line(tmp_path, checkpoint, args, message):
    data = _test_set(tmp_path / "shapes", count=4)
    base = {"--ckpt": str(checkpoint), "--data": str(data)}
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    result = runner.invoke(app, ["eval", *[x for kv in base.items() for x in kv], "--c2st-steps", "2"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and message in result.output
    assert "Traceback" not in result.output


def test_default_output_for_shipped_weights_goes_to_runs(tmp_path, monkeypatch):
    from travel.inference import shipped_weights_dir

    monkeypatch.setenv("TRAVEL_RUNS", str(tmp_path / "runs"))
    path = default_output_path(shipped_weights_dir() / "glyphs.safetensors", tmp_path / "fonts", split="test")
    assert path == tmp_path / "runs" / "glyphs" / "glyphs.eval-fonts-test.json"


def _mixed_style_set(root: Path) -> Path:
    """trainA/testA: dark shapes on white; trainB/testB: the same kind of shapes, half flat (style 0) and half striped
    (style 1), with styles.json recording each target's style, as `travel data glyphs --style-font ...` writes it."""
    for split, count, seed in (("train", 16, 1), ("test", 6, 50)):
        draw_shapes(root / f"{split}A", count, colour=(20, 20, 20), size=32, seed=seed)
        draw_shapes(root / f"{split}B", count, colour=(20, 20, 20), size=32, seed=seed + 7)
    record = {"styles": [{"id": 0, "face": "flat"}, {"id": 1, "face": "striped"}], "trainB": {}, "testB": {}}
    for split in ("trainB", "testB"):
        for i, path in enumerate(sorted((root / split).glob("*.png"))):
            if i % 2:
                stripe_ink(path, path)
            record[split][path.stem] = i % 2
    (root / "styles.json").write_text(json.dumps(record))
    return root


def test_eval_scores_clusters_and_style_consistency_against_the_true_styles(tmp_path, checkpoint):
    from travel.lab.evaluate import evaluate
    from travel.train import fit

    data = _mixed_style_set(tmp_path / "mixed")
    config = styled_fit_config(data / "trainA", data / "trainB", clusters=2, subset=16, steps=1)
    run = fit(config, tmp_path / "run").run_dir
    clusters = json.loads((run / "clusters.json").read_text())  # the run folder says which target is in which cluster
    assert set(clusters["images"]) == {p.name for p in (data / "trainB").glob("*.png")} and clusters["features"] == "backbone"

    settings = EvalSettings(size=32, c2st_steps=5, backbone=False)
    report = evaluate(run, data, settings=settings)
    styles = report["styles"]
    assert styles["styles"] == ["flat", "striped"] and styles["chance"] == {"purity": 0.5, "nmi": 0.0, "consistency": 0.5}
    assert styles["classifier_accuracy_real"] >= 0.8  # flat against striped is easy to read on real test targets
    assert styles["clusters"]["images"] == 16 and styles["clusters"]["purity"] >= 0.9  # frozen style statistics
    assert sorted(styles["clusters"]["holds"]) == ["flat", "striped"]
    assert len(styles["consistency"]) == 2 and all(0 <= c <= 1 for c in styles["consistency"])
    assert "purity" in format_table(report) and "style consistency" in format_table(report)

    # An unconditional checkpoint on the same data: which styles its translations are read as, nothing on clusters.
    plain = evaluate(checkpoint, data, settings=settings)["styles"]
    assert plain["clusters"] is None and abs(sum(plain["translation_style_shares"]) - 1) < 1e-9
