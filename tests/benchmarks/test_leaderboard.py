"""Leaderboards and paper tables against results/published (itself a copy of the shared
transcription), with our cells filled only from real-data runs."""
import csv
import filecmp
import json
import uuid
from pathlib import Path

import pytest

from benchmarks.cli import main
from benchmarks.leaderboard import (PUBLISHED_CSV, load_published, paper_table, published_rows,
                                    suite_filter, table_names)
from benchmarks.suite import load_suite, suite_names
from benchmarks.tracking import Tracker, push_record, sqlite_uri

SHARED = Path(__file__).resolve().parents[3] / "shared" / "published" / "results.csv"
KEY = ("paper", "table", "method", "arch", "pretrain_epochs", "pretrain_data", "init")


@pytest.mark.skipif(not SHARED.is_file(), reason="the shared folder is not beside the repo")
def test_published_copy_is_the_shared_file():
    assert filecmp.cmp(SHARED, PUBLISHED_CSV, shallow=False)


@pytest.mark.parametrize("suite", suite_names())
def test_leaderboard_published_cells_equal_results_csv(suite):
    where = suite_filter(load_suite(suite))
    expected = sorted((r["paper"], r["table"], r["method"], r["arch"], r["metric"], r["value"])
                      for r in load_published()
                      if all(r[k] == v for k, v in where.items()))
    got = []
    for row in published_rows(load_suite(suite)):
        paper, table = row.source.split(" ", 1)
        method = row.method.split(" [")[0]  # ablation rows carry their note in brackets
        got += [(paper, table, method, row.arch, m, c.text) for m, c in row.cells.items()]
    assert sorted(got) == expected
    # every other suite has paper rows; none of the four papers reports a kNN readout
    assert expected or suite.startswith("ade20k_upernet") or suite.endswith("_knn")


def test_published_leaderboard_csv_and_chart(tmp_path, capsys):
    out = tmp_path / "bdd_linear.csv"
    assert main(["leaderboard", "--suite", "bdd_linear", "--published", "--tracking-uri",
                 sqlite_uri(tmp_path / "empty"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert (tmp_path / "bdd_linear.png").is_file()
    poodle = next(r for r in rows if r["source"] == "poodle Table 1" and r["method"] == "PooDLe"
                  and not r["init"])
    assert (poodle["mIoU"], poodle["Acc"]) == ("39.2", "89.2")
    assert all(not r["source"].startswith("ours") for r in rows)
    assert main(["leaderboard", "--suite", "nope"]) == 2
    assert "bdd_linear" in capsys.readouterr().err


@pytest.mark.parametrize("name", table_names())
def test_paper_tables_place_every_published_number_once(name):
    spec, rows = paper_table(name)
    mine = [r for r in load_published()
            if (r["paper"], r["table"]) == (spec["paper"], spec["table"])]
    assert sum(len(r.cells) for r in rows) == len(mine)
    for row in rows:
        for label, cell in row.cells.items():
            assert cell.text.endswith("(paper)") and not cell.ours


def test_poodle_table1_has_the_papers_rows_and_columns(tmp_path):
    spec, rows = paper_table("poodle-table1")
    assert [(r.method, r.arch, r.init) for r in rows] == [
        ("Scratch", "R50", ""), ("DenseCL", "R50", ""), ("FlowE", "R50", ""),
        ("PixPro", "R50", ""), ("DINO", "R50", ""), ("DINO", "ViT-S", ""),
        ("iBOT", "ViT-S", ""), ("DoRA", "ViT-S", ""), ("PooDLe", "R50", ""),
        ("Supervised", "R50", ""), ("PooDLe", "R50", "IN1K-supervised")]
    assert [c["label"] for c in spec["columns"]] == [
        "BDD Linear mIoU", "BDD Linear Acc", "BDD UperNet mIoU", "BDD UperNet Acc",
        "BDD Det C4 mAP", "BDD Det FPN mAP", "CS Linear mIoU", "CS Linear Acc",
        "CS UperNet mIoU", "CS UperNet Acc"]
    poodle = rows[8]
    assert poodle.cells["BDD Det C4 mAP"].text == "4.9 (paper)"
    assert "BDD Det C4 mAP" not in rows[5].cells  # ViT rows have no detection numbers
    out = tmp_path / "t1.md"
    assert main(["table", "poodle-table1", "--no-ours", "--out", str(out)]) == 0
    assert out.read_text().startswith("| method | arch |") and (tmp_path / "t1.png").is_file()


def test_unknown_table_lists_the_known_ones(capsys):
    assert main(["table", "poodle-table9", "--no-ours"]) == 2
    assert "poodle-table1" in capsys.readouterr().err


def test_our_real_results_fill_cells_and_synthetic_ones_never_do(tiny_root, tmp_path):
    """A real smoke run, then the same record relabelled as real data: the table plumbing
    (not a result) is what is checked here."""
    ckpt = tmp_path / "r18.pth"
    assert main(["checkpoint", "scratch", "--arch", "resnet18", "--out", str(ckpt)]) == 0
    uri = sqlite_uri(tmp_path / "store")
    assert main(["run", "--suite", "cityscapes_linear", "--checkpoint", str(ckpt),
                 "--data-root", str(tiny_root), "--scale", "smoke", "--device", "cpu",
                 "--out", str(tmp_path / "runs"), "--tracking-uri", uri,
                 "protocol.iterations=1"]) == 0
    tracker = Tracker(uri)
    _, rows = paper_table("poodle-table1", tracker)
    assert not any(c.ours for r in rows for c in r.cells.values())
    (record_path,) = (tmp_path / "runs").rglob("metrics.json")
    record = json.loads(record_path.read_text())
    record.update(synthetic=False, record_id=uuid.uuid4().hex)
    relabelled = tmp_path / "relabelled" / "seed0"
    relabelled.mkdir(parents=True)
    for f in record_path.parent.iterdir():
        if f.suffix in (".yaml", ".csv"):
            (relabelled / f.name).write_bytes(f.read_bytes())
    (relabelled / "metrics.json").write_text(json.dumps(record))
    assert push_record(relabelled / "metrics.json", tracker=tracker)
    _, rows = paper_table("poodle-table1", tracker)
    (ours,) = [r for r in rows if r.source == "ours"]  # R18 scratch: no R50 paper row
    assert ours.method == "Scratch" and ours.arch == "R18"
    assert ours.cells["CS Linear mIoU"].mean == pytest.approx(record["metrics"]["mIoU"])
    assert ours.cells["CS Linear mIoU"].text.endswith("(ours)")
    assert rows[0].cells["CS Linear mIoU"].text == "9.8 (paper)"


def test_rows_sort_by_the_main_metric_best_first():
    from benchmarks.leaderboard import Cell, Row, sort_by_main_metric
    rows = [Row("ours", m, "R50", cells={"mIoU": Cell(v, text=str(v))} if v else {})
            for m, v in (("a", 40.0), ("b", None), ("c", 61.5), ("d", 50.0))]
    assert [r.method for r in sort_by_main_metric(rows)] == ["c", "d", "a", "b"]


def test_matrix_puts_the_papers_rows_beside_each_other_one_column_per_suite(tmp_path, capsys):
    out = tmp_path / "matrix.csv"
    assert main(["leaderboard", "--matrix", "--suites", "bdd_linear", "cityscapes_linear",
                 "--published", "--tracking-uri", sqlite_uri(tmp_path / "empty"), "--out",
                 str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[-2:] == ["bdd_linear", "cityscapes_linear"]
    poodle = [r for r in rows if r["source"] == "poodle Table 1" and r["method"] == "PooDLe"
              and not r["init"]]
    assert len(poodle) == 1 and poodle[0]["bdd_linear"] == "39.2"
    for suite in ("bdd_linear", "cityscapes_linear"):  # each cell is the paper's number
        published = {(r["paper"], r["table"], r["method"], r["arch"], r["value"])
                     for r in load_published() if r["metric"] == "mIoU"
                     and _matches_suite(r, suite)}
        cells = {(*r["source"].split(" ", 1), r["method"].split(" [")[0], r["arch"], r[suite])
                 for r in rows if r[suite]}
        assert cells <= published and cells
    assert main(["leaderboard", "--matrix", "--suites", "nope"]) == 2
    assert "--suites nope: unknown" in capsys.readouterr().err
    assert main(["leaderboard", "--suite", "bdd_linear", "--metric", "mIoU"]) == 2
    assert "--suites and --metric are for --matrix" in capsys.readouterr().err


def _matches_suite(row: dict, suite: str) -> bool:
    return all(row[k] == v for k, v in suite_filter(load_suite(suite)).items())
