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
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from travel import __version__
from travel.config import FitConfig, resolve
from travel.errors import ConfigError
from travel.inference import inference_layout, run_generator
from travel.nets.generator import Generator
from travel.options import BENCH_OPTIONS, option_values
from travel.runtime import resolve_device
from travel.train.step import build_trainer, train_step
from travel.train.styles import make_styles

MessageFn = Callable[[str], None]


@dataclass(frozen=True)
class SpeedSettings:
    """How `travel bench speed` measures; what it measures is a FitConfig (travel.options.fit_config), the model
    `travel fit` trains from the same options."""

    steps: int = 10  # timed training steps (the median is reported)
    warmup: int = 3  # untimed steps first (allocator, cuDNN autotuning, lazy init)
    profile: bool = False  # also run torch.profiler over one inference batch and one training step
    matmul_size: int | None = None  # side of the square peak-matmul; None: 2048 on CPU, 8192 on CUDA

    def __post_init__(self) -> None:
        if self.steps < 1 or self.warmup < 0:
            raise ConfigError("--steps must be >= 1 and --warmup >= 0")
        if self.matmul_size is not None and self.matmul_size < 16:
            raise ConfigError("the matmul size must be >= 16")


# ---------------------------------------------------------------------------------------------
# Measuring.


def run_speed(config: FitConfig, settings: SpeedSettings = SpeedSettings(), *, say: MessageFn | None = None) -> dict[str, Any]:
    """Benchmark training (travel.train.step.train_step, the step `fit` runs, self-conditioning included) and inference
    of `config` on its device, on random images of its crop size. Returns a JSON-ready report."""
    say = say or (lambda message: None)
    config = resolve(config)
    tc = config.train
    device = resolve_device(tc.device)

    torch.manual_seed(tc.seed)
    baseline = _memory_now(device)
    trainer = build_trainer(config, device, say)
    nets = trainer.nets
    params = {
        "generator": _count(nets.generator), "discriminator": _count(nets.discriminator),
        "siamese": _count(nets.siamese) if nets.siamese is not None else 0,
    }
    size, batch = config.data.crop_size, tc.batch_size
    train_dtype = _autocast_dtype(trainer.autocast)
    data = torch.Generator(device="cpu").manual_seed(tc.seed)
    # Random images in [-1, 1]: speed does not depend on what the pixels show.
    source = (torch.rand(batch, 3, size, size, generator=data) * 2 - 1).to(device)  # [B, 3, S, S]
    target = (torch.rand(batch, 3, size, size, generator=data) * 2 - 1).to(device)
    styles, target_style = None, None
    if config.clusters.clusters:  # as fit runs between reclusterings: targets in drawn clusters, one style per batch
        styles = make_styles(config, batch, device)
        target_style = torch.randint(config.clusters.clusters, (batch,), generator=data).to(device)

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
    source, target = (t.contiguous(memory_format=trainer.memory_format) for t in (source, target))
    step_counter = [0]

    def one_step() -> None:  # what fit's loop runs per step, minus data loading, reclustering and logging
        train_step(trainer, source, target, step=step_counter[0], styles=styles, target_style=target_style)
        step_counter[0] += 1

    _reset_peak(device)
    step_seconds = _time_calls(one_step, repeats=settings.steps, warmup=settings.warmup, device=device)
    train_peak = _peak_mb(device)
    with FlopCounterMode(display=False) as counter:
        one_step()
    train_flops_step = counter.get_total_flops()
    if settings.profile:
        profiles["train"] = _profile(one_step, device)

    say("matmul peak")
    del trainer
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
        # Every option that shapes the step, resolved, so the report says what was measured.
        "settings": {**asdict(settings), **option_values(config, BENCH_OPTIONS)},
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
