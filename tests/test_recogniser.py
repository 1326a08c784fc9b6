"""The glyph benchmark's content score: a character recogniser trained on other fonts, and its place in travel eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import ImageFont
from typer.testing import CliRunner

from travel.cli import app
from travel.data import image_to_tensor
from travel.lab.datasets import build_glyphs, load_font, render_glyph
from travel.errors import TravelError
from travel.lab.evaluate import load_square
from travel.lab.recogniser import augment, load_recogniser, render_set, save_recogniser, to_grey, train_recogniser

CHARS = "ABCDEFGH"
DEJAVU_SERIF = Path("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf")
DEJAVU_SANS = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
runner = CliRunner()


@pytest.fixture(scope="module")
def aileron(tmp_path_factory) -> Path:
    """Pillow's bundled FreeType font as a file: always there, unlike Debian's fonts."""
    path = tmp_path_factory.mktemp("fonts") / "aileron.otf"
    path.write_bytes(ImageFont.load_default(size=20).font_bytes)
    return path


@pytest.fixture(scope="module")
def recogniser(aileron):
    fonts = [(str(aileron), 0)] + ([(str(DEJAVU_SANS), 0)] if DEJAVU_SANS.is_file() else [])
    return train_recogniser(CHARS, fonts=fonts, steps=120, batch_size=32, width=8, seed=0)


def renders(font_path: Path, size: int = 48) -> torch.Tensor:
    """The CHARS in one font, as the benchmark draws them: [8, 3, size, size] in [-1, 1], dark ink on white."""
    font = load_font(font_path, index=0, em=96, role="test")
    images = [render_glyph(font, c, size=size, margin=size // 16) for c in CHARS]
    return torch.stack([image_to_tensor(image) for image in images])


def test_reads_its_training_font_at_another_size(recogniser, aileron):
    # Clean renders at 48 px (training saw 64 px renders, augmented): 8 classes, chance 0.125.
    assert recogniser.accuracy(renders(aileron), CHARS) >= 0.875


@pytest.mark.skipif(not DEJAVU_SERIF.is_file(), reason="needs Debian's fonts-dejavu-core")
def test_reads_a_font_it_never_saw(recogniser):
    assert recogniser.accuracy(renders(DEJAVU_SERIF), CHARS) >= 0.75


def test_save_load_round_trip_and_damaged_files(recogniser, aileron, tmp_path):
    path = save_recogniser(recogniser, tmp_path / "rec.safetensors")
    again = load_recogniser(path)
    images = renders(aileron)
    assert again.chars == tuple(CHARS) and torch.equal(again.predict(images), recogniser.predict(images))
    assert again.info["fonts"] == recogniser.info["fonts"]
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    for bad in (tmp_path / "cut.safetensors", tmp_path / "missing.safetensors"):
        with pytest.raises(TravelError) as info:
            load_recogniser(bad)
        assert "\n" not in str(info.value)


def test_augmentation_keeps_shape_range_and_is_seeded(aileron):
    ink, labels, used = render_set(CHARS, [(str(aileron), 0)])
    assert ink.shape == (8, 1, 64, 64) and labels.tolist() == list(range(8)) and used == ["aileron.otf#0"]
    a = augment(ink, torch.Generator().manual_seed(3))
    b = augment(ink, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == ink.shape and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, ink)
    # to_grey: white paper is no ink, black is full ink.
    assert to_grey(torch.ones(1, 3, 64, 64)).max() == 0 and to_grey(-torch.ones(1, 3, 32, 32)).min() == 1


def test_missing_fonts_are_one_clear_error(tmp_path):
    with pytest.raises(TravelError, match="apt-get install"):
        train_recogniser(CHARS, fonts=[(str(tmp_path / "none.ttf"), 0)], steps=1)


def test_eval_reports_recognition_with_its_ceiling(recogniser, aileron, tmp_path, domains):
    from conftest import tiny_fit_config
    from travel.train import fit

    serif = DEJAVU_SERIF if DEJAVU_SERIF.is_file() else aileron
    data = tmp_path / "glyphs"
    build_glyphs(out=data, source_font=aileron, target_font=serif, size=32, characters=list(CHARS), seed=0,
                 test_fraction=0.5)
    save_recogniser(recogniser, data / "recogniser.safetensors")
    weights = fit(tiny_fit_config(*domains, steps=1, save_every=1), tmp_path / "run").weights
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["eval", "--ckpt", str(weights), "--data", str(data), "--size", "32", "--c2st-steps", "2",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = report["metrics"]
    splits = json.loads((data / "splits.json").read_text())
    stems = sorted(splits["testA"])
    sources = torch.stack([load_square(data / "testA" / f"{s}.png", 32) for s in stems])
    expected = recogniser.accuracy(sources, [splits["testA"][s] for s in stems])
    assert rows["identity"]["recognition"] == pytest.approx(expected)  # the identity row reads the sources themselves
    assert 0 <= rows["translation"]["recognition"] <= 1 and 0 <= rows["target"]["recognition"] <= 1
    for row in ("translation", "identity"):  # backbone scores for every dataset
        assert rows[row]["kid_backbone"] is not None and rows[row]["fd_backbone"] >= 0
        assert 0 <= rows[row]["retrieval_backbone"] <= 1
    assert "recognised" in result.stdout and "target" in result.stdout
    # A recogniser that does not know the test characters is refused with one line naming the fix.
    other = train_recogniser("XY", fonts=[(str(aileron), 0)], steps=1, batch_size=4, width=4)
    save_recogniser(other, data / "recogniser.safetensors")
    result = runner.invoke(app, ["eval", "--ckpt", str(weights), "--data", str(data), "--size", "32", "--c2st-steps", "2",
                                 "--out", str(out)])
    assert result.exit_code == 2 and "travel data recogniser" in result.output.strip().splitlines()[-1]


def test_backbone_kid_is_lower_for_the_targets_themselves():
    import numpy as np

    from travel.lab.evaluate import BackboneFeatures, feature_retrieval
    from travel.lab.metrics import kid

    torch.manual_seed(0)
    target = torch.rand(12, 3, 32, 32) * 2 - 1
    other = (torch.rand(12, 3, 32, 32) * 0.2 + 0.6).clamp(-1, 1)  # light, flat images: another distribution
    features = BackboneFeatures(device=torch.device("cpu"))
    f_target, f_other = features(target), features(other)
    assert f_target.shape == (12, 1280) and np.isfinite(f_target).all()
    assert kid(f_target, f_target, subset_size=12, subsets=3)["mean"] < kid(f_other, f_target, subset_size=12, subsets=3)["mean"]
    assert feature_retrieval(f_target, f_target) == 1.0
