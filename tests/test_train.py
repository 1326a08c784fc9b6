"""The training loop: what a run leaves behind, exact resume, saves that survive a crash, and the small helpers."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import travel
from conftest import tiny_fit_config
from travel.checkpoint import STATE_FILE, load_state, load_weights
from travel.compat import read_run_config
from travel.config import resolve, SCHEMA_VERSION, ClusterConfig, FitConfig, GeneratorConfig, LossConfig, from_dict
from travel.errors import CheckpointError, ConfigError
from travel.train import fit, resume_config
from travel.train.run import truncate_metrics
from travel.train.step import ema_step, rotate_batch

LOSS_KEYS = {"d_real", "d_fake", "d_total", "travel_cos", "travel_dist", "margin", "g_adv", "g_travel_cos",
             "g_travel_dist", "g_total"}


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# What a run leaves behind.


def test_fit_writes_metrics_weights_with_metadata_and_a_safe_state(tiny_config, tmp_path):
    seen = []
    result = fit(tiny_config, tmp_path / "run", progress_fn=lambda step, total, metrics: seen.append((step, total)))
    run = tmp_path / "run"
    assert (result.step, result.interrupted, result.weights) == (4, False, run / "tiny.safetensors")
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]

    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]  # log_every=1
    for line in metrics:
        assert LOSS_KEYS | {"step", "time", "images_per_s"} <= set(line)
        assert all(math.isfinite(v) for v in line.values())
    assert result.metrics == {k: v for k, v in metrics[-1].items() if k not in ("step", "time")}

    # config.json holds the whole run config, so `fit --resume` needs no flags.
    assert read_run_config((run / "config.json").read_text()) == resolve(tiny_config)  # resolved: no None left

    # Release weights (docs/METHOD.md, "Files and formats"): format, versions, model config, domains, size, summary.
    with safe_open(str(run / "tiny.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
        names = set(handle.keys())
    assert metadata["format"] == "travel-generator"
    assert metadata["travel_version"] == travel.__version__
    assert metadata["schema_version"] == str(SCHEMA_VERSION)
    assert from_dict(GeneratorConfig, json.loads(metadata["model_config"])) == resolve(tiny_config).model.generator
    assert (metadata["source_domain"], metadata["target_domain"], metadata["image_size"]) == ("red", "blue", "16")
    summary = json.loads(metadata["summary"])
    assert summary["steps"] == 4 and summary["batch_size"] == 2 and summary["images_seen"] == 8
    assert summary["source_images"] == 8 and summary["target_images"] == 8
    assert set(summary["metrics"]) >= LOSS_KEYS
    assert not any(name.startswith(("discriminator", "siamese")) for name in names)  # the EMA generator only

    # The released generator is the EMA one, and it rebuilds from the metadata alone.
    state = torch.load(run / STATE_FILE, map_location="cpu", weights_only=True)
    weights = load_weights(run / "tiny.safetensors")
    assert weights.config == resolve(tiny_config).model.generator
    for key, tensor in state["ema"].items():
        assert torch.equal(weights.state[key], tensor), key
    assert any(not torch.equal(state["ema"][k], state["generator"][k]) for k in state["ema"])

    # Resume state: everything to continue exactly, and nothing the weights-only unpickler refuses.
    assert {"generator", "discriminator", "ema", "opt_g", "opt_d", "step", "rng_cpu", "rng_python", "config"} <= set(state)
    assert state["step"] == 4 and state["format"] == "travel-state"
    assert not list(run.glob("**/*.tmp"))


def test_fit_with_rotation_r1_and_a_separate_siamese_network(domains, tmp_path):
    config = tiny_fit_config(*domains, steps=2)
    config = replace(
        config,
        model=replace(config.model, siamese="separate",
                      discriminator=replace(config.model.discriminator, rotation_head=True)),
        loss=LossConfig(rotation=True, rotation_d=1.0, rotation_g=0.2, r1_gamma=1.0),
    )
    fit(config, tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")
    assert {"rot_d", "rot_g", "r1", "margin", "g_travel_cos"} <= set(metrics[0])
    assert "travel_cos" not in metrics[0]  # with a separate S, D has no cooperative terms
    assert all(math.isfinite(v) for line in metrics for v in line.values())
    assert "siamese" in load_state(tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# Resume: stopped at step k and resumed, a run reaches step n with the same weights as an uninterrupted one.


def differences(a, b, path: str = "") -> list[str]:
    """Paths where two (nested) states differ beyond float tolerance."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            return [path]
        same = torch.equal(a, b) if not a.is_floating_point() else torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        return [] if same else [path]
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return [f"{path} keys {sorted(set(a) ^ set(b)) if isinstance(b, dict) else type(b)}"]
        return [d for key in a for d in differences(a[key], b[key], f"{path}.{key}")]
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return [path]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def losses_by_step(run: Path) -> dict[int, dict[str, float]]:
    return {m["step"]: {k: v for k, v in m.items() if k not in ("time", "images_per_s")} for m in read_metrics(run)}


def stop_after(k: int):
    calls = []

    def abort() -> bool:
        calls.append(1)
        return len(calls) >= k

    return abort


def with_clusters(config: FitConfig) -> FitConfig:
    generator = replace(config.model.generator, num_styles=2)
    return replace(config, model=replace(config.model, generator=generator),
                   clusters=ClusterConfig(clusters=2, recluster_every=2, subset=8))


VARIANTS = {
    "shared": lambda c: c,
    "separate": lambda c: replace(c, model=replace(c.model, siamese="separate")),
    "workers2": lambda c: replace(c, data=replace(c.data, workers=2)),
    "rotation-r1": lambda c: replace(
        c, model=replace(c.model, discriminator=replace(c.model.discriminator, rotation_head=True)),
        loss=LossConfig(rotation=True, rotation_d=1.0, r1_gamma=1.0),
    ),
    "self-conditioned": with_clusters,
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_after_abort_matches_an_uninterrupted_run(domains, tmp_path, variant):
    # save_every=3 > k: the state at the stop comes from the abort path, not from a scheduled save.
    config = VARIANTS[variant](tiny_fit_config(*domains, steps=5, save_every=3, sample_every=100))
    fit(config, tmp_path / "full")

    stopped = fit(config, tmp_path / "part", abort_fn=stop_after(2))
    assert (stopped.step, stopped.interrupted) == (2, True)
    assert load_state(tmp_path / "part")["step"] == 2
    resumed = fit(config, tmp_path / "part", resume=True)
    assert (resumed.step, resumed.interrupted) == (5, False)

    full, part = load_state(tmp_path / "full"), load_state(tmp_path / "part")
    for state in (full, part):
        state.pop("elapsed")
    assert differences(full, part) == []  # G, D, (S), EMA, both optimizers, RNG states, step, config
    assert differences(load_weights(tmp_path / "full" / "tiny.safetensors").state,
                       load_weights(tmp_path / "part" / "tiny.safetensors").state) == []
    # Every step logged once, with the losses of the uninterrupted run.
    assert differences(losses_by_step(tmp_path / "full"), losses_by_step(tmp_path / "part")) == []


def test_resume_with_more_steps_matches_an_uninterrupted_run(domains, tmp_path):
    config = tiny_fit_config(*domains, steps=5, save_every=100, sample_every=100)
    fit(config, tmp_path / "full")
    fit(replace(config, train=replace(config.train, steps=3)), tmp_path / "part")
    extended = resume_config(tmp_path / "part", steps=5)
    assert extended == resolve(config)
    assert fit(extended, tmp_path / "part", resume=True).step == 5
    full, part = load_state(tmp_path / "full"), load_state(tmp_path / "part")
    for key in ("generator", "discriminator", "ema", "opt_g", "opt_d", "rng_cpu", "rng_python", "step"):
        assert differences(full[key], part[key], key) == []


def test_a_crash_while_saving_keeps_the_previous_state_and_the_run_resumes(domains, tmp_path, monkeypatch):
    config = tiny_fit_config(*domains, steps=4, save_every=2, sample_every=100)
    fit(config, tmp_path / "full")
    run = tmp_path / "run"
    fit(replace(config, train=replace(config.train, steps=2)), run)
    saved = {name: (run / name).read_bytes() for name in (STATE_FILE, "tiny.safetensors")}

    real_write_bytes = Path.write_bytes

    def dies_writing_the_state(self: Path, data: bytes) -> int:
        if STATE_FILE in self.name:
            real_write_bytes(self, data[: len(data) // 3])
            raise OSError(28, "No space left on device")
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", dies_writing_the_state)
    with pytest.raises(OSError, match="No space"):
        fit(config, run, resume=True)  # trains steps 3 and 4, then dies saving at step 4
    monkeypatch.undo()

    assert {name: (run / name).read_bytes() for name in saved} == saved
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert torch.load(run / STATE_FILE, map_location="cpu", weights_only=True)["step"] == 2

    fit(config, run, resume=True)  # the lost steps are replayed, exactly
    full, part = load_state(tmp_path / "full"), load_state(run)
    for key in ("generator", "discriminator", "ema", "opt_g", "opt_d", "step"):
        assert differences(full[key], part[key], key) == []
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4]  # lines after the saved step were dropped


def test_resume_refusals(domains, tmp_path):
    config = tiny_fit_config(*domains, steps=2)
    with pytest.raises(CheckpointError, match="no resume state"):
        fit(config, tmp_path / "nothing", resume=True)
    fit(config, tmp_path / "run")
    with pytest.raises(ConfigError, match="already at step 2"):
        fit(config, tmp_path / "run", resume=True)
    wider = replace(config, train=replace(config.train, steps=4),
                    model=replace(config.model, generator=replace(config.model.generator, base_channels=16)))
    with pytest.raises(CheckpointError, match="different architecture"):
        fit(wider, tmp_path / "run", resume=True)
    assert load_state(tmp_path / "run")["step"] == 2  # refusals leave the run as it was


# ---------------------------------------------------------------------------------------------
# Helpers.


def test_ema_step_by_hand():
    ema, model = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        ema.weight.fill_(0.0), ema.bias.fill_(0.0), model.weight.fill_(1.0), model.bias.fill_(-2.0)
    ema_step(ema, model, beta=0.999, step=0)  # warm-up: beta = min(0.999, 1/10)
    assert ema.weight.item() == pytest.approx(0.9) and ema.bias.item() == pytest.approx(-1.8)
    ema_step(ema, model, beta=0.5, step=10**6)  # late in training the configured beta rules
    assert ema.weight.item() == pytest.approx(0.95) and ema.bias.item() == pytest.approx(-1.9)


def test_rotate_batch_labels_and_rotations():
    images = torch.arange(4, dtype=torch.float32).reshape(1, 1, 2, 2).repeat(5, 1, 1, 1)  # [5, 1, 2, 2]
    rotated, labels = rotate_batch(images)
    assert labels.tolist() == [0, 1, 2, 3, 0]
    assert torch.equal(rotated[0], images[0]) and torch.equal(rotated[4], images[4])
    assert torch.equal(rotated[1], torch.rot90(images[1], 1, dims=(1, 2)))
    assert torch.equal(rotated[2], images[2].flip(1).flip(2))  # 180 degrees
    assert torch.equal(rotated[3], torch.rot90(images[3], -1, dims=(1, 2)))


def test_truncate_metrics_drops_later_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(1, 6)) + '{"step": 6, "x"')
    truncate_metrics(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    truncate_metrics(tmp_path / "missing.jsonl", 3)  # nothing to do
    assert not (tmp_path / "missing.jsonl").exists()


def test_training_steps_read_nothing_back_between_log_and_save_steps(domains, tmp_path, monkeypatch):
    """Issue 7: no host-device sync inside a step except for logging. The CPU has no device to wait for, so watch for
    what would wait on a GPU: a tensor read to the host (.item(), bool(), float(), .tolist(), ...) by travel's own
    training code or the optimizer. Kornia samples its augmentation parameters on the CPU, and the data pipeline
    works on host tensors before they go to the device; their reads are not syncs."""
    import traceback

    from torch.overrides import TorchFunctionMode

    import travel.train.step as train_module

    reads_names = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy"}
    steps = 5
    config = tiny_fit_config(*domains, steps=steps, log_every=steps, save_every=steps, sample_every=steps)
    progressed, in_loop, reads = [0], [False], []

    class Reads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            # Steps 1 .. steps-1; the last step logs, samples and saves, and may read what it likes.
            if name in reads_names and in_loop[0] and progressed[0] < steps - 1:
                frame = next(f for f in reversed(traceback.extract_stack()[:-1]) if "/torch/overrides" not in f.filename)
                path = frame.filename.replace("\\", "/")
                if ("/travel/" in path and not path.endswith("travel/data.py")) or "/torch/optim/" in path:
                    reads.append(f"{name} at {Path(path).name}:{frame.lineno}")
            return func(*args, **(kwargs or {}))

    real_d_step = train_module.discriminator_step

    def d_step(*args, **kwargs):
        in_loop[0] = True  # setup (building, loading, the first snapshot) may read
        return real_d_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "discriminator_step", d_step)
    with Reads():
        fit(config, tmp_path / "run", progress_fn=lambda step, total, logged: progressed.__setitem__(0, step))
    assert progressed[0] == steps
    assert reads == []


def test_rotation_with_a_zero_d_weight_runs_no_rotation_loss(domains, tmp_path):
    """`--rotation --rotation-d 0` turns both rotation terms off, as before the rotation switch existed (review of
    the restructure): D is built with the head, and neither D nor G computes a rotation loss."""
    config = tiny_fit_config(*domains, steps=2)
    config = replace(config, loss=LossConfig(rotation=True, rotation_d=0.0))
    assert resolve(config).model.discriminator.rotation_head is True
    fit(config, tmp_path / "run")
    assert not {"rot_d", "rot_g"} & set(read_metrics(tmp_path / "run")[0])
