"""MLflow tracking against a real tracking server on 127.0.0.1 and the default SQLite store:
local records first, `bench sync` after an outage, reruns as no-ops, --force, locks, and
pretraining lineage."""
import csv
import json
import math
import os
import statistics
import subprocess
import time
import urllib.request

import pytest

from benchmarks.cli import main
from benchmarks.runner import record_lock
from benchmarks.tracking import SYNC_NAME, Tracker, epoch_ms, server_command, sqlite_uri
from tests.helpers import SUITE, free_port
from tests.helpers import smoke_run as _run


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` (the command `bench ui` starts) on a SQLite backend."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen(server_command(sqlite_uri(folder), port=port), stdout=log,
                            stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError((folder / "server.log").read_text()[-3000:])
            time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(30)
    log.close()


def _records(runs):
    return sorted(runs.rglob("metrics.json"))


def _children(tracker, synthetic=True):
    (parent,) = tracker.parent_runs(SUITE, synthetic)
    exp = tracker.experiment_id(f"{SUITE} [synthetic world 2]" if synthetic else SUITE)
    return parent, tracker._runs([exp], **{"mlflow.parentRunId": parent["run_id"]})


def test_outage_then_sync_then_rerun_is_a_noop(server, offline_runs, tiny_root, r18, capsys,
                                              tmp_path):
    records = _records(offline_runs)
    assert len(records) == 2
    assert not any((r.parent / SYNC_NAME).exists() for r in records)  # nothing reached MLflow
    assert (offline_runs / "printed.txt").read_text().count("`bench sync` pushes it later") == 2

    assert main(["sync", str(offline_runs), "--tracking-uri", server]) == 0
    assert "2 pushed, 0 already there, 0 failed" in capsys.readouterr().out
    tracker = Tracker(server)
    parent, children = _children(tracker)
    local = [json.loads(r.read_text()) for r in records]
    mious = [rec["metrics"]["mIoU"] for rec in local]
    assert parent["metrics"]["seeds"] == 2 and len(children) == 2
    assert parent["metrics"]["mIoU"] == pytest.approx(statistics.fmean(mious))
    assert parent["metrics"]["mIoU_std"] == pytest.approx(statistics.stdev(mious))
    tags = parent["tags"]
    assert tags["synthetic"] == "true" and tags["method"] == "scratch" and tags["world"] == "2"
    assert tags["checkpoint_sha256"] == local[0]["checkpoint_sha256"]
    assert tags["suite_hash"] == local[0]["suite_hash"] and tags["arch"] == "resnet18"
    child = next(c for c in children if c.data.tags["seed"] == "0")
    seed0 = next(rec for rec in local if rec["seed"] == 0)
    assert child.data.metrics["IoU_road"] == pytest.approx(seed0["per_class"]["road"])
    assert child.data.params["protocol.iterations"] == "3"
    loss = tracker.client.get_metric_history(child.info.run_id, "train/loss")
    assert [m.step for m in loss] == [1, 2, 3]
    assert [m.value for m in loss] == pytest.approx([c["loss"] for c in seed0["loss_curve"]])
    assert child.info.start_time == epoch_ms(seed0["started"])  # the readout's own time
    assert child.info.end_time == epoch_ms(seed0["finished"])
    table = tracker.client.download_artifacts(parent["run_id"], "per_class_mean.csv",
                                              str(tmp_path))
    lines = open(table).read().splitlines()
    assert lines[0] == "class,IoU,IoU_std,seeds" and lines[1].startswith("road,")
    assert any(line.endswith(",absent,,0") for line in lines)  # a class no seed saw
    files = {f.path for f in tracker.client.list_artifacts(child.info.run_id)}
    assert {"per_class.png", "confusion.png", "resolved_suite.yaml", "metrics.json",
            "per_class_table.json", "qualitative"} <= files
    assert len(tracker.client.list_artifacts(child.info.run_id, "qualitative")) == 3

    # everything is synced: sync and rerun change nothing
    assert main(["sync", str(offline_runs), "--tracking-uri", server]) == 0
    assert "0 pushed, 2 already there" in capsys.readouterr().out
    mtimes = [r.stat().st_mtime_ns for r in records]
    assert _run(r18, tiny_root, offline_runs, server, "--seeds", "2") == 0
    assert capsys.readouterr().out.count("[skip]") == 2
    assert [r.stat().st_mtime_ns for r in _records(offline_runs)] == mtimes
    # a lost sync marker does not duplicate the run: it is found by its record id
    (records[0].parent / SYNC_NAME).unlink()
    assert main(["sync", str(offline_runs), "--tracking-uri", server]) == 0
    assert len(_children(tracker)[1]) == 2


def test_force_reruns_keeps_the_old_result_and_replaces_its_mlflow_run(
        server, offline_runs, tiny_root, r18, capsys):
    assert main(["sync", str(offline_runs), "--tracking-uri", server]) == 0
    (seed0,) = offline_runs.rglob("seed0/metrics.json")
    old = json.loads(seed0.read_text())
    assert _run(r18, tiny_root, offline_runs, server, "--force") == 0
    new = json.loads(seed0.read_text())
    assert new["record_id"] != old["record_id"]
    (kept,) = seed0.parent.parent.glob("seed0.replaced-*")
    assert json.loads((kept / "metrics.json").read_text())["record_id"] == old["record_id"]
    _, children = _children(Tracker(server))
    assert sorted(c.data.tags["bench_record"] for c in children if c.data.tags["seed"] == "0") \
        == [new["record_id"]]
    assert len(children) == 2
    # the replaced folder is history, never pushed again
    assert main(["sync", str(offline_runs), "--tracking-uri", server]) == 0
    assert "0 pushed" in capsys.readouterr().out


def test_a_second_run_of_the_same_key_is_refused_and_a_dead_holders_lock_is_free(
        offline_runs, tiny_root, r18, tmp_path, capsys):
    uri = sqlite_uri(tmp_path / "store")
    (seed0,) = offline_runs.rglob("seed0/metrics.json")
    with record_lock(seed0.parent):  # another holder of this key
        assert _run(r18, tiny_root, offline_runs, uri) == 2
    assert f"being run by process {os.getpid()}" in capsys.readouterr().err
    # a holder that died left its name in the file, but the kernel released its lock
    (seed0.parent / ".lock").write_text("otherhost 4242")
    assert _run(r18, tiny_root, offline_runs, uri) == 0
    assert "[skip]" in capsys.readouterr().out


def test_default_store_is_sqlite_in_the_working_folder(offline_runs, tmp_path, monkeypatch,
                                                       capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["sync", str(offline_runs)]) == 0
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    capsys.readouterr()
    assert main(["leaderboard", "--suite", SUITE, "--synthetic"]) == 0
    out = capsys.readouterr().out
    assert "Scratch" in out and "ours (SYNTHETIC world 2)" in out and "±" in out
    assert main(["leaderboard", "--suite", SUITE, "--synthetic", "--published"]) == 2
    assert "never put beside" in capsys.readouterr().err
    assert main(["leaderboard", "--suite", SUITE, "--synthetic", "--out",
                 str(tmp_path / "lb.csv")]) == 0
    assert (tmp_path / "lb.png").is_file()
    rows = (tmp_path / "lb.csv").read_text().splitlines()
    assert rows[0].startswith("source,method,arch") and len(rows) == 2
    capsys.readouterr()
    assert main(["leaderboard", "--suite", SUITE, "--synthetic", "--per-class",
                 "--format", "csv"]) == 0
    header, row = list(csv.reader(capsys.readouterr().out.splitlines()))
    per_class = header[header.index("mIoU_common") + 1:]
    assert per_class[:3] == ["IoU_road", "IoU_sidewalk", "IoU_building"]  # dataset order
    assert "absent" in row
    # real-data leaderboards and paper tables never show synthetic results
    assert main(["leaderboard", "--suite", SUITE]) == 0
    assert "no results for cityscapes_linear on real data yet: results on the SYNTHETIC " \
        "world exist (e.g. from `bench demo`): add --synthetic" in capsys.readouterr().out
    assert main(["table", "poodle-table1"]) == 0
    assert "0 cell(s) from our runs" in capsys.readouterr().out


def test_pretraining_run_is_logged_and_readouts_carry_its_lineage(tiny_root, tmp_path, capsys):
    uri = sqlite_uri(tmp_path / "store")
    out = tmp_path / "byol_video"
    assert main(["pretrain", "--method", "byol_video", "--preset", "smoke", "--videos",
                 str(tiny_root / "bdd100k" / "videos" / "train"), "--out", str(out),
                 "--no-progress", "--tracking-uri", uri]) == 0
    record = json.loads((out / "pretrain_record.json").read_text())
    assert record["synthetic"] is True and record["steps"] == 4
    tracker = Tracker(uri)
    exp = tracker.experiment_id("pretrain [synthetic world 2]")
    (run,) = tracker._runs([exp], bench_kind="pretrain")
    assert run.data.tags["checkpoint_sha256"] == record["checkpoint_sha256"]
    assert len(tracker.client.get_metric_history(run.info.run_id, "train/loss")) == 4
    assert [f.path for f in tracker.client.list_artifacts(run.info.run_id, "checkpoint")] \
        == ["checkpoint/backbone.pth"]
    assert main(["run", "--suite", SUITE, "--checkpoint", str(out / "backbone.pth"),
                 "--data-root", str(tiny_root), "--scale", "smoke", "--device", "cpu",
                 "--out", str(tmp_path / "runs"), "--tracking-uri", uri,
                 "protocol.iterations=1"]) == 0
    (parent,) = tracker.parent_runs(SUITE, True)
    assert parent["tags"]["pretrain_run_id"] == run.info.run_id
    assert parent["tags"]["method"] == "byol_video"
    assert math.isfinite(parent["metrics"]["mIoU"])


def test_ui_command(tmp_path, capsys):
    uri = sqlite_uri(tmp_path)
    assert main(["ui", "--tracking-uri", uri, "--port", "5123", "--print-command"]) == 0
    out = capsys.readouterr().out
    assert "mlflow server" in out and "--port 5123" in out and "127.0.0.1" in out
    assert main(["ui", "--tracking-uri", "http://127.0.0.1:5999"]) == 0
    assert "server already" in capsys.readouterr().out


def test_eval_every_draws_a_knn_curve_logged_to_the_pretraining_run(tiny_root, tmp_path,
                                                                     capsys):
    uri = sqlite_uri(tmp_path / "store")
    out = tmp_path / "byol"
    argv = ["pretrain", "--method", "byol", "--preset", "smoke", "--videos",
            str(tiny_root / "bdd100k" / "videos" / "train"), "--out", str(out), "--no-progress",
            "--tracking-uri", uri, "--eval-scale", "smoke", "--eval-data-root", str(tiny_root),
            "schedule.steps=2"]
    assert main(argv + ["--eval-every", "1", "--eval-suite", "cityscapes_linear"]) == 2
    assert "use a kNN suite" in capsys.readouterr().err and not out.exists()  # before any work
    assert main(argv + ["--eval-every", "1"]) == 0
    assert "[eval] step 1: cityscapes_knn mIoU" in capsys.readouterr().out
    curve = json.loads((out / "eval_curve.json").read_text())
    assert [c["step"] for c in curve] == [1, 2] and all(0 <= c["mIoU"] <= 100 for c in curve)
    tracker = Tracker(uri)
    (run,) = tracker._runs([tracker.experiment_id("pretrain [synthetic world 2]")],
                           bench_kind="pretrain")
    history = tracker.client.get_metric_history(run.info.run_id, "eval/cityscapes_knn/mIoU")
    assert sorted(m.step for m in history) == [1, 2]
    assert {m.key for m in tracker.client.get_metric_history(run.info.run_id, "train/rankme")}
