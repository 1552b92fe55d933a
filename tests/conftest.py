import os
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def no_writes_into_the_checkout(tmp_path_factory):
    """Every test logs to a temporary MLflow store (never ./mlruns of the checkout), and
    the session fails if anything wrote ./mlruns, ./runs or ./demo there."""
    def state():
        return {name: sorted((str(p), p.stat().st_mtime_ns)
                             for p in (CHECKOUT / name).rglob("*"))
                for name in ("mlruns", "runs", "demo") if (CHECKOUT / name).exists()}
    before = state()
    store = tmp_path_factory.mktemp("default_store")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    yield
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old
    assert state() == before, "a test wrote into the checkout (./mlruns, ./runs or ./demo)"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """The tiny synthetic world written once in every on-disk layout (~2 s)."""
    from benchmarks.synth.export import write_world
    root = tmp_path_factory.mktemp("synth_tiny")
    write_world(root, preset="tiny", seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_world():
    from benchmarks.synth import SyntheticWorld
    return SyntheticWorld("tiny", seed=0)


@pytest.fixture(scope="session")
def r18(tmp_path_factory):
    """A random-init ResNet-18 backbone checkpoint."""
    from benchmarks.cli import main
    path = tmp_path_factory.mktemp("ckpt") / "scratch_r18.pth"
    assert main(["checkpoint", "scratch", "--arch", "resnet18", "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="session")
def offline_runs(tmp_path_factory, tiny_root, r18):
    """Two smoke readout seeds run while the tracking server is down (nothing listens on
    the port): finished local records that MLflow has not seen. Tests that change them
    work on a copy."""
    import contextlib
    import io
    from tests.helpers import free_port, smoke_run
    runs = tmp_path_factory.mktemp("runs")
    down = f"http://127.0.0.1:{free_port()}"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert smoke_run(r18, tiny_root, runs, down, "--seeds", "2") == 0
    (runs / "printed.txt").write_text(printed.getvalue())
    return runs
