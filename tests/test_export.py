"""`travel export --onnx`: dynamic batch, height and width, and the same numbers as PyTorch in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from travel.checkpoint import load_weights, save_weights
from travel.cli import app
from travel.config import GeneratorConfig
from travel.nets.blocks import SelfAttention
from travel.nets.generator import Generator

onnxruntime = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

TINY = dict(base_channels=8, max_channels=16, depth=2, attention_levels=(2,), norm_groups=4)  # multiple of 4


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def checkpoint(path: Path, **overrides) -> Path:
    """A tiny generator that really changes its input: random head, open attention gates, random style table."""
    torch.manual_seed(0)
    generator = Generator(GeneratorConfig(**{**TINY, **overrides})).eval()
    generator.head.reset_parameters()
    for module in generator.modules():
        if isinstance(module, SelfAttention):
            module.gate.data.fill_(0.5)
    save_weights(path, generator, source_domain="red", target_domain="blue", image_size=16, summary={})
    return path


def exported(tmp_path_factory, **overrides) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("export")
    ckpt = checkpoint(folder / "red2blue.safetensors", **overrides)
    result = invoke("export", "--ckpt", ckpt, "--onnx", folder / "red2blue.onnx")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(folder / "red2blue.onnx")
    assert result.stderr.count("checked in onnxruntime") == 3  # the built-in check ran at three sizes
    return ckpt, folder / "red2blue.onnx"


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return exported(tmp_path_factory)


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 64, 48), (1, 3, 5, 3), (3, 3, 16, 20)])
def test_onnx_matches_pytorch_at_any_size(plain, shape):
    ckpt, path = plain
    generator = load_weights(ckpt).build()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    source = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape))) * 2 - 1
    (translation,) = session.run(["translation"], {"source": source.numpy()})
    with torch.no_grad():
        expected = generator(source).numpy()
    assert translation.shape == expected.shape
    assert np.abs(translation - expected).max() < 1e-3
    assert np.abs(expected - source.numpy()).mean() > 0.05  # the model does change its input: parity means something


@pytest.mark.slow
def test_onnx_with_replicate_padding_and_a_learned_warp(tmp_path_factory):
    """Replicate padding and --warp generators export too (GridSample, opset 16+) and match PyTorch with a
    displacement that is neither zero nor whole pixels, at a size the export never saw. (One export for both: each
    costs about 10 s.)"""
    folder = tmp_path_factory.mktemp("warp")
    ckpt = checkpoint(folder / "red2blue.safetensors", padding="replicate", warp=True)
    weights = load_weights(ckpt)
    generator = weights.build()
    with torch.no_grad():
        for head in generator.flow:
            head.weight.normal_(std=0.3)
            head.bias.fill_(0.7)
    save_weights(ckpt, generator, source_domain="red", target_domain="blue", image_size=16, summary={})
    result = invoke("export", "--ckpt", ckpt, "--onnx", folder / "red2blue.onnx")
    assert result.exit_code == 0, result.output
    session = onnxruntime.InferenceSession(str(folder / "red2blue.onnx"), providers=["CPUExecutionProvider"])
    source = torch.rand(2, 3, 23, 30, generator=torch.Generator().manual_seed(4)) * 2 - 1
    (translation,) = session.run(["translation"], {"source": source.numpy()})
    with torch.no_grad():
        expected = generator(source).numpy()
        for head in generator.flow:
            head.bias.zero_()
            head.weight.zero_()
        unwarped = generator(source).numpy()
    assert np.abs(translation - expected).max() < 1e-3
    assert np.abs(expected - unwarped).mean() > 0.01  # the warp moves the output: parity covers GridSample


def test_onnx_inputs_are_dynamic_and_described(plain):
    _, path = plain
    model = onnx.load(str(path))
    (source,) = model.graph.input
    dims = source.type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True] and dims[1].dim_value == 3
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert metadata["source_domain"] == "red" and metadata["target_domain"] == "blue" and "[-1, 1]" in metadata["input"]


@pytest.mark.slow
def test_onnx_with_styles_takes_a_style_input(tmp_path_factory):
    ckpt, path = exported(tmp_path_factory, num_styles=3)
    generator = load_weights(ckpt).build()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    source = torch.rand(3, 3, 21, 30, generator=torch.Generator().manual_seed(1)) * 2 - 1
    style = torch.tensor([0, 1, 2])
    (translation,) = session.run(["translation"], {"source": source.numpy(), "style": style.numpy()})
    with torch.no_grad():
        expected = generator(source, style).numpy()
    assert np.abs(translation - expected).max() < 1e-3
    (same_image,) = session.run(["translation"], {"source": source[:1].repeat(2, 1, 1, 1).numpy(), "style": np.array([0, 2])})
    assert np.abs(same_image[0] - same_image[1]).mean() > 1e-3  # the style input is used


def test_export_errors_are_one_line(tmp_path):
    ckpt = checkpoint(tmp_path / "m.safetensors")
    for args, message in (
        (["--ckpt", ckpt, "--onnx", tmp_path / "m.txt"], "should end in .onnx"),
        (["--ckpt", tmp_path / "missing.safetensors", "--onnx", tmp_path / "m.onnx"], "no such checkpoint"),
    ):
        result = invoke("export", *args)
        assert result.exit_code == 2 and "Traceback" not in result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*"))


def test_half_precision_safetensors_copy_for_shipping(tmp_path):
    ckpt = checkpoint(tmp_path / "red2blue.safetensors", num_styles=2)
    half = tmp_path / "weights" / "red2blue.safetensors"
    result = invoke("export", "--ckpt", ckpt, "--safetensors", half, "--half")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(half)
    assert half.stat().st_size < 0.6 * ckpt.stat().st_size  # float16 storage
    full, small = load_weights(ckpt), load_weights(half)
    assert (small.config, small.source_domain, small.target_domain, small.image_size) == (
        full.config, full.source_domain, full.target_domain, full.image_size)
    assert all(v.dtype == torch.float32 for v in small.state.values() if v.is_floating_point())  # loads as float32
    torch.manual_seed(1)
    source = torch.rand(2, 3, 16, 16) * 2 - 1
    style = torch.tensor([0, 1])
    with torch.no_grad():
        reference, rounded = full.build()(source, style), small.build()(source, style)
    assert (reference - rounded).abs().max() < 1e-2  # float16 rounding of the weights only
    assert (reference - source).abs().mean() > 1e-2  # and the model does something

    for args, message in (
        (["--ckpt", ckpt], "give --onnx FILE and/or --safetensors FILE"),
        (["--ckpt", ckpt, "--onnx", tmp_path / "m.onnx", "--half"], "--half applies to --safetensors"),
        (["--ckpt", ckpt, "--safetensors", tmp_path / "m.pt"], "must end in .safetensors"),
    ):
        result = invoke("export", *args)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.stderr.splitlines() == [f"error: {result.stderr.splitlines()[0][7:]}"] and message in result.stderr


def test_onnx_attends_to_every_position_where_travel_pools(plain, monkeypatch):
    """The graph is captured at small sizes, so it attends to all positions: above MAX_ATTENTION_CONTEXT positions at
    an attention level it computes the full attention (README, ONNX), not travel's pooled context."""
    import travel.nets.blocks as models

    ckpt, path = plain
    generator = load_weights(ckpt).build()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    source = torch.rand(1, 3, 288, 296, generator=torch.Generator().manual_seed(3)) * 2 - 1  # 72 x 74 at level 2
    (translation,) = session.run(["translation"], {"source": source.numpy()})
    with torch.no_grad():
        pooled = generator(source).numpy()
        monkeypatch.setattr(models, "MAX_ATTENTION_CONTEXT", 10**9)
        full = generator(source).numpy()
    assert np.abs(translation - full).max() < 1e-3
    assert np.abs(pooled - full).max() > 1e-3  # pooling did change something here: the two are told apart
