"""Where and how tensors run: device choice and mixed precision, shared by training and inference."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

import torch

from travel.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was asked for, but MPS is not available")
    return torch.device(name)


def precision_context(precision: str, device: torch.device) -> tuple[Callable[[], Any], torch.amp.GradScaler | None]:
    """(autocast factory, gradient scaler or None). auto: bf16 on CUDA GPUs that support it, fp16 on older ones."""
    if precision == "auto":
        if device.type != "cuda":
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return nullcontext, None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 training needs a CUDA GPU; use bf16 or fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler
