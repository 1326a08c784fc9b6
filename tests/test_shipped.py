"""The shipped weights and examples: present, small, safe to load, documented, and working out of the box."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from travel import DEFAULT_CHECKPOINT
from travel.checkpoint import load_weights, read_metadata
from travel.cli import app
from travel.inference import Translator, resolve_checkpoint, shipped_weights_dir

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SHIPPED = {  # name: (examples folder, source domain, target domain)
    "emoji3d": ("emoji", "emoji-128A", "emoji-128B"),
    "kaishu": ("glyphs", "glyphs-64A", "glyphs-64B"),
}


def test_the_default_checkpoint_is_shipped():
    assert DEFAULT_CHECKPOINT in SHIPPED


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_weights_are_small_safe_and_described(name):
    path = shipped_weights_dir() / f"{name}.safetensors"
    assert path.is_file(), f"{path} is not shipped"
    assert path.stat().st_size < 20 * 1024 * 1024
    assert resolve_checkpoint(name) == path or resolve_checkpoint(name).parent.parent.name == "runs"
    metadata = read_metadata(path.read_bytes(), name=str(path))
    weights = load_weights(path)  # safetensors: no code runs
    assert (weights.source_domain, weights.target_domain) == SHIPPED[name][1:]
    summary = json.loads(metadata["summary"])
    assert summary["steps"] > 0 and summary["train_seconds"] > 0
    assert all(torch.isfinite(v).all() for v in weights.state.values() if v.is_floating_point())


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_models_carry_the_projected_family_and_todays_config(name):
    """Both were retrained with the projected discriminator (issue 19): the file records the family it trained
    with, and the generator is today's default architecture (replicate padding, residual output)."""
    weights = load_weights(shipped_weights_dir() / f"{name}.safetensors")
    assert weights.summary["discriminator"] == "projected"
    assert weights.config.padding == "replicate" and weights.config.residual
    assert weights.summary["steps"] >= 2000  # the release budget on the model card, not a short run


def test_kaishu_ships_with_the_warping_generator():
    """kaishu was re-released from a --warp run (issue 18: it moves strokes towards Kai's shapes): its file holds
    the displacement field's heads and they are not at their zero start. emoji3d predates --warp and loads without."""
    kaishu = load_weights(shipped_weights_dir() / "kaishu.safetensors")
    assert kaishu.config.warp
    flow = [v for k, v in kaishu.state.items() if k.startswith("flow.")]
    assert len(flow) == 2 * kaishu.config.depth and max(float(v.abs().max()) for v in flow) > 0.01
    emoji3d = load_weights(shipped_weights_dir() / "emoji3d.safetensors")
    assert not emoji3d.config.warp and not any(k.startswith("flow.") for k in emoji3d.state)


# Mean absolute change per pixel (0-1 scale) that each bundled example must show. The models these replaced were
# close to the identity: emoji3d changed its examples by 0.009-0.023 (two under 0.015), so this bar fails them;
# today's change them by 0.025-0.048 (emoji) and 0.11-0.23 (glyphs, the --warp --no-flip kaishu; before the warp:
# 0.048-0.082).
VISIBLE_CHANGE = 0.015


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_models_translate_their_examples_visibly(name):
    translator = Translator.from_pretrained(shipped_weights_dir() / f"{name}.safetensors", device="cpu")
    examples = sorted((EXAMPLES / SHIPPED[name][0]).glob("*.png"))
    assert len(examples) >= 3
    for path in examples:
        with Image.open(path) as image:
            source = image.convert("RGB")
        out = translator(source)
        assert out.size == source.size and out.mode == "RGB"
        change = np.abs(np.asarray(out, dtype=np.float64) - np.asarray(source, dtype=np.float64)).mean() / 255
        assert change > VISIBLE_CHANGE, (path.name, change)


def test_translate_with_no_ckpt_uses_the_shipped_default(tmp_path):
    example = EXAMPLES / "emoji" / "1f431.png"
    result = CliRunner().invoke(app, ["translate", str(example), "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / f"1f431.{DEFAULT_CHECKPOINT}.png") as out:
        assert out.size == (128, 128)


def test_model_card_and_example_licences():
    card = (ROOT / "weights" / "README.md").read_text(encoding="utf-8")
    for name in SHIPPED:
        assert f"`{name}`" in card
    assert card.lower().count("identity") >= len(SHIPPED)  # each eval table has the do-nothing baseline beside it
    for licence in ("CC-BY 4.0", "MIT", "Arphic Public License"):
        assert licence in card
    examples = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for path in EXAMPLES.rglob("*.png"):
        assert path.relative_to(EXAMPLES).as_posix() in examples, f"{path} has no entry (and licence) in examples/README.md"
    assert "CC-BY 4.0" in examples and "Arphic Public License" in examples
    assert re.search(r"travel translate examples/emoji/\S+\.png", (ROOT / "README.md").read_text(encoding="utf-8"))
