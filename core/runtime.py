"""Process-level policy shared by the pretraining and readout loops: rank and world size,
joining the torchrun process group, and autocast (bf16 on CUDA, off on CPU)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def start_process_group() -> torch.device:
    """Join the torchrun process group if there is one (NCCL on GPU, gloo on CPU); returns
    this process's device (cuda:LOCAL_RANK, or cpu)."""
    cuda = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def autocast(device) -> torch.autocast:
    """bf16 autocast on CUDA; disabled elsewhere (CPU runs are the bit-exact fp32
    reference)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
