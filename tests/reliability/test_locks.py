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

from benchmarks.runner import RunLocked, record_lock

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
