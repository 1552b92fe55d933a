"""Files that are either whole or absent: every writer of a record, checkpoint or cache file
goes through `atomic_path`; a restart removes what killed writers left."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (``.<name>.<pid>.tmp``: unique per process);
    renamed onto `path` when the block succeeds, deleted when it fails (a full disk, an
    error), so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def save_torch(obj, path) -> Path:
    """``torch.save`` through `atomic_path`."""
    import torch  # here, so that torch-free callers of this module (tracking) stay cheap
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def remove_stale_temporaries(folder, recursive: bool = False, log=print) -> int:
    """Delete ``.<name>.<pid>.tmp`` files that atomic_path left when a process was killed
    mid-write (a restart calls this): only those whose process is gone."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed, freed = 0, 0
    for tmp in (folder.rglob if recursive else folder.glob)(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            freed += tmp.stat().st_size
            tmp.unlink(missing_ok=True)
            removed += 1
    if removed:
        log(f"removed {removed} temporary file(s) of killed runs ({freed / 2**20:.1f} MiB) "
            f"under {folder}")
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
