"""One training step (D step, G step, EMA) and what it runs on: the networks, their optimizers, the accelerations.

`train_step` is the step `fit` runs, and the one `travel bench speed` times. docs/METHOD.md, "Losses", has the terms.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from travel.augment import DiffAugment
from travel.config import FitConfig
from travel.losses import (
    anchor_d_loss, anchor_distance, anchor_g_loss, margin_loss, per_image, pooled_embedding, r1_penalty, rotation_loss,
    travel_loss,
)
from travel.nets.discriminators import build_discriminator, build_siamese
from travel.nets.generator import Generator, build_generator
from travel.runtime import precision_context
from travel.train.distributed import World, wrap
from travel.train.styles import Styles

# torch.compile's backend for --compile. Tests use "aot_eager": the same graph capture and autograd tracing,
# without inductor's code generation, which takes minutes on a small CPU.
COMPILE_BACKEND = "inductor"


@dataclass
class Nets:
    generator: Generator
    discriminator: nn.Module  # satisfies travel.nets.discriminators.base.Discriminator; the steps use nothing else
    siamese: nn.Module | None  # the separate S network (base.Embedding), or None when S is D itself
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
class Trainer:
    """Everything one training step needs, built once per run (build_trainer)."""

    config: FitConfig  # resolved
    nets: Nets
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    augment: nn.Module  # what D sees of every image: DiffAugment, or the identity
    anchor: torch.Tensor  # [L]: c, the origin
    autocast: Callable[[], Any]
    scaler: torch.amp.GradScaler | None
    memory_format: torch.memory_format  # of the inputs: NHWC with --channels-last


def build_trainer(config: FitConfig, device: torch.device, say: Callable[[str], None]) -> Trainer:
    """The networks (initialised from torch's global RNG: seed it first), accelerated, and their optimizers."""
    autocast, scaler = precision_context(config.train.precision, device)
    nets = build_nets(config, device)
    memory_format = accelerate(nets, config, device, say)
    opt_g, opt_d = make_optimizers(nets, config, device)
    augment = DiffAugment(colour=config.data.augment_colour) if config.data.augment else nn.Identity()
    anchor = torch.zeros(config.model.discriminator.vec_len, device=device)
    return Trainer(config, nets, opt_g, opt_d, augment, anchor, autocast, scaler, memory_format)


def train_step(
    t: Trainer, source: torch.Tensor, target: torch.Tensor, *, step: int, styles: Styles | None = None,
    target_style: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One step of training: cfg.train.d_steps D updates, one G update, the EMA. source, target: [B, C, S, S] on the
    device. Returns the loss terms (detached, on the device) and `bad`, a 0-dim tensor: 1 when a gradient was not
    finite and an update was skipped. Reads nothing back to the host."""
    cfg = t.config
    kw = dict(cfg=cfg, anchor=t.anchor, augment=t.augment, autocast=t.autocast, scaler=t.scaler, styles=styles)
    bad = torch.zeros((), device=source.device)
    for _ in range(cfg.train.d_steps):
        d_terms = discriminator_step(t.nets, t.opt_d, source, target, target_style=target_style, **kw)
        bad = torch.maximum(bad, d_terms.pop("skipped"))
    t.nets.discriminator.requires_grad_(False)
    g_terms = generator_step(t.nets, t.opt_g, source, rotation_weight=rotation_weight_at(cfg, step), **kw)
    t.nets.discriminator.requires_grad_(True)
    bad = torch.maximum(bad, g_terms.pop("skipped"))
    ema_step(t.nets.ema, t.nets.generator, beta=cfg.train.ema_beta, step=step)
    return {**d_terms, **g_terms}, bad


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
        if loss_cfg.rotating:
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

def rotate_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate image i by (i mod 4) * 90 degrees, a balanced set of labels. images: [N, C, S, S]."""
    labels = torch.arange(images.shape[0], device=images.device) % 4
    # The turns come from the index, not from `labels`: reading a GPU tensor back would sync host and device.
    rotated = torch.stack([torch.rot90(img, i % 4, dims=(1, 2)) for i, img in enumerate(images)])
    return rotated, labels

def rotation_weight_at(cfg: FitConfig, step: int) -> float:
    """The generator's rotation weight alpha, decayed linearly to 0 over training when asked."""
    alpha = cfg.loss.rotation_g if cfg.loss.rotating else 0.0
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

def non_finite(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """1.0 if an entry of any tensor is NaN or Inf, else 0.0: a 0-dim float32 tensor on `device`, computed there
    (one fused norm per tensor) without waiting for it."""
    if not tensors:
        return torch.zeros((), device=device)
    return (~torch.isfinite(torch.stack(torch._foreach_norm(tensors)).sum())).float()

def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether no entry of any tensor is NaN or Inf: one host-device sync in all."""
    return not tensors or not non_finite(tensors, tensors[0].device).item()

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
# Building.


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
        nets.discriminator, world, device, find_unused=rotation_head and not config.loss.rotating
    )
    if nets.siamese is not None:
        nets.ddp_siamese = wrap(nets.siamese, world, device, find_unused=rotation_head)
