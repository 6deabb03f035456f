"""Training beyond one process: torch DistributedDataParallel under `torchrun` (NCCL on GPUs, gloo on CPUs).

    torchrun --nproc_per_node 2 -m LungNoduleExplainLib.cli train --data DIR --out RUN

Each process takes its share of every batch; DDP averages the gradients, so an update equals the single-process
update up to batch statistics (BatchNorm sees each process's part of the batch). Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

from .devices import resolve_device
from .vocabulary import Device

logger = logging.getLogger(__name__)


def init_from_env(device: str = Device.AUTO) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1) on `device` (devices.choose_device's rule);
    returns True when distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return dist.is_available() and dist.is_initialized()
    use_cuda = resolve_device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    logger.info("distributed training: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(),
                dist.get_backend())
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """`device` (devices.resolve_device's), except that under torchrun with CUDA each process uses its own GPU."""
    if is_distributed() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def sync_buffers(module: torch.nn.Module) -> None:
    """Give every process rank 0's BatchNorm running statistics (parameters are already equal under DDP)."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
