"""Damaged release weights: every file is refused with one line or loads whole; nothing crashes, nothing hangs.

Cases: files of random bytes, truncations at every sixteenth of a real file, header lengths beyond the file,
duplicate keys, non-UTF-8 metadata, and single bytes of the header overwritten at random. The counts are
printed and kept in test-artifacts/fuzz-checkpoints.json.
"""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

import pytest
import torch

from conftest import report_artifact
from test_checkpoint import save, trained_looking_generator
from travel.checkpoint import load_weights
from travel.errors import CheckpointError

CASES: collections.Counter = collections.Counter()  # outcome -> count


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[bytes, dict[str, torch.Tensor]]:
    """A real release file's bytes and the tensors it loads to."""
    path = tmp_path_factory.mktemp("fuzz") / "good.safetensors"
    save(path, trained_looking_generator())
    return path.read_bytes(), load_weights(path).state


@pytest.fixture(scope="module", autouse=True)
def report_case_counts(request):
    CASES.clear()
    yield
    total = sum(n for key, n in CASES.items() if key.endswith(":inputs"))
    line = (f"fuzz-checkpoints: {total} damaged files, each refused with one line or loaded whole "
            "(test-artifacts/fuzz-checkpoints.json)")
    report_artifact(request, "fuzz-checkpoints.json", {"inputs": total, "by_case": dict(sorted(CASES.items()))}, line)


def outcome(blob: bytes, folder: Path, original: dict[str, torch.Tensor], case: str) -> str:
    """'refused' (one CheckpointError line) or 'loaded' (every tensor the original's); anything else fails."""
    path = folder / "bad.safetensors"
    path.write_bytes(blob)
    CASES[f"{case}:inputs"] += 1
    try:
        weights = load_weights(path)
    except CheckpointError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < 400, message
        CASES[f"{case}:refused"] += 1
        return "refused"
    # A byte that lands in free text (the training summary, a padding space) can leave a valid file: then it must
    # load exactly the weights that were saved, never a shifted or reinterpreted tensor.
    assert weights.state.keys() == original.keys()
    assert all(torch.equal(weights.state[k], original[k]) for k in original), case
    CASES[f"{case}:loaded"] += 1
    return "loaded"


def split(blob: bytes) -> tuple[int, bytes, bytes]:
    length = int.from_bytes(blob[:8], "little")
    return length, blob[8 : 8 + length], blob[8 + length :]


def with_header(header: bytes, rest: bytes) -> bytes:
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + rest


def test_random_bytes_are_refused(good, tmp_path):
    data, original = good
    rng = random.Random(0)
    for i in range(1000):
        size = rng.choice([0, 1, 7, 8, 9, 64, 1000, rng.randrange(20_000)])
        blob = bytes(rng.randrange(256) for _ in range(size))
        if i % 2:  # a plausible header length in front, so the parser gets past the first check
            blob = rng.randrange(min(len(blob) + 1, 4000) or 1).to_bytes(8, "little") + blob
        assert outcome(blob, tmp_path, original, "random-bytes") == "refused"


def test_truncations_at_every_sixteenth_are_refused(good, tmp_path):
    data, original = good
    for k in range(16):
        assert outcome(data[: len(data) * k // 16], tmp_path, original, "truncated") == "refused"
    assert outcome(data[:-1], tmp_path, original, "truncated") == "refused"


def test_header_lengths_beyond_the_file_are_refused(good, tmp_path):
    data, original = good
    length, header, rest = split(data)
    for claimed in (length + 1, len(data) - 8 + 1, len(data), 2**31, 2**63, 2**64 - 1):
        assert outcome(claimed.to_bytes(8, "little") + data[8:], tmp_path, original, "header-length") == "refused"
    assert outcome((length - 8).to_bytes(8, "little") + data[8:], tmp_path, original, "header-length") == "refused"


def test_duplicate_keys_are_refused(good, tmp_path):
    """JSON parsers keep one of two equal keys quietly; safetensors did so for a tensor, loading one of two."""
    data, original = good
    _, header, rest = split(data)
    parsed = json.loads(header)
    text = header.decode().rstrip()
    for key in [k for k in parsed if k != "__metadata__"][:20] + ["__metadata__"]:
        entry = json.dumps({key: parsed[key]})[1:-1]
        blob = with_header((text[:-1] + "," + entry + "}").encode(), rest)
        assert outcome(blob, tmp_path, original, "duplicate-key") == "refused", key
    opening = '"__metadata__":{'
    for key in ("format", "model_config", "image_size"):  # a key twice inside the metadata (the second would win)
        assert opening in text
        repeated = text.replace(opening, opening + json.dumps(key) + ":" + json.dumps(parsed["__metadata__"][key]) + ",", 1)
        assert outcome(with_header(repeated.encode(), rest), tmp_path, original, "duplicate-key") == "refused", key


def test_non_utf8_metadata_is_refused(good, tmp_path):
    data, original = good
    _, header, rest = split(data)
    for needle in (b'"apples"', b'"oranges"', b'"summary"', b'"format"'):
        for bad in (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"):
            damaged = header.replace(needle, needle[:2] + bad + needle[2:], 1)
            assert damaged != header
            assert outcome(with_header(damaged, rest), tmp_path, original, "non-utf8") == "refused"


@pytest.mark.parametrize("seed", range(4))
def test_header_bytes_overwritten_are_refused_or_harmless(good, tmp_path, seed):
    data, original = good
    length, _, _ = split(data)
    rng = random.Random(seed)
    results = collections.Counter()
    for _ in range(500):
        blob = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 8])):
            blob[rng.randrange(8 + length)] = rng.randrange(256)  # the length field and the JSON header
        results[outcome(bytes(blob), tmp_path, original, "header-bytes")] += 1
    assert results["refused"] > 400  # most bytes of the header carry structure: names, dtypes, offsets, config
