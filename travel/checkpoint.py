"""Files a run leaves behind: release weights (.safetensors + metadata), resume state, atomic writes."""

from __future__ import annotations

import io
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from travel import __version__
from travel.compat import SUPPORTED_SCHEMAS, read_fit_config, read_generator_config, read_run_config
from travel.config import SCHEMA_VERSION, FitConfig, GeneratorConfig, to_dict
from travel.errors import CheckpointError, ConfigError, TravelError, WriteError
from travel.nets.generator import Generator, build_generator

WEIGHTS_FORMAT = "travel-generator"
STATE_FILE = "state.pt"
CLUSTERS_FILE = "clusters.json"  # a self-conditioned run's clusters: each real target's id, and the frequencies
LOCK_FILE = ".lock"
MAX_METADATA_CHARS = 1_000_000  # a travel header is a few KB; anything huge is not ours
MAX_DOMAIN_CHARS = 200
_UMASK = os.umask(0)  # read once at import (os.umask can only be read by setting it), then put back
os.umask(_UMASK)


# ---------------------------------------------------------------------------------------------
# Atomic writes: a temporary file in the same folder, fsync, then rename over the old one.


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` atomically, on failure it is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())  # a full disk often shows only here (delayed allocation)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, TravelError):
            raise write_error(path, exc) from None
        raise


def write_error(path: Path, exc: OSError) -> WriteError:
    """One line saying what could not be written, why, and that the earlier version survived."""
    kept = "the previous version is intact" if path.exists() else "nothing was written"
    return WriteError(f"cannot write {path}: {exc.strerror or exc}; {kept}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# The run folder's lock: one training process per run folder.


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold `run_dir` for this process; a second holder is refused with a TravelError naming the first one's pid.

    An OS lock (flock) on run_dir/.lock, so it is released however the process ends, SIGKILL included:
    a crashed run never leaves a stale lock behind. Where the OS or filesystem has no flock, runs are unlocked.
    """
    run_dir = Path(run_dir)
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK_FILE, "a+", encoding="utf-8")
    except OSError as exc:
        raise write_error(run_dir / LOCK_FILE, exc) from None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip()[:20]
            raise TravelError(
                f"{run_dir} is in use by another travel fit{f' (pid {owner})' if owner else ''}; "
                "wait for it to finish, stop it, or pick another --name"
            ) from None
        except OSError:
            yield  # a filesystem without locks (some network mounts): run unlocked
            return
        try:
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")  # only for the message a second process shows
            handle.flush()
        except OSError:
            pass  # a full disk: the lock holds all the same
        yield


# ---------------------------------------------------------------------------------------------
# Release weights: the EMA generator only, with everything needed to rebuild it in the metadata.


@dataclass(frozen=True)
class Weights:
    config: GeneratorConfig
    state: dict[str, torch.Tensor]
    metadata: dict[str, str]

    @property
    def source_domain(self) -> str:
        return self.metadata.get("source_domain", "A")

    @property
    def target_domain(self) -> str:
        return self.metadata.get("target_domain", "B")

    @property
    def image_size(self) -> int:
        return int(self.metadata.get("image_size", "0") or 0)

    @property
    def summary(self) -> dict[str, Any]:
        try:
            value = json.loads(self.metadata.get("summary", "{}"))
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}

    def build(self) -> Generator:
        generator = build_generator(self.config)
        generator.load_state_dict(self.state)
        return generator.eval()


def save_weights(
    path: str | Path,
    generator: Generator,
    *,
    source_domain: str,
    target_domain: str,
    image_size: int,
    summary: dict[str, Any],
    half: bool = False,
) -> None:
    """Write the generator as .safetensors with string metadata (docs/METHOD.md, "Files and formats"), atomically."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in generator.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:  # a release file must never hold NaN or Inf (nor values fp16 cannot hold): keep the previous one
        raise CheckpointError(f"{path}: refusing to write non-finite weights ({broken[0]} and {len(broken) - 1} more)")
    metadata = {
        "format": WEIGHTS_FORMAT,
        "travel_version": __version__,
        "schema_version": str(SCHEMA_VERSION),
        "model_config": json.dumps(to_dict(generator.cfg), sort_keys=True),
        "source_domain": source_domain,
        "target_domain": target_domain,
        "image_size": str(image_size),
        "summary": json.dumps(summary, sort_keys=True),
    }
    atomic_write_bytes(path, safetensors_save(state, metadata=metadata))


def load_weights(path: str | Path) -> Weights:
    """Read and validate a .safetensors file written by save_weights. Never runs code from the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    data = path.read_bytes()
    metadata = read_metadata(data, name=str(path))
    try:
        state = safetensors_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: damaged weights ({str(exc).splitlines()[0]})") from None
    try:
        config = read_generator_config(json.loads(metadata["model_config"]), int(metadata["schema_version"]))
    except (json.JSONDecodeError, ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad model_config in metadata ({exc})") from None
    expected = build_generator(config).state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path}: tensors do not match the model (missing {missing[:3]}, unexpected {extra[:3]})")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise CheckpointError(f"{path}: tensor {key} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}")
        state[key] = state[key].to(tensor.dtype)
    return Weights(config=config, state=state, metadata=metadata)


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object hook that refuses an object naming a key twice (json keeps the last one quietly)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def read_metadata(data: bytes, *, name: str) -> dict[str, str]:
    """The string metadata of a safetensors blob, checked to be a travel generator of a known schema."""
    if len(data) < 8:
        raise CheckpointError(f"{name}: not a safetensors file (too short)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8 or header_len > 100_000_000:
        raise CheckpointError(f"{name}: not a safetensors file, or truncated")
    try:
        header = json.loads(data[8 : 8 + header_len], object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{name}: not a safetensors file (unreadable header)") from None
    except _DuplicateKey as exc:
        # safetensors keeps one of two entries of a tensor silently: which weights would load is not defined.
        raise CheckpointError(f"{name}: damaged header (key {str(exc)[:40]!r} appears twice)") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{name}: not a travel checkpoint (no '{WEIGHTS_FORMAT}' metadata)")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError(f"{name}: malformed metadata (non-string values)")
    if sum(len(v) for v in metadata.values()) > MAX_METADATA_CHARS:
        raise CheckpointError(f"{name}: metadata is implausibly large")
    version = metadata.get("schema_version", "")
    if version not in {str(v) for v in SUPPORTED_SCHEMAS}:
        raise CheckpointError(
            f"{name}: checkpoint schema version {version[:20]!r} is not supported by travel {__version__} "
            f"(reads {', '.join(map(str, SUPPORTED_SCHEMAS))})"
        )
    if "model_config" not in metadata:
        raise CheckpointError(f"{name}: metadata has no model_config")
    for key in ("source_domain", "target_domain"):  # shown in listings and the demo: short, one line
        value = metadata.get(key, "")
        if len(value) > MAX_DOMAIN_CHARS or not value.isprintable():
            raise CheckpointError(f"{name}: malformed metadata ({key} is not a short printable name)")
    size = metadata.get("image_size", "0")
    if not (size.isascii() and size.isdigit() and len(size) <= 7):
        raise CheckpointError(f"{name}: malformed metadata (image_size {size[:20]!r} is not a pixel count)")
    return metadata


# ---------------------------------------------------------------------------------------------
# Resume state: everything needed to continue a run exactly. Loaded with torch's weights-only
# unpickler, which refuses anything but tensors and plain containers.


def save_state(run_dir: str | Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(run_dir) / STATE_FILE, buffer.getvalue())


def load_state(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no resume state ({STATE_FILE}) in this run folder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusals, truncation and zip errors all land here
        raise CheckpointError(f"{path}: damaged or untrusted resume state ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("format") != "travel-state" or "config" not in state:
        raise CheckpointError(f"{path}: not a travel resume state")
    if state.get("schema_version") not in SUPPORTED_SCHEMAS:
        raise CheckpointError(f"{path}: resume state schema {state.get('schema_version')!r} is not supported")
    return state


def state_config(state: dict[str, Any], *, name: str) -> FitConfig:
    """The FitConfig a resume state (load_state) was saved with, upgraded to today's schema."""
    try:
        return read_fit_config(json.loads(state["config"]), state["schema_version"])
    except (json.JSONDecodeError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{name}: unreadable config in the resume state ({exc})") from None


def load_run_config(run_dir: str | Path) -> FitConfig:
    path = Path(run_dir) / "config.json"
    try:
        return read_run_config(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir}: not a run folder (no config.json)") from None
    except ConfigError as exc:
        raise CheckpointError(f"{path}: unreadable run config ({exc})") from None
