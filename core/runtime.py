"""Process-level policy shared by the pretraining and readout loops: rank and world size,
joining the torchrun process group, CPU threads per process and per loader worker, and
autocast (bf16 on CUDA, off on CPU)."""
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


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int) -> int:
    """torch intra-op and OpenCV threads of this process (both: OpenCV's own pool would
    otherwise take every core beside torch's)."""
    import cv2
    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    return threads


def limit_threads(threads: int) -> int:
    """Lower torch's and OpenCV's threads to `threads`, never raise them: a smaller count set
    before (OMP_NUM_THREADS, or 1 in a forked child, whose thread pool must not grow) is
    kept. Returns torch's count."""
    import cv2
    if torch.get_num_threads() > threads:
        torch.set_num_threads(max(1, threads))
    if cv2.getNumThreads() > threads:
        cv2.setNumThreads(max(1, threads))
    return torch.get_num_threads()


def threads_per_process() -> int:
    """Threads for each of this node's processes (torchrun's LOCAL_WORLD_SIZE) so that
    processes x threads <= cores; loader workers get one thread each
    (``one_thread_worker``). With default counts a second busy process made view making 20x
    and DIS 3.9x slower (issue 16)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, cpu_cores() // max(1, local))


def one_thread_worker(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: each loader worker computes on one thread."""
    set_threads(1)
