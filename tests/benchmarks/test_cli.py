import csv
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "data" in out and "demo" in out


def test_data_synth_writes_layouts(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--preset", "tiny", "--seed", "2",
                 "--parts", "cityscapes", "ade20k", "--no-progress"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert list((tmp_path / "cityscapes" / "gtFine" / "val").glob("*/*_labelIds.png"))
    assert not (tmp_path / "bdd100k").exists()


def test_data_check_ok_and_missing_root(tiny_root, tmp_path, capsys):
    assert main(["data", "check", "--dataset", "cityscapes", "--root", str(tiny_root)]) == 0
    out = capsys.readouterr().out
    assert "cityscapes train: 8 ok, 0 problems" in out
    assert main(["data", "check", "--dataset", "ade20k", "--root", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "x") in err and "ADEChallengeData2016" in err


def test_data_check_reports_every_problem(tiny_root, tmp_path, capsys):
    root = tmp_path / "bdd100k"
    shutil.copytree(tiny_root / "bdd100k" / "images" / "10k", root / "images" / "10k")
    shutil.copytree(tiny_root / "bdd100k" / "labels" / "sem_seg",
                    root / "labels" / "sem_seg")
    masks = sorted((root / "labels" / "sem_seg" / "masks" / "train").glob("*.png"))
    masks[0].unlink()
    cv2.imwrite(str(masks[1]), np.zeros((5, 5), np.uint8))
    assert main(["data", "check", "--dataset", "bdd100k", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "[missing_label]" in out and masks[0].name in out
    assert "[size_mismatch]" in out and masks[1].name in out
    assert main(["data", "check", "--dataset", "bdd100k", "--root", str(root),
                 "--skip-bad"]) == 0
    assert "6 ok, 2 skipped" in capsys.readouterr().out


def test_data_stats_writes_published_columns(tiny_root, tmp_path, capsys):
    out = tmp_path / "stats.csv"
    assert main(["data", "stats", "--dataset", "bdd100k", "--root", str(tiny_root),
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 19 and {r["size_group"] for r in rows} <= {"L", "S"}
    assert sum(float(r["total_pixel_pct"]) for r in rows) == pytest.approx(100, abs=0.1)


def test_unknown_dataset_choice_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["data", "check", "--dataset", "kitti", "--root", "."])
    assert "cityscapes" in capsys.readouterr().err


README = Path(__file__).resolve().parents[2] / "README.md"
# README commands that are not run here, and why; every other `bench` command of README
# runs as written (in README order, after the demo, with BENCH_DATA=demo/data)
NOT_RUN = {
    "bench checkpoint scratch --arch resnet50 --out scratch.pth": "ResNet-50, paper scale",
    "bench run --suite cityscapes_linear --checkpoint scratch.pth --data-root $BENCH_DATA":
        "paper scale: 40,000 iterations on real Cityscapes",
    "bench run --suite bdd_det_c4 --checkpoint scratch.pth --data-root $BENCH_DATA":
        "paper scale on real BDD100K",
    "bench flow precompute --videos bdd100k/videos/train --estimator dis --out flowcache "
    "--dt 15 --every 15 --workers 8": "real BDD100K videos",
    "bench flow info flowcache": "needs the cache above",
    "bench flow show --videos bdd100k/videos/val --t 100 --dt 15 --out pair.png":
        "real BDD100K videos",
    "bench pretrain --method poodle --videos bdd100k/videos/train "
    "--flow-weights raft_large_C_T_V1-22a6c225.pth --out runs/poodle":
        "paper recipe: GPUs, RAFT weights, BDD100K",
    "torchrun --nproc-per-node 8 -m pretrain --method flowe --videos ... --flow "
    "cache:flowcache --sync-bn --workers 4 --out runs/flowe": "8 GPUs",
    "bench study --preset tiny --out study_tiny": "the demo ran this study; its rerun is "
                                                  "checked above",
    "bench study --preset cpu --out study_cpu --export results/study/cpu": "119 min",
    "bench study --preset gpu --out study_gpu": "a GPU",
    "bench study --preset cpu --out study_cpu --methods scratch flowe --seeds 1": "20 min",
    "bench run --suite bdd_linear --checkpoint poodle.pth --seeds 3": "a PooDLe checkpoint "
                                                                     "on real BDD100K",
    "bench run --suite bdd_linear --checkpoint poodle.pth --force": "the same",
    "bench sweep --from-pretrain pretrain/ --suites cityscapes_linear bdd_linear --seeds 3 "
    "--data-root $BENCH_DATA --executor slurm --partition gpu --gpus-per-job 1 --time 240 "
    "--array-parallelism 32 --account myproject": "a Slurm cluster (tests/benchmarks/"
                                                   "test_sweep.py checks its sbatch script)",
    "bench sweep --from-pretrain pretrain/ --suites cityscapes_linear bdd_linear --seeds 3 "
    "--data-root $BENCH_DATA --status": "the sweep above",
    "bench pretrain --method poodle --preset paper --videos $BENCH_DATA/bdd100k/videos/train "
    "--out pretrain/poodle --flow-weights raft_large_C_T_V1.pth --executor slurm --nodes 2 "
    "--gpus-per-node 8 --partition gpu --account myproject": "a Slurm cluster; its --dry-run "
                                                             "runs",
    "bench sweep --from-pretrain pretrain/poodle --suites cityscapes_linear bdd_linear "
    "cityscapes_upernet bdd_upernet --seeds 3 --data-root $BENCH_DATA --executor slurm "
    "--partition gpu --account myproject": "a Slurm cluster and the pretraining above",
    "bench ui": "serves until stopped (tests/reliability/test_ui.py starts and stops it)",
    "bench ui --tracking-uri demo/mlruns": "the same; its --print-command form is run",
}


def readme_commands() -> list[str]:
    """Every command line of README's bash blocks (continuations joined, comments cut),
    except the install block."""
    text = README.read_text()
    text = text.split("<!-- commands:end -->", 1)[1]
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                out.append(" ".join(line.split()))
    return out


INSTALLED_DEMO = Path(__file__).resolve().parents[2] / "demo"  # README's install line


def _demo(tmp_path) -> tuple[Path, str]:
    """The demo folder and its world preset. README's install line ran `bench demo` in this
    checkout just before the tests (CI runs exactly that): when this code made it, a copy of
    it, so that the same pipeline does not run twice; else `bench demo --preset tiny`
    through the installed console script, as the install line runs it."""
    import json
    from benchmarks.study import code_fingerprint
    from benchmarks.tracking import SYNC_NAME, sqlite_uri
    demo = tmp_path / "demo"
    summary = INSTALLED_DEMO / "summary" / "study.json"
    made = json.loads(summary.read_text()) if summary.is_file() else {}
    if made.get("code") == code_fingerprint() and made["command"].startswith("bench demo"):
        shutil.copytree(INSTALLED_DEMO, demo)
        # the copy's records were logged to the copied store, which has another path
        moved = {sqlite_uri(INSTALLED_DEMO / "mlruns"): sqlite_uri(demo / "mlruns")}
        for marks in demo.rglob(SYNC_NAME):
            marks.write_text(json.dumps({moved.get(uri, uri): run for uri, run in
                                         json.loads(marks.read_text()).items()}))
        return demo, made["world"]["preset"]
    exe = shutil.which("bench") or str(Path(sys.executable).with_name("bench"))
    run = subprocess.run([exe, "demo", "--preset", "tiny", "--out", "demo"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return demo, "tiny"


def _logged_runs(demo: Path) -> list[str]:
    """The MLflow run ids the demo's records say they were logged as, each in its store."""
    import sqlite3
    from benchmarks.runner import RECORD_NAME
    from benchmarks.tracking import PRETRAIN_RECORD, sqlite_uri, synced_run_id
    uri = sqlite_uri(demo / "mlruns")
    marked = [synced_run_id(f.parent, uri) for name in (RECORD_NAME, PRETRAIN_RECORD)
              for f in demo.rglob(name)]
    with sqlite3.connect(demo / "mlruns" / "mlflow.db") as db:
        stored = {r for (r,) in db.execute("select run_uuid from runs")}
    return [r for r in marked if r in stored]


@pytest.mark.slow
def test_console_script_demo_end_to_end_then_the_readme_commands_as_written(
        tmp_path, capsys, monkeypatch):
    """The demo of README's install line (its loader checks, class statistics and the
    `tiny` learning study: every method, Scratch and Supervised, each read out on three
    suites). `bench demo` on the same folder again is the same study: it must train and log
    nothing, and say where the MLflow store is. Then every cheap command of README runs as
    written."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the demo's own store: <out>/mlruns
    demo, world = _demo(tmp_path)
    assert (demo / "stats" / "bdd100k_synthetic_train.csv").is_file()
    labels = sorted(["BYOL", "BYOL (crop)", "BYOL (crop w/ video)", "FlowE", "MoCo v2",
                     "PooDLe", "PixPro", "PixPro-flow", "DenseCL", "PiCO", "Static (Video)",
                     "Static (Frame)",
                     "Scratch", "Supervised (world labels)"])
    board = (demo / "leaderboard.csv").read_text()  # MLflow, one row per checkpoint
    rows = list(csv.DictReader(io.StringIO(board)))
    assert sorted(r["method"] for r in rows) == labels
    assert all(r["source"] == "ours (SYNTHETIC world 2)" and float(r["mIoU"]) >= 0 for r in rows)
    study = list(csv.DictReader((demo / "summary" / "leaderboard.csv").open()))
    floor = "Colour only (linear on RGB)"  # the calibration's floor, on the linear suites
    assert len(study) == 3 * len(labels) + 2 and {r["seeds"] for r in study} == {"1"}
    assert sorted({r["method"] for r in study}) == sorted([*labels, floor])
    assert {r["suite"] for r in study if r["method"] == floor} == {"cityscapes_linear",
                                                                   "bdd_linear"}
    assert {r["suite"] for r in study} == {"cityscapes_linear", "bdd_linear", "cityscapes_knn"}
    summary = json.loads((demo / "summary" / "study.json").read_text())
    assert summary["world"]["version"] == 2
    assert {(c["suite"], c["target"]) for c in summary["calibration"]} == {
        (s, t) for s in ("cityscapes_linear", "bdd_linear")
        for t in ("scratch_over_supervised", "colour_only_below_scratch")}
    assert (demo / "summary" / "leaderboard.png").is_file()
    health = list(csv.DictReader((demo / "summary" / "pretrain_health.csv").open()))
    assert {r["method"] for r in health} >= {"flowe", "poodle"}
    assert all(float(r["rankme"]) >= 1 for r in health if r["method"] != "supervised")
    # a pretraining run for every method but Scratch, three readouts for each, in the store
    assert len(set(_logged_runs(demo))) == len(labels) - 1 + 3 * len(labels)
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--preset", world, "--out", "demo"]) == 0
    again = capsys.readouterr().out
    assert "SYNTHETIC" in again and "bench ui --tracking-uri demo/mlruns" in again
    assert "reusing" in again and "[mlflow] logged" not in again and "$ bench pretrain" not in again
    assert again.count("is already finished") == 3 * len(labels)
    assert again.count("is pretrained") == len(labels) - 1
    assert (demo / "leaderboard.csv").read_text() == board

    commands = readme_commands()
    assert set(NOT_RUN) <= set(commands), set(NOT_RUN) - set(commands)
    monkeypatch.setenv("BENCH_DATA", "demo/data")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "readme_store")
    ran = []
    for command in commands:
        if command in NOT_RUN:
            continue
        argv = shlex.split(os.path.expandvars(command))
        assert argv[0] == "bench", f"README command {command!r} is neither run nor in NOT_RUN"
        assert main(argv[1:]) == 0, (command, capsys.readouterr().err)
        ran.append(command)
    assert len(ran) >= 10
    assert main(["ui", "--tracking-uri", "demo/mlruns", "--print-command"]) == 0
    assert str(demo / "mlruns" / "mlflow.db") in capsys.readouterr().out


@pytest.mark.parametrize("argv, says", [
    (["--preset", "nope"], "unknown study preset 'nope'; known: cpu, gpu, tiny"),
    (["--seeds", "0"], "argument --seeds: 0 is less than 1"),
    (["--methods", "dino"], "are not in study 'tiny'"),
    (["--readme", "README.md"], "--readme needs --export"),
    (["--export", "x", "--readme", "nonexistent.md"], "no such file"),
])
def test_study_user_errors_exit_2_with_one_line_before_any_work(argv, says, tmp_path, capsys):
    out = tmp_path / "study"
    try:
        code = main(["study", "--out", str(out), "--no-progress", *argv])
    except SystemExit as e:  # argparse: a bad value of an argument's type
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1
    assert not out.exists()
