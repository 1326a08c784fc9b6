"""The training loop: `fit` reads the data, builds the step, then repeats named phases until the last step:
styles (recluster when due), step, guard (non-finite steps and rollback), log, samples, save, stop."""

from __future__ import annotations

import copy
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from travel.checkpoint import load_state, run_lock, state_config
from travel.config import FitConfig, resolve
from travel.data import ImageFolder, UnpairedBatches, resolve_domains
from travel.errors import CheckpointError, ConfigError, TravelError
from travel.runtime import resolve_device
from travel.train.distributed import World, any_rank, average, join, leave, reseed, wait_for_all
from travel.train.guard import BAD_STEPS_BEFORE_ROLLBACK, Guard
from travel.train.run import RunFolder, check_run_dir, restore, save_samples, stop_on_signals, take_snapshot
from travel.train.step import build_trainer, distribute, train_step
from travel.train.styles import make_styles, restore_styles, share_styles, update_styles

ProgressFn = Callable[[int, int, dict[str, float]], None]  # (step, total steps, latest logged metrics)
AbortFn = Callable[[], bool]  # return True to stop (state is saved first)
MessageFn = Callable[[str], None]


@dataclass(frozen=True)
class FitResult:
    run_dir: Path
    weights: Path
    step: int  # steps completed
    interrupted: bool
    metrics: dict[str, float]  # the last logged averages
    skipped_images: tuple[tuple[str, str], ...]


def fit(
    config: FitConfig,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress_fn: ProgressFn | None = None,
    abort_fn: AbortFn | None = None,
    message_fn: MessageFn | None = None,
) -> FitResult:
    """Train a translator from config.data.source to config.data.target (config resolved first: travel.config.resolve);
    write everything into run_dir (default runs/NAME).

    With resume=True, run_dir must hold the state of an earlier run with the same architecture; training
    continues from its step up to config.train.steps, exactly as if it had never stopped.
    A run_dir that already holds a run is refused unless resume=True, or overwrite=True (which starts afresh);
    so is a run_dir another process is training in (a lock the OS releases when that process ends).
    Hooks: progress_fn after every step, abort_fn to stop early (state is saved), message_fn for warnings.

    A step whose gradients are not finite is skipped; after BAD_STEPS_BEFORE_ROLLBACK of them in a row (counted on
    the device, read at the next log or save step), training goes back to the last saved state with both learning
    rates halved (at most MAX_ROLLBACKS times; travel.train.guard).

    Under torchrun (RANK, WORLD_SIZE, ... in the environment) every process runs fit: DDP averages the
    gradients, each rank draws its own batches, and rank 0 alone writes files and calls progress_fn and
    message_fn. A wish to stop (a signal, abort_fn) on any rank stops every rank at the next log or save step.
    """
    config = resolve(config)
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / config.name
    world, device = join(resolve_device(config.train.device))
    try:
        with run_lock(run_dir) if world.is_main else nullcontext():
            if world.is_main:  # it may delete files; if it refuses, torchrun ends the other ranks too
                check_run_dir(run_dir, resume=resume, overwrite=overwrite)
            say = message_fn if message_fn is not None and world.is_main else (lambda message: None)
            return _loop(config, run_dir, world, device, resume=resume, progress_fn=progress_fn, abort_fn=abort_fn, say=say)
    finally:
        leave(world)


def _loop(
    config: FitConfig, run_dir: Path, world: World, device: torch.device, *, resume: bool,
    progress_fn: ProgressFn | None, abort_fn: AbortFn | None, say: MessageFn,
) -> FitResult:
    tc = config.train
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest convolutions once

    # Data, then everything the step needs (the networks are drawn from the seeded RNG), then the state to start from.
    source, target = open_domains(config, say)
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    trainer = build_trainer(config, device, say)
    nets = trainer.nets
    styles = make_styles(config, len(target), device)
    run = RunFolder(run_dir, config, world, device, source, target)
    start, elapsed_before, lr_scale = 0, 0.0, 1.0
    if resume:
        state = load_state(run_dir)
        if state_config(state, name=str(run_dir)).model != config.model:
            raise CheckpointError(f"{run_dir}: the saved run has a different architecture; cannot resume with this one")
        restore(state, nets, trainer.opt_g, trainer.opt_d)
        styles = restore_styles(state, styles, device)
        start, elapsed_before = int(state["step"]), float(state.get("elapsed", 0.0))
        lr_scale = float(state.get("lr_scale", 1.0))
        if start >= tc.steps:
            raise ConfigError(f"{run_dir} is already at step {start}; ask for more --steps to continue")
    run.open(resumed_at=start if resume else None)
    distribute(nets, config, world, device)
    fixed = torch.stack([source.center(i % len(source)) for i in range(tc.sample_count)]).to(device)

    guard = Guard(device, lr_scale=lr_scale)
    running: dict[str, torch.Tensor] = {}  # sums of the loss terms since the last log, kept steps only
    logged: dict[str, float] = {}
    count, step, interrupted, wants_stop = 0, start, False, False
    t0 = time.perf_counter()
    t_log, step_log = t0, start

    def snapshot(step: int) -> dict:
        return take_snapshot(trainer, step, elapsed_before + time.perf_counter() - t0, lr_scale=guard.lr_scale, styles=styles)

    good = copy.deepcopy(snapshot(start))  # what a run of non-finite steps rolls back to: the last state saved
    with stop_on_signals() as signalled:
        batches = batches_from(source, target, config, world, device, start)
        while step < tc.steps:
            # Phase 1, data and styles. Rank 0 continues the saved RNG stream; the others draw augmentations and
            # styles from (seed, step, rank), so they too resume exactly, whatever the world size was before.
            source_batch, target_batch, target_index = next(batches)
            if world.rank > 0:
                reseed(tc.seed, step, world.rank)
            source_batch = source_batch.to(device, non_blocking=True, memory_format=trainer.memory_format)
            target_batch = target_batch.to(device, non_blocking=True, memory_format=trainer.memory_format)
            target_style = None
            if styles is not None:
                if step % config.clusters.recluster_every == 0:
                    if world.is_main:
                        styles = update_styles(styles, nets.discriminator, target, device, seed=tc.seed + step,
                                               features_from=config.clusters.features)
                    styles = share_styles(styles, world, device)
                target_style = styles.labels[target_index.to(device, non_blocking=True)]

            # Phase 2, the step: D, G, EMA. A skipped step's terms are left out of the averages.
            terms, bad = train_step(trainer, source_batch, target_batch, step=step, styles=styles, target_style=target_style)
            step += 1
            guard.record(bad)
            for key, value in terms.items():
                running[key] = running.get(key, 0.0) + torch.where(bad > 0, 0.0, value)
            count = count + 1 - bad
            at_log = step % tc.log_every == 0 or step == tc.steps
            at_save = step % tc.save_every == 0 or step == tc.steps

            # Phase 3, the guard: many bad steps in a row go back to the last saved state, at lower learning rates.
            streak = 0
            if at_log or at_save:
                streak, longest = guard.read(nets, check_weights=at_save)
                if longest >= BAD_STEPS_BEFORE_ROLLBACK:
                    failed_at, step = step, int(good["step"])
                    scale = guard.roll_back(failed_at, step)
                    restore(good, nets, trainer.opt_g, trainer.opt_d)
                    if "styles" in good:
                        styles = restore_styles(good, styles, device)
                    for opt, lr in ((trainer.opt_g, tc.lr_g), (trainer.opt_d, tc.lr_d)):
                        for group in opt.param_groups:
                            group["lr"] = lr * scale
                    say(f"warning: {longest} bad steps in a row by step {failed_at}: rolled back to step {step} "
                        f"with learning rates halved (lr_g {tc.lr_g * scale:.3g}, lr_d {tc.lr_d * scale:.3g})")
                    run.truncate(step)
                    run.log({"step": step, "event": "rollback", "from_step": failed_at, "lr_g": tc.lr_g * scale, "lr_d": tc.lr_d * scale})
                    running, count, t_log, step_log = {}, 0, time.perf_counter(), step
                    batches = batches_from(source, target, config, world, device, step)
                    continue

            # Phase 4, log: the averages over ranks (one all-reduce, at log steps only).
            if at_log:
                now = time.perf_counter()
                running = average(running, world)
                kept, skipped = float(count), guard.take_skipped()
                logged = {k: float(v) / max(kept, 1) for k, v in running.items()}
                logged["images_per_s"] = (step - step_log) * tc.batch_size * world.size / max(now - t_log, 1e-9)
                if skipped:
                    logged["skipped_steps"] = skipped
                    which = f"step {step}" if step - step_log == 1 else f"{skipped} of steps {step_log + 1}-{step}"
                    say(f"warning: {which} skipped (a loss or gradient was not finite)")
                run.log({"step": step, "time": round(elapsed_before + now - t0, 3), **logged})
                running, count, t_log, step_log = {}, 0, now, step
                if not all(math.isfinite(v) for v in logged.values()):  # the same averages, so every rank stops
                    if world.is_main:
                        save_samples(run_dir, nets.ema, fixed, step, styles=styles)
                    raise TravelError(f"training diverged at step {step} (non-finite loss); lower the learning rates")

            # Phase 5, samples and saves. Amid bad steps, the earlier good state is kept.
            if world.is_main and (step % tc.sample_every == 0 or step == tc.steps):
                save_samples(run_dir, nets.ema, fixed, step, styles=styles)
            if at_save and (streak == 0 or step == tc.steps):
                good = copy.deepcopy(snapshot(step))
                run.save(good, nets.ema, logged=logged, styles=styles)
            if progress_fn is not None and world.is_main:
                progress_fn(step, tc.steps, logged)

            # Phase 6, stop: every rank must leave at the same step. Agreeing costs a host-device sync, so the ranks
            # share their wish to stop at log and save steps only.
            wants_stop = wants_stop or signalled.is_set() or (abort_fn is not None and abort_fn())
            if world.size > 1:
                stopping = (step % tc.log_every == 0 or step % tc.save_every == 0) and any_rank(wants_stop, world, device)
            else:
                stopping = wants_stop
            if stopping:
                interrupted = step < tc.steps
                if world.is_main and step % tc.save_every and step != tc.steps:
                    run.save(snapshot(step), nets.ema, logged=logged, styles=styles)
                break
    # Rank 0 alone writes the last save: no rank returns before it has landed, so whatever comes next (a resume
    # in the same process group, a read of the weights) sees the run folder as it is left.
    wait_for_all(world)
    return FitResult(
        run_dir=run_dir, weights=run.weights, step=step, interrupted=interrupted, metrics=logged,
        skipped_images=source.report.skipped + target.report.skipped,
    )


def batches_from(source: ImageFolder, target: ImageFolder, config: FitConfig, world: World, device: torch.device,
                 step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(source batch, target batch, target indices) for every step from `step` on. Each rank draws its own batches
    from (seed, step, rank): see UnpairedBatches, and docs/MANY_GPUS.md."""
    tc = config.train
    batches = UnpairedBatches(source, target, batch_size=tc.batch_size, seed=tc.seed, start=step, stop=tc.steps, rank=world.rank)
    return iter(torch.utils.data.DataLoader(
        batches, batch_size=None, shuffle=False, num_workers=config.data.workers, pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keep the loader from drawing on the global RNG (exact resume)
        persistent_workers=False, prefetch_factor=4 if config.data.workers else None,
    ))


def open_domains(config: FitConfig, say: MessageFn) -> tuple[ImageFolder, ImageFolder]:
    """The two training folders, scanned, with a warning for every file skipped and for upscaled images."""
    dc = config.data
    source_dir, target_dir = resolve_domains(dc.source, dc.target, None)
    folders = tuple(ImageFolder(d, load_size=dc.load_size, crop_size=dc.crop_size, flip=dc.flip, cache=dc.cache)
                    for d in (source_dir, target_dir))
    for report in (f.report for f in folders):
        for file, reason in report.skipped:
            say(f"warning: skipped {reason}")
        if report.skipped:
            say(f"warning: {len(report.skipped)} unreadable file(s) skipped in {report.folder}; {report.usable} used")
        if report.upscaled:
            say(f"warning: {report.upscaled} image(s) in {report.folder} are smaller than the {dc.crop_size}px crop and are upscaled")
    return folders  # type: ignore[return-value]
