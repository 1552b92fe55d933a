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
