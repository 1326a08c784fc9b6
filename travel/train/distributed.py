"""Training on many processes: joining torchrun's process group, ranks, per-rank seeds, DDP wrapping, all-reduces."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from travel.errors import ConfigError

# torchrun (`torchrun --nproc_per_node N -m travel fit ...`) starts one process per GPU and describes each one in
# these variables; `init_process_group("env://")` reads them. Without them, training is one plain process.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes. One process: rank 0 of 1, no process group."""

    rank: int = 0  # 0..size-1; rank 0 alone writes files (config, metrics, samples, state, weights)
    size: int = 1  # number of training processes (WORLD_SIZE)
    local_rank: int = 0  # rank on this machine: picks the GPU, cuda:LOCAL_RANK
    owns_group: bool = False  # this process group was started by `join`, so `leave` ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def join(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes (or one a caller started); return the World and this rank's device.

    Backend NCCL on CUDA (one GPU per process: cuda:LOCAL_RANK), gloo on the CPU. A single process returns
    (World(), device) unchanged and touches nothing.
    """
    started = dist.is_available() and dist.is_initialized()
    if started:
        rank, size = dist.get_rank(), dist.get_world_size()
    else:
        rank, size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return World(), device
    local_rank = _env_int("LOCAL_RANK", rank)
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"training on several processes needs CUDA GPUs or the CPU, not {device.type}")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"process with LOCAL_RANK {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU (--nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # before any CUDA work, so NCCL and pinned memory use this GPU
    if not started:
        if not dist.is_available():
            raise ConfigError("this PyTorch build has no torch.distributed; train in one process")
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            raise ConfigError(f"WORLD_SIZE={size} but {', '.join(missing)} not set: launch with torchrun")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=size, device_id=device if device.type == "cuda" else None)
    return World(rank=rank, size=size, local_rank=local_rank, owns_group=not started), device


def leave(world: World) -> None:
    """End the process group if `join` started it (a caller's own group is left alone)."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, world: World, device: torch.device, *, find_unused: bool = False) -> nn.Module | None:
    """`module` in DistributedDataParallel (its gradients averaged over ranks in backward), or None in one process.

    DDP broadcasts rank 0's parameters and buffers when it is built, so every rank starts identical, and
    (broadcast_buffers, the default) rank 0's buffers again at each forward: that keeps the spectral-norm
    power-iteration vectors identical even where one rank ran extra forwards (rank 0 embeds the targets for
    the clustering). find_unused: some parameters get no gradient in the steps that call this wrapper.
    """
    if world.size == 1:
        return None
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def rank_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed for rank `rank` at step `step`: the same numbers whatever the run's history or world size."""
    digest = hashlib.sha256(f"rng:{seed}:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def reseed(seed: int, step: int, rank: int) -> None:
    """Seed torch (CPU and every GPU) and Python's `random` from (seed, step, rank)."""
    value = rank_seed(seed, step, rank)
    torch.manual_seed(value)
    random.seed(value)


def average(values: dict[str, torch.Tensor], world: World) -> dict[str, torch.Tensor]:
    """The mean over ranks of each 0-d tensor in `values` (one all-reduce; every rank must hold the same keys)."""
    if world.size == 1 or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])  # [len(keys)]
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    stacked /= world.size
    return dict(zip(keys, stacked.unbind()))


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank if `flag` is True on at least one (a host-device sync: call it rarely)."""
    if world.size == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def wait_for_all(world: World) -> None:
    """Return on every rank only once all have reached this point (e.g. rank 0 has finished writing)."""
    if world.size > 1:
        dist.barrier()


def broadcast(tensors: list[torch.Tensor], world: World, device: torch.device) -> list[torch.Tensor]:
    """Rank 0's `tensors` on every rank, each back on its own device (shapes and dtypes must agree across ranks)."""
    if world.size == 1:
        return tensors
    shared = []
    for tensor in tensors:
        buffer = tensor.detach().to(device).contiguous()  # NCCL sends GPU tensors only
        dist.broadcast(buffer, src=0)
        shared.append(buffer.to(tensor.device))
    return shared


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer") from None
