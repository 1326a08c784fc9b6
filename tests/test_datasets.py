"""Dataset builders on tiny subsets: layout, disjoint seeded splits, pairing, centring, determinism, the card, errors."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont, features
from typer.testing import CliRunner

from travel.lab import datasets
from travel.cli import app
from travel.lab.datasets import (
    CARD_FILE, SPLITS, SPLITS_FILE, MissingSourceError, assign_splits, build_emoji, build_glyphs, codepoint_name,
    emoji_group, emoji_key, gb2312_characters,
)
from travel.errors import DataError

CHARS = "ABCDEFGHIJKLMNOPQRST"  # 20 characters every Latin font draws
SIZE = 32
MARGIN = 2  # pixels per side at size 32 with margin=1/16

pytestmark = pytest.mark.skipif(not features.check("freetype2"), reason="Pillow built without FreeType")


@pytest.fixture(scope="module")
def fonts(tmp_path_factory) -> tuple[Path, Path]:
    """Pillow's bundled FreeType font (Aileron) as a file, and DejaVu Serif if installed (else Aileron again)."""
    folder = tmp_path_factory.mktemp("fonts")
    source = folder / "aileron.ttf"
    source.write_bytes(ImageFont.load_default(size=20).font_bytes)
    dejavu = Path("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf")
    return source, (dejavu if dejavu.is_file() else source)


def build(out: Path, fonts: tuple[Path, Path], **options) -> datasets.BuildResult:
    settings = dict(source_font=fonts[0], target_font=fonts[1], size=SIZE, characters=CHARS, seed=0)
    settings.update(options)
    return build_glyphs(out, **settings)


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory, fonts) -> datasets.BuildResult:
    return build(tmp_path_factory.mktemp("glyphs") / "glyphs-32", fonts)


def names_in(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.png")}


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def ink_box(path: Path) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the non-white pixels."""
    grey = np.asarray(Image.open(path).convert("L"))
    rows, cols = np.nonzero(grey < 255)
    return cols.min(), rows.min(), cols.max() + 1, rows.max() + 1


# ---------------------------------------------------------------------------------------------
# Items and splits.


def test_gb2312_has_the_6763_common_hanzi_in_two_levels():
    characters = gb2312_characters()
    assert len(characters) == len(set(characters)) == 6763
    assert characters[0] == "啊" and characters[3754] == "座"  # 0xB0A1 and 0xD7F9, the last cell of level 1
    assert characters[3755] == "亍"  # 0xD8A1 opens level 2
    assert all("\u4e00" <= char <= "\u9fff" for char in characters)


def test_seeded_split_is_deterministic_disjoint_and_in_proportion():
    items = [f"item{i:03d}" for i in range(100)]
    roles = assign_splits(items, seed=3, test_fraction=0.1)
    assert roles == assign_splits(list(reversed(items)), seed=3, test_fraction=0.1)  # input order does not matter
    assert roles != assign_splits(items, seed=4, test_fraction=0.1)
    counts = {role: sum(1 for r in roles.values() if r == role) for role in ("A", "B", "test")}
    assert counts == {"A": 45, "B": 45, "test": 10}
    assert set(roles) == set(items)


# ---------------------------------------------------------------------------------------------
# Glyphs.


def test_glyph_layout_is_cyclegan_with_disjoint_groups_and_test_pairs(glyphs):
    out = glyphs.out
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(SPLITS)
    folders = {split: names_in(out / split) for split in SPLITS}
    assert {split: len(names) for split, names in folders.items()} == glyphs.counts
    assert glyphs.counts == {"trainA": 9, "trainB": 9, "testA": 2, "testB": 2}
    assert folders["testA"] == folders["testB"]  # ground-truth pairs share a file name
    assert not folders["trainA"] & folders["trainB"]
    assert not (folders["trainA"] | folders["trainB"]) & folders["testA"]
    assert folders["trainA"] | folders["trainB"] | folders["testA"] == {codepoint_name(c) for c in CHARS}
    mapping = json.loads((out / SPLITS_FILE).read_text(encoding="utf-8"))
    assert all(codepoint_name(char) == name for split in SPLITS for name, char in mapping[split].items())
    assert {split: set(mapping[split]) for split in SPLITS} == folders


def test_glyph_images_are_rgb_grey_ink_cropped_and_centred(glyphs):
    for path in sorted(glyphs.out.glob("*/*.png")):
        image = Image.open(path)
        assert image.size == (SIZE, SIZE) and image.mode == "RGB"
        pixels = np.asarray(image).astype(int)
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()  # grey as RGB
        assert pixels.min() < 80  # real ink, not an empty page
        left, top, right, bottom = ink_box(path)
        assert abs(left - (SIZE - right)) <= 1 and abs(top - (SIZE - bottom)) <= 1, path.name  # centred
        assert max(right - left, bottom - top) == SIZE - 2 * MARGIN, path.name  # scaled to fit inside the margin


def test_test_pairs_show_the_same_character_in_two_fonts(glyphs, fonts):
    if fonts[0] == fonts[1]:
        pytest.skip("only one font available")
    pairs = sorted(names_in(glyphs.out / "testA"))
    assert any(
        (glyphs.out / "testA" / f"{name}.png").read_bytes() != (glyphs.out / "testB" / f"{name}.png").read_bytes() for name in pairs
    )


def test_same_seed_same_files_other_seed_other_split(tmp_path, fonts, glyphs):
    again = build(tmp_path / "again", fonts)
    assert file_hashes(again.out) == file_hashes(glyphs.out)  # byte-identical, card included
    other = build(tmp_path / "other", fonts, seed=1)
    assert names_in(other.out / "testA") != names_in(glyphs.out / "testA") or names_in(other.out / "trainA") != names_in(
        glyphs.out / "trainA"
    )


def test_glyph_card_records_versions_checksums_counts_and_content(glyphs, fonts):
    card = json.loads((glyphs.out / CARD_FILE).read_text(encoding="utf-8"))
    assert card["seed"] == 0 and card["size"] == SIZE and card["builder_version"] == datasets.BUILDER_VERSION
    assert card["counts"] == glyphs.counts
    assert card["software"]["freetype2"] == features.version("freetype2")
    assert card["software"]["pillow"] == Image.__version__
    assert card["reference_software"] == datasets.GLYPH_REFERENCE_SOFTWARE
    source, target = card["sources"]
    assert source["sha256"] == hashlib.sha256(fonts[0].read_bytes()).hexdigest()
    assert target["sha256"] == hashlib.sha256(fonts[1].read_bytes()).hexdigest()
    assert source["face"].startswith("Aileron")
    assert card["content_sha256"] == datasets.content_sha256(glyphs.out)
    assert card["splits_sha256"] == hashlib.sha256((glyphs.out / SPLITS_FILE).read_bytes()).hexdigest()
    assert "--chars" in card["rebuild"] and "--seed 0" in card["rebuild"]
    assert "trainA" in (glyphs.out / "README.md").read_text(encoding="utf-8")


def test_characters_a_font_lacks_are_skipped_and_recorded(tmp_path, fonts):
    result = build(tmp_path / "cjk", fonts, characters=CHARS + "中文")  # the Latin test fonts draw no hanzi
    card = result.card
    assert card["items"]["missing_in_source_font"] == ["4e2d", "6587"]
    assert sorted(name for names in result.skipped.values() for name in names) == ["4e2d", "6587"]
    assert not {"4e2d", "6587"} & set().union(*(names_in(result.out / split) for split in SPLITS))


def test_rebuild_needs_overwrite_and_compares_with_the_replaced_card(tmp_path, fonts):
    out = tmp_path / "ds"
    build(out, fonts)
    with pytest.raises(DataError, match="--overwrite"):
        build(out, fonts)
    again = build(out, fonts, overwrite=True)
    assert again.matches_compared is True
    changed = build(out, fonts, overwrite=True, seed=5)
    assert changed.matches_compared is False and any("differs" in w for w in changed.warnings)
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing"):
        build(stranger, fonts, overwrite=True)
    assert (stranger / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left behind


def test_a_different_freetype_in_the_compared_card_warns(tmp_path, fonts, glyphs):
    card = json.loads((glyphs.out / CARD_FILE).read_text(encoding="utf-8"))
    card["software"]["freetype2"] = "1.0.0"
    published = tmp_path / "published.json"
    published.write_text(json.dumps(card), encoding="utf-8")
    result = build(tmp_path / "check", fonts, compare_card=published)
    assert result.matches_compared is True  # same bytes here; the warning is about the other machine's FreeType
    assert any("freetype2" in w and "1.0.0" in w for w in result.warnings)


def test_missing_font_is_a_clear_error(tmp_path, fonts, monkeypatch):
    with pytest.raises(MissingSourceError, match="--source-font"):
        build(tmp_path / "x", fonts, source_font=tmp_path / "nope.ttf")
    debian_path = tmp_path / "usr/share/fonts/kai.ttc"
    monkeypatch.setitem(datasets.DEBIAN_FONT_PACKAGES, debian_path, "fonts-arphic-ukai")
    with pytest.raises(MissingSourceError, match="apt-get install fonts-arphic-ukai"):
        build(tmp_path / "x", fonts, target_font=debian_path)
    assert not (tmp_path / "x").exists()


def test_cli_builds_glyphs_and_reports_errors_in_one_line(tmp_path, fonts):
    runner = CliRunner()
    common = ["data", "glyphs", "--source-font", str(fonts[0]), "--target-font", str(fonts[1]), "--size", "32"]
    done = runner.invoke(app, [*common, "--chars", CHARS, "--out", str(tmp_path / "cli")])
    assert done.exit_code == 0, done.output
    assert "trainA=9 trainB=9 testA=2 testB=2" in done.output
    none_drawn = runner.invoke(app, [*common, "--limit", "5", "--out", str(tmp_path / "gb")])  # GB2312 in Latin fonts
    assert none_drawn.exit_code == 2 and "nothing to train on" in none_drawn.output
    assert "Traceback" not in none_drawn.output and not (tmp_path / "gb").exists()
    missing = runner.invoke(app, ["data", "glyphs", "--source-font", str(tmp_path / "no.ttf"), "--out", str(tmp_path / "m")])
    assert missing.exit_code == 2 and missing.output.count("\n") == 1 and missing.output.startswith("error:")


def test_a_mixed_style_target_records_each_images_true_style(tmp_path, fonts):
    # Two styles of domain B: Aileron and DejaVu Serif (the same font twice where DejaVu is missing, as two faces
    # cannot then be told apart, the check below of which font drew each image is skipped).
    styles = [(fonts[0], 0), (fonts[1], 0)] if fonts[0] != fonts[1] else None
    if styles is None:
        pytest.skip("needs DejaVu Serif beside Pillow's font")
    result = build(tmp_path / "mixed", fonts, style_fonts=styles)
    record = datasets.read_styles(tmp_path / "mixed")
    assert [s["id"] for s in record["styles"]] == [0, 1]
    for split in ("trainB", "testB"):
        assert set(record[split]) == names_in(tmp_path / "mixed" / split)  # every target has its style, no other
    ids = [*record["trainB"].values(), *record["testB"].values()]
    assert abs(ids.count(0) - ids.count(1)) <= 1  # an equal share each
    assert [s["trainB"] + s["testB"] for s in result.card["styles"]] == [ids.count(0), ids.count(1)]
    # Each target image is the rendering of its character in the font of its recorded style, not the other's.
    splits = json.loads((tmp_path / "mixed" / "splits.json").read_text())
    faces = [datasets.load_font(path, index=0, em=4 * SIZE, role="style") for path, _ in styles]
    for name, style in list(record["trainB"].items())[:6]:
        saved = np.asarray(Image.open(tmp_path / "mixed" / "trainB" / f"{name}.png"))
        drawn = [np.asarray(datasets.render_glyph(face, splits["trainB"][name], size=SIZE, margin=MARGIN)) for face in faces]
        assert np.array_equal(saved, drawn[style]) and not np.array_equal(saved, drawn[1 - style]), name
    assert "--style-font" in result.card["rebuild"] and "mixed-style target" in result.card["description"]
    assert datasets.read_styles(tmp_path / "nothing-here") is None
    (tmp_path / "mixed" / "styles.json").write_text('{"styles": [], "trainB": {"x": 3}, "testB": {}}')
    with pytest.raises(DataError, match="not a readable styles file"):
        datasets.read_styles(tmp_path / "mixed")


def test_mixed_style_options_are_checked_in_one_line(tmp_path, fonts):
    runner = CliRunner()
    common = ["data", "glyphs", "--source-font", str(fonts[0]), "--size", "32", "--chars", CHARS]
    for extra, words in ((["--style-font", str(fonts[1])], "at least two style fonts"),
                         (["--style-font", f"{fonts[1]}#x", "--style-font", str(fonts[0])], "must be a number"),
                         (["--style-font", str(fonts[1]), "--style-font", str(fonts[1])], "may be given once")):
        result = runner.invoke(app, [*common, *extra, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2 and result.output.count("\n") == 1 and words in result.output, result.output


# ---------------------------------------------------------------------------------------------
# Emoji, from small generated stand-ins for the two npm packages.

FLAT = {  # twemoji-style file stem -> colour; 1f1e6 (a regional indicator) exists only in the flat set
    **{f"1f6{i:02x}": (40 + 15 * i, 120, 200 - 10 * i) for i in range(12)},
    "1f3c3-1f3fb": (250, 220, 180), "1f3c3-1f3fc": (230, 190, 150), "1f3c3-1f3fd": (200, 150, 110),
    "23-20e3": (60, 60, 60), "1f1e6": (0, 90, 200),
}
ROUND = {  # fluent-style names for the same emoji: zero-padded, with U+FE0F
    **{name: name for name in FLAT if name != "1f1e6"},
    "23-20e3": "0023-fe0f-20e3",
}


def fake_twemoji(root: Path) -> Path:
    package = root / "package"
    package.mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"name": "@twemoji/svg", "version": "15.0.0", "license": "MIT"}))
    (package / "license").write_text("MIT License\n\nCopyright (c) 2023 Test\n")
    for index, (stem, colour) in enumerate(FLAT.items()):
        radius = 10 + index % 8
        fill = "#{:02x}{:02x}{:02x}".format(*colour)
        svg = f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 36 36"><circle cx="18" cy="18" r="{radius}" fill="{fill}"/></svg>'
        (package / f"{stem}.svg").write_text(svg)
    return package


def fake_fluent(root: Path) -> Path:
    package = root / "package"
    (package / "assets").mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"name": "@lobehub/fluent-emoji-3d", "version": "1.1.0", "license": "MIT"}))
    for index, (stem, name) in enumerate(sorted(ROUND.items())):
        image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        ImageDraw.Draw(image).rounded_rectangle([8, 12 + index % 4, 56, 52], radius=10, fill=(*FLAT[stem], 255))
        image.save(package / "assets" / f"{name}.png")
    return package


def pack(folder: Path, tarball: Path) -> Path:
    """What `npm pack` writes: a gzipped tar with everything under package/."""
    with tarfile.open(tarball, "w:gz") as archive:
        for path in sorted(folder.rglob("*")):
            archive.add(path, arcname="package/" + path.relative_to(folder).as_posix(), recursive=False)
    return tarball


@pytest.fixture(scope="module")
def npm_cache(tmp_path_factory) -> Path:
    try:
        import cairosvg  # noqa: F401
    except (ImportError, OSError) as exc:  # not installed, or cairocffi found no libcairo2
        pytest.skip(f"the emoji builder needs cairosvg and libcairo2 (pip install 'travel[datasets]'): {exc}")
    cache = tmp_path_factory.mktemp("npm")
    pack(fake_twemoji(cache / "tw"), cache / "twemoji-svg-15.0.0.tgz")
    pack(fake_fluent(cache / "fl"), cache / "lobehub-fluent-emoji-3d-1.1.0.tgz")
    return cache


@pytest.fixture(scope="module")
def emoji(tmp_path_factory, npm_cache) -> datasets.BuildResult:
    return build_emoji(tmp_path_factory.mktemp("emoji") / "emoji", npm_cache=npm_cache, size=SIZE, test_fraction=0.2)


def test_emoji_names_normalise_across_packages():
    assert emoji_key("0023-fe0f-20e3") == emoji_key("23-20e3") == (0x23, 0x20E3)
    assert emoji_key("1f3f4-e0067_e0062_e0065_e006e_e0067") == emoji_key("1f3f4-e0067-e0062-e0065-e006e-e0067-e007f")
    assert emoji_group((0x1F3C3, 0x1F3FB)) == emoji_group((0x1F3C3, 0x1F3FD)) == (0x1F3C3,)


def test_emoji_pairs_match_by_code_point_and_tones_share_a_split(emoji):
    folders = {split: names_in(emoji.out / split) for split in SPLITS}
    assert folders["testA"] == folders["testB"] and folders["testA"]
    assert not folders["trainA"] & folders["trainB"] and not (folders["trainA"] | folders["trainB"]) & folders["testA"]
    used = folders["trainA"] | folders["trainB"] | folders["testA"]
    assert "1f1e6" not in used  # only the flat set has it: dropped by default
    assert "0023-20e3" in used  # "23-20e3.svg" paired with "0023-fe0f-20e3.png"
    tones = {"1f3c3-1f3fb", "1f3c3-1f3fc", "1f3c3-1f3fd"}
    assert sum(bool(tones & names) for names in (folders["trainA"], folders["trainB"], folders["testA"])) == 1
    assert emoji.card["items"]["only_in_twemoji"] == ["1f1e6"]


def test_emoji_images_are_rgb_on_white_and_centred(emoji):
    for path in sorted(emoji.out.glob("*/*.png")):
        image = Image.open(path)
        assert image.size == (SIZE, SIZE) and image.mode == "RGB"
        assert image.getpixel((0, 0)) == image.getpixel((SIZE - 1, SIZE - 1)) == (255, 255, 255)
        left, top, right, bottom = ink_box(path)
        assert abs(left - (SIZE - right)) <= 1 and abs(top - (SIZE - bottom)) <= 1, path.name


def test_emoji_build_is_deterministic_and_the_same_from_tarballs_or_folders(tmp_path, npm_cache, emoji):
    again = build_emoji(tmp_path / "again", npm_cache=npm_cache, size=SIZE, test_fraction=0.2)
    assert file_hashes(again.out) == file_hashes(emoji.out)
    folders = build_emoji(
        tmp_path / "folders", twemoji=npm_cache / "tw", fluent=npm_cache / "fl" / "package", size=SIZE, test_fraction=0.2
    )
    assert folders.card["content_sha256"] == emoji.card["content_sha256"]
    manifests = [[s["graphics_manifest_sha256"] for s in card["sources"]] for card in (folders.card, emoji.card)]
    assert manifests[0] == manifests[1]


def test_emoji_card_records_packages_checksums_and_licences(emoji, npm_cache):
    twemoji, fluent = emoji.card["sources"]
    assert (twemoji["npm_package"], twemoji["version"]) == ("@twemoji/svg", "15.0.0")
    assert twemoji["tarball_sha256"] == hashlib.sha256((npm_cache / "twemoji-svg-15.0.0.tgz").read_bytes()).hexdigest()
    assert twemoji["license"] == "MIT" and "CC-BY 4.0" in twemoji["upstream"]
    assert twemoji["license_and_readme_files"][0]["copyright_line"] == "Copyright (c) 2023 Test"
    assert fluent["npm_package"] == "@lobehub/fluent-emoji-3d" and "Microsoft" in fluent["upstream"]
    assert emoji.card["software"]["cairosvg"] and emoji.card["counts"] == emoji.counts


def test_unmatched_emoji_can_join_their_domains_train_folder(tmp_path, npm_cache, emoji):
    result = build_emoji(tmp_path / "keep", npm_cache=npm_cache, size=SIZE, test_fraction=0.2, unmatched="train")
    assert "1f1e6" in names_in(result.out / "trainA")
    assert names_in(result.out / "testA") == names_in(emoji.out / "testA")  # the matched split does not move


def test_missing_npm_package_is_a_clear_error(tmp_path, npm_cache):
    with pytest.raises(MissingSourceError, match="npm pack @twemoji/svg"):
        build_emoji(tmp_path / "x", npm_cache=tmp_path / "empty", size=SIZE)
    with pytest.raises(MissingSourceError, match="@lobehub/fluent-emoji-3d not found"):
        build_emoji(tmp_path / "x", twemoji=npm_cache / "tw", fluent=tmp_path / "nowhere", size=SIZE)
    assert not (tmp_path / "x").exists()
