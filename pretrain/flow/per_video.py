"""What the flow cache and the trajectory store share: a folder of per-video results made by
a pool of processes, a spec file that fixes the settings, and resuming where a video's
result already exists."""
from __future__ import annotations

import json
from pathlib import Path

from core.io import atomic_path, remove_stale_temporaries

_ESTIMATORS: dict[str, object] = {}  # one estimator per process (RAFT loads its weights once)


def write_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def process_estimator(name: str, kwargs: dict):
    """The estimator `name` with `kwargs`, made once per process."""
    from . import get_estimator
    key = f"{name}:{sorted(kwargs.items())}"
    if key not in _ESTIMATORS:
        _ESTIMATORS[key] = get_estimator(name, **kwargs)
    return _ESTIMATORS[key]


def claim_folder(root: Path, spec_name: str, spec: dict) -> None:
    """Write `spec` to root/spec_name, or check it equals the one a run before wrote (a
    folder holds one setting); remove what killed writers left."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / spec_name
    if path.is_file():
        old = json.loads(path.read_text())
        if {k: old.get(k) for k in spec} != spec:
            raise ValueError(f"{root} holds results made with {old}; asked {spec}: use "
                             f"another --out")
    write_atomic(path, json.dumps(spec).encode())
    remove_stale_temporaries(root, recursive=True)


def _run(task) -> tuple[str, dict | str]:
    """One video's job; a video that cannot be decoded is "skipped: why", never an error."""
    from ..data.video import VideoError
    worker, job = task
    source, index = job[:2]
    try:
        return source.name(index), worker(job)
    except VideoError as e:
        return source.name(index), f"skipped: {e}"


def map_videos(source, done_before: set[int], worker, job_args: tuple, *, workers: int,
               desc: str, progress: bool) -> dict:
    """``worker((source, index, *job_args)) -> result`` for every video of `source` not in
    `done_before` and not known unreadable, in `workers` spawned processes. Returns
    {video name: result, "cached before" or "skipped: why"}."""
    from tqdm import tqdm
    done = {source.name(i): "cached before" for i in done_before}
    done.update({source.name(i): f"skipped: {source.skipped[str(source.items[i])]}"
                 for i in range(len(source)) if source.is_bad(i) and i not in done_before})
    jobs = [(worker, (source, i, *job_args)) for i in range(len(source))
            if source.name(i) not in done]
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(workers) as pool:
            for name, result in pool.imap_unordered(_run, jobs):
                done[name] = result
                bar.update(1)
    else:
        for job in jobs:
            name, result = _run(job)
            done[name] = result
            bar.update(1)
    bar.close()
    return done
