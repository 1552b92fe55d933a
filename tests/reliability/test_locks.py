"""The record lock under real concurrency: several processes racing for one key never hold
it together, and a holder killed with SIGKILL leaves a lock that the next process takes."""
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from benchmarks.runner import RunLocked, lock_holder, record_lock

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"somehost %d" % os.getpid())
print("locked", flush=True)
time.sleep(60)
"""


def _contend(run_dir, log, go):
    go.wait()
    try:
        with record_lock(run_dir):
            with open(log, "a") as f:
                f.write(f"+{os.getpid()}\n")
            time.sleep(0.01)
            with open(log, "a") as f:
                f.write(f"-{os.getpid()}\n")
    except RunLocked:
        pass


def test_racing_processes_never_hold_one_key_together(tmp_path):
    """Each trial starts from a lock left by a dead process on this host, the case where a
    read-then-unlink takeover let two processes in."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    ctx = mp.get_context("fork")
    entered = 0
    for trial in range(15):
        key, log = tmp_path / f"key{trial}", tmp_path / f"log{trial}.txt"
        key.mkdir()
        (key / ".lock").write_text(f"{socket.gethostname()} {dead.pid}")
        go = ctx.Event()
        procs = [ctx.Process(target=_contend, args=(key, log, go)) for _ in range(4)]
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(30)
        assert all(p.exitcode == 0 for p in procs)
        lines = log.read_text().split()
        entered += len(lines) // 2
        # entries and exits strictly alternate, each exit by the process that entered
        for enter, leave in zip(lines[::2], lines[1::2]):
            assert enter[0] == "+" and leave == "-" + enter[1:]
    assert entered >= 15


def test_a_live_holder_is_named_and_a_killed_holder_releases_the_lock(tmp_path):
    key = tmp_path / "key"
    key.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(key / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"process {holder.pid} on somehost"):
            with record_lock(key):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with record_lock(key):  # no stale lock to clean up: the kernel released it
        assert (key / ".lock").read_text().split()[1] == str(os.getpid())


def _lease(key, host, pid, identity, until):
    (key / ".lock").write_text(f"{host} {pid} {identity} {until:.0f}")


@pytest.mark.parametrize("identity, until, taken", [
    ("slurm:55_3", 86400, True),   # this very job, requeued onto another node
    ("slurm:77_0", 86400, False),  # another job whose lease is live (a day left)
    ("slurm:77_0", -1, True),      # a lease its holder stopped renewing
])
def test_a_cluster_lease_is_taken_over_by_its_own_requeued_job_or_after_it_expires(
        identity, until, taken, tmp_path, monkeypatch):
    """A file system that does not share flock across nodes: the lease decides."""
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "55")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    key = tmp_path / "key"
    key.mkdir()
    _lease(key, "node7", 4242, identity, time.time() + until)
    if taken:
        with record_lock(key):
            assert (key / ".lock").read_text().split()[2] == "slurm:55_3"
    else:
        with pytest.raises(RunLocked, match="process 4242 on node7 \\(Slurm job 77_0\\).*lease"):
            with record_lock(key):
                pass


def test_the_holder_is_read_without_taking_the_lock(tmp_path, monkeypatch):
    """``bench sweep --status`` asks who runs a cell: it must agree with ``record_lock`` and
    write nothing (no lease of its own)."""
    key = tmp_path / "key"
    assert lock_holder(key) is None  # never run
    with record_lock(key):
        written = (key / ".lock").read_text()
        assert lock_holder(key) == f"process {os.getpid()} on {socket.gethostname()}"
        assert (key / ".lock").read_text() == written
    assert lock_holder(key) is None  # released
    monkeypatch.setenv("SLURM_JOB_ID", "55")
    _lease(key, "node7", 4242, "slurm:77_0", time.time() + 86400)
    assert lock_holder(key).startswith("process 4242 on node7 (Slurm job 77_0), lease renewed")
    _lease(key, "node7", 4242, "slurm:77_0", time.time() - 1)
    assert lock_holder(key) is None  # expired: record_lock would take it over
    _lease(key, "node7", 4242, "slurm:55", time.time() + 86400)
    assert lock_holder(key) is None  # this very job, requeued


def test_the_holder_renews_its_lease_while_it_runs(tmp_path):
    key = tmp_path / "key"
    with record_lock(key, lease_seconds=0.4):
        first = float((key / ".lock").read_text().split()[3])
        time.sleep(0.5)
        assert float((key / ".lock").read_text().split()[3]) > first
    assert (key / ".lock").read_text() == ""


def _rank(rank, port, key, out):
    import torch.distributed as dist
    from benchmarks.runner import group_lock
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        with group_lock(key):
            (out / f"entered{rank}").touch()
    except RunLocked as e:
        (out / f"refused{rank}").write_text(str(e))
    finally:
        dist.destroy_process_group()


def test_under_torchrun_rank_0_locks_for_the_group_and_a_refusal_stops_every_rank(tmp_path):
    import torch.multiprocessing as tmp
    key = tmp_path / "key"
    port = _free_port()
    with record_lock(key):  # another live holder of the key
        tmp.spawn(_rank, args=(port, key, tmp_path), nprocs=2, join=True)
    assert {p.name for p in tmp_path.iterdir()} == {"key", "refused0", "refused1"}
    assert f"process {os.getpid()} on" in (tmp_path / "refused1").read_text()
    tmp.spawn(_rank, args=(_free_port(), key, tmp_path), nprocs=2, join=True)
    assert (tmp_path / "entered0").is_file() and (tmp_path / "entered1").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
