"""Untrusted image files: every input decodes to RGB or raises DataError (one line), never another exception, never hangs."""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import functools
import io
import random
import signal
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import report_artifact
import travel.data as data
from travel.data import IMAGE_EXTENSIONS, ImageFolder, image_from_pil, image_to_tensor, load_image
from travel.errors import DataError

# Mutated headers may claim any size; below this limit a case decodes in milliseconds, so the watchdog can be
# tight. The default limit (1e8 pixels) bounds time as well, only at seconds per case: it has its own tests below.
FUZZ_MAX_PIXELS = 1_000_000
CASE_SECONDS = 10.0  # a tiny file within FUZZ_MAX_PIXELS decodes in well under a second, even on a busy core
FUZZ = settings(derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Damaged files make Pillow warn ("Corrupt EXIF data", "Invalid APNG"); the outcome is what is tested, not the noise.
pytestmark = pytest.mark.filterwarnings(r"ignore::UserWarning:PIL\..*")

CASES: collections.Counter = collections.Counter()  # (test, outcome) -> count, written to test-artifacts/


@pytest.fixture(scope="module", autouse=True)
def report_case_counts(request):
    """After the module: how many inputs were tried and how each ended, printed and kept as JSON."""
    CASES.clear()
    yield
    tests = sorted({test for test, _ in CASES})
    counts = {test: {outcome: n for (t, outcome), n in sorted(CASES.items()) if t == test} for test in tests}
    inputs = sum(n for (_, outcome), n in CASES.items() if outcome == "inputs")
    decodes = sum(n for (_, outcome), n in CASES.items() if outcome in ("rgb", "data_error"))
    summary = {"inputs": inputs, "decode_calls": decodes, "by_test": counts}
    line = f"fuzz-images: {inputs} inputs, {decodes} decode calls, all RGB or DataError (test-artifacts/fuzz-images.json)"
    report_artifact(request, "fuzz-images.json", summary, line)


class Hang(BaseException):
    """Raised by the watchdog; a BaseException, so no `except Exception` on the decode path can swallow it."""


@contextlib.contextmanager
def watchdog(seconds: float, what: str):
    """Fail this case after `seconds`; if a C decoder never returns to Python, kill the run with a traceback."""

    def expired(signum, frame):
        raise Hang(f"{what}: still decoding after {seconds:.0f} s (a hang?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(3 * seconds, exit=True)
    try:
        yield
    except Hang as exc:
        pytest.fail(str(exc))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


def assert_rgb(image: Image.Image, *, max_pixels: int) -> torch.Tensor:
    """The contract's good half: an RGB image of 1..max_pixels pixels whose tensor is finite and in [-1, 1]."""
    assert isinstance(image, Image.Image) and image.mode == "RGB", getattr(image, "mode", type(image))
    width, height = image.size
    assert 1 <= width * height <= max_pixels and width >= 1 and height >= 1, image.size
    tensor = image_to_tensor(image)  # [3, H, W]
    assert tensor.shape == (3, height, width) and tensor.dtype == torch.float32
    assert torch.isfinite(tensor).all() and tensor.min() >= -1 and tensor.max() <= 1
    return tensor


def decode(test: str, what: str, call) -> Image.Image | None:
    """Run one decode under the watchdog; an RGB result or a one-line DataError pass, anything else fails."""
    with watchdog(CASE_SECONDS, what):
        try:
            image = call()
        except DataError as exc:
            message = str(exc)
            assert message and "\n" not in message, repr(message)
            CASES[test, "data_error"] += 1
            return None
        except Exception as exc:
            raise AssertionError(f"{what}: {type(exc).__module__}.{type(exc).__qualname__} escaped instead of DataError: {exc}") from exc
    assert_rgb(image, max_pixels=FUZZ_MAX_PIXELS)
    CASES[test, "rgb"] += 1
    return image


def check_bytes(test: str, blob: bytes, name: str, folder: Path) -> None:
    """Every decode path a file meets: load_image (plain and with JPEG draft), and image_from_pil on an opened image."""
    CASES[test, "inputs"] += 1
    path = folder / name
    path.write_bytes(blob)
    decode(test, name, lambda: load_image(path, max_pixels=FUZZ_MAX_PIXELS))
    decode(test, f"{name} (draft)", lambda: load_image(path, max_pixels=FUZZ_MAX_PIXELS, draft=8))
    try:  # Image.open is the caller's step (the demo and Python users); image_from_pil owns what follows it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opened = Image.open(io.BytesIO(blob))
    except Exception:
        CASES[test, "refused_by_image_open"] += 1
        return
    with opened:
        decode(test, f"{name} (image_from_pil)", lambda: image_from_pil(opened, max_pixels=FUZZ_MAX_PIXELS))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------------------------------------
# Real small files to mutate, made here: every format the package reads, and the modes that need conversion.


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _seed_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))  # 10 wide, 12 high
    other = Image.new("RGB", rgb.size, (0, 0, 255))
    palette = rgb.convert("P")
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    floats = Image.fromarray(rng.random((12, 10)).astype(np.float32))  # mode F
    return {
        "rgb.png": _encode(rgb, "PNG"),
        "palette-transparency.png": _encode(transparent, "PNG"),
        "la.png": _encode(rgb.convert("LA"), "PNG"),
        "i16.png": _encode(rgb.convert("I;16"), "PNG"),
        "apng.png": _encode(rgb, "PNG", save_all=True, append_images=[other]),
        "rgb.jpg": _encode(rgb, "JPEG", quality=80),
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"),
        "progressive.jpg": _encode(rgb, "JPEG", progressive=True),
        "rgb.webp": _encode(rgb, "WEBP"),
        "lossless.webp": _encode(rgb.convert("RGBA"), "WEBP", lossless=True),
        "animated.webp": _encode(rgb, "WEBP", save_all=True, append_images=[other]),
        "rgb.gif": _encode(palette, "GIF"),
        "animated.gif": _encode(palette, "GIF", save_all=True, append_images=[other.convert("P")], duration=50),
        "rgb.bmp": _encode(rgb, "BMP"),
        "one-bit.bmp": _encode(rgb.convert("1"), "BMP"),
        "rgb.tif": _encode(rgb, "TIFF"),
        "lzw.tif": _encode(rgb, "TIFF", compression="tiff_lzw"),
        "float.tif": _encode(floats, "TIFF"),
    }


SEEDS = _seed_files()


def test_seed_files_are_valid_images(workdir):
    """The unmutated seeds decode: the fuzzing starts from files each decoder accepts."""
    for name, blob in SEEDS.items():
        (workdir / name).write_bytes(blob)
        with watchdog(CASE_SECONDS, name):
            assert load_image(workdir / name).size == (10, 12), name


# ---------------------------------------------------------------------------------------------
# Hypothesis: random bytes, and mutated real files.

MAGIC = {
    ".png": b"\x89PNG\r\n\x1a\n",
    ".jpg": b"\xff\xd8\xff",
    ".gif": b"GIF89a",
    ".bmp": b"BM",
    ".tif": b"II*\x00",
    ".tiff": b"MM\x00*",
    ".webp": b"RIFF\x00\x01\x00\x00WEBPVP8 ",
}


RANDOM_BYTES = dict(blob=st.binary(max_size=512), suffix=st.sampled_from(IMAGE_EXTENSIONS + (".gif",)))


@settings(FUZZ, max_examples=200)
@given(**RANDOM_BYTES)
def test_random_bytes(workdir, blob, suffix):
    check_bytes("random_bytes", blob, f"random{suffix}", workdir)


BEHIND_SIGNATURE = dict(suffix=st.sampled_from(sorted(MAGIC)), tail=st.binary(max_size=512))


@settings(FUZZ, max_examples=300)
@given(**BEHIND_SIGNATURE)
def test_random_bytes_behind_a_real_signature(workdir, suffix, tail):
    """Past format detection, into each decoder's header parsing."""
    check_bytes("random_behind_signature", MAGIC[suffix] + tail, f"magic{suffix}", workdir)


position = st.integers(min_value=0, max_value=1 << 16)  # taken modulo the length
mutation = st.one_of(
    st.tuples(st.just("flip"), position, st.integers(0, 7)),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), position, st.integers(1, 32)),
    st.tuples(st.just("truncate"), position, st.just(0)),
    st.tuples(st.just("overwrite"), position, st.binary(min_size=1, max_size=4)),
)


def mutate(blob: bytes, mutations) -> bytes:
    out = bytearray(blob)
    for kind, where, value in mutations:
        at = where % (len(out) + 1)
        if kind == "flip" and at < len(out):
            out[at] ^= 1 << value
        elif kind == "insert":
            out[at:at] = value
        elif kind == "delete":
            del out[at:at + value]
        elif kind == "truncate":
            del out[at:]
        elif kind == "overwrite":
            out[at:at + len(value)] = value
    return bytes(out)


MUTATED = dict(seed=st.sampled_from(sorted(SEEDS)), mutations=st.lists(mutation, min_size=1, max_size=6))


@settings(FUZZ, max_examples=400)
@given(**MUTATED)
def test_mutated_real_files(workdir, seed, mutations):
    """Bit flips, insertions, deletions, truncations and overwrites anywhere in a real file of each format."""
    check_bytes("mutated_files", mutate(SEEDS[seed], mutations), f"mutated-{seed}", workdir)


def _gif_descriptor(blob: bytes) -> int | None:
    """Offset of the first image descriptor's fields (left, top, width, height), walking the extension blocks."""
    flags = blob[10]
    at = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    while at < len(blob):
        if blob[at] == 0x2C:
            return at + 1
        if blob[at] != 0x21:
            return None
        at += 2
        while at < len(blob) and blob[at]:
            at += blob[at] + 1
        at += 1
    return None


def header_fields(name: str, blob: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of each header field a damaged file could get wrong: sizes, depths, offsets, counts."""
    if name.endswith(".png"):  # IHDR: width, height, bit depth, colour type, compression, filter, interlace
        return [(16, ">I"), (20, ">I"), (24, "B"), (25, "B"), (26, "B"), (27, "B"), (28, "B")]
    if name.endswith(".bmp"):  # pixel offset, header size, width, height, planes, bits per pixel, compression, colours
        return [(10, "<I"), (14, "<I"), (18, "<I"), (22, "<I"), (26, "<H"), (28, "<H"), (30, "<I"), (46, "<I")]
    if name.endswith(".gif"):  # screen width, height, flags, then the first image's left, top, width, height
        fields = [(6, "<H"), (8, "<H"), (10, "B")]
        descriptor = _gif_descriptor(blob)
        return fields + ([(descriptor + 2 * k, "<H") for k in range(4)] if descriptor else [])
    if name.endswith(".jpg"):  # the frame header: precision, height, width, components
        start = next(blob.find(m) for m in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1") if blob.find(m) >= 0)
        return [(start + 2, ">H"), (start + 4, "B"), (start + 5, ">H"), (start + 7, ">H"), (start + 9, "B")]
    if name.endswith(".webp"):  # RIFF size, first chunk's size, and its header (VP8 sizes, VP8L packed sizes, VP8X canvas)
        kind = blob[12:16]
        fields = [(4, "<I"), (16, "<I")]
        if kind == b"VP8 ":
            return fields + [(26, "<H"), (28, "<H")]
        if kind == b"VP8L":
            return fields + [(21, "<I")]
        return fields + [(20, "B"), (24, "<I"), (27, "<I")]  # VP8X: flags, canvas width - 1, height - 1 (24 bits)
    if name.endswith(".tif"):  # every value of the first IFD: sizes, strips, samples, compression, ...
        (first,) = struct.unpack_from("<I", blob, 4)
        (count,) = struct.unpack_from("<H", blob, first)
        return [(first, "<H")] + [(first + 2 + 12 * k + 8, "<I") for k in range(count)]
    raise AssertionError(name)


HEADER_FIELDS = dict(
    seed=st.sampled_from(sorted(SEEDS)),
    choice=st.integers(min_value=0, max_value=1000),
    value=st.one_of(
        st.sampled_from([0, 1, 2, 255, 256, 2**15, 2**16 - 1, 2**16, 2**31 - 1, 2**31, 2**32 - 1]),
        st.integers(min_value=0, max_value=2**32 - 1),
    ),
)


@settings(FUZZ, max_examples=300)
@given(**HEADER_FIELDS)
def test_header_fields_overwritten(workdir, seed, choice, value):
    """Widths, heights, depths and offsets replaced by absurd values (the PNG header's CRC recomputed, so it is read)."""
    blob = bytearray(SEEDS[seed])
    fields = header_fields(seed, blob)
    offset, fmt = fields[choice % len(fields)]
    size = struct.calcsize(fmt)
    struct.pack_into(fmt, blob, offset, value % (1 << (8 * size)))
    if seed.endswith(".png"):
        struct.pack_into(">I", blob, 29, zlib.crc32(bytes(blob[12:29])))
    check_bytes("header_fields", bytes(blob), f"header-{seed}", workdir)


def png_chunks(blob: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 8
    while at + 8 <= len(blob):
        (length,) = struct.unpack_from(">I", blob, at)
        chunks.append((blob[at + 4:at + 8], blob[at + 8:at + 8 + length]))
        at += 12 + length
    return chunks


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


CHUNK_KINDS = [b"IHDR", b"PLTE", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"tEXt", b"zTXt", b"iTXt", b"eXIf",
               b"pHYs", b"bKGD", b"sBIT", b"acTL", b"fcTL", b"fdAT", b"IDAT", b"IEND"]
chunk_edit = st.one_of(
    st.tuples(st.just("set"), position, st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("cut"), position, st.binary(max_size=0)),
    st.tuples(st.just("drop"), position, st.binary(max_size=0)),
    st.tuples(st.just("repeat"), position, st.binary(max_size=0)),
)
# An added chunk goes where Image.open reads it (after IHDR) or where only decoding does (just before IEND):
# Pillow treats the two places differently (in the second, a too-short gAMA escaped as struct.error).
added_chunk = st.tuples(st.sampled_from(CHUNK_KINDS), st.binary(max_size=40), st.booleans())


PNG_CHUNKS = dict(
    seed=st.sampled_from([n for n in sorted(SEEDS) if n.endswith(".png")]),
    added=st.lists(added_chunk, max_size=3),
    edits=st.lists(st.tuples(chunk_edit, st.integers(min_value=0, max_value=1000)), max_size=3),
)


@settings(FUZZ, max_examples=300)
@given(**PNG_CHUNKS)
def test_png_chunks_damaged_with_valid_checksums(workdir, seed, added, edits):
    """Chunks added, edited, cut, dropped or repeated, every CRC correct: past the checksum, into each chunk's parser."""
    chunks = [list(c) for c in png_chunks(SEEDS[seed])]
    for kind, payload, late in added:
        chunks.insert(len(chunks) - 1 if late else 1, [kind, payload])
    for (kind, where, payload), index in edits:
        k = index % len(chunks)
        if kind == "set" and chunks[k][1]:
            at = where % len(chunks[k][1])
            chunks[k][1] = chunks[k][1][:at] + payload + chunks[k][1][at + len(payload):]
        elif kind == "cut":
            chunks[k][1] = chunks[k][1][:where % (len(chunks[k][1]) + 1)]
        elif kind == "drop" and len(chunks) > 1:
            del chunks[k]
        elif kind == "repeat":
            chunks.insert(k, list(chunks[k]))
    blob = b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(kind, bytes(payload)) for kind, payload in chunks)
    check_bytes("png_chunks", blob, f"chunks-{seed}", workdir)


def test_image_folder_skips_or_serves_every_mutated_file(tmp_path, monkeypatch):
    """ImageFolder's scan and its items meet the same bytes: a damaged file is skipped, never a crash mid-epoch."""
    monkeypatch.setattr(data, "load_image", functools.partial(load_image, max_pixels=FUZZ_MAX_PIXELS))
    good = tmp_path / "good.png"
    good.write_bytes(SEEDS["rgb.png"])
    names = [n for n in sorted(SEEDS) if Path(n).suffix in IMAGE_EXTENSIONS]

    @settings(FUZZ, max_examples=120)
    @given(seed=st.sampled_from(names), mutations=st.lists(mutation, min_size=1, max_size=4))
    def scan(seed, mutations):
        CASES["image_folder", "inputs"] += 1
        damaged = tmp_path / f"x-{seed}"  # sorts after good.png
        for stale in tmp_path.glob("x-*"):
            stale.unlink()
        damaged.write_bytes(mutate(SEEDS[seed], mutations))
        with watchdog(CASE_SECONDS, damaged.name):
            folder = ImageFolder(tmp_path, load_size=18, crop_size=16, flip=True)
            assert folder.paths[0] == good and len(folder) + len(folder.report.skipped) == 2
            for _, reason in folder.report.skipped:
                assert reason and "\n" not in reason
            rng = random.Random(0)
            for index in range(len(folder)):
                for item in (folder[index], folder.sample(index, rng)):
                    assert item.shape == (3, 16, 16) and torch.isfinite(item).all() and item.abs().max() <= 1
        CASES["image_folder", "skipped" if folder.report.skipped else "served"] += 1

    scan()


# The slow suite's deep run: the same five generators and checks as above with many more examples (other ones:
# hypothesis derives them from this function, not the quick tests), over 10,000 inputs in all.
DEEP = [
    ("random_bytes", RANDOM_BYTES, 1600, test_random_bytes),
    ("behind_signature", BEHIND_SIGNATURE, 2000, test_random_bytes_behind_a_real_signature),
    ("mutated", MUTATED, 3000, test_mutated_real_files),
    ("header_fields", HEADER_FIELDS, 2000, test_header_fields_overwritten),
    ("png_chunks", PNG_CHUNKS, 1800, test_png_chunks_damaged_with_valid_checksums),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, strategies, examples, quick", DEEP, ids=[d[0] for d in DEEP])
def test_deep_fuzz(workdir, name, strategies, examples, quick):
    @settings(FUZZ, max_examples=examples)
    @given(**strategies)
    def deep(**drawn):
        ran.append(name)
        quick.hypothesis.inner_test(workdir, **drawn)  # the quick test's own body, on this draw

    ran: list[str] = []
    deep()
    assert len(ran) >= examples  # the promised count was really tried (hypothesis stops early only if it runs dry)


# ---------------------------------------------------------------------------------------------
# Hand-made cases: the shapes of trouble a user's folder really holds.


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header (CRC correct) claims width x height over a few bytes of pixel data: a decompression bomb."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b"")


def gif_claiming(width: int, height: int) -> bytes:
    blob = bytearray(SEEDS["rgb.gif"])
    struct.pack_into("<HH", blob, 6, width, height)
    struct.pack_into("<HH", blob, _gif_descriptor(bytes(blob)) + 4, width, height)
    return bytes(blob)


def bmp_claiming(width: int, height: int) -> bytes:
    blob = bytearray(SEEDS["rgb.bmp"])
    struct.pack_into("<ii", blob, 18, width, height)
    return bytes(blob)


@pytest.mark.parametrize(
    "name, blob",
    [
        ("bomb.png", png_claiming(100_000, 100_000)),  # far above Pillow's own limit too
        ("wide-bomb.png", png_claiming(2**31 - 1, 1)),
        ("just-over.png", png_claiming(10_001, 10_000)),  # above ours (1e8), below Pillow's refusal (2 x 89.5e6)
        ("bomb.gif", gif_claiming(65_535, 65_535)),
        ("bomb.bmp", bmp_claiming(100_000, -100_000)),  # negative height: a top-down BMP
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_decompression_bombs_are_refused_at_the_default_limit(tmp_path, name, blob):
    (tmp_path / name).write_bytes(blob)
    CASES["hand_made", "inputs"] += 1
    with watchdog(30, name), pytest.raises(DataError, match="too large|pixel limit") as caught:
        load_image(tmp_path / name)
    assert "\n" not in str(caught.value)
    CASES["hand_made", "data_error"] += 1


def cut_points(length: int) -> list[int]:
    return sorted({1, 4, 8, 16, 33, length // 4, length // 2, 3 * length // 4, length - 16, length - 2, length - 1})


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_truncated_at_many_points(tmp_path, seed):
    """Cut anywhere (inside the signature, the header, the pixels, the trailer): RGB or DataError, never worse."""
    blob = SEEDS[seed]
    outcomes = collections.Counter()
    for cut in cut_points(len(blob)):
        CASES["hand_made", "inputs"] += 1
        (tmp_path / f"cut-{seed}").write_bytes(blob[:cut])
        image = decode("hand_made", f"{seed} cut at {cut}", lambda: load_image(tmp_path / f"cut-{seed}"))
        outcomes["rgb" if image else "error"] += 1
    assert outcomes["error"] >= 5, outcomes  # the early cuts (signature, header) can never make an image


@pytest.mark.parametrize(
    "name, blob, needle",
    [("empty.png", b"", "empty file"), ("notes.png", b"shopping list: eggs, milk\n", "not an image"),
     ("notes.jpg", b"\xff\xd8\xffnot really", "cannot decode|not an image")],
    ids=["zero-bytes", "text-named-png", "jpeg-signature-then-text"],
)
def test_files_that_are_not_images(tmp_path, name, blob, needle):
    (tmp_path / name).write_bytes(blob)
    CASES["hand_made", "inputs"] += 1
    with pytest.raises(DataError, match=needle) as caught:
        load_image(tmp_path / name)
    assert str(tmp_path / name) in str(caught.value) and "\n" not in str(caught.value)
    CASES["hand_made", "data_error"] += 1


def loads_as(tmp_path: Path, name: str, image: Image.Image, **options) -> Image.Image:
    """Save `image` as `name`, load it back through the package, check the contract."""
    image.save(tmp_path / name, **options)
    CASES["hand_made", "inputs"] += 1
    with watchdog(30, name):
        loaded = load_image(tmp_path / name)
    assert_rgb(loaded, max_pixels=data.DEFAULT_MAX_PIXELS)
    CASES["hand_made", "rgb"] += 1
    return loaded


@pytest.mark.parametrize("size", [(1, 1), (1, 10_000), (10_000, 1)], ids=["1x1", "1x10000", "10000x1"])
@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".bmp", ".tif", ".gif"])
def test_absurd_dimensions_keep_their_size(tmp_path, size, suffix):
    assert loads_as(tmp_path, f"thin{suffix}", Image.new("RGB", size, (200, 10, 10))).size == size


RED, BLUE = (220, 20, 20), (20, 20, 220)


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".png"], ids=["gif", "webp", "apng"])
def test_animations_give_their_first_frame(tmp_path, suffix):
    first, second = Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)
    loaded = loads_as(tmp_path, f"anim{suffix}", first, save_all=True, append_images=[second], duration=50, lossless=True)
    with Image.open(tmp_path / f"anim{suffix}") as probe:
        assert probe.n_frames == 2  # really animated, or this test proves nothing
    red, green, blue = loaded.getpixel((8, 8))
    assert red > 180 and blue < 80, loaded.getpixel((8, 8))


def test_animated_gif_with_a_damaged_second_frame_gives_the_first(tmp_path):
    """Only the first frame is decoded, so damage after it costs nothing (this used to escape as struct.error)."""
    first, second = Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)
    first.save(tmp_path / "anim.gif", save_all=True, append_images=[second], duration=50)
    blob = (tmp_path / "anim.gif").read_bytes()
    second_descriptor = blob.rindex(b"\x2c")  # the last image descriptor: the second frame's
    (tmp_path / "cut.gif").write_bytes(blob[:second_descriptor + 2])
    CASES["hand_made", "inputs"] += 1
    image = decode("hand_made", "cut.gif", lambda: load_image(tmp_path / "cut.gif"))
    assert image is not None and image.getpixel((8, 8))[0] > 180


def test_modes_that_need_conversion(tmp_path):
    """Palette with transparency, LA, I;16, I, F (with NaN and inf), CMYK JPEG, 1-bit: all end as RGB."""
    rng = np.random.default_rng(1)
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.putpixel((0, 0), 0)
    assert loads_as(tmp_path, "palette.png", palette, transparency=0).getpixel((0, 0)) == (255, 255, 255)
    assert loads_as(tmp_path, "palette.gif", palette, transparency=0).getpixel((0, 0)) == (255, 255, 255)
    assert loads_as(tmp_path, "la.png", Image.new("LA", (8, 8), (0, 0))).getpixel((3, 3)) == (255, 255, 255)
    deep = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))  # mode I;16
    assert loads_as(tmp_path, "deep.png", deep).getpixel((3, 3)) == (255, 255, 255)
    wide = Image.fromarray(rng.integers(-70_000, 70_000, (8, 8), dtype=np.int32))  # mode I
    loads_as(tmp_path, "wide.tif", wide)
    floats = np.array([[np.nan, np.inf, -np.inf, 0.25], [0.5, -3.0, 1.0, 0.0]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # NaN must not reach numpy's uint8 cast (undefined value)
        loaded = loads_as(tmp_path, "floats.tif", Image.fromarray(floats))
    assert [loaded.getpixel((x, 0))[0] for x in range(4)] == [0, 255, 0, 64]
    cmyk = loads_as(tmp_path, "cmyk.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)))
    assert cmyk.getpixel((3, 3))[0] > 200 and cmyk.getpixel((3, 3))[2] < 60  # CMYK red stays red
    one_bit = Image.new("1", (8, 8), 0)
    one_bit.putpixel((1, 1), 1)
    bits = loads_as(tmp_path, "bits.png", one_bit)
    assert bits.getpixel((1, 1)) == (255, 255, 255) and bits.getpixel((0, 0)) == (0, 0, 0)


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    image = Image.new("RGB", (20, 10), BLUE)
    image.paste(RED, (0, 0, 4, 4))  # a red top-left corner, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    upright = loads_as(tmp_path, "rotated.jpg", image, exif=exif, quality=95)
    assert upright.size == (10, 20)
    red, green, blue = upright.getpixel((8, 1))  # the stored top-left corner is now top right
    assert red > 180 and blue < 80


def test_damaged_exif_block_keeps_the_image(tmp_path):
    image = Image.new("RGB", (20, 10), RED)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "exif.jpg", exif=exif)
    blob = bytearray((tmp_path / "exif.jpg").read_bytes())
    start = blob.index(b"Exif\x00\x00") + 6
    blob[start + 8:start + 24] = b"\xff" * 16  # the IFD's entry count and first entry become garbage
    (tmp_path / "bad-exif.jpg").write_bytes(bytes(blob))
    CASES["hand_made", "inputs"] += 1
    image = decode("hand_made", "bad-exif.jpg", lambda: load_image(tmp_path / "bad-exif.jpg"))
    assert image is not None and sorted(image.size) == [10, 20]
