"""Image loading and datasets: every Pillow mode to RGB, orientation, damaged files, folder search, batch determinism."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import draw_shapes
from travel.data import (
    IMAGE_EXTENSIONS,
    ImageFolder,
    UnpairedBatches,
    find_images,
    image_from_pil,
    image_to_tensor,
    load_image,
    resize_shorter,
    resolve_domains,
    tensor_to_image,
)
from travel.errors import DataError

RED, GREEN, WHITE = (255, 0, 0), (0, 255, 0), (255, 255, 255)


def loaded(path: Path) -> Image.Image:
    image = load_image(path)
    assert image.mode == "RGB"
    return image


# ---------------------------------------------------------------------------------------------
# Modes.


def test_greyscale(tmp_path):
    Image.new("L", (5, 3), 77).save(tmp_path / "grey.png")
    image = loaded(tmp_path / "grey.png")
    assert image.size == (5, 3) and image.getpixel((4, 2)) == (77, 77, 77)


def test_one_bit(tmp_path):
    bits = Image.new("1", (4, 4), 0)
    bits.putpixel((1, 1), 1)
    bits.save(tmp_path / "bits.png")
    image = loaded(tmp_path / "bits.png")
    assert image.getpixel((0, 0)) == (0, 0, 0) and image.getpixel((1, 1)) == WHITE


def palette_image() -> Image.Image:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([*RED, *GREEN] + [0] * (256 - 2) * 3)
    image.putpixel((1, 1), 1)
    return image


def test_palette_without_transparency(tmp_path):
    palette_image().save(tmp_path / "p.png")
    image = loaded(tmp_path / "p.png")
    assert image.getpixel((0, 0)) == RED and image.getpixel((1, 1)) == GREEN


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_with_transparency_becomes_white(tmp_path, suffix):
    palette_image().save(tmp_path / f"p{suffix}", transparency=0)  # index 0 (red) is transparent
    assert Image.open(tmp_path / f"p{suffix}").mode == "P"
    image = loaded(tmp_path / f"p{suffix}")
    assert image.getpixel((0, 0)) == WHITE and image.getpixel((1, 1)) == GREEN


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk(tmp_path, suffix):
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / f"c{suffix}")  # no cyan, full magenta and yellow
    assert Image.open(tmp_path / f"c{suffix}").mode == "CMYK"
    r, g, b = loaded(tmp_path / f"c{suffix}").getpixel((2, 2))
    assert r > 240 and g < 15 and b < 15


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32768, 65535], [256, 25600, 65535]], dtype=np.uint16)  # [2, 3]
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    image = np.asarray(loaded(tmp_path / "deep.png"))[..., 0]
    assert image.tolist() == [[0, 128, 255], [1, 100, 255]]


def test_dark_sixteen_bit_stays_dark(tmp_path):
    # Every value <= 255 out of 65535: nearly black. Read as 8-bit it would turn mid-grey.
    Image.fromarray(np.full((3, 3), 200, dtype=np.uint16)).save(tmp_path / "dark.png")
    assert Image.open(tmp_path / "dark.png").mode == "I;16"
    assert loaded(tmp_path / "dark.png").getpixel((1, 1)) == (1, 1, 1)


def test_rgba_alpha_is_composited_onto_white(tmp_path):
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # transparent black
    image.putpixel((1, 1), (255, 0, 0, 255))
    image.putpixel((2, 2), (0, 0, 0, 128))  # half-transparent black over white: mid-grey
    image.save(tmp_path / "alpha.png")
    rgb = loaded(tmp_path / "alpha.png")
    assert rgb.getpixel((0, 0)) == WHITE
    assert rgb.getpixel((1, 1)) == RED
    assert all(abs(c - 127) <= 1 for c in rgb.getpixel((2, 2)))


def test_la_alpha_is_composited_onto_white(tmp_path):
    image = Image.new("LA", (3, 3), (0, 0))  # transparent black
    image.putpixel((1, 1), (0, 255))  # opaque black
    image.save(tmp_path / "la.png")
    rgb = loaded(tmp_path / "la.png")
    assert rgb.getpixel((0, 0)) == WHITE and rgb.getpixel((1, 1)) == (0, 0, 0)


def test_image_from_pil_converts_too():
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert image_from_pil(rgba).getpixel((0, 0)) == WHITE
    with pytest.raises(DataError, match="pixel limit"):
        image_from_pil(Image.new("RGB", (20, 20)), max_pixels=100)


# ---------------------------------------------------------------------------------------------
# Orientation and frames.


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    image = Image.new("RGB", (20, 10), (10, 200, 10))
    image.paste(RED, (0, 0, 5, 5))  # top-left corner marked
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / f"turned{suffix}", exif=exif, quality=95)
    assert Image.open(tmp_path / f"turned{suffix}").size == (20, 10)
    upright = loaded(tmp_path / f"turned{suffix}")
    assert upright.size == (10, 20)
    r, g, b = upright.getpixel((8, 1))  # clockwise: the top-left corner moves to the top right
    assert r > 200 and g < 60


def test_animated_gif_gives_its_first_frame(tmp_path):
    first, second = Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), (0, 0, 255))
    first.save(tmp_path / "anim.gif", save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    assert loaded(tmp_path / "anim.gif").getpixel((4, 4)) == RED


# ---------------------------------------------------------------------------------------------
# Files that are not usable images.


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with almost no pixel data (what a decompression bomb looks like)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_pixel_limit_refuses_large_images(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "ok.png")
    assert loaded(tmp_path / "ok.png").size == (20, 20)
    with pytest.raises(DataError, match="pixel limit"):
        load_image(tmp_path / "ok.png", max_pixels=399)


@pytest.mark.parametrize("side", [12_000, 100_000])  # above our default limit; far above Pillow's own
def test_decompression_bomb_is_refused_before_decoding(tmp_path, side):
    (tmp_path / "bomb.png").write_bytes(png_with_size(side, side))
    with pytest.raises(DataError, match="too large|pixel limit"):
        load_image(tmp_path / "bomb.png")


def noisy_image(size: int = 48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_truncated_files_raise_data_error(tmp_path, suffix, keep):
    noisy_image().save(tmp_path / f"full{suffix}")
    data = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match="cut"):
        load_image(tmp_path / f"cut{suffix}")


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("text.png", b"hello, I am not a picture", "not an image"),
        ("zero.jpg", b"", "empty"),
        ("random.bmp", bytes(range(256)) * 4, "random.bmp"),
    ],
    ids=["text", "zero-bytes", "random-bytes"],
)
def test_non_images_raise_data_error(tmp_path, name, content, needle):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=needle):
        load_image(tmp_path / name)


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_image(tmp_path / "nothing.png")


# ---------------------------------------------------------------------------------------------
# Tensors.


def test_tensor_round_trip():
    image = noisy_image(9)
    tensor = image_to_tensor(image)
    assert tensor.shape == (3, 9, 9) and tensor.min() >= -1 and tensor.max() <= 1
    assert tensor[0, 0, 0] == pytest.approx(np.asarray(image)[0, 0, 0] / 127.5 - 1)
    assert np.array_equal(np.asarray(tensor_to_image(tensor)), np.asarray(image))
    with pytest.raises(ValueError):
        tensor_to_image(tensor[None])


def test_resize_shorter():
    assert resize_shorter(Image.new("RGB", (40, 20)), 10).size == (20, 10)
    assert resize_shorter(Image.new("RGB", (7, 30)), 14).size == (14, 60)
    same = Image.new("RGB", (10, 12))
    assert resize_shorter(same, 10) is same


# ---------------------------------------------------------------------------------------------
# Folders.


def test_find_images_is_recursive_with_every_extension_and_skips_hidden(tmp_path):
    wanted = []
    for i, extension in enumerate(IMAGE_EXTENSIONS):
        for name in (f"img{i}{extension}", f"upper{i}{extension.upper()}"):
            folder = tmp_path / "a" / ("deep" * (i % 3))
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"x")
            wanted.append(folder / name)
    for extension in (".jpg", ".tiff", ".webp", ".bmp", ".jpeg", ".tif", ".png"):
        assert extension in IMAGE_EXTENSIONS
    skipped = [
        tmp_path / "a" / ".hidden.png",  # hidden file
        tmp_path / "a" / ".cache" / "inside.png",  # inside a hidden folder
        tmp_path / "a" / "notes.txt",
        tmp_path / "a" / "anim.gif",  # not a training extension
    ]
    for path in skipped:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (tmp_path / "a" / "folder.png").mkdir()  # a folder named like an image
    found = find_images(tmp_path / "a")
    assert found == sorted(wanted)


def test_find_images_ignores_hidden_parents_above_the_root(tmp_path):
    root = tmp_path / ".config" / "data"  # hidden above the folder the user named: still searched
    draw_shapes(root, 2, colour=RED)
    assert len(find_images(root)) == 2


def test_resolve_domains_cyclegan_layout(tmp_path):
    for part in ("trainA", "trainB", "testA", "testB"):
        (tmp_path / "h2z" / part).mkdir(parents=True)
    source, target = resolve_domains(None, None, str(tmp_path / "h2z"))
    assert (source.name, target.name) == ("trainA", "trainB")
    with pytest.raises(DataError, match="trainA"):
        resolve_domains(None, None, str(tmp_path / "h2z" / "trainA"))


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: (str(p / "nope"), str(p / "b")), "does not exist"),
        (lambda p: (str(p / "b"), str(p / "b")), "same folder"),
        (lambda p: (str(p / "b"), str(p / "b" / ".." / "b")), "same folder"),
        (lambda p: (str(p / "file.png"), str(p / "b")), "not a folder"),
        (lambda p: (None, str(p / "b")), "both"),
    ],
)
def test_resolve_domains_errors(tmp_path, make, needle):
    (tmp_path / "b").mkdir()
    (tmp_path / "file.png").write_bytes(b"x")
    source, target = make(tmp_path)
    with pytest.raises(DataError, match=needle):
        resolve_domains(source, target, None)


def test_image_folder_skips_damaged_files_and_counts_small_ones(tmp_path):
    folder = tmp_path / "mixed"
    draw_shapes(folder, 3, colour=RED, size=40)
    draw_shapes(folder / "small", 2, colour=RED, size=10)
    (folder / "zero.png").write_bytes(b"")
    data = (folder / "000.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    (folder / "junk.jpg").write_bytes(b"junk")
    dataset = ImageFolder(folder, load_size=18, crop_size=16, flip=True)
    assert len(dataset) == 5 and dataset.report.usable == 5
    assert sorted(Path(file).name for file, _ in dataset.report.skipped) == ["cut.png", "junk.jpg", "zero.png"]
    assert dataset.report.upscaled == 2
    assert dataset[0].shape == (3, 16, 16)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        ImageFolder(tmp_path / "empty", load_size=18, crop_size=16, flip=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"not")
    with pytest.raises(DataError, match="none of the 1"):
        ImageFolder(tmp_path / "bad", load_size=18, crop_size=16, flip=False)


@pytest.mark.parametrize("flip", [False, True])
def test_flip_off_never_mirrors_and_on_mirrors_about_half(tmp_path, flip):
    """Text and slanted styles change under a mirror, so --no-flip must never mirror a training crop."""
    import random

    (tmp_path / "a").mkdir()
    image = np.full((16, 16, 3), 255, np.uint8)
    image[:, :5] = RED  # red on the left only: a mirror moves it to the right
    Image.fromarray(image).save(tmp_path / "a" / "left.png")
    dataset = ImageFolder(tmp_path / "a", load_size=16, crop_size=16, flip=flip)  # whole image: no crop offset
    upright = dataset.center(0)
    mirrored = [not torch.equal(dataset.sample(0, random.Random(seed)), upright) for seed in range(64)]
    if flip:
        assert 16 <= sum(mirrored) <= 48  # binomial(64, 1/2): this band holds with probability > 0.9999
        assert torch.equal(dataset.sample(0, random.Random(mirrored.index(True))), upright.flip(-1))
    else:
        assert not any(mirrored)


@pytest.mark.parametrize("cache", [False, True])
def test_sample_is_a_function_of_the_rng(tmp_path, cache):
    import random

    draw_shapes(tmp_path / "a", 3, colour=RED, size=30)
    dataset = ImageFolder(tmp_path / "a", load_size=24, crop_size=16, flip=True, cache=cache)
    first = dataset.sample(1, random.Random(5))
    assert first.shape == (3, 16, 16)
    assert torch.equal(first, dataset.sample(1, random.Random(5)))
    crops = {dataset.sample(1, random.Random(seed)).sum().item() for seed in range(20)}
    assert len(crops) > 1  # the crop does move


def batches_of(dataset: UnpairedBatches, workers: int) -> list:
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers)
    return list(loader)


def same_batches(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(torch.equal(u, v) for u, v in zip(x, y)) for x, y in zip(a, b)
    )


def test_unpaired_batches_depend_only_on_seed_and_step(tmp_path):
    draw_shapes(tmp_path / "a", 5, colour=RED, size=24, seed=1)
    draw_shapes(tmp_path / "b", 4, colour=GREEN, size=24, seed=2)
    source = ImageFolder(tmp_path / "a", load_size=20, crop_size=16, flip=True)
    target = ImageFolder(tmp_path / "b", load_size=20, crop_size=16, flip=True)

    def make(start: int, stop: int, seed: int = 3) -> UnpairedBatches:
        return UnpairedBatches(source, target, batch_size=3, seed=seed, start=start, stop=stop)

    full = batches_of(make(0, 6), workers=0)
    assert len(full) == 6 and full[0][0].shape == (3, 3, 16, 16) and full[0][1].shape == (3, 3, 16, 16)
    assert same_batches(full, batches_of(make(0, 6), workers=2))  # the worker count changes nothing
    assert same_batches(full[4:], batches_of(make(4, 6), workers=0))  # a resumed run sees the same batches
    assert same_batches(full[2:], batches_of(make(2, 6), workers=2))
    assert not same_batches(full, batches_of(make(0, 6, seed=4), workers=0))  # the seed matters
    assert not torch.equal(full[0][0], full[1][0])  # and so does the step


def test_augment_without_colour_keeps_every_colour_as_drawn():
    """--no-augment-colour: translation (reflection padding) and cutout only, so a flat image keeps its colour
    wherever cutout did not black it out. With colour jitter on, the colour moves."""
    from travel.augment import DiffAugment

    colour = torch.tensor([0.3, -0.5, 0.7])[None, :, None, None]
    flat = colour.expand(6, 3, 16, 16).contiguous()  # [6, 3, 16, 16]
    torch.manual_seed(0)
    plain = DiffAugment(colour=False)(flat)
    kept = (plain - colour).abs().amax(dim=1) <= 1e-5  # resampling a constant returns it, up to float rounding
    erased = (plain + 1).abs().amax(dim=1) <= 1e-5  # cutout's value 0 in [0, 1] is -1 here
    assert bool((kept | erased).all()) and kept.float().mean() > 0.5
    jittered = DiffAugment(colour=True)(flat)
    assert (jittered - colour).abs().amax() > 1e-3
