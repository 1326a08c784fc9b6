"""Draws the demo's bundled example images with Pillow: flat emoji-like shapes and a blocky glyph, made here, CC0."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SIZE = 128  # the emoji benchmark's size; the glyph is drawn at 64, as the glyph benchmark is


def smiley() -> Image.Image:
    """A flat yellow face, in the palette of flat emoji sets (the source domain of `emoji3d`)."""
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse([8, 8, 120, 120], fill=(255, 204, 77))
    draw.ellipse([40, 38, 54, 62], fill=(102, 69, 0))
    draw.ellipse([74, 38, 88, 62], fill=(102, 69, 0))
    draw.arc([34, 50, 94, 100], start=20, end=160, fill=(102, 69, 0), width=7)
    return image


def heart() -> Image.Image:
    """A flat red heart: two circles and a triangle."""
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    red = (221, 46, 68)
    draw.ellipse([14, 22, 66, 74], fill=red)
    draw.ellipse([62, 22, 114, 74], fill=red)
    draw.polygon([(17, 58), (111, 58), (64, 112)], fill=red)
    return image


def glyph() -> Image.Image:
    """Black strokes on white, like the glyph benchmark's Song-style characters (王, drawn as rectangles)."""
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    for top in (10, 29, 49):  # three horizontal strokes, the bottom one longest
        left, right = (12, 52) if top < 49 else (8, 56)
        draw.rectangle([left, top, right, top + 4], fill="black")
    draw.rectangle([30, 10, 34, 53], fill="black")  # the vertical stroke
    return image


def main() -> None:
    for name, draw in (("smiley", smiley), ("heart", heart), ("glyph", glyph)):
        draw().save(HERE / f"{name}.png", optimize=True)


if __name__ == "__main__":
    main()
