"""`travel bench speed`: training images/s, inference ms/image, peak memory, FLOPs and share of a measured matmul peak."""

from __future__ import annotations

import copy
import gc
import platform
import re
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from travel import __version__
from travel.augment import DiffAugment
from travel.config import (
    DEFAULT_CHANNELS, DEFAULT_PADDING, FAMILY_DEFAULTS, DataConfig, FitConfig, LossConfig, TrainConfig, model_config_for,
)
from travel.errors import ConfigError
from travel.inference import inference_layout, run_generator
from travel.models import Generator
from travel.runtime import precision_context, resolve_device
from travel.train import (
    accelerate, build_nets, discriminator_step, ema_step, generator_step, make_optimizers, rotation_weight_at,
)

MessageFn = Callable[[str], None]


@dataclass(frozen=True)
class SpeedSettings:
    """What `travel bench speed` measures; the model flags mirror `travel fit`."""

    size: int = 128  # square training crop / inference input, pixels
    batch_size: int = 4  # images per domain per training step, and the batched inference size
    steps: int = 10  # timed training steps (the median is reported)
    warmup: int = 3  # untimed steps first (allocator, cuDNN autotuning, lazy init)
    device: str = "auto"
    precision: str = "auto"  # training autocast, as in `travel fit`; inference runs fp32 like Translator
    channels: int = DEFAULT_CHANNELS
    depth: int = 4
    disc: str = "projected"  # discriminator family, as `travel fit --disc`
    vec_len: int | None = None  # None: the family's default (FAMILY_DEFAULTS)
    siamese: str | None = None
    padding: str = DEFAULT_PADDING  # G's border padding: replicate or zeros
    warp: bool = True  # G's learned displacement field, as `travel fit --warp` (the default)
    rotation: bool = False
    pixel_weight: float = 0.0  # the projected family's pixel-space branch, as `travel fit --pixel-weight`
    augment: bool = True
    channels_last: bool = False  # train in NHWC, as `travel fit --channels-last`
    compile: bool = False  # torch.compile the trained networks, as `travel fit --compile`
    profile: bool = False  # also run torch.profiler over one inference batch and one training step
    matmul_size: int | None = None  # side of the square peak-matmul; None: 2048 on CPU, 8192 on CUDA
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ConfigError(f"--size must be >= 8, got {self.size}")
        if self.steps < 1 or self.warmup < 0:
            raise ConfigError("--steps must be >= 1 and --warmup >= 0")
        if self.matmul_size is not None and self.matmul_size < 16:
            raise ConfigError("the matmul size must be >= 16")


def bench_config(settings: SpeedSettings) -> FitConfig:
    """The FitConfig `travel fit` would build from the same flags (its defaults otherwise)."""
    s = settings
    model = model_config_for(  # checks s.disc
        size=s.size, channels=s.channels, depth=s.depth, vec_len=s.vec_len, rotation=s.rotation, siamese=s.siamese,
        padding=s.padding, disc=s.disc, warp=s.warp, pixel_weight=s.pixel_weight,
    )
    family = FAMILY_DEFAULTS[s.disc]
    return FitConfig(
        name="bench",
        model=model,
        loss=LossConfig(rotation_d=1.0 if s.rotation else 0.0, travel=family.travel),
        data=DataConfig(load_size=s.size, crop_size=s.size, augment=s.augment),
        train=TrainConfig(steps=max(s.steps + s.warmup, 1), batch_size=s.batch_size, lr_g=family.lr_g, device=s.device,  # type: ignore[arg-type]
                          precision=s.precision, seed=s.seed, channels_last=s.channels_last, compile=s.compile),  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------------------------
# Measuring.


def run_speed(settings: SpeedSettings, *, config: FitConfig | None = None, say: MessageFn | None = None) -> dict[str, Any]:
    """Benchmark one training configuration on the current device. `config` overrides the one built from settings
    (its size, batch size, device and precision then come from settings). Returns a JSON-ready report."""
    say = say or (lambda message: None)
    config = config or bench_config(settings)
    config = replace(config, train=replace(config.train, batch_size=settings.batch_size, device=settings.device,
                                           precision=settings.precision, channels_last=settings.channels_last,
                                           compile=settings.compile))  # type: ignore[arg-type]
    device = resolve_device(settings.device)
    autocast, scaler = precision_context(settings.precision, device)
    train_dtype = _autocast_dtype(autocast)

    torch.manual_seed(settings.seed)
    baseline = _memory_now(device)
    nets = build_nets(config, device)
    params = {
        "generator": _count(nets.generator), "discriminator": _count(nets.discriminator),
        "siamese": _count(nets.siamese) if nets.siamese is not None else 0,
    }
    size, batch = settings.size, settings.batch_size
    data = torch.Generator(device="cpu").manual_seed(settings.seed)
    # Random images in [-1, 1]: speed does not depend on what the pixels show.
    source = (torch.rand(batch, 3, size, size, generator=data) * 2 - 1).to(device)  # [B, 3, S, S]
    target = (torch.rand(batch, 3, size, size, generator=data) * 2 - 1).to(device)

    # Inference first, with only the networks alive, so its peak memory is not the optimizer's.
    say("inference")
    generator = inference_layout(copy.deepcopy(nets.ema))
    inference = {}
    for n in sorted({1, batch}):
        inputs = source[:n]
        _reset_peak(device)
        seconds = _time_calls(lambda: _infer(generator, inputs), repeats=max(settings.steps, 3), warmup=max(settings.warmup, 1), device=device)
        inference[n] = {"ms_per_image": 1000 * seconds / n, "median_ms_per_batch": 1000 * seconds,
                        "peak_memory_mb": _peak_mb(device)}
    with FlopCounterMode(display=False) as counter:
        _infer(generator, source)
    infer_flops = counter.get_total_flops() / batch
    profiles = {"inference": _profile(lambda: _infer(generator, source), device)} if settings.profile else {}
    del generator

    say("training")
    tc = config.train
    memory_format = accelerate(nets, config, device, say)
    source, target = (t.contiguous(memory_format=memory_format) for t in (source, target))
    opt_g, opt_d = make_optimizers(nets, config, device)
    augment = DiffAugment(colour=config.data.augment_colour) if config.data.augment else nn.Identity()
    anchor = torch.zeros(config.model.discriminator.vec_len, device=device)
    step_counter = [0]

    def train_step() -> None:
        # The loop body of travel.train.fit, minus data loading and logging.
        step = step_counter[0]
        for _ in range(tc.d_steps):
            discriminator_step(nets, opt_d, source, target, cfg=config, anchor=anchor, augment=augment,
                               autocast=autocast, scaler=scaler)
        nets.discriminator.requires_grad_(False)
        generator_step(nets, opt_g, source, cfg=config, anchor=anchor, augment=augment, autocast=autocast,
                       scaler=scaler, rotation_weight=rotation_weight_at(config, step))
        nets.discriminator.requires_grad_(True)
        ema_step(nets.ema, nets.generator, beta=tc.ema_beta, step=step)
        step_counter[0] += 1

    _reset_peak(device)
    step_seconds = _time_calls(train_step, repeats=settings.steps, warmup=settings.warmup, device=device)
    train_peak = _peak_mb(device)
    with FlopCounterMode(display=False) as counter:
        train_step()
    train_flops_step = counter.get_total_flops()
    if settings.profile:
        profiles["train"] = _profile(train_step, device)

    say("matmul peak")
    del opt_g, opt_d
    gc.collect()
    matmul_size = settings.matmul_size or (8192 if device.type == "cuda" else 2048)
    peak_fp32 = matmul_peak(device, torch.float32, size=matmul_size)
    peak_train = matmul_peak(device, train_dtype, size=matmul_size) if train_dtype != torch.float32 else peak_fp32

    train_flops_s = train_flops_step / step_seconds
    infer_batch = inference[batch]
    infer_flops_s = infer_flops * 1000 / infer_batch["ms_per_image"]
    return {
        "format": "travel-bench-speed",
        "travel_version": __version__,
        # The family's defaults resolved, so the report says what was measured.
        "settings": {**asdict(settings), "vec_len": config.model.discriminator.vec_len, "siamese": config.model.siamese,
                     "disc": config.model.discriminator.family},
        "device": _describe(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "train_dtype": str(train_dtype).removeprefix("torch."),
        "parameters": params,
        "train": {
            "images_per_s": batch / step_seconds,
            "median_step_ms": 1000 * step_seconds,
            "flops_per_image": train_flops_step / batch,
            "flops_per_step": train_flops_step,
            "achieved_flops_per_s": train_flops_s,
            "peak_share": train_flops_s / peak_train["flops_per_s"],
            "peak_memory_mb": train_peak,
        },
        "inference": {
            "batch_1_ms_per_image": inference[1]["ms_per_image"],
            "batch_ms_per_image": infer_batch["ms_per_image"],
            "flops_per_image": infer_flops,
            "achieved_flops_per_s": infer_flops_s,
            "peak_share": infer_flops_s / peak_fp32["flops_per_s"],
            "peak_memory_mb": max(v["peak_memory_mb"] for v in inference.values()),
        },
        "matmul_peak": {peak["dtype"]: peak for peak in (peak_fp32, peak_train)},  # keyed by dtype name
        "memory": {"baseline_mb": baseline, "kind": _memory_kind(device)},
        **({"profile": profiles} if profiles else {}),
    }


@torch.no_grad()
def _infer(generator: Generator, images: torch.Tensor) -> torch.Tensor:
    return run_generator(generator, images.float())  # fp32, no autocast, NHWC: what Translator runs


def _profile(fn: Callable[[], Any], device: torch.device, *, top: int = 15) -> list[dict[str, Any]]:
    """torch.profiler over one call: the `top` operators by self time (device time on a GPU), with their shares."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attribute) > 0]
    total = sum(getattr(e, attribute) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attribute), reverse=True)
    return [
        {"op": e.key, "self_ms": getattr(e, attribute) / 1000, "share": getattr(e, attribute) / total, "calls": e.count}
        for e in events[:top]
    ]


def format_profile(report: dict[str, Any]) -> str:
    """The profiler tables of a report made with profile=True (empty when there are none)."""
    blocks = []
    for phase, rows in report.get("profile", {}).items():
        lines = [f"{phase}: top operators by self time", f"  {'share':>6}  {'ms':>9}  {'calls':>5}  operator"]
        lines += [f"  {100 * r['share']:5.1f}%  {r['self_ms']:9.2f}  {r['calls']:5d}  {r['op']}" for r in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def matmul_peak(device: torch.device, dtype: torch.dtype, *, size: int, repeats: int = 5) -> dict[str, Any]:
    """FLOP/s of the best of a few square matmuls of `size` (2 * size^3 FLOPs each): the device's practical peak."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    seconds = _time_calls(lambda: torch.mm(a, b), repeats=repeats, warmup=1, device=device, best=True)
    return {"dtype": str(dtype).removeprefix("torch."), "size": size, "flops_per_s": 2 * size**3 / seconds}


def _time_calls(fn: Callable[[], Any], *, repeats: int, warmup: int, device: torch.device, best: bool = False) -> float:
    """Median (or best) seconds per call, synchronising the device around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times) if best else statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _autocast_dtype(autocast: Callable[[], Any]) -> torch.dtype:
    context = autocast()
    return getattr(context, "fast_dtype", torch.float32) if isinstance(context, torch.autocast) else torch.float32


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.processor() or platform.machine()})"


# ---------------------------------------------------------------------------------------------
# Peak memory: CUDA's allocator counts tensors; on the CPU the process's resident high-water mark,
# which Linux lets us reset (/proc/self/clear_refs), so each phase gets its own peak.


def _memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated (tensors only)"
    if _read_status("VmHWM") is not None:
        return "process resident-set high-water mark (VmHWM), reset before each phase; includes Python and torch"
    return "process peak RSS since start (ru_maxrss); includes Python and torch"


def _memory_now(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    rss = _read_status("VmRSS")
    return rss if rss is not None else _ru_maxrss_mb()


def _reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # 5: reset the peak RSS to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _read_status("VmHWM")
    return hwm if hwm is not None else _ru_maxrss_mb()


def _read_status(field: str) -> float | None:
    """A memory field of /proc/self/status in MiB, or None off Linux."""
    try:
        with open("/proc/self/status") as handle:
            match = re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def _ru_maxrss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------------------------------------
# Printing.


def format_report(report: dict[str, Any]) -> str:
    s, t, i = report["settings"], report["train"], report["inference"]
    peaks = report["matmul_peak"]
    p = report["parameters"]
    train_peak = peaks[report["train_dtype"]]
    baseline = report["memory"]["baseline_mb"]
    rows = [
        ("device", f"{report['device']}, {report['threads']} threads, torch {report['torch']}"),
        ("model", f"G {p['generator'] / 1e6:.2f}M params, D {p['discriminator'] / 1e6:.2f}M"
                  + (f", S {p['siamese'] / 1e6:.2f}M" if p["siamese"] else "")
                  + f"; {s['channels']} channels, depth {s['depth']}, siamese {s['siamese']}"
                  + (", rotation" if s["rotation"] else "")),
        ("setting", f"{s['size']}px, batch {s['batch_size']}, median of {s['steps']} steps after {s['warmup']} warm-up; "
                    f"training in {report['train_dtype']}"),
        ("train", f"{t['images_per_s']:.2f} images/s ({t['median_step_ms']:.1f} ms per step: D step + G step + EMA)"),
        ("train FLOPs", f"{t['flops_per_image'] / 1e9:.3f} GFLOP per image; achieved {t['achieved_flops_per_s'] / 1e9:.2f} "
                        f"GFLOP/s = {100 * t['peak_share']:.1f}% of the {train_peak['dtype']} matmul peak"),
        ("train memory", f"{t['peak_memory_mb']:.0f} MiB peak ({t['peak_memory_mb'] - baseline:.0f} MiB above the baseline)"),
        ("inference", f"{i['batch_1_ms_per_image']:.2f} ms/image at batch 1, {i['batch_ms_per_image']:.2f} ms/image "
                      f"at batch {s['batch_size']} (EMA generator, fp32, no_grad)"),
        ("infer FLOPs", f"{i['flops_per_image'] / 1e9:.3f} GFLOP per image; achieved {i['achieved_flops_per_s'] / 1e9:.2f} "
                        f"GFLOP/s = {100 * i['peak_share']:.1f}% of the float32 matmul peak"),
        ("infer memory", f"{i['peak_memory_mb']:.0f} MiB peak ({i['peak_memory_mb'] - baseline:.0f} MiB above the baseline)"),
        ("matmul peak", "; ".join(f"{v['dtype']} {v['size']}x{v['size']}: {v['flops_per_s'] / 1e9:.1f} GFLOP/s" for v in peaks.values())),
        ("memory", f"{report['memory']['kind']}; baseline {baseline:.0f} MiB before building the networks"),
        ("FLOPs", "matmul, convolution and attention FLOPs counted by torch.utils.flop_counter (1 multiply-add = 2)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
