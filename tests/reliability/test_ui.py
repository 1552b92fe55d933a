"""`bench ui` never leaves a server behind: a busy port is refused before anything starts,
and when the server exits or the user presses Ctrl-C its whole process group is stopped."""
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from benchmarks import tracking
from benchmarks.cli import main
from tests.helpers import free_port

FAKE_SERVER = """
import os, signal, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {worker.pid}")
if sys.argv[2] == "crash":
    sys.exit(3)
os.kill(os.getppid(), signal.SIGINT)  # the user presses Ctrl-C
time.sleep(120)
"""


def _running(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_a_busy_port_is_refused_before_starting(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["ui", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--port",
                     str(port)]) == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["crash", "ctrl-c"])
def test_the_whole_server_group_is_stopped(how, tmp_path, monkeypatch, capsys):
    pids = tmp_path / "pids"
    monkeypatch.setattr(tracking, "server_command", lambda *a, **k: [
        sys.executable, "-c", FAKE_SERVER, str(pids), how])
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = main(["ui", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--port",
                     str(free_port())])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == (2 if how == "crash" else 0)
    if how == "crash":
        assert "stopped with exit code 3" in capsys.readouterr().err
    server, worker = map(int, pids.read_text().split())
    deadline = time.time() + 10
    while (_running(server) or _running(worker)) and time.time() < deadline:
        time.sleep(0.1)
    assert not _running(server) and not _running(worker)
