"""The projected discriminator: the frozen ImageNet backbone (mapping, real photos, frozen during fits), per-patch losses,
resume, bad backbone files, and translation that never imports timm. (Its known-answer test is in test_learning.py.)"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_fit_config
from travel.nets import backbone
from travel.checkpoint import load_state, load_weights
from travel.cli import app
from travel.config import DiscriminatorConfig, ProjectedConfig, ScratchConfig, FitConfig
from travel.data import image_to_tensor
from travel.losses import anchor_d_loss, anchor_g_loss, per_image, pooled_embedding
from travel.nets.discriminators.projected import ProjectedDiscriminator, ProjectedEmbedding, RandomMixing, frozen_state
from travel.train import fit

DATA = Path(__file__).parent / "data"


def projected_config(source: Path, target: Path, **train_overrides) -> FitConfig:
    """The tiny test config with a projected discriminator: the backbone reads 32 px (patches 8x8 ... 1x1)."""
    config = tiny_fit_config(source, target, **train_overrides)
    disc = DiscriminatorConfig(family="projected", vec_len=8, projected=ProjectedConfig(resolution=32, head_channels=8))
    return replace(config, model=replace(config.model, discriminator=disc, siamese="separate"),
                   loss=replace(config.loss, travel=0.2))


def test_mapping_is_complete_and_strict():
    raw = torch.load(backbone.weights_path(), map_location="cpu", weights_only=True)
    mapped = backbone.timm_names(raw)
    assert len(raw) == len(mapped) == 296
    model = backbone._timm().create_model(backbone.TIMM_NAME, pretrained=False)
    expected = model.state_dict()
    assert set(mapped) == set(expected)
    assert all(mapped[k].shape == expected[k].shape for k in expected)
    with pytest.raises(backbone.BackboneError, match="unexpected tensor"):
        backbone.timm_names({**raw, "_blocks.99._bn0.weight": torch.zeros(1)})


@pytest.mark.parametrize("photo, classes", [("chelsea.jpg", {281, 282, 283, 284, 285}), ("coffee.jpg", {967})])
def test_frozen_backbone_classifies_real_photos(photo, classes):
    # chelsea: tabby / tiger cat / Persian / Siamese / Egyptian cat (ImageNet 281-285); coffee: espresso (967).
    # Photos from scikit-image's data (CC0), resized; tests/data/README.md.
    model = backbone.build_classifier()
    image = image_to_tensor(Image.open(DATA / photo).convert("RGB"))[None]  # [-1, 1] as the weights expect
    with torch.no_grad():
        top = int(model(image).argmax())
    assert top in classes, top


def test_backbone_is_hidden_from_optimizer_state_and_requires_grad():
    disc = ProjectedDiscriminator(DiscriminatorConfig(family="projected", vec_len=4, projected=ProjectedConfig(resolution=32, head_channels=4)))
    disc.requires_grad_(True).train()  # what the training loop does between steps
    hidden = list(disc.backbone.net.parameters())
    assert hidden and not any(p.requires_grad for p in hidden)
    assert not disc.backbone.net.training  # BN stays in eval mode
    assert not any(".net." in k for k in disc.state_dict())
    assert {id(p) for p in disc.parameters()}.isdisjoint({id(p) for p in hidden})
    image = torch.zeros(2, 3, 16, 16, requires_grad=True)
    vectors = disc(image)
    assert vectors.shape == (2, 8 * 8 + 4 * 4 + 2 * 2 + 1, 4)  # [N, P, L]
    vectors.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0  # the gradient reaches the image through the backbone
    # Each of the 4 scales holds a quarter of the per-image weight.
    w = disc.patch_weights
    assert torch.allclose(torch.stack([w[:64].sum(), w[64:80].sum(), w[80:84].sum(), w[84:].sum()]), torch.full((4,), 0.25))


def test_per_patch_anchor_losses_by_hand():
    # Two images, two patches of vec_len 2, anchor at the origin, margin 1, weights 0.75 / 0.25.
    real = torch.tensor([[[1.0, 1.0], [0.0, 2.0]], [[0.0, 0.0], [2.0, 2.0]]])  # d per patch: [1, 2], [0, 4]
    fake = torch.tensor([[[0.5, 0.5], [1.0, 1.0]], [[0.0, 0.0], [0.0, 1.0]]])  # d: [0.25, 1], [0, 0.5]
    weights = torch.tensor([0.75, 0.25])
    terms = anchor_d_loss(real, fake, torch.zeros(2), margin=1.0, weights=weights)
    # real: image 0: 0.75*1 + 0.25*2 = 1.25; image 1: 0 + 0.25*4 = 1 -> 1.125.
    assert terms["d_real"].item() == pytest.approx(1.125)
    # fake hinge relu(1 - d): image 0: 0.75*0.75 + 0.25*0 = 0.5625; image 1: 0.75*1 + 0.25*0.5 = 0.875 -> 0.71875.
    assert terms["d_fake"].item() == pytest.approx(0.71875)
    # G pulls every patch to the anchor: image 0: 0.75*0.25 + 0.25*1 = 0.4375; image 1: 0.125 -> 0.28125.
    assert anchor_g_loss(fake, torch.zeros(2), weights=weights).item() == pytest.approx(0.28125)
    # Per-sample anchors serve every patch of their sample: anchor (1, 1) for image 0 makes its first patch exact.
    anchors = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert per_image(((real - anchors[:, None]) ** 2).mean(-1), weights)[0].item() == pytest.approx(0.25 * 1.0)
    assert anchor_d_loss(real, fake, anchors, margin=1.0, weights=weights)["d_real"].item() == pytest.approx((0.25 + 1) / 2)
    # The pooled vector for the TraVeL loss: the weighted mean of the patches.
    assert torch.allclose(pooled_embedding(real, weights), torch.tensor([[0.75, 1.25], [0.5, 0.5]]))
    # vec_len = 1 and one patch: least squares on reals, hinge on fakes (docs/METHOD.md's check).
    one = anchor_d_loss(torch.tensor([[[2.0]]]), torch.tensor([[[0.5]]]), torch.zeros(1), margin=1.0, weights=torch.ones(1))
    assert one["d_real"].item() == pytest.approx(4.0) and one["d_fake"].item() == pytest.approx(0.75)


def test_fit_never_changes_the_backbone(domains, tmp_path, monkeypatch):
    built = []
    original = ProjectedDiscriminator.__init__

    def spy(self, cfg):
        original(self, cfg)
        built.append(self)

    monkeypatch.setattr(ProjectedDiscriminator, "__init__", spy)
    config = projected_config(*domains, steps=3, save_every=3)
    config = replace(config, model=replace(config.model, siamese="shared"))  # D's heads also train cooperatively
    fit(config, tmp_path / "run")
    pristine = backbone.load_state()
    (disc,) = built
    state = frozen_state(disc)
    assert len(state) == 288
    for key, value in state.items():
        name = key.split("backbone.", 1)[1]
        assert torch.equal(value, pristine[name]), name  # weights and BN running statistics, bit for bit
    assert all(int(v) == 0 for k, v in state.items() if k.endswith("num_batches_tracked"))
    saved = load_state(tmp_path / "run")
    assert not any(".net." in k for k in saved["discriminator"])  # the resume state never holds the backbone


def test_channel_mixing_is_fixed_and_scale_mixing_carries_deep_features_up():
    torch.manual_seed(0)
    features = [torch.randn(2, c, side, side) for c, side in zip(backbone.FEATURE_CHANNELS, (8, 4, 2, 1))]
    ccm, csm = RandomMixing("ccm", backbone.FEATURE_CHANNELS), RandomMixing("ccm+csm", backbone.FEATURE_CHANNELS)
    assert ccm.out_channels == (64, 128, 256, 512) and csm.out_channels == (64, 64, 128, 256)
    assert [m.shape[-2:] for m in csm(features)] == [f.shape[-2:] for f in features]  # each scale keeps its grid
    # A function of the config: two builds (two processes, a resume) draw the same projections, none is saved.
    again = RandomMixing("ccm+csm", backbone.FEATURE_CHANNELS)
    assert all(torch.equal(a, b) for a, b in zip(csm.buffers(), again.buffers()))
    assert not list(csm.parameters()) and not csm.state_dict()
    # Changing only the deepest map: channel mixing leaves the shallow scale alone; scale mixing carries it up.
    deeper = [*features[:3], features[3] + 1.0]
    assert torch.equal(ccm(features)[0], ccm(deeper)[0])
    assert (csm(features)[0] - csm(deeper)[0]).abs().max() > 1e-3


def test_mixing_needs_the_projected_family_and_is_recorded(domains, tmp_path):
    src, dst = domains
    runner = CliRunner()
    base = ["fit", "--src", str(src), "--dst", str(dst), "--size", "16", "--dry-run"]
    assert json.loads(runner.invoke(app, base).output)["model"]["discriminator"]["projected"]["mixing"] == "none"
    mixed = json.loads(runner.invoke(app, [*base, "--mixing", "ccm+csm"]).output)
    assert mixed["model"]["discriminator"]["projected"]["mixing"] == "ccm+csm"
    for bad, words in ((["--mixing", "ccm", "--disc", "scratch"], "needs the projected family"), (["--mixing", "all"], "--mixing: 'all' is not one of")):
        result = runner.invoke(app, [*base, *bad])
        assert result.exit_code == 2 and words in result.output.strip().splitlines()[-1], result.output
    # A short fit with the mixing: the discriminator's trainable state holds only the heads, and resume reloads it.
    config = projected_config(src, dst, steps=2, save_every=1)
    disc = replace(config.model.discriminator, projected=replace(config.model.discriminator.projected, mixing="ccm+csm"))
    config = replace(config, model=replace(config.model, discriminator=disc))
    result = fit(config, tmp_path / "run")
    state = load_state(result.run_dir)
    assert not any("ccm" in k or "csm" in k for k in state["discriminator"])
    assert json.loads(state["config"])["model"]["discriminator"]["projected"]["mixing"] == "ccm+csm"
    resumed = fit(replace(config, train=replace(config.train, steps=3)), tmp_path / "run", resume=True)
    assert resumed.step == 3 and not resumed.interrupted


def test_pixel_branch_is_one_more_patch_of_its_weight():
    # The pixel-space branch is the scratch encoder on the image as it is, appended as patch P + 1 of weight w:
    # the per-image loss is the heads' loss plus w times the branch's own anchor loss, computed here apart.
    cfg = DiscriminatorConfig(family="projected", vec_len=4, scratch=ScratchConfig(base_channels=4, depth=2, attention_level=1), projected=ProjectedConfig(resolution=32, head_channels=4, pixel_weight=0.5))
    torch.manual_seed(0)
    disc = ProjectedDiscriminator(cfg)
    plain = ProjectedDiscriminator(replace(cfg, projected=replace(cfg.projected, pixel_weight=0.0)))
    plain.load_state_dict({k: v for k, v in disc.state_dict().items() if not k.startswith("pixel.")})
    disc.eval(), plain.eval()  # spectral norm's power iteration would otherwise step on every call
    real, fake = torch.rand(3, 3, 16, 16) * 2 - 1, torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        both_real, both_fake = disc(real), disc(fake)
        heads_real, heads_fake = plain(real), plain(fake)
        pixel_real, pixel_fake = disc.pixel(real), disc.pixel(fake)
    assert both_real.shape == (3, 8 * 8 + 4 * 4 + 2 * 2 + 1 + 1, 4)
    assert torch.equal(both_real[:, :-1], heads_real) and torch.equal(both_real[:, -1], pixel_real)
    assert disc.patch_weights[-1].item() == 0.5 and disc.patch_weights[:-1].sum().item() == pytest.approx(1.0)
    anchor = torch.zeros(4)
    terms = anchor_d_loss(both_real, both_fake, anchor, margin=1.0, weights=disc.patch_weights)
    heads = anchor_d_loss(heads_real, heads_fake, anchor, margin=1.0, weights=plain.patch_weights)
    pixel = anchor_d_loss(pixel_real, pixel_fake, anchor, margin=1.0)
    # Sums of a few hundred float32 products in another order: agree to float32 rounding, not bit for bit.
    for key in ("d_real", "d_fake"):
        assert terms[key].item() == pytest.approx(heads[key].item() + 0.5 * pixel[key].item(), rel=1e-5)
    assert anchor_g_loss(both_fake, anchor, weights=disc.patch_weights).item() == pytest.approx(
        anchor_g_loss(heads_fake, anchor, weights=plain.patch_weights).item() + 0.5 * anchor_g_loss(pixel_fake, anchor).item(),
        rel=1e-5)
    # The pooled vector (shared S) is the weighted mean: the heads' pooled vector and the branch's, 1 : 0.5.
    expected = (pooled_embedding(heads_real, plain.patch_weights) + 0.5 * pixel_real) / 1.5
    assert torch.allclose(pooled_embedding(both_real, disc.patch_weights), expected, atol=1e-5)
    # The gradient reaches the image through both: the branch alone moves it too.
    image = real.clone().requires_grad_(True)
    disc(image)[:, -1].sum().backward()
    assert image.grad.abs().sum() > 0


def test_pixel_weight_needs_the_projected_family_trains_the_branch_and_resumes(domains, tmp_path):
    src, dst = domains
    runner = CliRunner()
    base = ["fit", "--src", str(src), "--dst", str(dst), "--size", "16", "--dry-run"]
    assert json.loads(runner.invoke(app, base).output)["model"]["discriminator"]["projected"]["pixel_weight"] == 0.0
    chosen = json.loads(runner.invoke(app, [*base, "--pixel-weight", "1"]).output)
    assert chosen["model"]["discriminator"]["projected"]["pixel_weight"] == 1.0
    for bad, words in ((["--pixel-weight", "1", "--disc", "scratch"], "needs the projected family"),
                       (["--pixel-weight", "-1"], "--pixel-weight: must be >= 0")):
        result = runner.invoke(app, [*base, *bad])
        assert result.exit_code == 2 and words in result.output.strip().splitlines()[-1], result.output
    # A short fit: the branch's weights are in D's state and change (it is trained); resume is exact with it.
    config = projected_config(src, dst, steps=4, save_every=2)
    disc = replace(config.model.discriminator, projected=replace(config.model.discriminator.projected, pixel_weight=1.0),
                   scratch=ScratchConfig(base_channels=4, depth=2, attention_level=1))
    config = replace(config, model=replace(config.model, discriminator=disc))
    straight = fit(config, tmp_path / "straight")
    fit(replace(config, train=replace(config.train, steps=2)), tmp_path / "resumed")
    first = load_state(tmp_path / "resumed")["discriminator"]
    resumed = fit(config, tmp_path / "resumed", resume=True)
    a, b = load_state(straight.run_dir), load_state(resumed.run_dir)
    pixel_keys = [k for k in a["discriminator"] if k.startswith("pixel.")]
    assert pixel_keys and any(not torch.equal(first[k], b["discriminator"][k]) for k in pixel_keys)
    for part in ("generator", "discriminator", "siamese", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert json.loads(b["config"])["model"]["discriminator"]["projected"]["pixel_weight"] == 1.0
    # benchmarks/disc_probe.py reads the run back and reports the heads and the branch apart.
    spec = importlib.util.spec_from_file_location("disc_probe", Path(__file__).parents[1] / "benchmarks" / "disc_probe.py")
    disc_probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(disc_probe)
    assert disc_probe.separation(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 0.5])) == 0.75  # 3 of 4 pairs
    data = tmp_path / "data"
    data.mkdir()
    (data / "trainA").symlink_to(src, target_is_directory=True)
    (data / "trainB").symlink_to(dst, target_is_directory=True)
    rows = disc_probe.probe(straight.run_dir, data, "train", 8, augment=True)
    assert set(rows) == {"heads", "pixel"}
    assert all(0 <= row["separation"] <= 1 and row["d_real"] >= 0 and row["d_fake"] >= 0 for row in rows.values())


def test_d_resolution_sizes_the_backbone_input_and_needs_the_projected_family(domains):
    src, dst = domains
    runner = CliRunner()
    base = ["fit", "--src", str(src), "--dst", str(dst), "--size", "16", "--dry-run"]
    assert json.loads(runner.invoke(app, base).output)["model"]["discriminator"]["projected"]["resolution"] == 128  # 16 px upsampled
    chosen = json.loads(runner.invoke(app, [*base, "--d-resolution", "64"]).output)["model"]["discriminator"]
    assert chosen["projected"]["resolution"] == 64
    for bad, words in ((["--d-resolution", "64", "--disc", "scratch"], "needs the projected family"),
                       (["--d-resolution", "100"], "multiple of 32")):
        result = runner.invoke(app, [*base, *bad])
        assert result.exit_code == 2 and words in result.output.strip().splitlines()[-1], result.output
    # The side really reaches the backbone: D's patch grid is the resolution's (sides r/4 .. r/32 at the 4 scales).
    image = torch.zeros(1, 3, 16, 16)
    for side in (64, 128):
        disc = ProjectedDiscriminator(DiscriminatorConfig(family="projected", vec_len=4, projected=ProjectedConfig(resolution=side, head_channels=8)))
        with torch.no_grad():
            assert disc(image).shape == (1, sum((side // 2 ** (s + 2)) ** 2 for s in range(4)), 4)


def test_separate_embedding_is_a_head_on_frozen_features():
    s = ProjectedEmbedding(DiscriminatorConfig(family="projected", vec_len=6, projected=ProjectedConfig(resolution=32)))
    assert [name for name, _ in s.named_parameters()] == ["head.bias", "head.parametrizations.weight.original"]
    assert s(torch.zeros(3, 3, 16, 16)).shape == (3, 6)


def test_resume_is_exact_with_the_projected_discriminator(domains, tmp_path):
    config = projected_config(*domains, steps=4, save_every=2)
    straight = fit(config, tmp_path / "straight")
    half = replace(config, train=replace(config.train, steps=2))
    fit(half, tmp_path / "resumed")
    resumed = fit(config, tmp_path / "resumed", resume=True)
    a, b = load_state(straight.run_dir), load_state(resumed.run_dir)
    for part in ("generator", "discriminator", "siamese", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    weights = load_weights(resumed.weights)
    assert weights.summary["discriminator"] == "projected"  # the released file records the family it trained with
    assert json.loads(b["config"])["model"]["discriminator"]["family"] == "projected"  # and so does the resume state


def test_missing_or_altered_backbone_is_one_line_and_scratch_still_trains(domains, tmp_path, monkeypatch):
    src, dst = domains
    runner = CliRunner()
    args = ["fit", "--src", str(src), "--dst", str(dst), "--size", "16", "--steps", "1", "--batch-size", "2",
            "--channels", "8", "--depth", "2"]
    altered = tmp_path / "altered.pth"
    data = bytearray(backbone.weights_path().read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor: still a loadable file, but not the released one
    altered.write_bytes(bytes(data))
    for path, words in ((tmp_path / "nowhere.pth", "not found"), (altered, "altered (SHA-256 mismatch)")):
        backbone._checked_state.cache_clear()
        monkeypatch.setattr(backbone, "weights_path", lambda path=path: path)
        result = runner.invoke(app, [*args, "--disc", "projected", "--run-dir", str(tmp_path / f"p-{path.stem}")])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert lines[-1].startswith("error: ") and words in lines[-1] and "pip install" in lines[-1], lines
        assert "Traceback" not in result.output
    backbone._checked_state.cache_clear()
    result = runner.invoke(app, [*args, "--disc", "scratch", "--run-dir", str(tmp_path / "scratch")])
    assert result.exit_code == 0, result.output


def test_cli_records_the_family_and_its_defaults(domains):
    src, dst = domains
    runner = CliRunner()
    base = ["fit", "--src", str(src), "--dst", str(dst), "--size", "64", "--dry-run"]
    projected = json.loads(runner.invoke(app, base).output)  # the default family
    scratch = json.loads(runner.invoke(app, [*base, "--disc", "scratch"]).output)
    assert projected["model"]["discriminator"]["family"] == "projected"
    assert projected["model"]["discriminator"]["projected"]["resolution"] == 128  # 64 px crops are read upsampled
    assert (projected["model"]["siamese"], projected["loss"]["travel"], projected["train"]["lr_g"]) == ("separate", 0.2, 2e-4)
    assert projected["model"]["discriminator"]["vec_len"] == 32
    assert scratch["model"]["discriminator"]["family"] == "scratch"
    assert (scratch["model"]["siamese"], scratch["loss"]["travel"], scratch["train"]["lr_g"]) == ("shared", 10.0, 1e-4)
    # Explicit settings win over the family's defaults.
    chosen = json.loads(runner.invoke(app, [*base, "--travel-weight", "1", "--siamese", "shared"]).output)
    assert (chosen["loss"]["travel"], chosen["model"]["siamese"]) == (1.0, "shared")


def test_configs_saved_before_the_family_existed_are_scratch():
    from travel.compat import read_run_config

    # A real schema-1 run folder from before the family (tests/data/run-355b766): flat discriminator, no family key.
    saved = (Path(__file__).parent / "data" / "run-355b766" / "old" / "config.json").read_text()
    assert '"family"' not in saved and '"mixing"' not in saved
    loaded = read_run_config(saved).model.discriminator
    assert loaded.family == "scratch" and loaded.projected.mixing == "none" and loaded.projected.pixel_weight == 0.0
    assert (loaded.scratch.base_channels, loaded.scratch.depth, loaded.scratch.attention_level) == (4, 2, 1)


@pytest.mark.parametrize("module", ["travel.inference", "travel.inference.export", "travel.cli"])
def test_translation_and_export_never_import_timm(module):
    code = f"import sys, {module}; print(sorted(m for m in ('timm', 'travel.nets.discriminators.projected', 'travel.nets.backbone') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def test_translate_with_a_projected_run_imports_no_timm(domains, tmp_path):
    config = projected_config(*domains, steps=1, save_every=1)
    result = fit(config, tmp_path / "run")
    image = domains[0] / "000.png"
    code = (
        "import sys\nfrom PIL import Image\nfrom travel import Translator\n"
        f"t = Translator.from_pretrained({str(result.weights)!r}, device='cpu')\nt(Image.open({str(image)!r}))\n"
        "print('timm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_rotation_and_self_conditioning_run_with_the_projected_family(domains, tmp_path):
    # Both read D.features: for the projected family the heads' pooled hidden activations (trainable).
    config = projected_config(*domains, steps=2, save_every=2)
    disc = replace(config.model.discriminator, rotation_head=True)
    generator = replace(config.model.generator, num_styles=2)
    from travel.config import ClusterConfig

    config = replace(config, model=replace(config.model, generator=generator, discriminator=disc),
                     loss=replace(config.loss, rotation=True, rotation_d=1.0), clusters=ClusterConfig(clusters=2, recluster_every=1, subset=8))
    result = fit(config, tmp_path / "run")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("rot_d" in m and "rot_g" in m for m in metrics)
    state = load_state(result.run_dir)
    assert state["styles"]["labels"].shape == (8,) and len(load_weights(result.weights).summary["style_frequencies"]) == 2


def test_feature_mixing_and_the_pixel_branch_build_together():
    """Found in review of the restructure: the pixel branch was built from the projected config with its mixing
    still set, which the scratch family refuses."""
    from travel.nets.discriminators import build_discriminator
    from travel.options import fit_config

    cfg = fit_config(size=32, mixing="ccm", pixel_weight=0.5, vec_len=4, head_channels=4, channels=4, depth=2).model.discriminator
    disc = build_discriminator(cfg)
    assert disc.mixing is not None and disc.pixel is not None
    assert disc(torch.rand(2, 3, 32, 32) * 2 - 1).shape[1] == disc.patch_weights.shape[0]
