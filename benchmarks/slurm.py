"""Slurm through submitit, for `bench sweep` (readout job arrays) and `bench pretrain
--executor slurm` (one multi-node DDP job): the executor's parameters, the sbatch script it
writes (``--dry-run``), and the distributed environment a job's tasks start from."""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

# submitit signals a job this long before Slurm kills it (pre-emption or its time limit):
# time to write the run's checkpoint, after which submitit requeues the job
SIGNAL_DELAY_S = 120


class SlurmUnavailable(ValueError):
    """``--executor slurm`` on a machine without Slurm."""


@dataclass(frozen=True)
class SlurmOptions:
    job_name: str
    time_min: int
    partition: str | None = None
    account: str | None = None
    nodes: int = 1
    tasks_per_node: int = 1  # one per GPU for DDP
    gpus_per_node: int = 1
    cpus_per_task: int | None = None
    array_parallelism: int = 64

    def parameters(self) -> dict:
        """submitit SlurmExecutor parameters (``#SBATCH`` lines)."""
        p = {"job_name": self.job_name, "time": self.time_min, "nodes": self.nodes,
             "ntasks_per_node": self.tasks_per_node, "gpus_per_node": self.gpus_per_node,
             "array_parallelism": self.array_parallelism, "signal_delay_s": SIGNAL_DELAY_S}
        optional = {"cpus_per_task": self.cpus_per_task, "partition": self.partition,
                    "account": self.account}
        return {**p, **{k: v for k, v in optional.items() if v}}


def sbatch_script(folder: Path, options: SlurmOptions, array: int | None = None) -> str:
    """The sbatch file submitit writes for this job (or an array of ``array`` jobs)."""
    from submitit.slurm.slurm import _make_sbatch_string
    folder = Path(folder).resolve()
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit",
                        shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=array,
                               **options.parameters())


def slurm_executor(folder: Path, options: SlurmOptions):
    import submitit
    try:
        executor = submitit.SlurmExecutor(folder=Path(folder).resolve())
    except RuntimeError as e:
        raise SlurmUnavailable(f"--executor slurm: {e} (--dry-run prints the sbatch script "
                               f"without Slurm)") from None
    executor.update_parameters(**options.parameters())
    return executor


def export_distributed_environment() -> dict:
    """In a task of a submitit job: the torch.distributed environment (``env://``) from
    submitit's view of the job (Slurm's SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
    SLURM_JOB_NODELIST): RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, and MASTER_ADDR /
    MASTER_PORT on the first node. Every GPU of the node stays visible: the task takes
    cuda:LOCAL_RANK, as under torchrun."""
    import submitit
    env = submitit.helpers.TorchDistributedEnvironment().export(
        set_cuda_visible_devices=False, overwrite=True)
    return {"RANK": env.rank, "WORLD_SIZE": env.world_size, "LOCAL_RANK": env.local_rank,
            "LOCAL_WORLD_SIZE": env.local_world_size, "MASTER_ADDR": env.master_addr,
            "MASTER_PORT": env.master_port}
