"""Logging interrupted after the run was created (a killed process, a server that died
mid-run) is repaired by the next `bench sync`: the half-logged run is replaced by a
complete one, and the parent's mean covers every seed."""
import json
import shutil
import statistics

import pytest
from mlflow.tracking import MlflowClient

from benchmarks.cli import main
from benchmarks.tracking import (PRETRAIN_RECORD, SYNC_NAME, Tracker, find_records, push_record,
                                 sqlite_uri)
from tests.helpers import SUITE


def _die_after(monkeypatch, method: str, calls: int):
    """The server stops answering after `calls` calls of MlflowClient.<method>."""
    real, seen = getattr(MlflowClient, method), []

    def flaky(self, *args, **kwargs):
        seen.append(1)
        if len(seen) > calls:
            raise ConnectionError("MLflow server went away")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(MlflowClient, method, flaky)


def test_a_readout_run_interrupted_mid_logging_is_logged_again_in_full(
        offline_runs, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(offline_runs, runs)
    for marker in runs.rglob(SYNC_NAME):
        marker.unlink()
    uri = sqlite_uri(tmp_path / "store")
    with monkeypatch.context() as m:
        _die_after(m, "log_artifact", 1)  # dies after the first artifact of seed 0
        assert main(["sync", str(runs), "--tracking-uri", uri]) == 1
    assert "0 pushed, 0 already there, 2 failed" in capsys.readouterr().out
    tracker = Tracker(uri)
    exp = tracker.experiment_id(f"{SUITE} [synthetic world 2]")
    halves = tracker._runs([exp], bench_kind="seed")
    assert len(halves) == 2 and {h.info.status for h in halves} == {"RUNNING"}
    assert not list(runs.rglob(SYNC_NAME))

    assert main(["sync", str(runs), "--tracking-uri", uri]) == 0
    assert "2 pushed, 0 already there, 0 failed" in capsys.readouterr().out
    children = tracker._runs([exp], bench_kind="seed")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert not {h.info.run_id for h in halves} & {c.info.run_id for c in children}
    for child in children:
        files = {f.path for f in tracker.client.list_artifacts(child.info.run_id)}
        assert {"metrics.json", "resolved_suite.yaml", "per_class_table.json"} <= files
    (parent,) = tracker.parent_runs(SUITE, True)
    mious = [json.loads(r.read_text())["metrics"]["mIoU"] for r in find_records([runs])]
    assert parent["metrics"]["seeds"] == 2
    assert parent["metrics"]["mIoU"] == pytest.approx(statistics.fmean(mious))
    assert main(["sync", str(runs), "--tracking-uri", uri]) == 0
    assert "0 pushed, 2 already there" in capsys.readouterr().out


def test_a_pretraining_run_interrupted_mid_logging_is_logged_again_in_full(
        r18, tmp_path, monkeypatch):
    out = tmp_path / "pretrain"
    out.mkdir()
    record = {"record_id": "r-1", "synthetic": True, "method": "byol", "arch": "resnet18",
              "preset": "smoke", "videos": "v", "epochs": 1.0, "checkpoint_sha256": "ab" * 32,
              "git_sha": "x", "pairs_per_s": 1.0, "seconds": 2.0, "checkpoint": str(r18)}
    (out / PRETRAIN_RECORD).write_text(json.dumps(record))
    (out / "config.yaml").write_text("method: byol\n")
    (out / "curve.json").write_text(json.dumps([{"step": 1, "loss": 2.0},
                                                {"step": 2, "loss": 1.5}]))
    uri = sqlite_uri(tmp_path / "store")
    with monkeypatch.context() as m:
        _die_after(m, "log_batch", 1)  # params logged, then the metrics never arrive
        assert push_record(out / PRETRAIN_RECORD, uri=uri) is None
    run_id = push_record(out / PRETRAIN_RECORD, uri=uri)
    tracker = Tracker(uri)
    # a record from before world versions: world 1's experiment
    (run,) = tracker._runs([tracker.experiment_id("pretrain [synthetic]")],
                           bench_kind="pretrain")
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.metrics["final_loss"] == 1.5
    assert len(tracker.client.get_metric_history(run_id, "train/loss")) == 2
    assert [f.path for f in tracker.client.list_artifacts(run_id, "checkpoint")] \
        == ["checkpoint/scratch_r18.pth"]
