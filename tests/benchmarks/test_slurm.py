"""`bench pretrain --executor slurm`: the sbatch script of one multi-node DDP job, and the
distributed environment its tasks start from under Slurm (simulated: Slurm's variables)."""
import os

import pytest

from benchmarks.cli import main
from benchmarks.slurm import export_distributed_environment

DDP_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT")


def test_a_task_of_a_two_node_job_gets_its_rank_world_size_and_master(monkeypatch):
    for name in DDP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # what Slurm sets for the 6th of 8 tasks: 2 nodes x 4 GPUs, the second node's task 1
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    for name, value in {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "8",
                        "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
                        "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_PROCID": "5",
                        "SLURM_LOCALID": "1"}.items():
        monkeypatch.setenv(name, value)
    try:
        env = export_distributed_environment()
        assert env["RANK"] == 5 and env["WORLD_SIZE"] == 8 and env["LOCAL_RANK"] == 1
        assert env["LOCAL_WORLD_SIZE"] == 4 and env["MASTER_ADDR"] == "gpu07"
        # what torch.distributed's env:// and core.runtime.start_process_group read
        assert {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")
                } == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07"}
        # every task of the job derives the same port from the job id
        assert 20000 <= env["MASTER_PORT"] <= 60000
        monkeypatch.setenv("SLURM_PROCID", "0")
        monkeypatch.delenv("MASTER_PORT")
        assert export_distributed_environment()["MASTER_PORT"] == env["MASTER_PORT"]
    finally:
        for name in DDP_VARIABLES:
            os.environ.pop(name, None)


def _argv(tiny_root, out, *extra):
    return ["pretrain", "--method", "byol", "--preset", "smoke", "--videos",
            str(tiny_root / "bdd100k" / "videos"), "--out", str(out), *extra]


def test_dry_run_prints_the_sbatch_script_of_one_ddp_job(tiny_root, tmp_path, capsys):
    assert main(_argv(tiny_root, tmp_path / "run", "--executor", "slurm", "--nodes", "2",
                      "--gpus-per-node", "2", "--partition", "gpu", "--time", "600",
                      "--dry-run", "schedule.batch_size=8")) == 0
    out = capsys.readouterr().out
    assert "2 node(s) x 2 GPU(s)" in out
    lines = out.split("#!/bin/bash", 1)[1].splitlines()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=2",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --time=600", "#SBATCH --partition=gpu",
                 "#SBATCH --signal=USR2@120", "#SBATCH --job-name=bench-pretrain-byol"):
        assert line in lines
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, says", [
    (["--executor", "slurm", "--nodes", "3", "schedule.batch_size=8"],
     "schedule.batch_size 8 is not divisible by 3 GPUs"),
    (["--executor", "slurm", "model.nope=1"], "config.model: unknown key(s) nope"),
    (["--nodes", "2"], "--nodes is for --executor slurm"),
    (["--executor", "slurm"], "--executor slurm: Could not detect \"srun\""),
])
def test_launch_errors_are_one_line_before_anything_is_submitted(extra, says, tiny_root,
                                                                 tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no srun here, whatever the machine has
    assert main(_argv(tiny_root, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
