"""`bench sweep`: the readouts of checkpoints x suites x seeds, one job per cell that is not
finished, as one Slurm job array through submitit, or on this machine with submitit's local
executor. Each job is `bench run` for its cell (same record folder, lock, MLflow run); a
pre-empted or timed-out job is requeued by submitit and resumes from its readout's own
checkpoint; a failed job is reported with its log and retried at most once.

The sweep keeps its own state beside the records: ``<out>/.sweep/jobs.jsonl`` (one line per
submitted job: cell, executor, job id) and submitit's folder ``<out>/.sweep/logs``."""
from __future__ import annotations

import json
import os
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import submitit

from .runner import RECORD_NAME, checkpoint_key, finished_record, lock_holder, record_dir
from .slurm import SIGNAL_DELAY_S, SlurmOptions, slurm_executor

EXECUTORS = ("local", "slurm")
MAX_ATTEMPTS = 2  # a failed cell is retried at most once
JOB_NAME = "bench-sweep"


class SweepError(ValueError):
    """A sweep that cannot start: no checkpoints, an unknown suite, an unusable option."""


@dataclass(frozen=True)
class Cell:
    checkpoint: str
    suite: str
    seed: int

    def __str__(self) -> str:
        return f"{self.suite} seed {self.seed} on {self.checkpoint}"


@dataclass(frozen=True)
class Settings:
    """What every job of one sweep shares: `bench run`'s options."""
    out: str
    scale: str | None = None
    overrides: tuple = ()
    data_root: str | None = None
    device: str | None = None
    tracking_uri: str | None = None
    num_workers: int = 0


class ReadoutJob(submitit.helpers.Checkpointable):
    """One cell, run as `bench run` runs it. On pre-emption or a timeout submitit calls
    ``checkpoint`` (inherited): the same call is requeued, and the readout resumes from the
    checkpoint it keeps in its record folder."""

    def __call__(self, cell: Cell, settings: Settings) -> dict:
        from .commands.readout import run_and_log
        from .suite import resolve_suite
        resolved = resolve_suite(cell.suite, scale=settings.scale,
                                 overrides=list(settings.overrides))
        record = run_and_log(resolved, cell.checkpoint, seed=cell.seed,
                             data_root=settings.data_root, device=settings.device,
                             out=settings.out, num_workers=settings.num_workers,
                             tracking_uri=settings.tracking_uri)
        if record["status"] != "finished":
            raise RuntimeError(f"{cell}: the readout stopped at iteration "
                               f"{record.get('iteration')} without a record")
        return {"run_dir": record["run_dir"], "metrics": record["metrics"]}


# ---- cells and their state -------------------------------------------------------------
def checkpoints_from_pretrain(folders) -> list[str]:
    """Every pretraining run's final ``backbone.pth`` and its exported steps
    (``exports/backbone_step*.pth``) under the given folders."""
    out = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise SweepError(f"--from-pretrain {folder}: not a folder")
        found = sorted(folder.rglob("backbone.pth")) + sorted(folder.rglob("backbone_step*.pth"))
        if not found:
            raise SweepError(f"--from-pretrain {folder}: no backbone.pth or "
                             f"exports/backbone_step*.pth under it")
        out += [str(p) for p in found]
    return out


class Sweep:
    def __init__(self, checkpoints, suites, seeds: int, settings: Settings, log=print):
        from readout.backbone import read_checkpoint
        from .suite import resolve_suite
        from readout.datasets.base import data_root
        if not checkpoints:
            raise SweepError("no checkpoints: give --checkpoints or --from-pretrain")
        root = data_root(settings.data_root)
        if not root.is_dir():
            raise SweepError(f"--data-root {root}: not a folder; the jobs read the datasets "
                             f"there")
        sha = {}  # a bad file fails here, before anything is submitted
        for path in dict.fromkeys(checkpoints):
            sha[path] = checkpoint_key(path, read_checkpoint(path, log=log))
        self.settings, self.log = settings, log
        self.resolved = {s: resolve_suite(s, scale=settings.scale,
                                          overrides=list(settings.overrides)) for s in suites}
        self.cells = {Cell(c, s, seed): record_dir(settings.out, self.resolved[s], sha[c], seed)
                      for c in sha for s in suites for seed in range(seeds)}
        self.state_dir = Path(settings.out).resolve() / ".sweep"  # job scripts name it
        self.ledger = self.state_dir / "jobs.jsonl"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def jobs(self) -> dict[Cell, list[dict]]:
        """The jobs submitted so far for each cell, oldest first."""
        out = {}
        if self.ledger.is_file():
            for line in self.ledger.read_text().splitlines():
                entry = json.loads(line)
                out.setdefault(Cell(**entry["cell"]), []).append(entry)
        return out

    def _remember(self, cell: Cell, executor: str, job_id: str) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.ledger.open("a") as f:
            f.write(json.dumps({"cell": asdict(cell), "executor": executor, "job_id": job_id,
                                "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")

    def job_paths(self, job: dict):
        return submitit.core.utils.JobPaths(self.logs / "%j", job["job_id"], task_id=0)

    def outcome(self, job: dict) -> str:
        """"success", "error", or "none" while (or if) the job wrote no result."""
        path = self.job_paths(job).result_pickle
        if not path.is_file():
            return "none"
        with path.open("rb") as f:
            return pickle.load(f)[0]

    def status(self, cell: Cell, jobs: dict | None = None) -> tuple[str, str]:
        """(state, detail): done | running | queued | failed | interrupted | pending.
        ``jobs``: the ledger as ``jobs()`` reads it, when many cells are asked at once."""
        folder = self.cells[cell]
        if finished_record(folder):
            return "done", str(folder / RECORD_NAME)
        holder = lock_holder(folder)
        if holder:
            return "running", holder
        jobs = (self.jobs() if jobs is None else jobs).get(cell, [])
        if not jobs:
            return "pending", ""
        last = jobs[-1]
        outcome = self.outcome(last)
        if outcome == "error":
            failed = sum(self.outcome(j) == "error" for j in jobs)
            return "failed", (f"{failed} failed attempt(s), last log "
                              f"{self.job_paths(last).stderr}")
        if outcome == "none" and _alive(last):
            return "queued", f"{last['executor']} job {last['job_id']}"
        return "interrupted", f"{last['executor']} job {last['job_id']} ended without a record"

    def statuses(self, jobs: dict | None = None) -> dict[Cell, tuple[str, str]]:
        """Every cell's ``status``, the ledger read once."""
        jobs = self.jobs() if jobs is None else jobs
        return {cell: self.status(cell, jobs) for cell in self.cells}

    def to_submit(self) -> list[Cell]:
        """Cells with no finished record, no live job, and fewer than two failed jobs."""
        jobs = self.jobs()
        return [cell for cell, (state, _) in self.statuses(jobs).items()
                if state in ("pending", "interrupted") or (state == "failed" and sum(
                    self.outcome(j) == "error" for j in jobs[cell]) < MAX_ATTEMPTS)]

    # ---- submission --------------------------------------------------------------------
    def submit(self, executor, kind: str, cells: list[Cell]) -> list:
        """One job per cell; on Slurm one job array."""
        with executor.batch():
            pending = [executor.submit(ReadoutJob(), cell, self.settings) for cell in cells]
        for cell, job in zip(cells, pending):
            self._remember(cell, kind, job.job_id)
            self.log(f"[sweep] {cell}: {kind} job {job.job_id} (log {job.paths.stdout})")
        return pending


def _alive(job: dict) -> bool:
    """A job that may still produce a result: a local controller process that runs, or a
    Slurm job the scheduler has not ended."""
    if job["executor"] == "local":
        try:
            os.kill(int(job["job_id"]), 0)
            return True
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True
    try:
        state = submitit.SlurmJob(folder="/nonexistent/%j", job_id=job["job_id"]).state
    except Exception:  # noqa: BLE001 (no sacct here: assume the scheduler still has it)
        return True
    return state in ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING",
                     "COMPLETING", "SUSPENDED", "UNKNOWN")


# ---- executors -------------------------------------------------------------------------
@dataclass
class ExecutorOptions:
    kind: str = "local"
    partition: str | None = None
    account: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    time_min: int = 240
    array_parallelism: int = 1

    def slurm(self) -> SlurmOptions:
        """One task, ``gpus_per_job`` GPUs per readout job."""
        return SlurmOptions(job_name=JOB_NAME, time_min=self.time_min,
                            partition=self.partition, account=self.account,
                            gpus_per_node=self.gpus_per_job, cpus_per_task=self.cpus_per_job,
                            array_parallelism=self.array_parallelism)


def make_executor(sweep: Sweep, opts: ExecutorOptions):
    if opts.kind == "slurm":
        return slurm_executor(sweep.logs / "%j", opts.slurm())
    executor = submitit.LocalExecutor(folder=sweep.logs / "%j")
    executor.update_parameters(timeout_min=opts.time_min,
                               gpus_per_node=opts.gpus_per_job if _has_gpu() else 0,
                               signal_delay_s=SIGNAL_DELAY_S)
    return executor


def _has_gpu() -> bool:
    import torch
    return torch.cuda.is_available()


def run_local(sweep: Sweep, opts: ExecutorOptions) -> list[Cell]:
    """Every cell to do on this machine, ``array_parallelism`` jobs at a time; a failed cell
    is submitted once more. Returns the cells that failed twice."""
    executor = make_executor(sweep, opts)
    tries: dict[Cell, int] = {}
    while True:
        cells = [c for c in sweep.to_submit() if tries.get(c, 0) < MAX_ATTEMPTS]
        if not cells:
            break
        for start in range(0, len(cells), opts.array_parallelism):
            wave = cells[start:start + opts.array_parallelism]
            for cell in wave:
                tries[cell] = tries.get(cell, 0) + 1
            for cell, job in zip(wave, sweep.submit(executor, "local", wave)):
                try:
                    job.result()
                except Exception:  # noqa: BLE001 (reported from its log below)
                    sweep.log(f"[sweep] FAILED {cell}: log {job.paths.stderr}")
    return [c for c, (state, _) in sweep.statuses().items() if state == "failed"]
