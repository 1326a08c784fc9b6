"""Release weights and resume state: metadata, round trips, refusals, and atomic writes that survive a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import travel
from travel.checkpoint import (
    STATE_FILE,
    WEIGHTS_FORMAT,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    load_run_config,
    load_state,
    load_weights,
    save_state,
    save_weights,
)
from travel.config import SCHEMA_VERSION, GeneratorConfig, from_dict
from travel.errors import CheckpointError
from travel.nets.generator import build_generator

CONFIG = GeneratorConfig(base_channels=8, max_channels=16, depth=2, attention_levels=(2,), norm_groups=4, warp=False)


def trained_looking_generator(seed: int = 0):
    """A generator with every weight random (a fresh one has a zero head and would hide a lost tensor)."""
    torch.manual_seed(seed)
    generator = build_generator(CONFIG)
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.normal_()
    return generator.eval()


def save(path: Path, generator, **overrides) -> None:
    kwargs = dict(source_domain="apples", target_domain="oranges", image_size=16, summary={"steps": 3, "note": "x"})
    kwargs.update(overrides)
    save_weights(path, generator, **kwargs)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------------------------
# Release weights.


def test_weights_round_trip_rebuilds_the_model_from_metadata(tmp_path):
    generator = trained_looking_generator()
    save(tmp_path / "w.safetensors", generator)
    weights = load_weights(tmp_path / "w.safetensors")
    assert weights.config == CONFIG
    rebuilt = weights.build()
    for key, tensor in generator.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], tensor), key
    source = torch.rand(1, 3, 12, 20) * 2 - 1
    with torch.no_grad():
        assert torch.equal(rebuilt(source), generator(source))


def test_weights_metadata(tmp_path):
    save(tmp_path / "w.safetensors", trained_looking_generator(), summary={"steps": 3, "metrics": {"g_adv": 0.5}})
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == WEIGHTS_FORMAT
    assert metadata["travel_version"] == travel.__version__
    assert metadata["schema_version"] == str(SCHEMA_VERSION)
    assert from_dict(GeneratorConfig, json.loads(metadata["model_config"])) == CONFIG
    assert (metadata["source_domain"], metadata["target_domain"], metadata["image_size"]) == ("apples", "oranges", "16")
    assert json.loads(metadata["summary"]) == {"steps": 3, "metrics": {"g_adv": 0.5}}
    weights = load_weights(tmp_path / "w.safetensors")
    assert (weights.source_domain, weights.target_domain, weights.image_size) == ("apples", "oranges", 16)
    assert weights.summary == {"steps": 3, "metrics": {"g_adv": 0.5}}


def test_half_weights_load_as_float32(tmp_path):
    generator = trained_looking_generator()
    save(tmp_path / "full.safetensors", generator)
    save(tmp_path / "half.safetensors", generator, half=True)
    assert (tmp_path / "half.safetensors").stat().st_size < 0.6 * (tmp_path / "full.safetensors").stat().st_size
    weights = load_weights(tmp_path / "half.safetensors")
    for key, tensor in generator.state_dict().items():
        assert weights.state[key].dtype == tensor.dtype
        assert torch.allclose(weights.state[key], tensor, rtol=1e-3, atol=1e-3), key


def rewrite_metadata(path: Path, target: Path, **changes) -> None:
    with safe_open(str(path), framework="pt") as handle:
        metadata = {**handle.metadata(), **changes}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    save_file(tensors, str(target), metadata={k: v for k, v in metadata.items() if v is not None})


def rewrite_header(path: Path, target: Path, change) -> None:
    """Edit the raw JSON header (what save_file would refuse to write: non-string values, odd types)."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    change(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    target.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length :])


def add_tensor(path: Path, target: Path) -> None:
    with safe_open(str(path), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}
    save_file({**tensors, "backdoor.weight": torch.zeros(3)}, str(target), metadata=metadata)


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda p, t: None, "no such checkpoint"),
        (lambda p, t: t.write_bytes(b""), "too short"),
        (lambda p, t: t.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx"), "unreadable header"),
        (lambda p, t: t.write_bytes(p.read_bytes()[:50]), "truncated"),
        (lambda p, t: t.write_bytes(p.read_bytes()[: len(p.read_bytes()) - 100]), "damaged"),
        (lambda p, t: save_file({"x": torch.zeros(2)}, str(t)), "not a travel checkpoint"),
        (lambda p, t: rewrite_metadata(p, t, format="something-else"), "not a travel checkpoint"),
        (lambda p, t: rewrite_metadata(p, t, schema_version="999"), "schema version"),
        (lambda p, t: rewrite_metadata(p, t, model_config=None), "model_config"),
        (lambda p, t: rewrite_metadata(p, t, model_config="{broken"), "model_config"),
        (lambda p, t: rewrite_metadata(p, t, model_config=json.dumps({"depth": 99})), "model_config"),
        (lambda p, t: rewrite_metadata(p, t, model_config=json.dumps({**json.loads(_config_json()), "depth": 3})), "missing"),
        (lambda p, t: rewrite_metadata(p, t, model_config=json.dumps({**json.loads(_config_json()), "base_channels": 4})), "shape"),
        (add_tensor, "unexpected"),
        (lambda p, t: rewrite_metadata(p, t, summary="x" * 2_000_000), "implausibly large"),
        (lambda p, t: rewrite_metadata(p, t, source_domain="a" * 5000), "source_domain"),
        (lambda p, t: rewrite_metadata(p, t, image_size="huge"), "image_size"),
        (lambda p, t: rewrite_metadata(p, t, image_size="-64"), "image_size"),
        (lambda p, t: rewrite_header(p, t, lambda h: h["__metadata__"].update(image_size=64)), "non-string"),
        (lambda p, t: rewrite_header(p, t, lambda h: h.update(__metadata__=["format"])), "not a travel checkpoint"),
        (lambda p, t: rewrite_header(p, t, lambda h: h.update(__metadata__=None)), "not a travel checkpoint"),
        (lambda p, t: rewrite_metadata(p, t, model_config=json.dumps({**json.loads(_config_json()), "depth": "four"})), "model_config"),
        (lambda p, t: rewrite_metadata(p, t, model_config=json.dumps([1, 2])), "model_config"),
        (lambda p, t: rewrite_metadata(p, t, model_config=json.dumps({**json.loads(_config_json()), "evil": 1})), "model_config"),
        (lambda p, t: rewrite_metadata(p, t, schema_version="1" * 10_000), "schema version"),
    ],
    ids=["missing", "empty", "not-json", "truncated-header", "truncated-data", "foreign", "other-format", "schema",
         "no-config", "broken-config", "invalid-config", "missing-tensors", "wrong-shape", "extra-tensor",
         "huge-metadata", "huge-domain", "bad-size", "negative-size", "int-value", "list-metadata", "null-metadata",
         "wrong-type-config", "list-config", "unknown-config-key", "huge-schema"],
)
def test_load_weights_refuses_what_it_cannot_trust(tmp_path, damage, needle):
    good = tmp_path / "good.safetensors"
    save(good, trained_looking_generator())
    bad = tmp_path / "bad.safetensors"
    damage(good, bad)
    with pytest.raises(CheckpointError, match=needle) as caught:
        load_weights(bad)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400  # one line, and hostile contents are not echoed in full


def _config_json() -> str:
    from travel.config import to_json

    return to_json(CONFIG)


# ---------------------------------------------------------------------------------------------
# Resume state.


def test_state_round_trip_loads_weights_only(tmp_path):
    state = {"format": "travel-state", "schema_version": SCHEMA_VERSION, "config": "{}", "step": 7,
             "generator": {"w": torch.arange(6.0).reshape(2, 3)}, "rng_python": [1, 2, 3]}
    save_state(tmp_path, state)
    raw = torch.load(tmp_path / STATE_FILE, map_location="cpu", weights_only=True)
    assert raw["step"] == 7 and torch.equal(raw["generator"]["w"], state["generator"]["w"])
    assert load_state(tmp_path)["step"] == 7


class Payload:
    """Something only a full pickle could rebuild (and so could run code when loaded)."""

    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize(
    "write, needle",
    [
        (lambda p: None, "no resume state"),
        (lambda p: torch.save({"format": "travel-state", "schema_version": SCHEMA_VERSION, "config": "{}",
                               "x": Payload()}, p), "untrusted"),
        (lambda p: p.write_bytes(b"garbage"), "damaged"),
        (lambda p: torch.save({"format": "other", "config": "{}"}, p), "not a travel resume state"),
        (lambda p: torch.save([1, 2], p), "not a travel resume state"),
        (lambda p: torch.save({"format": "travel-state", "schema_version": 999, "config": "{}"}, p), "schema"),
    ],
    ids=["missing", "pickle-payload", "garbage", "other-format", "not-a-dict", "schema"],
)
def test_load_state_refuses_what_it_cannot_trust(tmp_path, write, needle):
    write(tmp_path / STATE_FILE)
    with pytest.raises(CheckpointError, match=needle):
        load_state(tmp_path)


def test_truncated_state_is_refused(tmp_path):
    save_state(tmp_path, {"format": "travel-state", "schema_version": SCHEMA_VERSION, "config": "{}",
                          "big": torch.randn(1000)})
    data = (tmp_path / STATE_FILE).read_bytes()
    (tmp_path / STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_state(tmp_path)


def test_load_run_config_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a run folder"):
        load_run_config(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_run_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"train": {"steps": -1}}))
    with pytest.raises(CheckpointError, match="steps"):
        load_run_config(tmp_path)


# ---------------------------------------------------------------------------------------------
# Atomic writes.


def test_atomic_write_replaces_whole(tmp_path):
    atomic_write_text(tmp_path / "sub" / "f.txt", "first")  # creates the folder too
    atomic_write_text(tmp_path / "sub" / "f.txt", "second")
    assert (tmp_path / "sub" / "f.txt").read_text() == "second"
    assert leftovers(tmp_path / "sub") == []


def test_a_write_that_dies_midway_leaves_the_old_file(tmp_path, monkeypatch):
    atomic_write_bytes(tmp_path / "f.bin", b"old contents")
    real_write_bytes = Path.write_bytes

    def dies_midway(self: Path, data: bytes) -> int:
        real_write_bytes(self, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", dies_midway)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(tmp_path / "f.bin", b"new contents that never land")
    monkeypatch.undo()
    assert (tmp_path / "f.bin").read_bytes() == b"old contents"
    assert leftovers(tmp_path) == []


def test_a_failed_rename_leaves_the_old_state_and_weights(tmp_path, monkeypatch):
    old_generator = trained_looking_generator(seed=1)
    save(tmp_path / "w.safetensors", old_generator)
    save_state(tmp_path, {"format": "travel-state", "schema_version": SCHEMA_VERSION, "config": "{}", "step": 2})
    before = {name: (tmp_path / name).read_bytes() for name in ("w.safetensors", STATE_FILE)}

    def refuse(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        save_state(tmp_path, {"format": "travel-state", "schema_version": SCHEMA_VERSION, "config": "{}", "step": 4})
    with pytest.raises(OSError):
        save(tmp_path / "w.safetensors", trained_looking_generator(seed=2))
    monkeypatch.undo()

    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert leftovers(tmp_path) == []
    assert load_state(tmp_path)["step"] == 2
    assert torch.load(tmp_path / STATE_FILE, weights_only=True)["step"] == 2
    loaded = load_weights(tmp_path / "w.safetensors").build()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in old_generator.state_dict().items())


def test_an_exception_inside_atomic_path_removes_the_temporary_file(tmp_path):
    (tmp_path / "f.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert (tmp_path / "f.txt").read_text() == "old"
    assert leftovers(tmp_path) == []


def test_a_killed_process_leaves_the_old_file(tmp_path):
    # A hard kill (no exception handlers run) in the middle of a save: the target still holds the old bytes.
    (tmp_path / "f.bin").write_bytes(b"old")
    script = textwrap.dedent(
        f"""
        import os
        from travel.checkpoint import atomic_path
        with atomic_path({str(tmp_path / "f.bin")!r}) as tmp:
            tmp.write_bytes(b"half of the new")
            os._exit(9)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(travel.__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert result.returncode == 9, result.stderr
    assert (tmp_path / "f.bin").read_bytes() == b"old"


def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    with open(tmp_path / "b.bin", "wb") as handle:  # what a plain write gives under this umask
        handle.write(b"x")
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == (tmp_path / "b.bin").stat().st_mode & 0o777
