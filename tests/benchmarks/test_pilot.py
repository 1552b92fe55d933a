import csv

from benchmarks import pilot


def test_the_pilot_writes_each_methods_knn_curve_and_reuses_finished_runs(tiny_root, tmp_path):
    out = tmp_path / "pilot"
    argv = ["--data", str(tiny_root), "--out", str(out), "--methods", "byol",
            "--steps", "2", "--every", "1", "--preset", "smoke"]
    assert pilot.main(argv) == 0
    rows = list(csv.DictReader((out / "pilot_curves.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2] and {r["method"] for r in rows} == {"byol"}
    assert all(0 <= float(r["mIoU"]) <= 100 for r in rows)
    assert (out / "pilot_curves.png").stat().st_size > 0
    stamp = (out / "byol" / "eval_curve.json").stat().st_mtime_ns
    assert pilot.main(argv) == 0  # finished: nothing runs again
    assert (out / "byol" / "eval_curve.json").stat().st_mtime_ns == stamp
