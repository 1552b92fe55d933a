"""The learning study (`bench study`): does each method learn, and do the papers' orderings
hold, on the synthetic world?

world -> pretraining of every method with the study's preset, plus Scratch (random init,
the floor) and Supervised (the same backbone trained on the world's labels, the ceiling)
-> frozen readouts -> one leaderboard with mean +- std over seeds (seed k = its own
pretraining *and* its own readout), the class groups, a chart, the pretraining health and
the expectations of the study checked against the numbers.

Studies are YAML data (``benchmarks/studies/<name>.yaml``), validated strictly. Every step
skips what is already finished: a pretraining run is keyed by the method's config, the
world and the source of the method's module (so a change to one method reruns only that
method), a readout by (checkpoint sha256, suite hash, seed) as every `bench run`. Records
and MLflow runs are those of `bench pretrain` and `bench run`, all tagged synthetic.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

STUDY_DIR = Path(__file__).with_name("studies")
BOUNDS = ("scratch", "supervised")
FLOOR = "colour_only"  # benchmarks.calibration: not a checkpoint, computed for linear suites
METRICS = ("mIoU", "Acc", "mIoU_small", "mIoU_large", "mIoU_rare", "mIoU_common")
SCHEMA = {"name": str, "description": str, "cited": str, "world": dict, "seeds": int,
          "methods": list, "pretrain_preset": str, "pretrain_overrides": list,
          "scratch": dict, "supervised": dict, "readouts": list, "expectations": list,
          "inits": dict, "trajectories": dict, "leave_out": list, "lr_grid": dict}
REQUIRED = ("name", "description", "cited", "world", "seeds", "methods", "pretrain_preset",
            "scratch", "supervised", "readouts")
UNINFORMATIVE_BELOW = 1.0  # mIoU points: a comparison of two ~0 numbers says nothing
SUPERVISED_FINDS = 5.0  # issue 29: a class group Supervised does not find is not compared
EXPECTATION_KINDS = {
    "beats": {"kind", "methods", "than", "metric", "suites", "by_std", "source"},
    "best": {"kind", "method", "metric", "suites", "source"},
    "at_least": {"kind", "methods", "than", "metric", "suites", "source"},
}


class StudyError(ValueError):
    pass


def study_names() -> list[str]:
    return sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))


def load_study(name: str) -> dict:
    """The study YAML with its methods: Scratch, Supervised and every method that has the
    study's pretraining preset (pretrain.catalogue, in display order), less ``leave_out``."""
    from pretrain.catalogue import methods_with_preset
    path = STUDY_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown study preset {name!r}; known: {', '.join(study_names())}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise StudyError(f"{path.name}: a study is a mapping")
    if "methods" in data:
        raise StudyError(f"{path.name}.methods: a study takes every method with its "
                         f"pretrain_preset; list the ones it leaves out under leave_out")
    leave_out = data.get("leave_out", [])
    members = methods_with_preset(str(data.get("pretrain_preset")))
    bad = sorted(set(leave_out) - set(members) - set(BOUNDS)) if isinstance(leave_out, list) \
        else leave_out
    if bad:
        raise StudyError(f"{path.name}.leave_out: {bad} are not methods of this study; its "
                         f"methods: {', '.join([*BOUNDS, *members])}")
    data["methods"] = [m for m in (*BOUNDS, *members) if m not in leave_out]
    return validate_study(data, path.name)


def validate_study(data: dict, where: str) -> dict:
    from pretrain.config import known_methods, load_preset
    from .suite import resolve_suite
    if not isinstance(data, dict):
        raise StudyError(f"{where}: a study is a mapping")
    unknown = sorted(set(data) - set(SCHEMA))
    missing = sorted(set(REQUIRED) - set(data))
    if unknown or missing:
        raise StudyError(f"{where}: unknown key(s) {unknown}, missing key(s) {missing}")
    for key, value in data.items():
        if not isinstance(value, SCHEMA[key]) or isinstance(value, bool):
            raise StudyError(f"{where}.{key}: expected {SCHEMA[key].__name__}")
    if data["seeds"] < 1:
        raise StudyError(f"{where}.seeds: at least 1")
    known = set(known_methods()) | set(BOUNDS)
    bad = sorted(set(data["methods"]) - known)
    if bad:
        raise StudyError(f"{where}.methods: unknown {bad}; known: {', '.join(sorted(known))}")
    for method in data["methods"]:
        if method not in BOUNDS:
            load_preset(method, data["pretrain_preset"])  # the preset exists and is valid
    for method, source in data.get("inits", {}).items():
        order = data["methods"]
        if method not in order or source not in order or order.index(source) > order.index(
                method) or source in BOUNDS:
            raise StudyError(f"{where}.inits.{method}: {source!r} must be a method of the "
                             f"study listed before {method!r}")
    tracks = [m for m in data["methods"] if m not in BOUNDS
              and known_method_class(m).samples == "tracks"]
    if tracks and "trajectories" not in data:
        raise StudyError(f"{where}: {', '.join(tracks)} read a trajectory store: give "
                         f"trajectories: {{estimator, points, stride, delta_max}}")
    if "trajectories" in data:
        _check(data["trajectories"], {"estimator", "points", "stride", "delta_max"},
               f"{where}.trajectories")
    if "lr_grid" in data:
        g = data["lr_grid"]
        _check(g, {"factors", "suite", "scale", "holdout", "source"}, f"{where}.lr_grid")
        factors = g["factors"]
        if (not isinstance(factors, list) or 1 not in factors or
                not all(isinstance(f, (int, float)) and f > 0 for f in factors)):
            raise StudyError(f"{where}.lr_grid.factors: positive multipliers of each "
                             f"paper learning rate, 1 among them; got {factors!r}")
        if resolve_suite(g["suite"], scale=g["scale"])["task"] != "retrieval_segmentation":
            raise StudyError(f"{where}.lr_grid.suite: a kNN suite (it trains nothing, so "
                             f"the choice is the checkpoint's), e.g. cityscapes_knn")
        if not 0 < g["holdout"] < 1:
            raise StudyError(f"{where}.lr_grid.holdout: a fraction of the training split")
    _check(data["world"], {"preset", "seed", "parts", "version"}, f"{where}.world")
    from .synth.world import VERSIONS
    if data["world"]["version"] not in VERSIONS:
        raise StudyError(f"{where}.world.version: one of {', '.join(map(str, VERSIONS))}")
    _check(data["scratch"], {"arch"}, f"{where}.scratch")
    from .supervised import supervised_config
    sup = data["supervised"]
    _check(sup, {"arch", "datasets", "head", "protocol"}, f"{where}.supervised")
    supervised_config(**sup)
    for i, r in enumerate(data["readouts"]):
        _check(r, {"suite", "scale"}, f"{where}.readouts[{i}]")
        resolve_suite(r["suite"], scale=r["scale"])
    for i, e in enumerate(data.get("expectations", [])):
        if e.get("kind") not in EXPECTATION_KINDS:
            raise StudyError(f"{where}.expectations[{i}].kind: one of "
                             f"{', '.join(EXPECTATION_KINDS)}")
        _check(e, EXPECTATION_KINDS[e["kind"]], f"{where}.expectations[{i}]")
    return data


def known_method_class(method: str):
    from pretrain.methods import get_method_class
    return get_method_class(method)


def _check(d: dict, keys: set, where: str) -> None:
    if not isinstance(d, dict) or set(d) != set(keys):
        got = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise StudyError(f"{where}: expected keys {sorted(keys)}, got {got}")


def key_of(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def source_fingerprint(*objects) -> str:
    """sha256 of the source files that define `objects` and their base classes (project
    modules only): a change to a method's file changes its key."""
    files = set()
    for obj in objects:
        for cls in getattr(obj, "__mro__", (obj,)):
            module = sys.modules.get(getattr(cls, "__module__", ""))
            if module and module.__name__.split(".")[0] in ("pretrain", "readout", "benchmarks"):
                files.add(inspect.getsourcefile(module))
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def code_fingerprint(root: Path = PROJECT_ROOT) -> str:
    """sha256 of every source and config file of the suite's packages: the code a study's
    summary came from, also outside git (a pip-installed copy, a dirty tree)."""
    h = hashlib.sha256()
    for package in ("core", "pretrain", "readout", "benchmarks"):
        for f in sorted((root / package).rglob("*")):
            if f.suffix in (".py", ".yaml"):
                h.update(str(f.relative_to(root)).encode() + f.read_bytes())
    return h.hexdigest()[:16]


def pretraining_fingerprint(method_class, root: Path = PROJECT_ROOT) -> str:
    """The method's ``source_fingerprint`` plus every shared file of ``pretrain/`` and
    ``core/`` (the loop, views, losses, flow, optimizers; not the other methods' files): a
    change to a method's file reruns that method, a change to shared code every method."""
    h = hashlib.sha256(source_fingerprint(method_class).encode())
    for package in ("pretrain", "core"):
        for f in sorted((root / package).rglob("*.py")):
            if f.parent.name != "methods":
                h.update(str(f.relative_to(root)).encode() + f.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class Run:
    """One pretrained (or bound) checkpoint of the study: method x seed."""
    method: str
    seed: int
    folder: Path

    @property
    def checkpoint(self) -> Path:
        return self.folder / "backbone.pth"


class Study:
    def __init__(self, spec: dict, out, *, seeds: int | None = None, methods=None,
                 device: str | None = None, tracking_uri: str | None = None,
                 progress: bool | None = None, world_preset: str | None = None, log=print):
        import os
        from .tracking import sqlite_uri
        self.spec, self.out, self.log = spec, Path(out), log
        self.seeds = seeds or spec["seeds"]
        chosen = list(methods) if methods else list(spec["methods"])
        unknown = sorted(set(chosen) - set(spec["methods"]))
        if unknown:
            raise StudyError(f"--methods {unknown} are not in study {spec['name']!r}: "
                             f"{', '.join(spec['methods'])}")
        self.methods = [m for m in spec["methods"] if m in chosen]
        self.world = dict(spec["world"], **({"preset": world_preset} if world_preset else {}))
        self.data = self.out / "data"
        self.uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(
            self.out / "mlruns")
        self._device = device
        self.command = ""  # the command line, recorded in the summary
        self.lr_choice: dict[str, float] = {}  # method -> learning rate chosen by lr_grid
        self.lr_table: list[dict] = []
        self.progress = sys.stderr.isatty() if progress is None else progress

    @property
    def device(self) -> str:
        if self._device is None:
            from .cli import check_device
            self._device = check_device(None)
        return self._device

    # ---- steps -------------------------------------------------------------------------
    def ensure_world(self) -> dict:
        from .synth.export import MANIFEST, write_world
        w = self.world
        path = self.data / MANIFEST
        if path.is_file():
            old = json.loads(path.read_text())
            found = (old.get("preset"), old.get("seed"), old.get("world_version", 1))
            if found == (w["preset"], w["seed"], w["version"]):
                self.log(f"[study] reusing the synthetic world in {self.data}")
                return old
            raise StudyError(f"{self.data} holds another synthetic world (preset "
                             f"{found[0]}, seed {found[1]}, world {found[2]}); pick another "
                             f"--out or delete it")
        self.log(f"[study] generating the {w['preset']} synthetic world {w['version']} in "
                 f"{self.data} ...")
        return write_world(self.data, preset=w["preset"], seed=w["seed"], parts=w["parts"],
                           progress=self.progress, version=w["version"])

    @property
    def world_key(self) -> dict:
        return {"preset": self.world["preset"], "seed": self.world["seed"],
                "version": self.world["version"]}

    def run_folder(self, method: str, seed: int, lr: float | None = None) -> Path:
        world = self.world_key
        if method == "scratch":
            key = key_of({"scratch": self.spec["scratch"]})
        elif method == "supervised":
            from . import supervised
            from readout import train as readout_train
            key = key_of({"supervised": self.spec["supervised"], "world": world,
                          "code": source_fingerprint(supervised, readout_train)})
        else:
            # the inputs as folders under the study, not as paths: `--out demo` and its
            # absolute path are one study
            inputs = [self._under_out(i) for i in self.method_inputs(method, seed)]
            key = key_of({"method": method, "config": self.pretrain_config(method, lr),
                          "world": world, **({"inputs": inputs} if inputs else {}),
                          "code": pretraining_fingerprint(self.method_class(method))})
        return self.out / "pretrain" / method / key / f"seed{seed}"

    method_class = staticmethod(known_method_class)

    def _under_out(self, override: str) -> str:
        """``key=<out>/...`` for an override whose value is a path in the study folder."""
        key, _, value = override.partition("=")
        rel = Path(value).relative_to(self.out) if Path(value).is_relative_to(self.out) \
            else value
        return f"{key}=<out>/{rel}" if rel is not value else override

    def pretrain_config(self, method: str, lr: float | None = None) -> dict:
        """The method's study preset with the study's overrides and its learning rate
        (`lr`, else the one lr_grid chose, else the preset's)."""
        from pretrain.config import apply_overrides
        return apply_overrides(self.preset_config(method), self.lr_overrides(method, lr))

    def preset_config(self, method: str) -> dict:
        """The method's study preset with the study's overrides (the grid's x1)."""
        from pretrain.config import apply_overrides, load_preset
        return apply_overrides(load_preset(method, self.spec["pretrain_preset"]),
                               self.spec.get("pretrain_overrides", []))

    def lr_overrides(self, method: str, lr: float | None = None) -> list[str]:
        """``schedule.lr=...``: the grid's rate `lr`, else the one lr_grid chose, else none
        (the preset's)."""
        lr = lr if lr is not None else self.lr_choice.get(method)
        return [] if lr is None else [f"schedule.lr={lr!r}"]

    def paper_lr(self, method: str) -> float:
        return float(self.preset_config(method)["schedule"]["lr"])

    def choose_lr(self, method: str) -> float:
        """lr_grid: pretrain seed 0 at each factor x the preset's learning rate, score each
        checkpoint by the kNN readout on a held-out slice of the training split, keep the
        best (benchmarks.lr_grid). The evaluation split is never read."""
        from . import lr_grid
        from .suite import resolve_suite, suite_hash
        g = self.spec["lr_grid"]
        resolved = resolve_suite(g["suite"], scale=g["scale"])
        base, scores, rows = self.paper_lr(method), {}, []
        for factor in g["factors"]:
            lr = base * factor
            run = self.pretrain(method, 0, lr=lr)
            path = run.folder / f"lr_grid-{suite_hash(resolved)[:8]}-{g['holdout']}.json"
            if not path.is_file():
                score = lr_grid.heldout_knn(resolved, run.checkpoint, self.data,
                                            holdout=g["holdout"], seed=0,
                                            work_dir=run.folder / "lr_grid",
                                            device=self.device)
                path.write_text(json.dumps(score, indent=1))
            score = json.loads(path.read_text())
            scores[factor] = score["mIoU"]
            rows.append({"method": method, "factor": factor, "lr": lr,
                         "heldout_mIoU": score["mIoU"],
                         "heldout_images": score["heldout_images"]})
            self.log(f"[lr_grid] {method} lr {lr:g} (x{factor:g}): held-out "
                     f"{g['suite']} mIoU {score['mIoU']:.2f}")
        chosen = lr_grid.choose(scores)
        for row in rows:
            row["chosen"] = row["factor"] == chosen
        self.lr_table += rows
        self.lr_choice[method] = base * chosen
        self.log(f"[lr_grid] {method}: chose lr {base * chosen:g} (x{chosen:g})")
        return self.lr_choice[method]

    @property
    def trajectories(self) -> Path:
        """Keyed by its settings, the world and the tracking code."""
        from pretrain.flow.trajectories import Tracker
        from pretrain.flow.trajectory_store import TrajectoryStore
        world = self.world_key
        return self.out / "trajectories" / key_of(
            {"settings": self.spec["trajectories"], "world": world,
             "code": source_fingerprint(TrajectoryStore, Tracker)})

    def method_inputs(self, method: str, seed: int) -> list[str]:
        """Overrides that point a method at what the study made for it: the checkpoint it
        starts from (``inits``: PiCO and its baselines from the study's MoCo v2, as the
        paper starts from MoCo-v2) and the trajectory store of its ``tracks`` samples."""
        out = []
        if method in self.spec.get("inits", {}):
            source = self.spec["inits"][method]
            out.append(f"model.init={Run(source, seed, self.run_folder(source, seed)).checkpoint}")
        if self.method_class(method).samples == "tracks":
            out.append(f"data.trajectories={self.trajectories}")
        return out

    def ensure_trajectories(self) -> None:
        """The study videos' trajectory store (resumable: a finished one is reused)."""
        from pretrain.data.video import VideoSource
        from pretrain.flow.trajectory_store import build_store
        t = self.spec["trajectories"]
        self.log(f"[study] trajectory store {self.trajectories} ({t['estimator']} flow)")
        build_store(VideoSource(self.videos), self.trajectories, estimator=t["estimator"],
                    points=t["points"], stride=t["stride"], delta_max=t["delta_max"],
                    progress=self.progress)

    def pretrain(self, method: str, seed: int, lr: float | None = None) -> Run:
        from readout.backbone import save_checkpoint, scratch_checkpoint
        from .tracking import PRETRAIN_RECORD, push_record
        run = Run(method, seed, self.run_folder(method, seed, lr))
        record = run.folder / PRETRAIN_RECORD
        if method == "scratch":
            if not run.checkpoint.is_file():  # a new file would be a new checkpoint (sha)
                save_checkpoint(scratch_checkpoint(self.spec["scratch"]["arch"], seed),
                                run.checkpoint)
                self.log(f"[study] scratch seed {seed}: {run.checkpoint}")
            return run
        if run.checkpoint.is_file() and record.is_file():
            self.log(f"[skip] {method} seed {seed} is pretrained ({run.folder})")
        elif method == "supervised":
            from .commands.pretrain import write_record
            from .supervised import supervised_config, train_supervised
            t0 = time.perf_counter()
            self.log(f"[study] supervised seed {seed} -> {run.folder}")
            train_supervised(supervised_config(**self.spec["supervised"]),
                             data_root=self.data, out_dir=run.folder, seed=seed,
                             device=self.device, progress=self.progress, log=self.log)
            write_record(run.folder, method="supervised", preset=self.spec["name"],
                         videos=self.data, seconds=time.perf_counter() - t0)
        else:
            source = self.spec.get("inits", {}).get(method)
            if source and not Run(source, seed,  # e.g. --methods pico without moco_v2
                                  self.run_folder(source, seed)).checkpoint.is_file():
                self.pretrain(source, seed)
            if self.method_class(method).samples == "tracks":
                self.ensure_trajectories()
            self._bench("pretrain", "--method", method, "--preset",
                        self.spec["pretrain_preset"], "--videos", str(self.videos),
                        "--out", str(run.folder), "--seed", str(seed),
                        "--tracking-uri", self.uri,
                        *([] if self.progress else ["--no-progress"]),
                        *self.spec.get("pretrain_overrides", []),
                        *self.lr_overrides(method, lr),
                        *self.method_inputs(method, seed))
        if record.is_file():
            push_record(record, uri=self.uri, log=self.log)
        return run

    @property
    def videos(self) -> Path:
        return self.data / "bdd100k" / "videos" / "train"

    def _bench(self, *argv) -> None:
        from .cli import UserError, main
        self.log(f"[study] $ bench {' '.join(argv)}")
        if main(list(argv)) != 0:
            raise UserError(f"study step failed: bench {' '.join(argv)}")

    def readouts(self, run: Run) -> list[dict]:
        from .runner import RECORD_NAME, run_or_reuse
        from .suite import resolve_suite
        from .tracking import push_record
        records = []
        for spec in self.spec["readouts"]:
            resolved = resolve_suite(spec["suite"], scale=spec["scale"])
            record = run_or_reuse(resolved, run.checkpoint, seed=run.seed,
                                  out_dir=self.out / "runs", data_root_dir=self.data,
                                  device=self.device, progress=self.progress, log=self.log)
            if record["status"] != "finished":
                raise StudyError(f"readout {spec['suite']} of {run.checkpoint} did not finish")
            push_record(Path(record["run_dir"]) / RECORD_NAME, uri=self.uri, log=self.log)
            records.append(record)
        return records

    def run(self) -> dict:
        """Every step not yet done, then the summary (leaderboard, health, expectations)."""
        t0 = time.perf_counter()
        table = []
        try:
            self.ensure_world()
            if "lr_grid" in self.spec:
                for method in self.methods:
                    if method not in BOUNDS:
                        self.choose_lr(method)
            for seed in range(self.seeds):
                for method in self.methods:
                    run = self.pretrain(method, seed)
                    for record in self.readouts(run):
                        table.append({"method": method, "seed": seed,
                                      "suite": record["suite"], "scale": record["scale"],
                                      "metrics": record["metrics"],
                                      "readout_seconds": sum(record["seconds"].values()),
                                      "run_dir": record["run_dir"]})
            if {"scratch", "supervised"} & set(self.methods):
                table += self.colour_only_rows()
        except BaseException:  # Ctrl-C or a failed step: the time it spent still counts
            self.record_wall_time(time.perf_counter() - t0, interrupted=True)
            raise
        summary = self.summarise(table, time.perf_counter() - t0)
        return summary

    def linear_suites(self) -> list[dict]:
        """The study's trained segmentation readouts (the calibration's suites)."""
        from .suite import resolve_suite
        resolved = [resolve_suite(r["suite"], scale=r["scale"]) for r in self.spec["readouts"]]
        return [r for r in resolved if r["task"] == "semantic_segmentation"]

    def colour_only_rows(self) -> list[dict]:
        """The colour-only floor of each linear suite and seed (benchmarks.calibration),
        cached under <out>/colour_only keyed by the world, the suite and the code."""
        from . import calibration
        from .suite import suite_hash
        rows = []
        for resolved in self.linear_suites():
            key = key_of({"world": self.world_key, "suite": suite_hash(resolved),
                          "code": source_fingerprint(calibration)})
            for seed in range(self.seeds):
                path = self.out / FLOOR / key / f"{resolved['name']}-seed{seed}.json"
                if path.is_file():
                    entry = json.loads(path.read_text())
                else:
                    t0 = time.perf_counter()
                    metrics = calibration.colour_only_readout(
                        resolved, self.data, seed=seed, work_dir=path.parent / "work",
                        device=self.device)
                    entry = {"metrics": metrics, "seconds": round(time.perf_counter() - t0, 2)}
                    path.write_text(json.dumps(entry, indent=1))
                    self.log(f"[study] colour-only floor {resolved['name']} seed {seed}: "
                             f"mIoU {metrics['mIoU']:.2f}")
                rows.append({"method": FLOOR, "seed": seed, "suite": resolved["name"],
                             "scale": resolved["scale"], "metrics": entry["metrics"],
                             "readout_seconds": entry["seconds"], "run_dir": str(path)})
        return rows

    # ---- summary -----------------------------------------------------------------------
    def summarise(self, table: list[dict], seconds: float) -> dict:
        from core.checkpoint import git_sha
        from .calibration import calibration
        shown = self.methods + ([FLOOR] if any(t["method"] == FLOOR for t in table) else [])
        board = leaderboard_rows(table, shown)
        health = [self.health_row(m, s) for s in range(self.seeds) for m in self.methods
                  if m != "scratch"]
        checks = check_expectations(self.spec.get("expectations", []), board)
        calibrated = calibration(board, [r["name"] for r in self.linear_suites()])
        wall = self.record_wall_time(seconds)
        summary = {"study": self.spec["name"], "synthetic": True, "git_sha": git_sha(),
                   "code": code_fingerprint(), "command": self.command, "seeds": self.seeds,
                   "methods": shown, "world": self.world, "wall_seconds": wall,
                   "leaderboard": board, "health": health, "expectations": checks,
                   "calibration": calibrated, "lr_grid": self.lr_table,
                   "lr_grid_spec": self.spec.get("lr_grid")}
        folder = self.out / "summary"
        write_summary(summary, folder)
        self.log(render_leaderboard(board, "text"))
        for c in calibrated:
            self.log(f"[calibration] {'MET' if c['met'] else 'NOT MET':<13} {c['text']}")
        for c in checks:
            self.log(f"[expectation] {verdict(c):<13} {c['text']}")
        self.log(f"[study] wall time of all invocations: {wall['total'] / 60:.1f} min; "
                 f"summary in {folder} (SYNTHETIC world: not Cityscapes/BDD100K results)")
        return summary

    def health_row(self, method: str, seed: int) -> dict:
        folder = self.run_folder(method, seed)
        row = {"method": method, "seed": seed}
        curve_path = folder / "curve.json"
        record_path = folder / "pretrain_record.json"
        if curve_path.is_file():
            curve = json.loads(curve_path.read_text())
            last = curve[-1]
            row.update(steps=len(curve), loss_first=curve[0]["loss"], loss_last=last["loss"])
            for key in ("proj_std", "mask_kept", "grad_norm", "chance_loss", "queue_full",
                        "queue_gap", "queue_gap_dense"):
                if key in last:
                    row[key] = last[key]
            for key in sorted(k for k in last if k.startswith("spread_")):
                row[f"{key}_first"], row[key] = curve[0].get(key), last[key]
            ranks = [c["rankme"] for c in curve if "rankme" in c]
            if ranks:
                row["rankme"] = ranks[-1]
            row["collapse_warning"] = any(c.get("collapse_warning") for c in curve)
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            row.update(seconds=record.get("seconds"), pairs_per_s=record.get("pairs_per_s"))
        return row

    def record_wall_time(self, seconds: float, interrupted: bool = False) -> dict:
        """Wall time of this invocation, added to those of earlier ones (an interrupted
        study continues, so its total is the sum, the interrupted invocations included)."""
        path = self.out / "study_time.json"
        data = json.loads(path.read_text()) if path.is_file() else {"invocations": []}
        entry = {"seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        data["invocations"].append({**entry, "interrupted": True} if interrupted else entry)
        data["total"] = round(sum(i["seconds"] for i in data["invocations"]), 1)
        path.write_text(json.dumps(data, indent=1))
        return data


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def leaderboard_rows(table: list[dict], methods: list[str]) -> list[dict]:
    """Mean and sample std over seeds of each (method, suite)."""
    rows = []
    suites = list(dict.fromkeys((t["suite"], t["scale"]) for t in table))
    for suite, scale in suites:
        for method in methods:
            runs = [t for t in table if (t["method"], t["suite"], t["scale"]) ==
                    (method, suite, scale)]
            if not runs:
                continue
            row = {"method": method, "suite": suite, "scale": scale, "seeds": len(runs)}
            for metric in METRICS:
                row[metric], row[f"{metric}_std"] = _mean_std(
                    [r["metrics"].get(metric) for r in runs])
            row["per_seed_mIoU"] = [r["metrics"].get("mIoU") for r in runs]
            rows.append(row)
    return rows


def _cell(board, method, suite, metric):
    for row in board:
        if (row["method"], row["suite"]) == (method, suite):
            return row[metric], row[f"{metric}_std"]
    return None


def check_expectations(expectations: list[dict], board: list[dict]) -> list[dict]:
    """Each expectation of the study YAML, judged on the leaderboard, as data and a line.

    - beats: mean(method) - mean(than) > by_std * pooled std (sqrt((s1^2 + s2^2) / 2));
    - best: the method's mean is above every other method's mean;
    - at_least: mean(method) >= mean(than).
    """
    present = list(dict.fromkeys(r["method"] for r in board))
    ssl = [m for m in present if m not in (*BOUNDS, FLOOR)]
    out = []
    for e in expectations:
        metric = e["metric"]
        for suite in e["suites"]:
            if e["kind"] in ("beats", "at_least"):
                methods = ssl if e["methods"] == ["ssl"] else e["methods"]
                base = _cell(board, e["than"], suite, metric)
                for m in methods:
                    cell = _cell(board, m, suite, metric)
                    if cell is None or base is None:
                        continue
                    diff = cell[0] - base[0]
                    if e["kind"] == "beats":
                        pooled = math.sqrt((_z(cell[1]) ** 2 + _z(base[1]) ** 2) / 2)
                        met = diff > e["by_std"] * pooled
                        text = (f"{suite} {metric}: {m} {cell[0]:.2f}±{_z(cell[1]):.2f} beats "
                                f"{e['than']} {base[0]:.2f}±{_z(base[1]):.2f} by {diff:+.2f} "
                                f"(needs > {e['by_std']} x pooled std {pooled:.2f})")
                    else:
                        met = diff >= 0
                        text = (f"{suite} {metric}: {m} {cell[0]:.2f}±{_z(cell[1]):.2f} >= "
                                f"{e['than']} {base[0]:.2f}±{_z(base[1]):.2f} ({diff:+.2f})")
                    informative = max(abs(cell[0]), abs(base[0])) >= UNINFORMATIVE_BELOW
                    ceiling = _cell(board, "supervised", suite, metric)
                    if not informative:
                        text += (f" - uninformative: both below {UNINFORMATIVE_BELOW:g}, the "
                                 f"readout finds almost none of these classes")
                    elif ceiling is not None and ceiling[0] < SUPERVISED_FINDS:
                        informative = False
                        text += (f" - uninformative: Supervised reaches {ceiling[0]:.2f} < "
                                 f"{SUPERVISED_FINDS:g}, the readout at this resolution does "
                                 f"not find these classes")
                    out.append({"kind": e["kind"], "suite": suite, "metric": metric,
                                "method": m, "than": e["than"], "difference": diff,
                                "met": bool(met), "informative": informative, "text": text,
                                "source": e["source"]})
            else:
                cell = _cell(board, e["method"], suite, metric)
                if cell is None:
                    continue
                others = [(m, _cell(board, m, suite, metric)) for m in present
                          if m != e["method"] and _cell(board, m, suite, metric)]
                runner_up = max(others, key=lambda x: x[1][0]) if others else None
                met = all(cell[0] > o[1][0] for o in others)
                text = (f"{suite} {metric}: {e['method']} {cell[0]:.2f} is the best"
                        + (f" (next: {runner_up[0]} {runner_up[1][0]:.2f})" if runner_up else ""))
                out.append({"kind": "best", "suite": suite, "metric": metric,
                            "method": e["method"], "met": bool(met), "informative": True,
                            "text": text, "source": e["source"]})
    return out


def verdict(check: dict) -> str:
    if not check.get("informative", True):
        return "UNINFORMATIVE"
    return "MET" if check["met"] else "NOT MET"


def _z(std: float) -> float:
    return 0.0 if std is None or math.isnan(std) else std


def label(method: str) -> str:
    from .leaderboard import method_label
    return method_label(method)


def render_leaderboard(board: list[dict], fmt: str) -> str:
    from .leaderboard import render
    header = ["method", "suite", "seeds"]
    for metric in METRICS:
        header += [metric, f"{metric}_std"]
    body = []
    for row in board:
        line = [label(row["method"]), row["suite"], str(row["seeds"])]
        for metric in METRICS:
            line += [_fmt(row[metric]), _fmt(row[f"{metric}_std"])]
        body.append(line)
    if fmt == "md":
        header = ["method", "suite", "seeds"] + list(METRICS)
        body = [[label(r["method"]), r["suite"], str(r["seeds"])]
                + [f"{_fmt(r[m])} ± {_fmt(r[f'{m}_std'])}" for m in METRICS] for r in board]
    return render(header, body, fmt)


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def write_summary(summary: dict, folder: Path) -> None:
    from . import plots
    folder.mkdir(parents=True, exist_ok=True)
    board = summary["leaderboard"]
    (folder / "leaderboard.csv").write_text(render_leaderboard(board, "csv"))
    (folder / "leaderboard.md").write_text(render_leaderboard(board, "md"))
    if summary["health"]:
        keys = list(dict.fromkeys(k for row in summary["health"] for k in row))
        lines = [",".join(keys)] + [",".join(_csv(row.get(k)) for k in keys)
                                    for row in summary["health"]]
        (folder / "pretrain_health.csv").write_text("\n".join(lines) + "\n")
    if summary.get("lr_grid"):
        keys = list(summary["lr_grid"][0])
        lines = [",".join(keys)] + [",".join(_csv(row[k]) for k in keys)
                                    for row in summary["lr_grid"]]
        (folder / "lr_grid.csv").write_text("\n".join(lines) + "\n")
    (folder / "study.json").write_text(json.dumps(summary, indent=1, default=str))
    plots.study_chart(board, METRICS[:1] + METRICS[2:], [label(m) for m in summary["methods"]],
                      summary["methods"], folder / "leaderboard.png",
                      f"learning study '{summary['study']}' (SYNTHETIC world, "
                      f"{summary['seeds']} seeds, mean ± std)")


def _csv(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)
