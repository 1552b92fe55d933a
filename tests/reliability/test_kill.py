"""kill -9 at random moments: a pretraining and a readout, each killed three times at
random points and resumed, end bit for bit where an uninterrupted run ends. The runs are
forked from this process (torch is already imported, so a run starts in milliseconds) with
one thread each, the same for the uninterrupted reference."""
import json
import multiprocessing as mp
import os
import random
import signal
import time

import pytest
import torch

# loaded here once, so that every forked run inherits them instead of importing them again
import benchmarks.plots  # noqa: F401
import benchmarks.runner  # noqa: F401
import pretrain.config  # noqa: F401
import pretrain.data.samples  # noqa: F401
import readout.model  # noqa: F401
import readout.train  # noqa: F401
from benchmarks.cli import main as bench
from tests.helpers import free_port

TRIALS = 3


def _forked(argv, entry):
    torch.set_num_threads(1)  # libgomp's thread pool does not survive fork(); one thread
    os._exit(entry(argv))


def _start(entry, argv) -> mp.Process:
    proc = mp.get_context("fork").Process(target=_forked, args=(argv, entry))
    proc.start()
    return proc


def _run(entry, argv) -> None:
    proc = _start(entry, argv)
    proc.join(300)
    assert proc.exitcode == 0


def _kill_at_random(entry, argv, state, rng) -> int:
    """Start a run, wait for its first checkpoint, kill -9 it a random moment later;
    returns how many steps its state had when it died."""
    proc = _start(entry, argv)
    deadline = time.time() + 120
    while not state.is_file() and proc.is_alive() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.5))
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    return proc.exitcode


def _kill_then_resume(entry, argv_of, state_of, result_of, tmp_path):
    """The reference result, then TRIALS runs killed once each and resumed."""
    _run(entry, argv_of(tmp_path / "reference"))
    reference = result_of(tmp_path / "reference")
    killed = 0
    for trial in range(TRIALS):
        out = tmp_path / f"trial{trial}"
        code = _kill_at_random(entry, argv_of(out), state_of(out), random.Random(trial))
        killed += code == -signal.SIGKILL
        _run(entry, argv_of(out))
        assert result_of(out) == reference, f"trial {trial} differs after kill -9"
        assert not list(out.rglob("*.tmp"))
    assert killed >= 1  # at least one run really died mid-way


@pytest.mark.parametrize("method", ["byol_video"])
def test_pretraining_killed_at_random_points_resumes_bit_identically(method, tiny_root,
                                                                     tmp_path):
    store = f"http://127.0.0.1:{free_port()}"  # nothing listens: the local record alone

    def argv_of(out):
        return ["pretrain", "--method", method, "--preset", "smoke", "--videos",
                str(tiny_root / "bdd100k" / "videos"), "--out", str(out), "--no-progress",
                "--tracking-uri", store, "schedule.steps=5", "schedule.checkpoint_every=1"]

    def result_of(out):
        ck = torch.load(out / "backbone.pth", weights_only=True)["state_dict"]
        curve = json.loads((out / "curve.json").read_text())
        return ({k: v.numpy().tobytes() for k, v in ck.items()},
                [(c["step"], c["loss"]) for c in curve])
    _kill_then_resume(bench, argv_of, lambda out: out / "pretrain_state.pth",
                      result_of, tmp_path)


def test_readout_killed_at_random_points_resumes_bit_identically(r18, tiny_root, tmp_path):
    store = f"http://127.0.0.1:{free_port()}"  # nothing listens: the local record alone

    def argv_of(out):
        return ["run", "--suite", "cityscapes_linear", "--checkpoint", str(r18), "--data-root",
                str(tiny_root), "--scale", "smoke", "--device", "cpu", "--out", str(out),
                "--tracking-uri", store, "protocol.iterations=12",
                "protocol.checkpoint_every=1"]

    def state_of(out):
        return next(iter(out.rglob("readout_checkpoint.pth")), out / "none")

    def result_of(out):
        (record,) = [json.loads(p.read_text()) for p in out.rglob("metrics.json")]
        return record["metrics"], [(c["step"], c["loss"]) for c in record["loss_curve"]]

    class State:  # the record folder is created by the run: look for it as it appears
        def __init__(self, out):
            self.out = out

        def is_file(self):
            return state_of(self.out).is_file()
    _kill_then_resume(bench, argv_of, State, result_of, tmp_path)
