"""Speed benchmarks (not tests). Every script sets and states its thread count
(``--threads``): timings taken with another thread count, or beside another busy process
with default counts, are not comparable (issue 16: 20x on view making)."""
from __future__ import annotations


def add_threads_argument(ap, default: int | None = None) -> None:
    ap.add_argument("--threads", type=int, default=default,
                    help="torch and OpenCV threads of this process (default: "
                         + (f"{default}" if default else "every core this process may use")
                         + "); stated in the output")


def apply_threads(args) -> str:
    """Set the threads of ``--threads`` and return the line that states them."""
    from core.runtime import cpu_cores, set_threads
    threads = set_threads(args.threads or cpu_cores())
    return f"{threads} torch / OpenCV thread(s) of {cpu_cores()} core(s)"


def timed_training_step(losses, optimizer, device) -> float:
    """Seconds of one training step: ``losses()`` (a dict of loss terms), backward and the
    optimizer step, with CUDA synchronised before the clock stops."""
    import time
    import torch
    t0 = time.perf_counter()
    loss = sum(losses().values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0
