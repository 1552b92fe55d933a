"""`bench study`: the learning study (benchmarks/study.py) from the command line."""
from __future__ import annotations

import shutil
from pathlib import Path

from pretrain.catalogue import method_names
from pretrain.cli import at_least

from ..study import study_names

EXPORTED = ("leaderboard.csv", "leaderboard.md", "leaderboard.png", "pretrain_health.csv",
            "lr_grid.csv",
            "study.json")


def register(sub) -> None:
    p = sub.add_parser(
        "study", help="the learning study: every method, Scratch and Supervised pretrained "
                      "and read out on the synthetic world, mean ± std over seeds",
        description="World -> pretraining of every method plus Scratch (floor) and "
                    "Supervised (ceiling) -> frozen readouts -> leaderboard with mean ± std "
                    "over seeds, class groups, chart, pretraining health and the study's "
                    "expectations. Finished steps are skipped, so an interrupted study "
                    "continues where it stopped. Everything is tagged SYNTHETIC.")
    p.add_argument("--preset", default="tiny",
                   help=f"one of: {', '.join(study_names())} (benchmarks/studies/<name>.yaml; "
                        f"default tiny)")
    p.add_argument("--out", required=True, help="study folder: data/, pretrain/, runs/, "
                   "mlruns/, summary/")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help=f"only these of the preset's methods: scratch, supervised, "
                        f"{', '.join(method_names())}")
    p.add_argument("--seeds", type=at_least(1), default=None,
                   help="seeds 0..N-1 (default: preset's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else <out>/mlruns)")
    p.add_argument("--export", default=None,
                   help="copy the summary (leaderboard CSV/MD/PNG, pretrain_health.csv, "
                        "study.json) to this folder, e.g. results/study/cpu")
    p.add_argument("--readme", default=None, metavar="README.md",
                   help="with --export: also regenerate the study table between "
                        "<!-- study:begin --> and <!-- study:end --> in this file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_study)


def cmd_study(args) -> int:
    from ..cli import check_device
    from ..study import Study, load_study
    if args.device:
        check_device(args.device)
    if args.readme:
        check_readme(Path(args.readme), args.export)
    study = Study(load_study(args.preset), args.out, seeds=args.seeds, methods=args.methods,
                  device=args.device, tracking_uri=args.tracking_uri,
                  progress=False if args.no_progress else None)
    study.command = command_line(args)
    study.run()
    if args.export:
        export(Path(args.out) / "summary", Path(args.export))
        if args.readme:
            write_readme_block(Path(args.readme), Path(args.export))
    return 0


def command_line(args) -> str:
    """The command that reproduces this study (recorded in study.json)."""
    parts = ["bench", "study", "--preset", args.preset, "--out", args.out]
    if args.methods:
        parts += ["--methods", *args.methods]
    if args.seeds is not None:
        parts += ["--seeds", str(args.seeds)]
    if args.device:
        parts += ["--device", args.device]
    if args.export:
        parts += ["--export", args.export]
    if args.readme:
        parts += ["--readme", args.readme]
    return " ".join(parts)


BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"


def check_readme(readme: Path, export_to: str | None) -> None:
    """--readme is checked before the study runs, not after an hour of work."""
    from ..cli import UserError
    if not export_to:
        raise UserError("--readme needs --export (the README points at the exported files)")
    if not readme.is_file():
        raise UserError(f"--readme {readme}: no such file")
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise UserError(f"{readme} has no {BEGIN} ... {END} block; add one where the "
                        f"table should go")


def write_readme_block(readme: Path, exported: Path) -> None:
    """The study's table, command, wall time and expectations, generated into `readme`
    between the study markers (never edited by hand)."""
    import json
    check_readme(readme, exported.as_posix())
    text = readme.read_text()
    summary = json.loads((exported / "study.json").read_text())
    wall = summary["wall_seconds"]["total"]
    version = summary["world"].get("version", 1)
    lines = [BEGIN,
             f"**Study `{summary['study']}` — SYNTHETIC world {version}, not Cityscapes / "
             f"BDD100K results.** {summary['seeds']} seeds (mean ± std; seed k = its own "
             f"pretraining and readout), git `{summary['git_sha'][:12]}`, {wall / 60:.0f} min wall on "
             f"this machine, `{summary['command']}`; files in `{exported.as_posix()}/` "
             f"(generated by `--export`, never edited).", "",
             (exported / "leaderboard.md").read_text().rstrip(), "",
             f"![study]({exported.as_posix()}/leaderboard.png)", ""]
    if summary.get("calibration"):
        lines += ["Calibration of the world (no SSL method involved):", ""]
        lines += [f"- {'met' if c['met'] else '**not met**'}: {c['text']}"
                  for c in summary["calibration"]]
        lines.append("")
    if summary.get("lr_grid"):
        chosen = [r for r in summary["lr_grid"] if r["chosen"]]
        grid = summary["lr_grid_spec"]
        factors = ", ".join(f"{f:g}" for f in grid["factors"])
        lines += [f"Learning rates, chosen per method from x{{{factors}}} its preset's by "
                  f"{grid['suite']} on a held-out {grid['holdout']:g} of the training split "
                  f"(never val; `lr_grid.csv`): "
                  + ", ".join(f"{r['method']} {r['lr']:g} (x{r['factor']:g})" for r in chosen)
                  + ".", ""]
    lines += ["Expectations:", ""]
    lines += [f"- {_verdict(c)}: {c['text']}" for c in summary["expectations"]]
    lines.append(END)
    head, rest = text.split(BEGIN, 1)
    readme.write_text(head + "\n".join(lines) + rest.split(END, 1)[1])
    print(f"[study] table written into {readme}")


def _verdict(check: dict) -> str:
    from ..study import verdict
    return {"MET": "met", "NOT MET": "**not met**", "UNINFORMATIVE": "*uninformative*"}[
        verdict(check)]


def export(summary: Path, to: Path) -> None:
    to.mkdir(parents=True, exist_ok=True)
    for name in EXPORTED:
        if (summary / name).is_file():
            shutil.copyfile(summary / name, to / name)
    print(f"[study] summary copied to {to}")
