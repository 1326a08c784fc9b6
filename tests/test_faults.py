"""Faults during training: non-finite steps, a full disk, a read-only folder, a second process, SIGKILL."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import travel
import travel.train.step as train_module
from travel.config import resolve
from conftest import draw_shapes, report_artifact, tiny_fit_config
from travel.checkpoint import STATE_FILE, load_run_config, load_state, load_weights, run_lock, save_weights
from travel.errors import CheckpointError, TravelError, WriteError
from travel.nets.generator import build_generator
from travel.train import fit
from travel.train.guard import BAD_STEPS_BEFORE_ROLLBACK, MAX_ROLLBACKS


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def poison(monkeypatch, name: str, bad_calls) -> list[int]:
    """Make travel.train's loss `name` return NaN on the given (0-based) calls; returns the call log."""
    real = getattr(train_module, name)
    calls: list[int] = []

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(len(calls))
        if bad_calls(len(calls) - 1):
            out = {k: v * float("nan") for k, v in out.items()} if isinstance(out, dict) else out * float("nan")
        return out

    monkeypatch.setattr(train_module, name, wrapped)
    return calls


# ---------------------------------------------------------------------------------------------
# NaN and Inf: skip the step; many in a row: roll back with lower learning rates; never write them.


def test_nonfinite_steps_are_skipped_and_logged(domains, tmp_path, monkeypatch):
    config = resolve(tiny_fit_config(*domains, steps=8, save_every=4, sample_every=100))  # resolved: the learning rates are read below
    poison(monkeypatch, "anchor_g_loss", lambda call: call in (2, 3))  # steps 3 and 4
    poison(monkeypatch, "anchor_d_loss", lambda call: call == 6)  # step 7
    messages: list[str] = []
    result = fit(config, tmp_path / "run", message_fn=messages.append)

    assert (result.step, result.interrupted) == (8, False)
    metrics = read_metrics(tmp_path / "run")
    assert {m["step"]: m.get("skipped_steps", 0) for m in metrics} == {1: 0, 2: 0, 3: 1, 4: 1, 5: 0, 6: 0, 7: 1, 8: 0}
    assert all(math.isfinite(v) for m in metrics for v in m.values() if isinstance(v, float))
    assert not any(m.get("event") == "rollback" for m in metrics)
    assert sum("skipped (a loss or gradient was not finite)" in m for m in messages) == 3
    assert all_finite(load_weights(tmp_path / "run" / "tiny.safetensors").state)
    state = load_state(tmp_path / "run")
    assert all_finite(state["generator"]) and all_finite(state["discriminator"])
    assert state["opt_g"]["param_groups"][0]["lr"] == config.train.lr_g  # a few skips change no learning rate


def test_a_run_of_bad_steps_rolls_back_to_the_last_save_with_lower_rates(domains, tmp_path, monkeypatch):
    config = resolve(tiny_fit_config(*domains, steps=12, save_every=4, sample_every=100))  # resolved: the learning rates are read below
    first_bad = 5  # steps 6..10 go bad: five in a row after the save at step 4
    poison(monkeypatch, "anchor_g_loss", lambda call: first_bad <= call < first_bad + BAD_STEPS_BEFORE_ROLLBACK)
    messages: list[str] = []
    result = fit(config, tmp_path / "run", message_fn=messages.append)

    assert (result.step, result.interrupted) == (12, False)
    metrics = read_metrics(tmp_path / "run")
    events = [m for m in metrics if m.get("event") == "rollback"]
    assert events == [{"step": 4, "event": "rollback", "from_step": first_bad + BAD_STEPS_BEFORE_ROLLBACK,
                       "lr_g": config.train.lr_g / 2, "lr_d": config.train.lr_d / 2}]
    steps = [m["step"] for m in metrics if "event" not in m]
    assert steps == list(range(1, 13))  # the abandoned steps' lines were replaced by the replayed ones
    assert any("rolled back to step 4 with learning rates halved" in m for m in messages)
    state = load_state(tmp_path / "run")
    assert state["lr_scale"] == 0.5
    assert state["opt_g"]["param_groups"][0]["lr"] == config.train.lr_g / 2
    assert state["opt_d"]["param_groups"][0]["lr"] == config.train.lr_d / 2
    assert all_finite(load_weights(tmp_path / "run" / "tiny.safetensors").state)

    # The lowered rates survive a resume: a run resumed after a rollback keeps them.
    extended = replace(config, train=replace(config.train, steps=14))
    fit(extended, tmp_path / "run", resume=True)
    assert load_state(tmp_path / "run")["opt_g"]["param_groups"][0]["lr"] == config.train.lr_g / 2


def test_endless_nan_gives_up_with_one_error_and_keeps_the_last_good_state(domains, tmp_path, monkeypatch):
    config = resolve(tiny_fit_config(*domains, steps=60, save_every=2, sample_every=100))  # resolved: the learning rates are read below
    poison(monkeypatch, "anchor_g_loss", lambda call: call >= 3)  # from step 4 on, forever
    messages: list[str] = []
    with pytest.raises(TravelError, match=f"after {MAX_ROLLBACKS} rollbacks") as caught:
        fit(config, tmp_path / "run", message_fn=messages.append)
    assert "\n" not in str(caught.value)
    assert sum("rolled back to step 2" in m for m in messages) == MAX_ROLLBACKS
    state = load_state(tmp_path / "run")
    assert state["step"] == 2 and all_finite(state["generator"]) and all_finite(state["ema"])
    assert all_finite(load_weights(tmp_path / "run" / "tiny.safetensors").state)


def test_weights_that_went_non_finite_are_rolled_back_not_saved(domains, tmp_path, monkeypatch):
    # An update that turns weights into Inf with finite gradients: caught at the save, never written.
    config = resolve(tiny_fit_config(*domains, steps=6, save_every=2, sample_every=100))  # resolved: the learning rates are read below
    real_step = torch.optim.Adam.step
    calls = []

    def blows_up(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 5:  # D's update in step 3 (D and G alternate)
            with torch.no_grad():
                next(p for group in self.param_groups for p in group["params"]).fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", blows_up)
    messages: list[str] = []
    result = fit(config, tmp_path / "run", message_fn=messages.append)
    assert result.step == 6
    assert any("rolled back to step 2" in m for m in messages)
    assert all_finite(load_weights(tmp_path / "run" / "tiny.safetensors").state)
    assert all_finite(load_state(tmp_path / "run")["generator"])


def test_save_weights_refuses_non_finite_tensors_and_keeps_the_old_file(tmp_path, tiny_config):
    generator = build_generator(tiny_config.model.generator)
    path = tmp_path / "g.safetensors"
    meta = dict(source_domain="a", target_domain="b", image_size=16, summary={})
    save_weights(path, generator, **meta)
    before = path.read_bytes()
    with torch.no_grad():
        next(generator.parameters())[0].fill_(float("nan"))
    with pytest.raises(CheckpointError, match="non-finite"):
        save_weights(path, generator, **meta)
    with torch.no_grad():
        next(generator.parameters()).fill_(1e6)  # finite in fp32, Inf in fp16
    with pytest.raises(CheckpointError, match="non-finite"):
        save_weights(path, generator, half=True, **meta)
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# One process per run folder.


def test_a_second_fit_on_a_locked_run_folder_is_refused(domains, tmp_path):
    config = resolve(tiny_fit_config(*domains, steps=2))  # resolved: the learning rates are read below
    run = tmp_path / "run"
    fit(config, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with run_lock(run):  # as if another `travel fit` were training in it
        for kwargs in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(TravelError, match=f"in use by another travel fit \\(pid {os.getpid()}\\)"):
                fit(replace(config, train=replace(config.train, steps=4)), run, **kwargs)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing touched
    fit(replace(config, train=replace(config.train, steps=4)), run, resume=True)  # free again
    assert load_state(run)["step"] == 4


# ---------------------------------------------------------------------------------------------
# A real full disk and a real read-only folder: a small tmpfs (needs root and mount; skipped elsewhere).


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write into `folder` until the disk is full."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


@pytest.mark.parametrize("fault", ["disk-full", "read-only"])
def test_a_full_disk_or_read_only_folder_while_saving(domains, small_disk, fault):
    config = resolve(tiny_fit_config(*domains, steps=6, save_every=2, sample_every=2))  # resolved: the learning rates are read below
    run = small_disk / "run"
    fit(replace(config, train=replace(config.train, steps=2)), run)
    saved = {name: (run / name).read_bytes() for name in (STATE_FILE, "tiny.safetensors")}

    def fault_after_step_3(step, total, metrics):
        if step == 3:
            if fault == "disk-full":
                fill(small_disk)
            else:  # the run folder alone turns read-only (a read-only bind mount of itself)
                subprocess.run(["mount", "--bind", str(run), str(run)], check=True)
                subprocess.run(["mount", "-o", "remount,bind,ro", str(run)], check=True)

    expected = "No space left on device" if fault == "disk-full" else "Read-only file system"
    with pytest.raises(WriteError, match=expected) as caught:
        fit(config, run, resume=True, progress_fn=fault_after_step_3)
    assert "\n" not in str(caught.value) and str(run) in str(caught.value)
    assert {name: (run / name).read_bytes() for name in saved} == saved  # the previous state, intact
    assert load_state(run)["step"] == 2
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]

    # Room again: the run resumes from the intact state and finishes.
    if fault == "disk-full":
        (small_disk / "filler").unlink()
    else:
        subprocess.run(["umount", "-l", str(run)], check=True)
    assert fit(config, run, resume=True).step == 6


def test_the_cli_reports_a_full_disk_in_one_line(domains, small_disk):
    from typer.testing import CliRunner

    from travel.cli import app

    red, blue = domains
    fill(small_disk)
    result = CliRunner().invoke(app, ["fit", "--src", str(red), "--dst", str(blue), "--run-dir", str(small_disk / "run"),
                                      "--steps", "2", "--size", "16", "--channels", "8", "--depth", "2", "--vec-len", "8",
                                      "--batch-size", "2", "--device", "cpu"])
    assert result.exit_code not in (0, None) and isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "No space left on device" in lines[0], result.stderr


# ---------------------------------------------------------------------------------------------
# Real processes: a second `travel fit` beside a running one; SIGKILL at random moments.


TINY = ["--disc", "scratch", "--size", "16", "--load-size", "18", "--channels", "8", "--depth", "2", "--vec-len", "8",
        "--batch-size", "2", "--device", "cpu", "--log-every", "1"]


def travel_process(*args, capture: bool = False) -> subprocess.Popen:
    """`python -m travel ARGS` in a subprocess; output captured only when asked (a full pipe would stall it)."""
    package_root = str(Path(travel.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "travel", *map(str, args)], env=env, text=True, stdout=out, stderr=out)


def wait_for(predicate, what: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, (what, process.returncode)
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def last_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass  # a line being written as we read
    return max(steps)


@pytest.mark.slow
def test_two_processes_on_one_run_folder(tmp_path):
    red, blue = tmp_path / "red", tmp_path / "blue"
    draw_shapes(red, 4, colour=(220, 30, 30), size=24, seed=1)
    draw_shapes(blue, 4, colour=(30, 30, 220), size=24, seed=2)
    run = tmp_path / "run"
    first = travel_process("fit", "--src", red, "--dst", blue, "--run-dir", run, "--steps", "100000", *TINY)
    try:
        wait_for(lambda: last_step(run) >= 2, "the first run's metrics", first)
        for extra in (["--resume", run], ["--src", red, "--dst", blue, "--run-dir", run, "--overwrite", *TINY]):
            second = travel_process("fit", *extra, capture=True)
            out, err = second.communicate(timeout=240)
            assert second.returncode != 0
            lines = err.strip().splitlines()
            assert lines == [f"error: {run} is in use by another travel fit (pid {first.pid}); "
                             "wait for it to finish, stop it, or pick another --name"], err
        assert first.poll() is None  # the first run goes on, undisturbed
        before = last_step(run)
        wait_for(lambda: last_step(run) > before, "the first run to go on", first)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 130
    assert load_run_config(run).train.steps == 100000  # not the overwriting run's settings


def check_every_file(run: Path) -> int:
    """Every file in the run folder is whole: parse or load each one. Returns the saved step."""
    assert json.loads((run / "config.json").read_text())["name"] == "red2blue"
    state = load_state(run)
    weights_file = run / "red2blue.safetensors"  # written just after the state: this save's or the one before
    if weights_file.exists() or state["step"] != 7:  # (a kill inside the first weights write leaves none yet)
        weights = load_weights(weights_file)
        assert json.loads(weights.metadata["summary"])["steps"] in (state["step"], state["step"] - 7)
    for sample in (run / "samples").glob("*.png"):
        from PIL import Image

        with Image.open(sample) as image:
            image.load()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    for line in lines[:-1]:
        json.loads(line)  # only the last line may be torn by a kill, and resume drops it
    return int(state["step"])


def saving_now(run: Path) -> bool:
    """An atomic write of the resume state or the weights is under way: its temporary file is in the folder."""
    try:
        names = os.listdir(run)
    except FileNotFoundError:
        return False
    return any(n.endswith(".tmp") and (n.startswith(f".{STATE_FILE}.") or ".safetensors." in n) for n in names)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_at_most_save_every_steps(tmp_path, request):
    red, blue = tmp_path / "red", tmp_path / "blue"
    draw_shapes(red, 6, colour=(220, 30, 30), size=24, seed=1)
    draw_shapes(blue, 6, colour=(30, 30, 220), size=24, seed=2)
    # 20 kills, every third one the moment a save begins, so several land inside the state's and the weights'
    # writes whatever the timing. (TINY trains the scratch family: the write path is the same for both, and the
    # projected family's 128 px backbone makes each tiny step five times slower; CI's ten-minute budget.)
    steps, save_every, wanted = 200, 7, 20
    common = ["--steps", steps, "--save-every", save_every, "--sample-every", 5, *TINY]
    reference = travel_process("fit", "--src", red, "--dst", blue, "--run-dir", tmp_path / "reference", *common)
    assert reference.wait(timeout=600) == 0

    run = tmp_path / "run"
    rng = random.Random(20261123)
    kills, during_save = 0, 0
    process = travel_process("fit", "--src", red, "--dst", blue, "--run-dir", run, *common)
    while kills < wanted and last_step(run) < steps - 2 * save_every:
        if kills % 3 == 2:
            # During a save: the moment the state's or the weights' temporary file appears (a tight poll, as a
            # tiny model writes its files in milliseconds).
            deadline = time.monotonic() + 240
            while not saving_now(run):
                assert process.poll() is None and time.monotonic() < deadline, "no save seen"
        else:
            # At a random moment: once training has run a random number of steps further, then a random fraction of a step.
            target = last_step(run) + rng.randint(1, 2 * save_every)
            wait_for(lambda: last_step(run) >= target, f"step {target}", process)
            time.sleep(rng.random() * 0.05)
        reached = last_step(run)
        process.kill()  # SIGKILL: no handler runs
        process.wait()
        kills += 1
        during_save += saving_now(run)  # the kill left a temporary file behind: it landed inside a write
        if (run / STATE_FILE).exists():
            saved = check_every_file(run)
            assert reached - saved <= save_every, (reached, saved)
        process = travel_process("fit", "--resume", run)
    assert process.wait(timeout=600) == 0
    report_artifact(request, "sigkill.json", {"kills": kills, "inside_a_save": during_save, "steps": steps,
                                              "save_every": save_every},
                    f"SIGKILL: {kills} kills ({during_save} inside a save of the state or weights), every file loadable")
    assert kills == wanted and during_save >= 3, (kills, during_save)

    assert check_every_file(run) == steps
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # resume sweeps what a kill left behind
    # Resumed exactly, however often it was killed: the same weights as the run that never stopped.
    full, part = load_state(tmp_path / "reference"), load_state(run)
    for key in ("generator", "discriminator", "ema"):
        for name, tensor in full[key].items():
            torch.testing.assert_close(part[key][name], tensor, rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")
    assert [m["step"] for m in read_metrics(run)] == list(range(1, steps + 1))


def test_skips_are_counted_on_the_device_and_reported_at_the_next_log_step(domains, tmp_path, monkeypatch):
    config = resolve(tiny_fit_config(*domains, steps=8, log_every=4, save_every=8, sample_every=100))  # resolved: the learning rates are read below
    poison(monkeypatch, "anchor_g_loss", lambda call: call in (1, 2))  # steps 2 and 3
    messages: list[str] = []
    fit(config, tmp_path / "run", message_fn=messages.append)
    metrics = read_metrics(tmp_path / "run")
    assert [(m["step"], m.get("skipped_steps", 0)) for m in metrics] == [(4, 2), (8, 0)]
    assert [m for m in messages if "skipped" in m] == ["warning: 2 of steps 1-4 skipped (a loss or gradient was not finite)"]
    # The averages leave the skipped steps out, so they stay finite.
    assert all(math.isfinite(v) for m in metrics for v in m.values() if isinstance(v, float))


def test_a_run_of_bad_steps_between_log_steps_rolls_back_at_the_next_check(domains, tmp_path, monkeypatch):
    config = resolve(tiny_fit_config(*domains, steps=12, log_every=4, save_every=4, sample_every=100))  # resolved: the learning rates are read below
    poison(monkeypatch, "anchor_g_loss", lambda call: 4 <= call < 4 + BAD_STEPS_BEFORE_ROLLBACK)  # steps 5..9
    messages: list[str] = []
    result = fit(config, tmp_path / "run", message_fn=messages.append)
    assert result.step == 12
    events = [m for m in read_metrics(tmp_path / "run") if m.get("event") == "rollback"]
    # Step 8's check sees 4 in a row and withholds its save (amid bad steps); the fifth comes at step 9 and is read
    # at the next check, step 12, which goes back to the last good save, step 4.
    assert [(e["step"], e["from_step"]) for e in events] == [(4, 12)]
    assert any("5 bad steps in a row by step 12: rolled back to step 4" in m for m in messages)
    assert all_finite(load_state(tmp_path / "run")["generator"])


def test_a_skipped_update_leaves_weights_and_adam_state_alone_without_reading_the_flag():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1, fused=True)
    train_module._backward_step(net(torch.ones(1, 3)).sum(), opt, None)  # one good step: Adam has state
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state_before = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in net.parameters()}
    skipped = train_module._backward_step(net(torch.ones(1, 3)).sum() * float("nan"), opt, None)
    assert isinstance(skipped, torch.Tensor) and skipped.item() == 1.0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    for p in net.parameters():
        assert all(torch.equal(state_before[id(p)][k], v) for k, v in opt.state[p].items())  # step count too
    assert train_module._backward_step(net(torch.ones(1, 3)).sum(), opt, None).item() == 0.0
    assert not torch.equal(before["weight"], net.weight)


def test_an_unfused_optimizer_state_resumes_under_the_fused_optimizer():
    # Runs saved before Adam was fused on the CPU carry foreach-style groups; they must step, and skip, fused.
    torch.manual_seed(0)
    old_net, new_net = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    new_net.load_state_dict(old_net.state_dict())
    old = torch.optim.Adam(old_net.parameters(), lr=0.1)
    train_module._backward_step(old_net(torch.ones(1, 3)).sum(), old, None)
    new = torch.optim.Adam(new_net.parameters(), lr=0.1, fused=True)
    new_net.load_state_dict(old_net.state_dict())
    train_module.load_optimizer(new, old.state_dict())
    assert new.param_groups[0]["fused"] is True
    assert train_module._backward_step(new_net(torch.ones(1, 3)).sum() * float("inf"), new, None).item() == 1.0
    assert train_module._backward_step(new_net(torch.ones(1, 3)).sum(), new, None).item() == 0.0
    train_module._backward_step(old_net(torch.ones(1, 3)).sum(), old, None)
    assert torch.allclose(old_net.weight, new_net.weight, atol=1e-6)  # the same second update
