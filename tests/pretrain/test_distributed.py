"""Two gloo processes with synchronised BatchNorm, each taking half of the global batch,
train like one process with the whole batch, up to float32 rounding (one method of every
method file, through the command line torchrun runs); a MoCo queue holds the same keys."""
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from benchmarks.cli import main as bench
from pretrain.methods import METHODS
from tests.helpers import data_overrides

# one method per method file: a file is one paper's loss, and its variants differ in the
# views or samples they draw, not in what crosses processes (gathered keys, queues, global
# means, synchronised BatchNorm)
METHOD_NAMES = sorted({c.__module__: n for n, c in sorted(METHODS.items(), reverse=True)}.values())


def _argv(name, videos, out, *extra):
    return ["pretrain", "--method", name, "--preset", "smoke", "--flow", "gt", "--videos",
            str(videos), "--out", str(out), "--no-progress", "schedule.steps=2",
            "schedule.batch_size=4", *data_overrides(name, Path(videos).parents[1]), *extra]


def _rank(rank, port, videos, root):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        for name in METHOD_NAMES:
            assert bench(_argv(name, videos, root / name / "ddp", "--sync-bn")) == 0
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tiny_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    videos = tiny_root / "bdd100k" / "videos"
    for name in METHOD_NAMES:  # stores and files the ranks only read
        data_overrides(name, tiny_root)
    mp.spawn(_rank, args=(_free_port(), videos, root), nprocs=2, join=True)
    for name in METHOD_NAMES:
        assert bench(_argv(name, videos, root / name / "single")) == 0
    return root


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_two_processes_match_one_process_with_the_same_global_batch(name, runs):
    load = lambda run: torch.load(runs / name / run / "pretrain_state.pth",  # noqa: E731
                                  weights_only=True)
    ddp, single = load("ddp"), load("single")
    # step 1: the same weights, only the reduction order differs; later steps inherit the
    # first update's rounding noise (measured: DenseCL's step 2 differs by 0.4 %, its
    # queues by 5e-5, after encoder weights 0.15 % apart; MoCo v2's by 0.03 %)
    losses = [[c["loss"] for c in run["curve"]] for run in (ddp, single)]
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-4)
    assert losses[0] == pytest.approx(losses[1], rel=1e-2)
    # weights and BatchNorm statistics, online and target, as one vector: float32 reduction
    # order differs between the runs and AdamW's first step is lr * sign(g) for gradients
    # that are rounding noise, so single tensors may differ; the whole must not
    # (per-process BatchNorm statistics give relative differences above 1)
    if "queue" in single["method"]:  # MoCo, DenseCL: keys gathered from both processes
        assert torch.equal(ddp["method"]["queue_ptr"], single["method"]["queue_ptr"])
        for queue in ("queue", "queue2"):
            if queue in single["method"]:
                assert torch.allclose(ddp["method"][queue], single["method"][queue], atol=1e-4)
    # BatchNorm statistics of modules the method keeps per process (MoCo's shuffle-BN key
    # encoder) are each process's own, as in the authors' code
    local = METHODS[name].local_batchnorm
    keys = [k for k, v in single["method"].items() if v.is_floating_point()
            and not (k.split(".")[0] in local and ".running_" in k)]
    a, b = (torch.cat([run["method"][k].double().flatten() for k in keys]) for run in (ddp, single))
    assert ((a - b).norm() / b.norm()).item() < 1e-2


def test_torchrun_writes_the_record_and_mlflow_run_once_and_refuses_another_world(
        runs, tiny_root, capsys):
    """torchrun -m pretrain is bench pretrain: rank 0 writes the record and its MLflow run;
    the resolved config holds the world size and sync-BN, so a resume in another world is
    refused naming them."""
    import yaml
    from benchmarks.tracking import store_uri, synced_run_id
    name = METHOD_NAMES[0]
    ddp = runs / name / "ddp"
    record = json.loads((ddp / "pretrain_record.json").read_text())
    assert record["status"] == "finished" and record["method"] == name
    assert synced_run_id(ddp, store_uri(None))
    runtime = yaml.safe_load((ddp / "config.yaml").read_text())["runtime"]
    assert runtime["world_size"] == 2 and runtime["sync_bn"] is True
    assert bench(_argv(name, tiny_root / "bdd100k" / "videos", ddp)) == 2
    assert "runtime.sync_bn, runtime.world_size differ" in capsys.readouterr().err
