"""The learning study's pilot (issue 29 item 3): one seed of some methods pretrained longer
than the study, with the kNN readout of every N-th step's export (`bench pretrain
--eval-every`), to see where each curve flattens and size the study from that.

    python -m benchmarks.pilot --data DIR --out DIR [--methods ...] [--steps 400] [--every 100]

DIR holds a synthetic world (`bench data synth` or a study's ``data/``). Writes
``<out>/pilot_curves.csv`` and ``<out>/pilot_curves.png``; finished runs are reused.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_METHODS = ("byol_video", "flowe", "poodle", "pixpro", "pixpro_flow")


def run(data: Path, out: Path, methods, steps: int, every: int, preset: str) -> list[dict]:
    from .cli import UserError, main
    from .tracking import EVAL_CURVE
    rows = []
    for method in methods:
        folder = out / method
        if not (folder / EVAL_CURVE).is_file() or not (folder / "pretrain_record.json").is_file():
            argv = ["pretrain", "--method", method, "--preset", preset, "--videos",
                    str(data / "bdd100k" / "videos" / "train"), "--out", str(folder),
                    "--eval-every", str(every), "--eval-scale", preset,
                    "--eval-data-root", str(data), "--no-progress",
                    "--tracking-uri", f"sqlite:///{(out / 'mlruns' / 'mlflow.db').resolve()}",
                    f"schedule.steps={steps}"]
            if main(argv) != 0:
                raise UserError(f"pilot step failed: bench {' '.join(argv)}")
        for point in json.loads((folder / EVAL_CURVE).read_text()):
            rows.append({"method": method, **point})
    return rows


def write(rows: list[dict], out: Path, title: str) -> None:
    from .leaderboard import method_label
    from .plots import _pyplot, _save
    keys = ["method", "step", "suite", "mIoU", "Acc"]
    lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]
    (out / "pilot_curves.csv").write_text("\n".join(lines) + "\n")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [r for r in rows if r["method"] == method]
        ax.plot([p["step"] for p in pts], [p["mIoU"] for p in pts], marker="o",
                label=method_label(method))
    ax.set_xlabel("pretraining step")
    ax.set_ylabel(f"{rows[0]['suite'] if rows else 'kNN'} mIoU")
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    _save(fig, out / "pilot_curves.png")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pilot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="a synthetic world's data root")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--preset", default="study_cpu")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = run(args.data, args.out, args.methods, args.steps, args.every, args.preset)
    manifest = json.loads((args.data / "synth_manifest.json").read_text())
    write(rows, args.out, f"pilot: kNN readout during pretraining, SYNTHETIC world "
                          f"{manifest.get('world_version', 1)} ({manifest['preset']}), seed 0")
    print(f"[pilot] {len(rows)} points in {args.out / 'pilot_curves.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
