"""Process-group setup from torchrun or SLURM variables, and rank helpers.

Like torchvision's reference scripts: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun,
single or multi-node) take precedence; otherwise ``SLURM_PROCID``/``SLURM_NTASKS``/
``SLURM_LOCALID`` (``srun python -m maskdla.train ...``, with ``MASTER_ADDR`` and
``MASTER_PORT`` exported by the job script). Anything else is one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_environment() -> DistributedContext:
    """Rank, world size and local rank from torchrun's or SLURM's variables."""
    environ = os.environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return DistributedContext(int(environ["RANK"]), int(environ["WORLD_SIZE"]),
                                  int(environ.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in environ and int(environ.get("SLURM_NTASKS", 1)) > 1:
        return DistributedContext(int(environ["SLURM_PROCID"]), int(environ["SLURM_NTASKS"]),
                                  int(environ.get("SLURM_LOCALID", 0)))
    return DistributedContext()


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group when the environment describes several processes:
    NCCL for CUDA, gloo for the CPU. Returns the context (one process: nothing done)."""
    context = context_from_environment()
    if not context.enabled or dist.is_initialized():
        return context
    if device_type == "cuda":
        torch.cuda.set_device(context.local_rank)
    os.environ.setdefault("RANK", str(context.rank))  # SLURM: env:// init reads these
    os.environ.setdefault("WORLD_SIZE", str(context.world_size))
    os.environ.setdefault("LOCAL_RANK", str(context.local_rank))
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo",
                            init_method="env://", rank=context.rank, world_size=context.world_size)
    return context


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over the ranks (itself without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def any_rank(flag: torch.Tensor) -> torch.Tensor:
    """``flag`` (a bool tensor) true where it is true on any rank (itself without a
    process group): ranks that must take the same decision take it on this."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        flag = flag.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.bool()
    return flag


def all_gather_objects(value: Any) -> List[Any]:
    """Every rank's ``value``, in rank order (``[value]`` without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered: List[Optional[Any]] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, value)
        return gathered
    return [value]


def broadcast_object(value: Any, source: int = 0) -> Any:
    if dist.is_initialized() and dist.get_world_size() > 1:
        holder = [value]
        dist.broadcast_object_list(holder, src=source)
        return holder[0]
    return value


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
