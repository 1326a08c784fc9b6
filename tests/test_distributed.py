"""Many processes on the CPU (gloo): DDP averages gradients, rank 0 alone writes, resume across world sizes; --compile."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from conftest import tiny_fit_config
from travel.checkpoint import load_state, load_weights
from travel.config import resolve, LossConfig
from travel.train.distributed import ENV_VARS, World, any_rank, average, broadcast, join, leave, rank_seed
from travel.errors import ConfigError
from travel.train import fit, resume_config
from travel.train.step import build_nets, discriminator_step, distribute, generator_step, rotation_weight_at
from travel.train.styles import Styles

B = 4  # images per rank; a multiple of 4, so rotate_batch's labels (i mod 4) match between b and 2b batches
ITERATIONS = 2  # a second step shows the DDP reducers are ready again after a D step and a G step


# ---------------------------------------------------------------------------------------------
# Launching ranks: what torchrun does, by hand, on 127.0.0.1.


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def become_rank(rank: int, size: int, port: int) -> None:
    """The environment torchrun gives each worker."""
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), LOCAL_WORLD_SIZE=str(size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )


def run_ranks(worker, *args, size: int = 2, deadline: float = 150.0) -> None:
    """Run worker(rank, size, port, *args) in `size` fresh processes; fail (never hang) if they do not finish."""
    context = mp.start_processes(worker, args=(size, free_port(), *args), nprocs=size, join=False, start_method="spawn")
    end = time.monotonic() + deadline
    while not context.join(timeout=1):  # raises if a rank failed (and ends the others)
        if time.monotonic() > end:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{size} ranks did not finish within {deadline:.0f} s")


# ---------------------------------------------------------------------------------------------
# Gradients: the phases of one step, under DDP, against one process.


def gradient_cases() -> dict[str, tuple]:
    """name -> (config, learning rate). Augmentation is off everywhere: both sides must see the same pixels."""
    base = tiny_fit_config(Path("unused-a"), Path("unused-b"), batch_size=B)
    base = replace(base, data=replace(base.data, augment=False))
    model = base.model
    # Every loss term is a mean over images (no pair terms): 2 ranks x b must equal 1 process x 2b. Rotation
    # (through D.features, beside DDP's forward) and R1 (a double backward) take the unusual gradient paths.
    per_image = replace(
        base,
        model=replace(model, discriminator=replace(model.discriminator, rotation_head=True)),
        loss=LossConfig(travel=0.0, margin=0.0, rotation=True, rotation_d=1.0, rotation_g=0.5, r1_gamma=1.0),
    )
    # The TraVeL and margin losses compare pairs within each rank's batch, so DDP's gradient is the mean of
    # the two half-batch gradients, not the 2b-batch one. Learning rate 0: every gradient of the step is
    # then taken at the same weights, which is what the halves are computed at. A separate S, and rotation
    # heads no loss trains (find_unused_parameters for D and S).
    pairs = replace(
        base,
        model=replace(model, siamese="separate", discriminator=replace(model.discriminator, rotation_head=True)),
    )
    return {"per_image": (resolve(per_image), 0.05), "pairs": (resolve(pairs), 0.0)}  # the steps take resolved configs


def fixed_batches() -> tuple[torch.Tensor, torch.Tensor]:
    """Source and target batches for every iteration: [ITERATIONS, 2B, 3, 16, 16] each, in [-1, 1]."""
    generator = torch.Generator().manual_seed(123)
    shape = (ITERATIONS, 2 * B, 3, 16, 16)
    return torch.rand(shape, generator=generator) * 2 - 1, torch.rand(shape, generator=generator) * 2 - 1


def run_steps(config, world: World, source: torch.Tensor, target: torch.Tensor, *, lr: float) -> dict:
    """The training loop's phases (D step, frozen D, G step) for ITERATIONS steps with SGD; gradients per step."""
    torch.manual_seed(config.train.seed)
    nets = build_nets(config, torch.device("cpu"))
    distribute(nets, config, world, torch.device("cpu"))
    trained_g = [nets.generator] + ([nets.siamese] if nets.siamese is not None else [])
    opt_g = torch.optim.SGD([p for net in trained_g for p in net.parameters()], lr=lr)
    opt_d = torch.optim.SGD(nets.discriminator.parameters(), lr=lr)
    anchor = torch.zeros(config.model.discriminator.vec_len)
    named = {"generator": nets.generator, "discriminator": nets.discriminator, "siamese": nets.siamese}
    grads = []
    for it in range(ITERATIONS):
        common = dict(cfg=config, anchor=anchor, augment=nn.Identity(), autocast=nullcontext, scaler=None)
        discriminator_step(nets, opt_d, source[it], target[it], **common)
        step_grads = {f"discriminator.{k}": p.grad.clone() for k, p in nets.discriminator.named_parameters() if p.grad is not None}
        nets.discriminator.requires_grad_(False)
        generator_step(nets, opt_g, source[it], rotation_weight=rotation_weight_at(config, it), **common)
        nets.discriminator.requires_grad_(True)
        for net_name in ("generator", "siamese"):
            if named[net_name] is not None:
                step_grads.update({f"{net_name}.{k}": p.grad.clone() for k, p in named[net_name].named_parameters() if p.grad is not None})
        grads.append(step_grads)
    weights = {f"{n}.{k}": v.clone() for n, net in named.items() if net is not None for k, v in net.state_dict().items()}
    return {"grads": grads, "weights": weights}


def gradient_worker(rank: int, size: int, port: int, out: Path) -> None:
    become_rank(rank, size, port)
    world, device = join(torch.device("cpu"))
    source, target = fixed_batches()
    mine = slice(rank * B, (rank + 1) * B)  # rank r holds images r*B..(r+1)*B-1 of the one-process batch
    results = {name: run_steps(config, world, source[:, mine], target[:, mine], lr=lr)
               for name, (config, lr) in gradient_cases().items()}
    results["world"] = (world.rank, world.size, world.owns_group)
    results["average"] = float(average({"x": torch.tensor(float(rank + 1))}, world)["x"])  # 1 and 2 -> 1.5
    results["any"] = (any_rank(rank == 1, world, device), any_rank(False, world, device))
    results["broadcast"] = int(broadcast([torch.tensor([10 + rank])], world, device)[0])
    torch.save(results, out / f"rank{rank}.pt")
    leave(world)


def assert_close_dicts(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), f"{what}: different parameters"
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=lambda m: f"{what} {key}: {m}")


def test_two_ranks_average_gradients_as_one_process_does(tmp_path):
    run_ranks(gradient_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    source, target = fixed_batches()
    cases = gradient_cases()

    # Collectives: the mean, the all-ranks "or", rank 0's tensor everywhere; each rank joined from the environment.
    assert [r["world"] for r in ranks] == [(0, 2, True), (1, 2, True)]
    assert [r["average"] for r in ranks] == [1.5, 1.5]
    assert [r["any"] for r in ranks] == [(True, False), (True, False)]
    assert [r["broadcast"] for r in ranks] == [10, 10]

    # Per-image losses: 2 ranks x b give the gradients (and, after two SGD steps, the weights) of 1 process x 2b.
    config, lr = cases["per_image"]
    single = run_steps(config, World(), source, target, lr=lr)
    for rank in ranks:
        for it in range(ITERATIONS):
            assert_close_dicts(rank["per_image"]["grads"][it], single["grads"][it], f"per-image step {it}")
        assert_close_dicts(rank["per_image"]["weights"], single["weights"], "per-image weights")
    assert any(g.abs().sum() > 0 for k, g in single["grads"][0].items() if "rotation" in k)  # the rotation head trained
    assert any(g.abs().sum() > 0 for k, g in single["grads"][0].items() if k.startswith("generator"))

    # Pair losses: the gradient is the mean of each rank's own gradient.
    config, lr = cases["pairs"]
    halves = [run_steps(config, World(), source[:, r * B : (r + 1) * B], target[:, r * B : (r + 1) * B], lr=lr) for r in range(2)]
    for it in range(ITERATIONS):
        keys = set(halves[0]["grads"][it]) & set(halves[1]["grads"][it])
        mean = {k: (halves[0]["grads"][it][k] + halves[1]["grads"][it][k]) / 2 for k in keys}
        for rank in ranks:
            got = rank["pairs"]["grads"][it]
            assert_close_dicts({k: got[k] for k in keys}, mean, f"pairs step {it}")
            assert not any("rotation" in k for k in got)  # unused heads: no gradient, no error
        assert any(k.startswith("siamese") and g.abs().sum() > 0 for k, g in mean.items())
    # ... which really differs from one process with the whole batch, whose pairs cross the halves.
    whole = run_steps(config, World(), source, target, lr=lr)
    # Compare all of the Siamese network's gradient at once: single tensors (biases after a norm)
    # can have gradients at rounding level, and a set's order changes from run to run.
    s_keys = sorted(k for k in mean if k.startswith("siamese"))
    flat_whole = torch.cat([whole["grads"][-1][k].flatten() for k in s_keys])
    flat_mean = torch.cat([mean[k].flatten() for k in s_keys])
    assert flat_mean.norm() > 0
    assert (flat_whole - flat_mean).norm() > 1e-2 * flat_mean.norm()


# ---------------------------------------------------------------------------------------------
# The whole loop: rank 0 alone writes, all ranks stop together, resume with another number of processes.


def fit_worker(rank: int, size: int, port: int, jobs: list, root: Path, out: Path) -> None:
    """Run fit for each (config, run folder, resume, abort_at) in `jobs`, in one process group; record writes."""
    become_rank(rank, size, port)
    torch.distributed.init_process_group("gloo")  # started here, so the fits share it (fit then leaves it be)
    root_name = os.path.realpath(root)
    writes: list[str] = []

    def audit(event: str, args: tuple) -> None:
        # Every way this process could change a run folder: opening a file to write, rename, mkdir, remove.
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC)
            )
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.unlink"):
            path, writing = args[1] if event == "os.rename" else args[0], True
        else:
            return
        if writing and isinstance(path, (str, bytes, os.PathLike)):
            name = os.path.abspath(os.fsdecode(path))
            if name == root_name or name.startswith(root_name + os.sep):
                writes.append(f"{event} {name}")

    sys.addaudithook(audit)
    if rank == 0:
        # Rank 0 writes its saves late, as a loaded machine may: a rank that returned from fit before the final
        # save landed would resume from the save before it (and the ranks would then run different steps).
        import travel.train

        save_state = travel.train.run.save_state

        def slow_save_state(*args, **kwargs):
            time.sleep(0.5)
            save_state(*args, **kwargs)

        travel.train.run.save_state = slow_save_state
    results = []
    for config, run, resume, abort_at in jobs:
        calls = 0

        def abort() -> bool:
            nonlocal calls
            calls += 1
            return rank == 1 and calls >= abort_at  # rank 1 alone wants to stop

        result = fit(config, run, resume=resume, abort_fn=abort)
        results.append((result.step, result.interrupted))
    torch.distributed.destroy_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps({"results": results, "writes": writes}))


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_rank_fit_writes_from_rank_0_only_stops_together_and_resumes(domains, tmp_path):
    # Augmentation on: every rank draws random numbers, so an exact resume needs each rank's draws right.
    config = tiny_fit_config(*domains, steps=4, batch_size=2, log_every=1, save_every=2, sample_every=2)
    root, out = tmp_path / "runs", tmp_path / "out"
    whole, stopped = root / "whole", root / "stopped"
    out.mkdir()
    jobs = [
        (config, whole, False, 99),  # 4 steps straight
        (config, stopped, False, 3),  # rank 1 asks to stop at step 3 (not a save step)
        (config, stopped, True, 99),  # both ranks resume it to step 4
    ]
    run_ranks(fit_worker, jobs, root, out)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]

    # Both ranks stopped at the same step (rank 0 had no wish to stop), and rank 0 saved it.
    assert [r["results"] for r in ranks] == [[[4, False], [3, True], [4, False]]] * 2
    assert ranks[1]["writes"] == []  # rank 1 never wrote into a run folder
    assert {"state.pt", "metrics.jsonl", "config.json", "tiny.safetensors"} <= {
        Path(w.split()[-1]).name for w in ranks[0]["writes"]
    }
    for run in (whole, stopped):
        metrics = read_metrics(run)
        assert [m["step"] for m in metrics] == [1, 2, 3, 4]  # one line per step: only rank 0 appends
        assert all(math.isfinite(v) for m in metrics for v in m.values())  # averaged over the ranks
    summary = load_weights(whole / "tiny.safetensors").summary
    assert (summary["processes"], summary["images_seen"]) == (2, 4 * 2 * 2)

    # The resumed two-process run is the uninterrupted one: rank 0 continued its saved random stream, and
    # rank 1 draws from (seed, step, rank) at every step.
    a, b = load_state(whole), load_state(stopped)
    for net in ("generator", "discriminator", "ema"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key}"

    # One process continues the two-process run: the state holds nothing per rank.
    result = fit(resume_config(stopped, steps=5), stopped, resume=True)
    assert (result.step, result.interrupted) == (5, False)
    assert [m["step"] for m in read_metrics(stopped)] == [1, 2, 3, 4, 5]
    summary = load_weights(stopped / "tiny.safetensors").summary
    assert "processes" not in summary and summary["steps"] == 5


# ---------------------------------------------------------------------------------------------
# Small pieces, in this process.


def test_one_process_without_torchrun_joins_nothing(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    world, device = join(torch.device("cpu"))
    assert (world, device) == (World(), torch.device("cpu"))
    assert world.is_main and not torch.distributed.is_initialized()
    leave(world)  # nothing to end
    values = {"a": torch.tensor(2.0)}
    assert average(values, world) is values and any_rank(True, world, device) and not any_rank(False, world, device)


@pytest.mark.parametrize(
    "env, device, message",
    [
        ({"WORLD_SIZE": "2", "RANK": "0"}, "cpu", "MASTER_ADDR, MASTER_PORT not set: launch with torchrun"),
        ({"WORLD_SIZE": "two"}, "cpu", "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, "meta", "needs CUDA GPUs or the CPU"),
    ],
)
def test_join_refuses_a_half_described_world(monkeypatch, env, device, message):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        join(torch.device(device))
    assert not torch.distributed.is_initialized()


def test_rank_seeds_depend_on_seed_step_and_rank_only():
    seeds = {rank_seed(seed, step, rank) for seed in (0, 1) for step in (0, 7) for rank in (1, 2)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)
    assert rank_seed(3, 5, 1) == rank_seed(3, 5, 1)


def test_style_draws_are_torch_multinomial_draws_without_a_sync():
    frequencies = torch.tensor([0.1, 0.0, 0.6, 0.3])
    styles = Styles(anchors=torch.zeros(4, 8), subset=torch.arange(4), labels=torch.zeros(4, dtype=torch.long),
                    frequencies=frequencies)
    torch.manual_seed(5)
    drawn = [styles.draw(3) for _ in range(200)]
    torch.manual_seed(5)
    expected = [torch.multinomial(frequencies, 1).expand(3) for _ in range(200)]
    assert all(torch.equal(a, b) for a, b in zip(drawn, expected))
    assert 1 not in {int(d[0]) for d in drawn}  # a cluster with no images is never asked for


def test_compile_that_fails_warns_and_trains(domains, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here\nmore detail")

    monkeypatch.setattr(torch, "compile", broken)
    config = tiny_fit_config(*domains, steps=1, compile=True)
    messages: list[str] = []
    result = fit(config, tmp_path / "run", message_fn=messages.append)
    assert result.step == 1
    assert "warning: --compile skipped, torch.compile does not work here: no compiler here" in messages
    assert not any("channels-last" in m for m in messages)


def test_channels_last_training_computes_what_nchw_does(domains, tmp_path):
    """NHWC is a layout, not a change of the method: two steps either way end at the same weights."""
    from travel.checkpoint import load_state

    states = {}
    for channels_last in (False, True):
        fit(tiny_fit_config(*domains, steps=2, channels_last=channels_last), tmp_path / f"run-{channels_last}")
        states[channels_last] = load_state(tmp_path / f"run-{channels_last}")
    plain, nhwc = states[False], states[True]
    assert any(t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
               for t in nhwc["generator"].values())  # the run really trained in NHWC
    for name in ("generator", "discriminator", "ema"):
        assert plain[name].keys() == nhwc[name].keys()
        for key, value in plain[name].items():
            assert torch.allclose(value.float(), nhwc[name][key].float(), rtol=1e-3, atol=1e-4), (name, key)


def test_fit_flags_reach_the_config_and_resume_can_change_them(domains, tmp_path):
    from typer.testing import CliRunner

    from travel.cli import app

    runner = CliRunner()
    source, target = domains
    args = ["fit", "--src", str(source), "--dst", str(target), "--dry-run"]
    for extra, expected in (([], (False, False)), (["--compile", "--channels-last"], (True, True))):
        printed = runner.invoke(app, args + extra)
        assert printed.exit_code == 0, printed.output
        train = json.loads(printed.stdout)["train"]
        assert (train["compile"], train["channels_last"]) == expected

    run = tmp_path / "run"
    fit(tiny_fit_config(source, target, steps=1, compile=False, channels_last=False), run)
    printed = runner.invoke(app, ["fit", "--resume", str(run), "--steps", "2", "--compile", "--dry-run"])
    assert printed.exit_code == 0, printed.output
    train = json.loads(printed.stdout)["train"]
    assert (train["compile"], train["channels_last"], train["steps"]) == (True, False, 2)


@pytest.mark.slow
def test_compiled_fit_runs_and_saves_plain_weights(domains, tmp_path, monkeypatch):
    import travel.train.step

    if travel.train.step.compile_problem(torch.device("cpu")) is not None:  # inductor, on a tiny function
        pytest.skip("torch.compile does not work on this machine")
    # The networks with aot_eager: Dynamo's capture (spectral norm, attention, styles) and AOT autograd as with
    # inductor, without its C++ build (measured: a 2-step inductor fit took 11 min on a loaded 2-core machine).
    monkeypatch.setattr(travel.train.step, "COMPILE_BACKEND", "aot_eager")
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    messages: list[str] = []
    config = tiny_fit_config(*domains, steps=2, compile=True)
    result = fit(config, tmp_path / "run", message_fn=messages.append)
    assert result.step == 2 and not any("compile" in m for m in messages)
    assert counters["stats"]["unique_graphs"] >= 2  # G and D were captured, not run eagerly
    weights = load_weights(result.weights)  # keys of the plain modules: loadable without torch.compile
    weights.build()
    assert all(torch.isfinite(v).all() for v in weights.state.values())
