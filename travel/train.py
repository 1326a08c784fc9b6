"""The training loop: one `fit` with named phases (D step, G step, EMA, then log / sample grid / save)."""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import math
import random
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torchvision.utils import make_grid

from travel import __version__
from travel.augment import DiffAugment
from travel.checkpoint import (
    CLUSTERS_FILE, STATE_FILE, atomic_write_bytes, atomic_write_text, load_run_config, load_state, run_lock, save_state, save_weights,
    write_error,
)
from travel.clustering import KMeansResult, assign, cluster_frequencies, recluster
from travel.config import SCHEMA_VERSION, FitConfig, from_dict, to_json
from travel.data import ImageFolder, UnpairedBatches, resolve_domains, tensor_to_image
from travel.distributed import World, any_rank, average, broadcast, join, leave, reseed, wait_for_all, wrap
from travel.errors import CheckpointError, ConfigError, DataError, TravelError
from travel.losses import (
    anchor_d_loss, anchor_distance, anchor_g_loss, margin_loss, per_image, pooled_embedding, r1_penalty, rotation_loss,
    travel_loss,
)
from travel.models import Generator, build_discriminator, build_generator, build_siamese
from travel.runtime import precision_context, resolve_device

ProgressFn = Callable[[int, int, dict[str, float]], None]  # (step, total steps, latest logged metrics)
AbortFn = Callable[[], bool]  # return True to stop (state is saved first)
# torch.compile's backend for --compile. Tests use "aot_eager": the same graph capture and autograd tracing,
# without inductor's code generation, which takes minutes on a small CPU.
COMPILE_BACKEND = "inductor"
BAD_STEPS_BEFORE_ROLLBACK = 5  # skipped (non-finite) steps in a row before going back to the last saved state
MAX_ROLLBACKS = 3  # rollbacks, each halving both learning rates, before giving up with an error


@dataclass(frozen=True)
class FitResult:
    run_dir: Path
    weights: Path
    step: int  # steps completed
    interrupted: bool
    metrics: dict[str, float]  # the last logged averages
    skipped_images: tuple[tuple[str, str], ...]


@dataclass
class Nets:
    generator: Generator
    # Either family (travel.models.Discriminator, travel.projected.ProjectedDiscriminator): forward gives [N, L] or
    # [N, P, L] vectors, patch_weights None or [P]; the steps below use only that interface.
    discriminator: nn.Module
    siamese: nn.Module | None  # the separate S network, or None when S is D itself
    ema: Generator
    # With several processes: each network the steps update, wrapped in DistributedDataParallel (which
    # averages its gradients over ranks). A step calls the wrapper for the forwards whose gradient updates
    # that network, and the plain module for everything else. None: one process.
    ddp_generator: nn.Module | None = None
    ddp_discriminator: nn.Module | None = None
    ddp_siamese: nn.Module | None = None

    @property
    def embed(self) -> nn.Module:
        """S: the network whose difference vectors the TraVeL loss compares."""
        return self.siamese if self.siamese is not None else self.discriminator


@dataclass
class Styles:
    """Self-conditioning state: one cluster id per real target image, fixed between reclusterings."""

    anchors: torch.Tensor  # [K, L]: c_k, the anchor of cluster k
    subset: torch.Tensor  # [M]: indices of the target images that k-means sees (fixed for the run)
    labels: torch.Tensor  # [num_targets]: cluster id of every target image
    frequencies: torch.Tensor  # [K]: share of each cluster; ids for translations are drawn from it
    result: KMeansResult | None = None  # the last clustering of the subset (warm start + id matching)

    def draw(self, count: int) -> torch.Tensor:
        """Cluster ids for a batch of `count` translations: one id, drawn from the clusters' frequencies. [count]

        One style per batch, not one per image: the TraVeL loss compares vectors between translations, and
        between two styles that vector also holds the gap between their anchors, which no source vector
        matches, so mixed batches train the generator to ignore the style (measured: every style gave the
        same colour on a three-sub-style task; with one style per batch they separate).
        """
        # torch.multinomial(frequencies, 1), draw for draw, without its validity check: that check reads a value
        # back from the GPU, a host-device sync twice a step.
        noise = torch.empty_like(self.frequencies).exponential_(1)
        style = torch.argmax(self.frequencies / noise, dim=-1, keepdim=True)  # [1]
        return style.expand(count).to(self.anchors.device)


# ---------------------------------------------------------------------------------------------
# Phases of one step. Each returns its loss terms (detached) for logging.


def discriminator_step(
    nets: Nets, opt_d: torch.optim.Optimizer, source: torch.Tensor, target: torch.Tensor, *, cfg: FitConfig,
    anchor: torch.Tensor, augment: nn.Module, autocast: Any, scaler: torch.amp.GradScaler | None,
    target_style: torch.Tensor | None = None, styles: Styles | None = None,
) -> dict[str, torch.Tensor]:
    """One D update. With self-conditioning, `target_style` [B] holds the real targets' cluster ids.

    terms["skipped"] is 1 (a 0-dim tensor on the device) when a gradient was not finite and the update was skipped.
    """
    loss_cfg = cfg.loss
    disc = nets.discriminator  # the plain module: trunk features and rotation head (gradients still reduced)
    judge = nets.ddp_discriminator if nets.ddp_discriminator is not None else disc  # D's forward, through DDP
    real_anchor = fake_anchor = anchor
    fake_style = None
    if styles is not None:
        fake_style = styles.draw(source.shape[0])
        real_anchor, fake_anchor = styles.anchors[target_style], styles.anchors[fake_style]  # [B, L] each
    with torch.no_grad(), autocast():
        translation = nets.generator(source, fake_style)
    with autocast():
        real_in, fake_in = augment(target), augment(translation)
        if loss_cfg.r1_gamma > 0:
            real_in = real_in.detach().requires_grad_(True)
        real_emb, fake_emb = judge(real_in).float(), judge(fake_in).float()  # [B, L] or [B, P, L] per patch
        terms = anchor_d_loss(real_emb, fake_emb, real_anchor, margin=loss_cfg.anchor_margin, fake_anchor=fake_anchor,
                              weights=disc.patch_weights)
        total = loss_cfg.adv * (terms["d_real"] + terms["d_fake"])
        if cfg.model.siamese == "shared":
            # Cooperative terms: D is also the Siamese embedding S, trained to make vectors comparable.
            src_emb = pooled_embedding(judge(source).float(), disc.patch_weights)  # [B, L]
            trans_emb = pooled_embedding(judge(translation).float(), disc.patch_weights)
            travel = travel_loss(src_emb, trans_emb, dist_weight=loss_cfg.dist)
            terms.update(travel)
            terms["margin"] = margin_loss(src_emb, delta=loss_cfg.delta)
            total = total + loss_cfg.travel * (travel["travel_cos"] + travel["travel_dist"]) + loss_cfg.margin * terms["margin"]
        if loss_cfg.rotation_d > 0:
            rotated, labels = rotate_batch(target)
            terms["rot_d"] = rotation_loss(disc.rotation_logits(disc.features(rotated)).float(), labels)
            total = total + loss_cfg.rotation_d * terms["rot_d"]
    if loss_cfg.r1_gamma > 0:
        terms["r1"] = r1_penalty(per_image(anchor_distance(real_emb, real_anchor), disc.patch_weights), real_in)
        total = total + 0.5 * loss_cfg.r1_gamma * terms["r1"]
    terms["d_total"] = total
    terms["skipped"] = _backward_step(total, opt_d, scaler)
    return {k: v.detach() for k, v in terms.items()}


def generator_step(
    nets: Nets, opt_g: torch.optim.Optimizer, source: torch.Tensor, *, cfg: FitConfig, anchor: torch.Tensor,
    augment: nn.Module, autocast: Any, scaler: torch.amp.GradScaler | None, rotation_weight: float,
    styles: Styles | None = None,
) -> dict[str, torch.Tensor]:
    """One G (and separate S) update. With self-conditioning, translations are asked for drawn clusters.

    terms["skipped"] is 1 (a 0-dim tensor on the device) when a gradient was not finite and the update was skipped.
    """
    loss_cfg = cfg.loss
    # D is frozen here and called as the plain module, never through DDP: no D gradient is wanted, so there is
    # nothing to all-reduce (through the wrapper, DDP would wait for D gradients that never come).
    disc, embed = nets.discriminator, nets.embed
    if nets.ddp_siamese is not None:
        embed = nets.ddp_siamese
    generator = nets.ddp_generator if nets.ddp_generator is not None else nets.generator
    style = styles.draw(source.shape[0]) if styles is not None else None
    fake_anchor = styles.anchors[style] if styles is not None else anchor
    with autocast():
        translation = generator(source, style)
        terms = {"g_adv": anchor_g_loss(disc(augment(translation)).float(), fake_anchor, weights=disc.patch_weights)}
        embed_weights = nets.embed.patch_weights
        if nets.siamese is None:
            with torch.no_grad():  # S = D is not updated here, and S(source) does not depend on G
                src_emb = pooled_embedding(embed(source).float(), embed_weights)
        else:
            src_emb = pooled_embedding(embed(source).float(), embed_weights)
            terms["margin"] = margin_loss(src_emb, delta=loss_cfg.delta)
        trans_emb = pooled_embedding(embed(translation).float(), embed_weights)
        travel = travel_loss(src_emb, trans_emb, dist_weight=loss_cfg.dist)
        terms.update({f"g_{k}": v for k, v in travel.items()})
        total = loss_cfg.adv * terms["g_adv"] + loss_cfg.travel * (travel["travel_cos"] + travel["travel_dist"])
        if "margin" in terms:
            total = total + loss_cfg.margin * terms["margin"]
        if rotation_weight > 0:
            rotated, labels = rotate_batch(translation)
            terms["rot_g"] = rotation_loss(disc.rotation_logits(disc.features(rotated)).float(), labels)
            total = total + rotation_weight * terms["rot_g"]
    terms["g_total"] = total
    terms["skipped"] = _backward_step(total, opt_g, scaler)
    return {k: v.detach() for k, v in terms.items()}


@torch.no_grad()
def ema_step(ema: nn.Module, generator: nn.Module, *, beta: float, step: int) -> None:
    # Warm-up: early on the average follows G closely, so short runs release a useful model.
    beta = min(beta, (1 + step) / (10 + step))
    # One fused update for all tensors instead of one kernel launch per parameter (same numbers as lerp_).
    torch._foreach_lerp_(list(ema.parameters()), list(generator.parameters()), 1 - beta)
    for b_ema, b in zip(ema.buffers(), generator.buffers()):
        b_ema.copy_(b)


@torch.no_grad()
def _centre_crop_features(target: ImageFolder, indices: torch.Tensor, device: torch.device,
                          features: Callable[[torch.Tensor], torch.Tensor], *, batch: int = 64) -> torch.Tensor:
    """`features` of the centre crops of target images `indices`, `batch` at a time, as float32 on the CPU: [M, F]."""
    chunks = []
    for start in range(0, len(indices), batch):
        images = torch.stack([target.center(int(i)) for i in indices[start : start + batch]]).to(device)
        chunks.append(features(images).float().cpu())
    return torch.cat(chunks)


def embed_targets(disc: nn.Module, target: ImageFolder, indices: torch.Tensor, device: torch.device,
                  *, batch: int = 64) -> torch.Tensor:
    """D's pooled trunk features of the centre crops of target images `indices`, L2-normalised: [M, F]."""
    return _centre_crop_features(
        target, indices, device, lambda images: torch.nn.functional.normalize(disc.features(images).float(), dim=1),
        batch=batch,
    )


@torch.no_grad()
def backbone_style_targets(target: ImageFolder, indices: torch.Tensor, subset: torch.Tensor, device: torch.device,
                           *, batch: int = 64) -> torch.Tensor:
    """Style statistics of the frozen backbone (travel.projected.style_statistics) of the centre crops of target
    images `indices`, standardised with the mean and std of the clustering subset: [M, 992]."""
    from travel.projected import FrozenBackbone, style_statistics

    backbone = FrozenBackbone(128).to(device)
    features = _centre_crop_features(target, indices, device, lambda images: style_statistics(backbone, images), batch=batch)
    reference = features[subset]
    return (features - reference.mean(dim=0)) / (reference.std(dim=0) + 1e-6)


def update_styles(styles: Styles, disc: nn.Module, target: ImageFolder, device: torch.device, *, seed: int,
                  features_from: str = "discriminator") -> Styles:
    """Recluster the subset (k-means++ first, warm start and Hungarian-matched ids after), relabel every image.

    With frozen backbone features nothing changes between clusterings: they are clustered once, then kept.
    """
    if features_from == "backbone" and styles.result is not None:
        return styles
    k = styles.anchors.shape[0]
    everything = torch.arange(len(target))
    if features_from == "backbone":
        features = backbone_style_targets(target, everything, styles.subset, device)  # [num_targets, F]
    else:
        features = embed_targets(disc, target, everything, device)  # [num_targets, F]
    points = features[styles.subset]
    if styles.result is None:
        # The first clustering has no previous means to start from: k-means++ can settle in a local optimum
        # (two seeds in one true group), so keep the best of several restarts, as scikit-learn's n_init does.
        tries = [recluster(points, k, generator=torch.Generator().manual_seed(seed * 100 + t)) for t in range(10)]
        result = min(tries, key=lambda r: r.inertia)
    else:
        result = recluster(points, k, previous=styles.result, generator=torch.Generator().manual_seed(seed))
    labels = assign(features, result.means)
    labels[styles.subset] = result.labels
    return replace(styles, labels=labels.to(device), frequencies=cluster_frequencies(labels, k).to(device), result=result)


def styles_state(styles: Styles) -> dict[str, torch.Tensor]:
    assert styles.result is not None
    return {"labels": styles.labels.cpu(), "frequencies": styles.frequencies.cpu(), "subset": styles.subset,
            "means": styles.result.means, "subset_labels": styles.result.labels}


def restore_styles(state: dict[str, Any], styles: Styles | None, device: torch.device) -> Styles | None:
    if styles is None:
        return None
    try:
        saved = state["styles"]
        result = KMeansResult(means=saved["means"], labels=saved["subset_labels"], inertia=0.0, iterations=0)
        return replace(styles, subset=saved["subset"], labels=saved["labels"].to(device),
                       frequencies=saved["frequencies"].to(device), result=result)
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"resume state has no usable self-conditioning state ({exc})") from None


def make_styles(config: FitConfig, num_targets: int, device: torch.device) -> Styles | None:
    k, vec_len = config.clusters.clusters, config.model.discriminator.vec_len
    if k == 0:
        return None
    # Anchors on distinct axes, scale * sqrt(L) from the origin: any two lie 2 * scale^2 apart in d(.), beyond
    # the margin m = 1 at the default scale, so a translation pulled onto c_k is far from every other anchor.
    anchors = torch.zeros(k, vec_len, device=device)
    anchors[torch.arange(k), torch.arange(k)] = config.clusters.anchor_scale * vec_len**0.5
    subset = torch.randperm(num_targets, generator=torch.Generator().manual_seed(config.train.seed))
    subset = subset[: config.clusters.subset].sort().values
    uniform = torch.full((k,), 1.0 / k, device=device)
    return Styles(anchors, subset, torch.zeros(num_targets, dtype=torch.long, device=device), uniform)


def rotate_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate image i by (i mod 4) * 90 degrees, a balanced set of labels. images: [N, C, S, S]."""
    labels = torch.arange(images.shape[0], device=images.device) % 4
    # The turns come from the index, not from `labels`: reading a GPU tensor back would sync host and device.
    rotated = torch.stack([torch.rot90(img, i % 4, dims=(1, 2)) for i, img in enumerate(images)])
    return rotated, labels


def rotation_weight_at(cfg: FitConfig, step: int) -> float:
    """The generator's rotation weight alpha, decayed linearly to 0 over training when asked."""
    alpha = cfg.loss.rotation_g if cfg.loss.rotation_d > 0 else 0.0
    if cfg.loss.rotation_g_decay:
        alpha *= max(0.0, 1.0 - step / cfg.train.steps)
    return alpha


def _backward_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> torch.Tensor:
    """Backward and update. Returns a 0-dim float tensor on the loss's device: 1 when a gradient was not finite and
    the update was skipped (weights and optimizer state untouched), else 0.

    Nothing is read back to the host: fused Adam (make_optimizers) takes the flag as `found_inf` and skips on the
    device, as it does for the fp16 GradScaler, whose own overflow skips are routine while its scale settles and are
    not counted here. Only an optimizer without the fused kernel gets the flag by one host-device sync. The gradients
    are the ones DDP averaged, so every rank takes the same decision.
    """
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return torch.zeros((), device=loss.device)
    loss.backward()
    found_inf = non_finite([p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None], loss.device)
    if opt.param_groups[0].get("fused"):
        opt.found_inf = found_inf  # type: ignore[attr-defined]  # read by Adam.step, as GradScaler passes it
        try:
            opt.step()
        finally:
            del opt.found_inf  # type: ignore[attr-defined]
    elif not found_inf.item():
        opt.step()
    return found_inf


def make_optimizers(nets: Nets, config: FitConfig, device: torch.device) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """TTUR: Adam for G (and a separate S) at lr_g, for D at lr_d. Fused where the device has the kernel (CPU, CUDA):
    one kernel per update, and it applies a non-finite step's skip on the device."""
    tc = config.train
    params_g = list(nets.generator.parameters()) + (list(nets.siamese.parameters()) if nets.siamese else [])
    groups = ((params_g, tc.lr_g), (list(nets.discriminator.parameters()), tc.lr_d))
    try:
        opt_g, opt_d = (torch.optim.Adam(p, lr=lr, betas=(tc.beta1, tc.beta2), fused=True) for p, lr in groups)
    except RuntimeError:  # a device without fused Adam
        opt_g, opt_d = (torch.optim.Adam(p, lr=lr, betas=(tc.beta1, tc.beta2)) for p, lr in groups)
    return opt_g, opt_d


def load_optimizer(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load a saved optimizer state, but step the way this machine steps: a state saved by the unfused optimizer
    (an older version, or a device without the kernel) is stepped by the fused one here, and the other way round."""
    fused = opt.param_groups[0].get("fused")
    opt.load_state_dict(saved)
    for group in opt.param_groups:
        group["fused"] = fused
        for param in group["params"]:
            state = opt.state.get(param, {})
            if fused and "step" in state:  # the fused kernel keeps its step counts beside the weights, in float32
                state["step"] = state["step"].to(param.device, torch.float32)


# ---------------------------------------------------------------------------------------------
# The loop.


def fit(
    config: FitConfig,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress_fn: ProgressFn | None = None,
    abort_fn: AbortFn | None = None,
    message_fn: Callable[[str], None] | None = None,
) -> FitResult:
    """Train a translator from config.data.source to config.data.target; write everything into run_dir.

    With resume=True, run_dir must hold the state of an earlier run with the same architecture; training
    continues from its step up to config.train.steps, exactly as if it had never stopped.
    A run_dir that already holds a run is refused unless resume=True, or overwrite=True (which starts afresh);
    so is a run_dir another process is training in (a lock the OS releases when that process ends).
    Hooks: progress_fn after every step, abort_fn to stop early (state is saved), message_fn for warnings.

    A step whose gradients are not finite is skipped; after BAD_STEPS_BEFORE_ROLLBACK of them in a row (counted on
    the device, read at the next log or save step), training goes back to the last saved state with both learning
    rates halved (at most MAX_ROLLBACKS times).

    Under torchrun (RANK, WORLD_SIZE, ... in the environment) every process runs fit: DDP averages the
    gradients, each rank draws its own batches, and rank 0 alone writes files and calls progress_fn and
    message_fn. A wish to stop (a signal, abort_fn) on any rank stops every rank at the next log or save step.
    """
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / config.name
    world, device = join(resolve_device(config.train.device))
    try:
        with run_lock(run_dir) if world.is_main else nullcontext():
            return _fit(
                config, run_dir, world, device, resume=resume, overwrite=overwrite, progress_fn=progress_fn,
                abort_fn=abort_fn, message_fn=message_fn,
            )
    finally:
        leave(world)


def _fit(
    config: FitConfig, run_dir: Path, world: World, device: torch.device, *, resume: bool, overwrite: bool,
    progress_fn: ProgressFn | None, abort_fn: AbortFn | None, message_fn: Callable[[str], None] | None,
) -> FitResult:
    tc, dc = config.train, config.data
    if world.is_main:  # it may delete files; if it refuses, torchrun ends the other ranks too
        check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    say = message_fn if message_fn is not None and world.is_main else (lambda message: None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest convolutions once
    autocast, scaler = precision_context(tc.precision, device)

    source_dir, target_dir = resolve_domains(dc.source, dc.target, None)
    source = ImageFolder(source_dir, load_size=dc.load_size, crop_size=dc.crop_size, flip=dc.flip, cache=dc.cache)
    target = ImageFolder(target_dir, load_size=dc.load_size, crop_size=dc.crop_size, flip=dc.flip, cache=dc.cache)
    for report in (source.report, target.report):
        for file, reason in report.skipped:
            say(f"warning: skipped {reason}")
        if report.skipped:
            say(f"warning: {len(report.skipped)} unreadable file(s) skipped in {report.folder}; {report.usable} used")
        if report.upscaled:
            say(f"warning: {report.upscaled} image(s) in {report.folder} are smaller than the {dc.crop_size}px crop and are upscaled")

    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    nets = build_nets(config, device)
    memory_format = accelerate(nets, config, device, say)
    opt_g, opt_d = make_optimizers(nets, config, device)
    augment = DiffAugment(colour=dc.augment_colour) if dc.augment else nn.Identity()
    anchor = torch.zeros(config.model.discriminator.vec_len, device=device)  # c: the origin
    styles = make_styles(config, len(target), device)

    start, elapsed_before, lr_scale = 0, 0.0, 1.0
    if resume:
        state = load_state(run_dir)
        saved = from_dict(FitConfig, json.loads(state["config"]))
        if saved.model != config.model:
            raise CheckpointError(f"{run_dir}: the saved run has a different architecture; cannot resume with this one")
        restore(state, nets, opt_g, opt_d)
        styles = restore_styles(state, styles, device)
        start, elapsed_before = int(state["step"]), float(state.get("elapsed", 0.0))
        lr_scale = float(state.get("lr_scale", 1.0))
        if start >= tc.steps:
            raise ConfigError(f"{run_dir} is already at step {start}; ask for more --steps to continue")
        if world.is_main:
            truncate_metrics(run_dir / "metrics.jsonl", start)  # lines logged after the saved step are replayed
    elif world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        atomic_write_text(run_dir / "config.json", to_json(config) + "\n")
    distribute(nets, config, world, device)

    fixed = torch.stack([source.center(i % len(source)) for i in range(tc.sample_count)]).to(device)

    def batches_from(step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        # Each rank draws its own batches from (seed, step, rank): see UnpairedBatches, and README "Many GPUs".
        batches = UnpairedBatches(
            source, target, batch_size=tc.batch_size, seed=tc.seed, start=step, stop=tc.steps, rank=world.rank
        )
        return iter(torch.utils.data.DataLoader(
            batches, batch_size=None, shuffle=False, num_workers=dc.workers, pin_memory=device.type == "cuda",
            generator=torch.Generator(),  # keep the loader from drawing on the global RNG (exact resume)
            persistent_workers=False, prefetch_factor=4 if dc.workers else None,
        ))

    metrics_path = run_dir / "metrics.jsonl"
    weights_path = run_dir / f"{config.name}.safetensors"
    running: dict[str, torch.Tensor] = {}
    logged: dict[str, float] = {}
    count = rollbacks = 0
    skipped = streak = longest = torch.zeros((), device=device)  # steps skipped since the last log; in a row; most in a row
    step = start
    t0 = time.perf_counter()
    t_log, step_log = t0, start
    interrupted = wants_stop = False

    def take_snapshot(step: int) -> dict[str, Any]:
        state = snapshot(nets, opt_g, opt_d, config, step, elapsed_before + time.perf_counter() - t0)
        state["lr_scale"] = lr_scale
        if styles is not None and styles.result is not None:  # none before the first clustering
            state["styles"] = styles_state(styles)
        return state

    def save(state: dict[str, Any]) -> None:
        step = state["step"]
        save_state(run_dir, state)
        summary = {
            "steps": step, "batch_size": tc.batch_size, "images_seen": step * tc.batch_size * world.size,
            "train_seconds": round(state["elapsed"], 1), "device": str(device), "siamese": config.model.siamese,
            "discriminator": config.model.discriminator.family,
            "source_images": len(source), "target_images": len(target),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "metrics": logged,
        }
        if world.size > 1:
            summary["processes"] = world.size  # batch_size is per process
        if styles is not None:
            summary["style_frequencies"] = [round(float(f), 6) for f in styles.frequencies]
        save_weights(
            weights_path, nets.ema, source_domain=domain_name(source_dir), target_domain=domain_name(target_dir),
            image_size=dc.crop_size, summary=summary,
        )
        if "styles" in state:  # which real target is in which cluster, readable without torch (and by travel eval)
            saved = state["styles"]
            record = {"features": config.clusters.features, "step": step,
                      "frequencies": [round(float(f), 6) for f in saved["frequencies"]],
                      "images": {p.relative_to(target.folder).as_posix(): int(k) for p, k in zip(target.paths, saved["labels"])}}
            atomic_write_text(run_dir / CLUSTERS_FILE, json.dumps(record, indent=1) + "\n")

    # The state that a run of non-finite steps rolls back to: the last one saved (every rank keeps its own copy).
    good = copy.deepcopy(take_snapshot(start))
    with stop_on_signals() as signalled:
        batches = batches_from(start)
        while step < tc.steps:
            source_batch, target_batch, target_index = next(batches)
            if world.rank > 0:
                # Rank 0 continues the saved RNG stream; the others draw augmentations and styles from
                # (seed, step, rank), so they too resume exactly, whatever the world size was before.
                reseed(tc.seed, step, world.rank)
            source_batch = source_batch.to(device, non_blocking=True, memory_format=memory_format)
            target_batch = target_batch.to(device, non_blocking=True, memory_format=memory_format)
            target_style = None
            if styles is not None:
                if step % config.clusters.recluster_every == 0:
                    if world.is_main:
                        styles = update_styles(styles, nets.discriminator, target, device, seed=tc.seed + step,
                                               features_from=config.clusters.features)
                    styles = share_styles(styles, world, device)
                target_style = styles.labels[target_index.to(device, non_blocking=True)]

            bad = torch.zeros((), device=device)  # 1 if an update of this step was skipped
            for _ in range(tc.d_steps):
                d_terms = discriminator_step(
                    nets, opt_d, source_batch, target_batch, cfg=config, anchor=anchor, augment=augment,
                    autocast=autocast, scaler=scaler, target_style=target_style, styles=styles,
                )
                bad = torch.maximum(bad, d_terms.pop("skipped"))
            nets.discriminator.requires_grad_(False)
            g_terms = generator_step(
                nets, opt_g, source_batch, cfg=config, anchor=anchor, augment=augment, autocast=autocast,
                scaler=scaler, rotation_weight=rotation_weight_at(config, step), styles=styles,
            )
            nets.discriminator.requires_grad_(True)
            bad = torch.maximum(bad, g_terms.pop("skipped"))
            ema_step(nets.ema, nets.generator, beta=tc.ema_beta, step=step)
            step += 1

            # Non-finite gradients: that update was skipped. The tallies stay on the device and are read at log and
            # save steps only, so a GPU never waits for the host inside a step. A skipped step's terms are left out of
            # the averages.
            skipped, streak = skipped + bad, (streak + 1) * bad
            longest = torch.maximum(longest, streak)
            for key, value in {**d_terms, **g_terms}.items():
                running[key] = running.get(key, 0.0) + torch.where(bad > 0, 0.0, value)
            count = count + 1 - bad
            at_log = step % tc.log_every == 0 or step == tc.steps
            at_save = step % tc.save_every == 0 or step == tc.steps
            streak_now = 0
            if at_log or at_save:
                streak_now, longest_now = (int(v) for v in torch.stack([streak, longest]).tolist())
                if at_save and not weights_finite(nets):
                    longest_now = BAD_STEPS_BEFORE_ROLLBACK  # never save them: roll back now
                if longest_now >= BAD_STEPS_BEFORE_ROLLBACK:  # many in a row: back to the last saved state, slower
                    rollbacks += 1
                    if rollbacks > MAX_ROLLBACKS:
                        raise TravelError(
                            f"training diverged at step {step}: non-finite gradients even after {MAX_ROLLBACKS} rollbacks "
                            f"with lower learning rates; the last good state (step {good['step']}) is kept; try lower --lr-g/--lr-d"
                        )
                    lr_scale *= 0.5
                    restore(good, nets, opt_g, opt_d)
                    if "styles" in good:
                        styles = restore_styles(good, styles, device)
                    for opt, lr in ((opt_g, tc.lr_g), (opt_d, tc.lr_d)):
                        for group in opt.param_groups:
                            group["lr"] = lr * lr_scale
                    failed_at, step = step, int(good["step"])
                    say(
                        f"warning: {longest_now} bad steps in a row by step {failed_at}: rolled back to step {step} "
                        f"with learning rates halved (lr_g {tc.lr_g * lr_scale:.3g}, lr_d {tc.lr_d * lr_scale:.3g})"
                    )
                    if world.is_main:
                        truncate_metrics(metrics_path, step)
                        append_jsonl(metrics_path, {"step": step, "event": "rollback", "from_step": failed_at,
                                                    "lr_g": tc.lr_g * lr_scale, "lr_d": tc.lr_d * lr_scale})
                    running, count, t_log, step_log = {}, 0, time.perf_counter(), step
                    skipped = streak = longest = torch.zeros((), device=device)
                    batches = batches_from(step)
                    continue
            if at_log:
                now = time.perf_counter()
                running = average(running, world)  # the mean over ranks: one all-reduce, at log steps only
                kept, skipped_now = float(count), int(skipped)  # every rank skips the same steps (averaged gradients)
                logged = {k: float(v) / max(kept, 1) for k, v in running.items()}
                logged["images_per_s"] = (step - step_log) * tc.batch_size * world.size / max(now - t_log, 1e-9)
                if skipped_now:
                    logged["skipped_steps"] = skipped_now
                    which = f"step {step}" if step - step_log == 1 else f"{skipped_now} of steps {step_log + 1}-{step}"
                    say(f"warning: {which} skipped (a loss or gradient was not finite)")
                if world.is_main:
                    append_jsonl(metrics_path, {"step": step, "time": round(elapsed_before + now - t0, 3), **logged})
                running, count, t_log, step_log = {}, 0, now, step
                skipped = torch.zeros((), device=device)
                if not all(math.isfinite(v) for v in logged.values()):  # the same averages, so every rank stops
                    if world.is_main:
                        save_samples(run_dir, nets.ema, fixed, step, styles=styles)
                    raise TravelError(f"training diverged at step {step} (non-finite loss); lower the learning rates")
            if world.is_main and (step % tc.sample_every == 0 or step == tc.steps):
                save_samples(run_dir, nets.ema, fixed, step, styles=styles)
            if at_save and (streak_now == 0 or step == tc.steps):  # amid bad steps, keep the earlier good state
                good = copy.deepcopy(take_snapshot(step))
                if world.is_main:
                    save(good)
            if progress_fn is not None and world.is_main:
                progress_fn(step, tc.steps, logged)
            wants_stop = wants_stop or signalled.is_set() or (abort_fn is not None and abort_fn())
            if world.size > 1:
                # Every rank must leave at the same step. Agreeing costs a host-device sync, so the ranks share
                # their wish to stop at log and save steps only.
                stopping = (step % tc.log_every == 0 or step % tc.save_every == 0) and any_rank(wants_stop, world, device)
            else:
                stopping = wants_stop
            if stopping:
                interrupted = step < tc.steps
                if world.is_main and step % tc.save_every and step != tc.steps:
                    save(take_snapshot(step))
                break
    # Rank 0 alone writes the last save: no rank returns before it has landed, so whatever comes next (a resume
    # in the same process group, a read of the weights) sees the run folder as it is left.
    wait_for_all(world)
    return FitResult(
        run_dir=run_dir, weights=weights_path, step=step, interrupted=interrupted, metrics=logged,
        skipped_images=source.report.skipped + target.report.skipped,
    )


def weights_finite(nets: Nets) -> bool:
    """Whether every weight of every network is finite (called at save steps only)."""
    modules = [nets.generator, nets.discriminator, nets.ema] + ([nets.siamese] if nets.siamese is not None else [])
    return all_finite([p for m in modules for p in m.parameters()])


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether no entry of any tensor is NaN or Inf: one host-device sync in all."""
    return not tensors or not non_finite(tensors, tensors[0].device).item()


def non_finite(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """1.0 if an entry of any tensor is NaN or Inf, else 0.0: a 0-dim float32 tensor on `device`, computed there
    (one fused norm per tensor) without waiting for it."""
    if not tensors:
        return torch.zeros((), device=device)
    return (~torch.isfinite(torch.stack(torch._foreach_norm(tensors)).sum())).float()


def resume_config(run_dir: str | Path, *, steps: int | None = None, workers: int | None = None,
                  compile: bool | None = None, channels_last: bool | None = None) -> FitConfig:
    """The config of an earlier run, optionally with more steps, another number of loader workers, or other
    speed settings (--compile, --channels-last: they change how the step runs, not what it computes)."""
    config = load_run_config(run_dir)
    train, data = config.train, config.data
    if steps is not None:
        train = replace(train, steps=steps)
    if compile is not None:
        train = replace(train, compile=compile)
    if channels_last is not None:
        train = replace(train, channels_last=channels_last)
    if workers is not None:
        data = replace(data, workers=workers)
    return replace(config, train=train, data=data)


# ---------------------------------------------------------------------------------------------
# Helpers.


def build_nets(config: FitConfig, device: torch.device) -> Nets:
    generator = build_generator(config.model.generator).to(device)
    discriminator = build_discriminator(config.model.discriminator).to(device)
    siamese = build_siamese(config.model.discriminator).to(device) if config.model.siamese == "separate" else None
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    return Nets(generator, discriminator, siamese, ema)


def accelerate(nets: Nets, config: FitConfig, device: torch.device, say: Callable[[str], None]) -> torch.memory_format:
    """Apply --channels-last and --compile to the trained networks; returns the memory format for the inputs.

    The EMA copy is left as it is: it is only sampled and saved. Compiling is in place (Module.compile), so
    state dicts keep their keys and DDP wraps the compiled module.
    """
    tc = config.train
    trained = [net for net in (nets.generator, nets.discriminator, nets.siamese) if net is not None]
    memory_format = torch.preserve_format
    if tc.channels_last:
        for net in trained:
            net.to(memory_format=torch.channels_last)  # NHWC: the layout tensor-core and oneDNN convolutions run in
        memory_format = torch.channels_last
    if tc.compile:
        problem = compile_problem(device)
        if problem is not None:
            say(f"warning: --compile skipped, torch.compile does not work here: {problem}")
        else:
            for net in trained:
                net.compile(backend=COMPILE_BACKEND)
    return memory_format


def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot run on `device` (no C++ compiler for the CPU backend, no Triton...), or None.

    Compiling is lazy, so a platform that cannot compile fails at the first call; a tiny trial finds out first.
    """
    try:
        trial = torch.compile(lambda x: torch.tanh(x) * 2.0)
        trial(torch.ones(4, device=device, requires_grad=True)).sum().backward()
    except Exception as exc:  # the compiler stack raises many kinds (InductorError, BackendCompilerFailed, OSError...)
        text = str(exc).strip()
        return text.splitlines()[0][:200] if text else type(exc).__name__
    return None


def distribute(nets: Nets, config: FitConfig, world: World, device: torch.device) -> None:
    """Wrap the trained networks in DDP when several processes train; nothing for one process.

    find_unused_parameters only where a network holds parameters that no loss trains (a rotation head with no
    rotation loss, S's rotation head). It must stay off otherwise: it marks as unused whatever the last forward
    before backward did not reach, and D's rotation head is reached through D.features, not the wrapper.
    """
    rotation_head = config.model.discriminator.rotation_head
    nets.ddp_generator = wrap(nets.generator, world, device)
    nets.ddp_discriminator = wrap(
        nets.discriminator, world, device, find_unused=rotation_head and config.loss.rotation_d == 0
    )
    if nets.siamese is not None:
        nets.ddp_siamese = wrap(nets.siamese, world, device, find_unused=rotation_head)


def share_styles(styles: Styles, world: World, device: torch.device) -> Styles:
    """Rank 0's cluster labels and frequencies on every rank. Only rank 0 clusters: the ranks must agree on every
    label, and features computed on different GPUs need not agree to the last bit."""
    if world.size == 1:
        return styles
    labels, frequencies = broadcast([styles.labels, styles.frequencies], world, device)
    return replace(styles, labels=labels, frequencies=frequencies)


def snapshot(nets: Nets, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, config: FitConfig, step: int,
             elapsed: float) -> dict[str, Any]:
    state = {
        "format": "travel-state", "schema_version": SCHEMA_VERSION, "travel_version": __version__,
        "config": to_json(config), "step": step, "elapsed": elapsed,
        "generator": nets.generator.state_dict(), "discriminator": nets.discriminator.state_dict(),
        "ema": nets.ema.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
        "rng_cpu": torch.get_rng_state(), "rng_python": list(random.getstate()[1]),
    }
    if nets.siamese is not None:
        state["siamese"] = nets.siamese.state_dict()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any], nets: Nets, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer) -> None:
    try:
        nets.generator.load_state_dict(state["generator"])
        nets.discriminator.load_state_dict(state["discriminator"])
        nets.ema.load_state_dict(state["ema"])
        if nets.siamese is not None:
            nets.siamese.load_state_dict(state["siamese"])
        load_optimizer(opt_g, state["opt_g"])
        load_optimizer(opt_d, state["opt_d"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"resume state does not fit this model ({str(exc).splitlines()[0]})") from None
    torch.set_rng_state(state["rng_cpu"])
    random.setstate((3, tuple(int(x) for x in state["rng_python"]), None))
    if "rng_cuda" in state and torch.cuda.is_available():
        # Per visible GPU; a machine with fewer GPUs than the one that saved keeps the states it has room for.
        for index, rng in enumerate(state["rng_cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng, index)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT / SIGTERM set an event instead of killing the run, so the loop can save and leave cleanly."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        if event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now; saves are atomic, so nothing is torn
        event.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@torch.no_grad()
def save_samples(run_dir: Path, generator: Generator, fixed: torch.Tensor, step: int, *,
                 styles: Styles | None = None) -> Path:
    """A grid: the fixed source images on top, their translations by the EMA generator below (one row per style)."""
    n = fixed.shape[0]
    if styles is None:
        rows = [generator(fixed)]
    else:
        rows = [generator(fixed, torch.full((n,), k, device=fixed.device)) for k in range(styles.anchors.shape[0])]
    grid = make_grid(torch.cat([fixed, *rows]).float().cpu(), nrow=n, padding=2, pad_value=1.0)
    buffer = io.BytesIO()
    tensor_to_image(grid).save(buffer, format="PNG")
    path = run_dir / "samples" / f"step_{step:07d}.png"
    atomic_write_bytes(path, buffer.getvalue())
    return path


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line. An append of one short line either lands whole or not at all on local disks."""
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
    except OSError as exc:  # a full disk, a folder turned read-only
        raise write_error(path, exc) from None


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Never train over an earlier run by accident; clear what a killed save left behind."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a run folder")
    if not run_dir.is_dir():
        return
    for stale in run_dir.glob(".*.tmp"):  # a temporary file of an atomic write that a hard kill interrupted
        stale.unlink(missing_ok=True)
    earlier = [name for name in (STATE_FILE, "metrics.jsonl") if (run_dir / name).exists()]
    if resume or not earlier:
        return
    if not overwrite:
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir}, pick another --name, or --overwrite to start over"
        )
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run's metrics must not follow the old run's


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines past `step` (written after the last save by a run that was killed)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a torn last line
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def domain_name(folder: Path) -> str:
    name = folder.resolve().name
    if name in ("trainA", "trainB", "testA", "testB"):
        return f"{folder.resolve().parent.name}{name[-1]}"
    return name

