"""`bench sweep` with submitit's local executor (real jobs: processes of their own), and the
sbatch script its Slurm executor would submit."""
import csv
import json
import re
import shutil

import pytest

from benchmarks.cli import main
from benchmarks.runner import RECORD_NAME, finished_record, record_lock, run_or_reuse
from benchmarks.suite import resolve_suite
from benchmarks.tracking import sqlite_uri, synced_run_id

SUITES = ["cityscapes_knn", "cityscapes_linear"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep_ckpts")
    paths = [folder / f"scratch{seed}.pth" for seed in (0, 1)]
    for seed, path in enumerate(paths):
        assert main(["checkpoint", "scratch", "--arch", "resnet18", "--seed", str(seed),
                     "--out", str(path)]) == 0
    return [str(p) for p in paths]


def _argv(checkpoints, root, out, *extra):
    return ["sweep", "--checkpoints", *checkpoints, "--suites", *SUITES, "--seeds", "2",
            "--scale", "smoke", "--data-root", str(root), "--out", str(out), "--device", "cpu",
            *extra]


def test_a_local_sweep_finishes_every_cell_resumes_a_killed_one_and_then_submits_nothing(
        checkpoints, tiny_root, tmp_path, capsys):
    out = tmp_path / "runs"
    # a job killed after the first iteration of its readout: its checkpoint, no record
    killed = run_or_reuse(resolve_suite("cityscapes_linear", scale="smoke"), checkpoints[0],
                          seed=0, data_root_dir=tiny_root, out_dir=out, stop_after=1,
                          progress=False, log=lambda *_: None)
    assert killed["status"] == "interrupted"
    capsys.readouterr()
    uri = sqlite_uri(tmp_path / "store")
    assert main(_argv(checkpoints, tiny_root, out, "--array-parallelism", "4",
                      "--tracking-uri", uri)) == 0
    said = capsys.readouterr().out
    assert "8 cell(s): 2 checkpoint(s) x 2 suite(s) x 2 seed(s); 8 to submit" in said
    assert "[sweep] 8 done" in said
    records = [finished_record(f.parent) for f in out.rglob(RECORD_NAME)]
    assert len(records) == 8 and all(records)
    assert {(r["suite"], r["seed"], r["checkpoint"]) for r in records} == {
        (s, seed, c) for s in SUITES for seed in (0, 1) for c in checkpoints}
    # each job logged its record to MLflow, as `bench run` does
    assert all(synced_run_id(r["run_dir"], uri) for r in records)
    # the killed cell's job resumed the readout instead of starting over
    logs = {line["job_id"]: line for line in map(json.loads, (
        out / ".sweep" / "jobs.jsonl").read_text().splitlines())}
    assert len(logs) == 8
    (job,) = [j for j in logs.values() if j["cell"] == {
        "checkpoint": checkpoints[0], "suite": "cityscapes_linear", "seed": 0}]
    log = (out / ".sweep" / "logs" / job["job_id"] / f"{job['job_id']}_0_log.out").read_text()
    assert "resuming readout from iteration 1" in log

    assert main(_argv(checkpoints, tiny_root, out)) == 0
    said = capsys.readouterr().out
    assert "; 0 to submit" in said and "nothing to submit" in said
    assert len((out / ".sweep" / "jobs.jsonl").read_text().splitlines()) == 8
    assert main(_argv(checkpoints, tiny_root, out, "--status")) == 0
    assert "[sweep] 8 done" in capsys.readouterr().out

    # the methods x suites table of what the sweep logged: a row per checkpoint, a column
    # per suite, mean ± std over the 2 seeds (synthetic world: never beside paper rows)
    table = tmp_path / "matrix.csv"
    assert main(["leaderboard", "--matrix", "--synthetic", "--tracking-uri", uri,
                 "--out", str(table)]) == 0
    rows = list(csv.DictReader(table.open()))
    assert list(rows[0])[-2:] == SUITES and len(rows) == 2
    by_sha = {r["checkpoint"]: r for r in rows}
    for record in records:
        row = by_sha[record["checkpoint_sha256"][:12]]
        assert row["method"] == "Scratch" and row["seeds"] == "2"
        mean = sum(r["metrics"]["mIoU"] for r in records if (r["suite"], r["checkpoint"]) ==
                   (record["suite"], record["checkpoint"])) / 2
        assert row[record["suite"]].startswith(f"{mean:.2f} ± ")
    assert table.with_suffix(".png").is_file()


def test_a_failing_job_is_reported_with_its_log_and_retried_once(checkpoints, tiny_root,
                                                                 tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_root / "cityscapes", root / "cityscapes")
    for label in (root / "cityscapes" / "gtFine" / "val").rglob("*_labelIds.png"):
        label.write_bytes(b"not a png")  # every evaluation image's label is unreadable
    out = tmp_path / "runs"
    argv = ["sweep", "--checkpoints", checkpoints[0], "--suites", "cityscapes_knn", "--scale",
            "smoke", "--data-root", str(root), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 2
    said = capsys.readouterr()
    failures = re.findall(r"FAILED cityscapes_knn seed 0 on \S+: log (\S+_log\.err)", said.out)
    assert len(failures) == 2 and failures[0] != failures[1]
    assert all("labelIds.png" in open(f).read() for f in failures)
    assert "1 cell(s) failed twice" in said.err
    assert main([*argv, "--status"]) == 0
    assert "failed       cityscapes_knn seed 0" in capsys.readouterr().out
    (cell,) = out.glob("cityscapes_knn/*/seed0")
    with record_lock(cell):  # a third try by hand, running now
        assert main([*argv, "--status"]) == 0
        assert re.search(r"running +cityscapes_knn seed 0 .*\(process \d+ on ",
                         capsys.readouterr().out)
    assert main([*argv, "--dry-run"]) == 0  # given up on: not submitted a third time
    assert "; 0 to submit" in capsys.readouterr().out


def test_dry_run_prints_the_sbatch_script_of_one_job_array(checkpoints, tiny_root, tmp_path,
                                                           capsys):
    assert main(_argv(checkpoints, tiny_root, tmp_path / "runs", "--executor", "slurm",
                      "--partition", "gpu", "--account", "proj", "--gpus-per-job", "2",
                      "--time", "90", "--array-parallelism", "3", "--dry-run")) == 0
    script = capsys.readouterr().out.split("#!/bin/bash", 1)[1]
    for line in ("#SBATCH --array=0-7%3", "#SBATCH --gpus-per-node=2", "#SBATCH --time=90",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj",
                 "#SBATCH --signal=USR2@120"):  # submitit's pre-emption / timeout signal
        assert line in script.splitlines()
    assert "-m submitit.core._submit" in script
    assert not (tmp_path / "runs" / ".sweep" / "jobs.jsonl").exists()


@pytest.mark.parametrize("argv, says", [
    (["--from-pretrain", "nowhere"], "--from-pretrain nowhere: not a folder"),
    (["--checkpoints", "missing.pth"], "missing.pth"),
    (["--data-root", "nowhere"], "--data-root nowhere: not a folder"),
])
def test_user_errors_exit_2_with_one_line_before_anything_is_submitted(
        argv, says, checkpoints, tiny_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = {"--checkpoints": checkpoints[:1], "--data-root": [str(tiny_root)]}
    for i in range(0, len(argv), 2):
        full.pop("--checkpoints" if argv[i] == "--from-pretrain" else argv[i], None)
        full[argv[i]] = [argv[i + 1]]
    flat = [x for k, v in full.items() for x in (k, *v)]
    assert main(["sweep", *flat, "--suites", "cityscapes_knn", "--scale", "smoke"]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
