"""Writing pretrained backbones in the ``flowssl-backbone/1`` contract of DESIGN.md: the only
thing `readout` and the converters ever read from `pretrain`."""
from __future__ import annotations

import datetime
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

FORMAT = "flowssl-backbone/1"


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def backbone_checkpoint(*, arch: str, state_dict: dict, decoder_state: dict | None = None,
                        method: str, pretrain_data: str, epochs: float, iterations: int,
                        config: dict, mlflow_run_id: str = "") -> dict:
    return {"format": FORMAT, "arch": arch,
            "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
            "decoder": ({"kind": "sdm", "state_dict": {k: v.detach().cpu().clone()
                                                       for k, v in decoder_state.items()}}
                        if decoder_state else None),
            "meta": {"method": method, "pretrain_data": pretrain_data, "epochs": epochs,
                     "iterations": iterations, "config": config, "git_sha": git_sha(),
                     "mlflow_run_id": mlflow_run_id,
                     "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}}


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; renamed onto `path` when the block succeeds, so
    a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


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


def write_checkpoint(checkpoint: dict, path) -> Path:
    import torch  # here, so that atomic_path serves torch-free callers (tracking) cheaply
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return Path(path)
