"""The one memory rule of translation: one pass when it fits the budget, tiles when not, refusal when nothing fits;
and a real translation under an address-space limit set from the rule."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import travel.inference as inference
from travel.checkpoint import save_weights
from travel.cli import app
from travel.config import GeneratorConfig
from travel.errors import ConfigError
from travel.inference import Translator
from travel.inference.memory import (
    MemoryBudgetError, forward_bytes, image_bytes, parse_size, plan_translation,
)
from travel.nets.blocks import SelfAttention
from travel.nets.generator import Generator

# Attention at half resolution, as the shipped models have it: the full attention of a 1600 x 1200 image would
# hold a 600 x 450 = 270,000-position square score matrix, 290 GB.
TINY = GeneratorConfig(base_channels=8, max_channels=16, depth=2, attention_levels=(1, 2), norm_groups=4, warp=False)
SHIPPED = GeneratorConfig(base_channels=16, max_channels=256, depth=4, attention_levels=(1, 2, 3, 4), norm_groups=8, padding="replicate", warp=False)


def tiny_checkpoint(path: Path) -> Path:
    import torch

    torch.manual_seed(0)
    generator = Generator(TINY).eval()
    generator.head.reset_parameters()  # a generator that changes its input
    for module in generator.modules():
        if isinstance(module, SelfAttention):
            module.gate.data.fill_(0.5)
    save_weights(path, generator, source_domain="a", target_domain="b", image_size=16, summary={})
    return path


def waves(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([127 + 120 * np.sin(x / (9 + k) + y / (13 - k)) for k in range(3)], -1).astype(np.uint8))


def test_sizes_parse_with_units():
    assert parse_size("2G") == 2 * 2**30 and parse_size("512MB") == 512 * 2**20 and parse_size("1.5GiB") == 3 * 2**29
    assert parse_size("4096") == 4096 and parse_size("64k") == 65536
    with pytest.raises(ConfigError, match="not a size"):
        parse_size("lots")
    with pytest.raises(ConfigError, match="must be > 0"):
        parse_size("0M")


def test_the_rule_is_one_pass_when_it_fits_and_tiles_within_the_budget_when_not():
    whole = forward_bytes(SHIPPED, 360, 720) + image_bytes(360, 720)
    assert plan_translation(SHIPPED, 360, 720, budget=whole).tiled is False
    previous_tile = 0
    for budget in (whole - 1, whole // 2, whole // 3):  # less room: tiles, never more than the budget
        plan = plan_translation(SHIPPED, 360, 720, budget=budget)
        assert plan.tiled and plan.needed <= budget and plan.tile % SHIPPED.multiple == 0
        assert 0 < plan.stats_pixels < 360 * 720
        assert previous_tile == 0 or plan.tile <= previous_tile
        previous_tile = plan.tile
    # The estimate grows with what the network holds: pixels, batch, channels.
    assert forward_bytes(SHIPPED, 720, 1440) > 3.5 * forward_bytes(SHIPPED, 360, 720)
    assert forward_bytes(SHIPPED, 360, 720, batch=2) > 1.9 * forward_bytes(SHIPPED, 360, 720)
    wider = GeneratorConfig(**{**SHIPPED.__dict__, "base_channels": 32})
    assert forward_bytes(wider, 360, 720) > 1.5 * forward_bytes(SHIPPED, 360, 720)
    # Asked-for tiling that cannot fit is refused by name, as is one pass.
    with pytest.raises(MemoryBudgetError, match="in one pass needs about"):
        plan_translation(SHIPPED, 360, 720, budget=whole - 1, tile=0)
    with pytest.raises(MemoryBudgetError, match="too large for the memory budget of .* even in tiles"):
        plan_translation(SHIPPED, 360, 720, budget=whole // 10)
    with pytest.raises(MemoryBudgetError, match="in 2048 px tiles needs"):
        plan_translation(SHIPPED, 4000, 4000, budget=2**30, tile=2048)


def test_an_image_that_cannot_fit_even_in_tiles_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = tiny_checkpoint(tmp_path / "m.safetensors")
    waves(1200, 900).save(tmp_path / "huge.png")
    waves(40, 30).save(tmp_path / "small.png")
    ran = []
    monkeypatch.setattr(inference.Translator, "_forward", lambda self, *a: ran.append(a) or 1 / 0)
    result = CliRunner().invoke(app, ["translate", "huge.png", "--ckpt", str(ckpt), "--memory-budget", "8M"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: huge.png: 1200 x 900 is too large for the memory budget of 8 MiB even in tiles")
    assert not ran and not (tmp_path / "huge.m.png").exists()
    # From Python: the same rule, the same refusal.
    translator = Translator.from_pretrained(ckpt, device="cpu", memory_budget=8 * 2**20)
    with pytest.raises(MemoryBudgetError, match="1200 x 900 is too large"):
        translator(Image.open(tmp_path / "huge.png"))
    with pytest.raises(ConfigError, match="memory_budget"):
        Translator.from_pretrained(ckpt, device="cpu", memory_budget=0)


CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    torch.set_num_threads(1)
    from PIL import Image
    import travel.cli
    from travel.inference import Translator
    from travel.inference.memory import parse_size

    ckpt, image, budget, limit = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    # Warm every code path first (a pass, tiles, PNG writing), so the libraries they map are in the baseline.
    warm = Translator.from_pretrained(ckpt, device="cpu")
    warm(Image.open(image).resize((64, 48)), memory_budget=64 * 2**20).save("warm.png")
    warm(Image.open(image).resize((200, 150)), tile=64, overlap=16).save("warm.png")
    del warm

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    extra = parse_size(limit)
    resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + extra, status("VmSize") + extra))
    sys.argv = ["travel", "translate", image, "--ckpt", ckpt, "--out", "out", "--memory-budget", budget] + sys.argv[5:]
    travel.cli.main()
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_large_image_translates_under_an_address_space_limit_set_from_the_rule(tmp_path):
    """1200 x 900 through a network with attention at half resolution, under RLIMIT_AS = what the process had
    mapped + the budget: it tiles within the budget and comes out. One pass forced past the rule fails, in one line."""
    ckpt = tiny_checkpoint(tmp_path / "m.safetensors")
    waves(1200, 900).save(tmp_path / "big.png")
    budget = "80M"
    plan = plan_translation(TINY, 900, 1200, budget=parse_size(budget))
    assert plan.tiled  # one pass would need several times the budget
    assert forward_bytes(TINY, 900, 1200) > 4 * parse_size(budget)

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", CHILD, str(ckpt), "big.png", *extra], cwd=tmp_path, capture_output=True, text=True,
            timeout=600,
        )

    done = run(budget, budget)
    assert done.returncode == 0, done.stderr
    out = Image.open(tmp_path / "out" / "big.m.png")
    assert out.size == (1200, 900)
    assert np.abs(np.asarray(out, dtype=float) - np.asarray(waves(1200, 900), dtype=float)).mean() > 2  # translated

    # The user overrides the rule (one pass, a budget the machine does not have): the pass runs out of memory,
    # and that is one line, not an allocator's traceback.
    (tmp_path / "out" / "big.m.png").unlink()
    failed = run("100G", budget, "--tile", "0")
    assert failed.returncode == 1, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: big.png: out of memory translating 1200 x 900 in one pass"), failed.stderr
    assert not (tmp_path / "out" / "big.m.png").exists()


def test_a_tiling_that_cannot_blend_is_refused_before_any_image_is_translated(tmp_path, monkeypatch):
    ckpt = tiny_checkpoint(tmp_path / "m.safetensors")
    translator = Translator.from_pretrained(ckpt, device="cpu")
    ran = []
    monkeypatch.setattr(inference.Translator, "_forward", lambda self, *a: ran.append(a) or 1 / 0)
    with pytest.raises(ConfigError, match="--overlap 64 is too large for --tile 64"):
        translator.translate_batch([waves(40, 30), waves(300, 200)], tile=64, overlap=64)
    assert not ran  # the first image was not translated before the second's plan was refused
