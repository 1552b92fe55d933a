"""MLflow tracking: the only module that imports mlflow (DESIGN.md "MLflow layout").

Local records come first: a readout writes ``metrics.json`` (runner.py) and a pretraining
run writes ``pretrain_record.json`` before anything here is called. Logging then pushes a
record to the store and writes ``mlflow_sync.json`` beside it ({tracking URI: run id}), so
``bench sync`` can later push whatever an unreachable server missed, and pushing twice is a
no-op (runs are also found again by the record's id, so a crash between logging and the
marker does not duplicate them). A run counts as logged only when it is FINISHED, which is
set after everything else; one left RUNNING by a crash is deleted and logged again.

Layout: one experiment per suite (``<suite> [synthetic world N]`` per synthetic world, so the
UI never puts synthetic and real runs in one comparison), a parent run per (checkpoint,
suite hash) carrying mean and ``_std`` over its seeds, one child run per seed.
Pretraining runs go to the ``pretrain`` experiment (``pretrain [synthetic]``).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
import math
import os
import statistics
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from core.io import atomic_path

SYNC_NAME = "mlflow_sync.json"
READOUT_RECORD = "metrics.json"
PRETRAIN_RECORD = "pretrain_record.json"
EVAL_CURVE = "eval_curve.json"  # written by `bench pretrain --eval-every`
PRETRAIN_EXPERIMENT = "pretrain"
DEFAULT_STORE = Path("mlruns")
CURVE_PREFIX = "train/"
ARTIFACT_SUFFIXES = (".json", ".yaml", ".csv", ".png")
MAX_PARAM_CHARS = 500  # the smallest limit across MLflow versions


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached; local records stay unsynced."""


def store_uri(uri: str | None = None) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else the SQLite store ``./mlruns/mlflow.db``. A
    plain folder (``demo/mlruns``) means the SQLite store in it."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and "://" not in uri:
        return sqlite_uri(uri)
    return uri or sqlite_uri(DEFAULT_STORE)


@contextmanager
def store_lock(uri: str):
    """One writer at a time for a SQLite store: processes that log at once (the jobs of a
    sweep) would otherwise race to create its tables ("table ... already exists") or hit
    "database is locked". Other stores serialise on their server."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl
    path = Path(uri[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sqlite_uri(folder) -> str:
    return f"sqlite:///{(Path(folder).resolve() / 'mlflow.db').as_posix()}"


def local_artifact_root(uri: str) -> Path | None:
    """Artifacts of a SQLite store live beside its database file."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / "artifacts"
    return None


def experiment_name(base: str, synthetic: bool, world: int | None = None) -> str:
    """``base`` for real data; one experiment per synthetic world version, so the UI and
    the leaderboards never put two worlds (or a world and real data) in one comparison:
    ``<base> [synthetic]`` for world 1 (its name from before versions existed),
    ``<base> [synthetic world N]`` for later ones."""
    if not synthetic:
        return base
    return f"{base} [synthetic]" if (world or 1) == 1 else f"{base} [synthetic world {world}]"


def record_world(record: dict) -> int | None:
    """A record's world version: None for real data, 1 for synthetic records written
    before versions existed."""
    if not record.get("synthetic"):
        return None
    return int(record.get("world") or 1)


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            r.read()
    except (urllib.error.URLError, OSError) as e:
        raise TrackingUnavailable(f"MLflow server {uri} is unreachable ({e})") from None


def synced_run_id(record_dir, uri: str) -> str | None:
    path = Path(record_dir) / SYNC_NAME
    return json.loads(path.read_text()).get(uri) if path.is_file() else None


def _mark_synced(record_dir, uri: str, run_id: str) -> None:
    path = Path(record_dir) / SYNC_NAME
    marks = json.loads(path.read_text()) if path.is_file() else {}
    marks[uri] = run_id
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(marks, indent=1))


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"protocol.lr": "0.02", ...} (lists as JSON)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            text = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
            out[key] = text[:MAX_PARAM_CHARS]
    return out


def metric_key(name: str) -> str:
    """MLflow allows letters, digits, _ - . / and space in metric names."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def format_epochs(value) -> str:
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return ""


class Tracker:
    """An MLflow client bound to one store, with the layout of this suite."""

    def __init__(self, uri: str | None = None):
        self.uri = store_uri(uri)
        check_reachable(self.uri)
        # an unreachable server should fail in seconds, not after minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        root = local_artifact_root(self.uri)
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        from mlflow.tracking import MlflowClient
        self.client = MlflowClient(tracking_uri=self.uri)

    # ---- experiments and runs -------------------------------------------------------
    def experiment_id(self, name: str, create: bool = True) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        if not create:
            return None
        root = local_artifact_root(self.uri)
        slug = "".join(c if c.isalnum() or c in "_.-" else "_" for c in name).strip("_")
        location = (root / slug).as_uri() if root else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # created meanwhile by another process
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def _runs(self, experiment_ids: list[str], **tags) -> list:
        ids = [i for i in experiment_ids if i is not None]
        if not ids:
            return []
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return list(self.client.search_runs(ids, filter_string=query, max_results=5000))

    def _new_run(self, exp_id: str, name: str, tags: dict, params: dict,
                 start_time: int | None = None):
        run = self.client.create_run(exp_id, run_name=name, tags=tags, start_time=start_time)
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def _log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def _log_metrics(self, run_id: str, values: dict[str, float], curve: list[dict] = (),
                     prefix: str = CURVE_PREFIX):
        """`values` once at step 0; each `curve` entry's numbers under <prefix><name>."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(metric_key(k), float(v), now, 0) for k, v in values.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for entry in curve:
            step = int(entry.get("step", 0))
            items += [Metric(prefix + metric_key(k), float(v), now, step)
                      for k, v in entry.items()
                      if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def _log_files(self, run_id: str, folder: Path, names: list[Path]) -> None:
        for path in names:
            sub = path.parent.relative_to(folder).as_posix()
            self.client.log_artifact(run_id, str(path), None if sub == "." else sub)

    def pretrain_run_id(self, checkpoint_sha256: str) -> str:
        """Lineage: the pretraining run that exported this checkpoint, if it was logged."""
        from .synth.world import VERSIONS
        ids = [self.experiment_id(experiment_name(PRETRAIN_EXPERIMENT, s, w), create=False)
               for s, w in ((False, None), *((True, v) for v in VERSIONS))]
        runs = self._runs(ids, checkpoint_sha256=checkpoint_sha256)
        return runs[0].info.run_id if runs else ""

    # ---- readouts ---------------------------------------------------------------------
    def log_readout(self, run_dir) -> str:
        """Log one finished readout record (a seed) under its (checkpoint, suite) parent;
        returns the child run id."""
        run_dir = Path(run_dir)
        record = json.loads((run_dir / READOUT_RECORD).read_text())
        resolved = yaml.safe_load((run_dir / "resolved_suite.yaml").read_text())
        exp = self.experiment_id(experiment_name(record["suite"], record["synthetic"],
                                                 record_world(record)))
        sha, key = record["checkpoint_sha256"], readout_key(record)
        meta = record.get("checkpoint_meta", {})
        tags = {"method": meta.get("method", "unknown"), "arch": record["arch"],
                "pretrain_data": str(meta.get("pretrain_data", "")),
                "epochs": format_epochs(meta.get("epochs")), "checkpoint_sha256": sha,
                "pretrain_run_id": meta.get("mlflow_run_id") or self.pretrain_run_id(sha),
                "git_sha": record.get("git_sha", ""),
                "pretrain_git_sha": str(meta.get("git_sha", "")),
                "synthetic": str(record["synthetic"]).lower(), "suite": record["suite"],
                "world": str(record_world(record) or ""),
                "suite_hash": record["suite_hash"], "dataset": record["dataset"],
                "head": record["head"], "scale": str(record.get("scale", "")),
                "bench_key": key}
        params = flatten({k: v for k, v in resolved.items()
                          if k not in ("source", "description", "scales")})
        parents = self._runs([exp], bench_kind="parent", bench_key=key)
        if parents:
            parent = parents[0].info.run_id
            if parents[0].info.status != "FINISHED":  # interrupted: its params may be missing
                self._log_params(parent, params)  # same values again: a no-op in MLflow
        else:
            parent = self._new_run(exp, f"{tags['method']} {record['arch']} {sha[:12]}",
                                   {**tags, "bench_kind": "parent"}, params)
        child = self._complete_run(exp, record["record_id"])
        if child is None:
            child = self._new_run(
                exp, f"seed {record['seed']}",
                {**tags, "bench_kind": "seed", "bench_record": record["record_id"],
                 "seed": str(record["seed"]), "finished": record.get("finished", ""),
                 "mlflow.parentRunId": parent}, {**params, "seed": str(record["seed"])},
                start_time=epoch_ms(record.get("started")))
            per_class = {f"{record['per_class_metric']}_{c}": v
                         for c, v in record["per_class"].items()}
            swept = record.get("lr_sweep") or {}
            self._log_metrics(child, {**record["metrics"], **per_class,
                                      "train_seconds": record["seconds"]["train"],
                                      **({"selected_lr": swept["selected_lr"]}
                                         if swept else {})},
                              record["loss_curve"])
            self.client.log_table(child, data={
                "class": list(record["per_class"]),
                record["per_class_metric"]: list(record["per_class"].values())},
                artifact_file="per_class_table.json")
            files = sorted(p for p in run_dir.rglob("*") if p.is_file()
                           and p.suffix in ARTIFACT_SUFFIXES and p.name != SYNC_NAME
                           and not p.name.startswith("."))
            self._log_files(child, run_dir, files)
            # the run's duration in the UI is the readout's own, not the logging's
            self.client.set_terminated(child, "FINISHED",
                                       end_time=epoch_ms(record.get("finished")))
        self._retire_older_seeds(exp, key, record)
        self._aggregate(parent, exp, record["per_class_metric"], list(record["per_class"]))
        return child

    def _complete_run(self, exp: str, record_id: str) -> str | None:
        """The run of this record if its logging finished (FINISHED is set last); a run
        left RUNNING by a killed process or a server that died mid-logging is deleted
        (MLflow keeps it restorable) so that the caller logs the record again in full."""
        complete = None
        for run in self._runs([exp], bench_record=record_id):
            if run.info.status == "FINISHED" and complete is None:
                complete = run.info.run_id
            elif run.info.status != "FINISHED":
                self.client.delete_run(run.info.run_id)
        return complete

    def _retire_older_seeds(self, exp: str, key: str, record: dict) -> None:
        """A --force rerun replaces its seed: older children of that seed are deleted
        (MLflow keeps deleted runs restorable)."""
        for run in self._runs([exp], bench_kind="seed", bench_key=key,
                              seed=str(record["seed"])):
            tags = run.data.tags
            if (tags.get("bench_record") != record["record_id"]
                    and tags.get("finished", "") < record.get("finished", "")):
                self.client.delete_run(run.info.run_id)

    def _aggregate(self, parent: str, exp: str, per_class_metric: str = "",
                   classes: list[str] = ()) -> None:
        """Parent metrics: the mean over its seeds, ``<name>_std`` the sample std; and
        ``per_class_mean.csv``, the per-class table of the mean in the dataset's class
        order (a class no seed saw is "absent")."""
        children = [r for r in self._runs([exp], **{"mlflow.parentRunId": parent})
                    if r.info.status == "FINISHED"]
        values: dict[str, list[float]] = {}
        for run in children:
            for k, v in run.data.metrics.items():
                if not k.startswith(CURVE_PREFIX) and math.isfinite(v):
                    values.setdefault(k, []).append(v)
        summary = {"seeds": len(children)}
        for k, vs in values.items():
            summary[k] = statistics.fmean(vs)
            summary[f"{k}_std"] = statistics.stdev(vs) if len(vs) > 1 else 0.0
        self._log_metrics(parent, summary)
        if classes:
            lines = [f"class,{per_class_metric},{per_class_metric}_std,seeds"]
            for c in classes:
                vs = values.get(metric_key(f"{per_class_metric}_{c}"), [])
                lines.append(f"{c},{statistics.fmean(vs):.4f},"
                             f"{statistics.stdev(vs) if len(vs) > 1 else 0.0:.4f},{len(vs)}"
                             if vs else f"{c},absent,,0")
            self.client.log_text(parent, "\n".join(lines) + "\n", "per_class_mean.csv")
        self.client.set_tag(parent, "seeds", str(len(children)))
        self.client.set_terminated(parent, "FINISHED")

    def parent_runs(self, suite: str, synthetic: bool, world: int | None = None) -> list[dict]:
        """One dict per (checkpoint, suite hash): tags and metrics of the parent run, on real
        data or on one synthetic world (default: the current world version)."""
        if synthetic and world is None:
            from .synth.world import DEFAULT_VERSION
            world = DEFAULT_VERSION
        exp = self.experiment_id(experiment_name(suite, synthetic, world), create=False)
        return [{"run_id": r.info.run_id, "tags": dict(r.data.tags),
                 "metrics": dict(r.data.metrics)}
                for r in self._runs([exp], bench_kind="parent")]

    # ---- pretraining ------------------------------------------------------------------
    def log_pretrain(self, out_dir) -> str:
        out_dir = Path(out_dir)
        record = json.loads((out_dir / PRETRAIN_RECORD).read_text())
        exp = self.experiment_id(experiment_name(PRETRAIN_EXPERIMENT, record["synthetic"],
                                                 record_world(record)))
        done = self._complete_run(exp, record["record_id"])
        if done:
            return done
        config = yaml.safe_load((out_dir / "config.yaml").read_text())
        curve = json.loads((out_dir / "curve.json").read_text())
        tags = {"method": record["method"], "arch": record["arch"],
                "preset": record["preset"], "pretrain_data": record["videos"],
                "epochs": format_epochs(record["epochs"]),
                "checkpoint_sha256": record["checkpoint_sha256"],
                "git_sha": record["git_sha"], "synthetic": str(record["synthetic"]).lower(),
                "world": str(record_world(record) or ""),
                "bench_kind": "pretrain", "bench_record": record["record_id"]}
        end = epoch_ms(record.get("finished"))
        run = self._new_run(exp, f"{record['method']} {record['preset']}", tags,
                            flatten(config), start_time=end and end - int(
                                1000 * record["seconds"]))
        self._log_metrics(run, {"final_loss": curve[-1]["loss"], "steps": len(curve),
                                "pairs_per_s": record["pairs_per_s"],
                                "seconds": record["seconds"]}, curve)
        evals = out_dir / EVAL_CURVE
        if evals.is_file():  # `bench pretrain --eval-every`: kNN quality of the exports
            self._log_metrics(run, {}, [
                {"step": e["step"], **{f"{e['suite']}/{k}": v for k, v in e.items()
                                       if k not in ("step", "suite")}}
                for e in json.loads(evals.read_text())], prefix="eval/")
        self._log_files(run, out_dir, [out_dir / n for n in
                                       ("config.yaml", "curve.json", PRETRAIN_RECORD,
                                        EVAL_CURVE) if (out_dir / n).is_file()])
        self.client.log_artifact(run, record["checkpoint"], "checkpoint")
        self.client.set_terminated(run, "FINISHED", end_time=end)
        return run


def epoch_ms(stamp: str | None) -> int | None:
    """``2026-11-30T13:45:00+0000`` (a record's time) -> milliseconds since the epoch."""
    if not stamp:
        return None
    import datetime
    return int(datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp() * 1000)


def readout_key(record: dict) -> str:
    return f"{record['checkpoint_sha256'][:16]}-{record['suite_hash']}"


def push_record(record_path, uri: str | None = None, tracker: Tracker | None = None,
                log=print) -> str | None:
    """Log one local record (readout ``metrics.json`` or ``pretrain_record.json``) unless
    it is already synced to this store. Never raises for tracking problems: the record
    stays local and unsynced, and the message says to run ``bench sync``."""
    record_path = Path(record_path)
    uri = tracker.uri if tracker else store_uri(uri)
    try:
        with store_lock(uri):
            done = synced_run_id(record_path.parent, uri)
            if done:
                return done
            tracker = tracker or Tracker(uri)
            if record_path.name == PRETRAIN_RECORD:
                run_id = tracker.log_pretrain(record_path.parent)
            else:
                run_id = tracker.log_readout(record_path.parent)
    except Exception as e:  # noqa: BLE001 - tracking must never lose a finished result
        log(f"[mlflow] not logged to {uri}: {type(e).__name__}: {e}\n"
            f"[mlflow] the result is safe in {record_path}; `bench sync` pushes it later")
        return None
    _mark_synced(record_path.parent, uri, run_id)
    log(f"[mlflow] logged {record_path.parent} -> run {run_id} ({uri})")
    return run_id


def find_records(folders) -> list[Path]:
    """Every finished local record under `folders`, pretraining first (so readouts can
    find their lineage); folders of replaced results (``*.replaced-*``) are history."""
    pre, readouts = [], []
    for folder in folders:
        for path in sorted(Path(folder).rglob(PRETRAIN_RECORD)):
            pre.append(path)
        for path in sorted(Path(folder).rglob(READOUT_RECORD)):
            if ".replaced-" in path.parent.name:
                continue
            if json.loads(path.read_text()).get("status") == "finished":
                readouts.append(path)
    return pre + readouts


def sync(folders, uri: str | None = None, log=print) -> dict[str, int]:
    """Push every unsynced record under `folders`; counts of synced / already / failed."""
    uri = store_uri(uri)
    counts = {"synced": 0, "already": 0, "failed": 0}
    pending = []
    for path in find_records(folders):
        if synced_run_id(path.parent, uri):
            counts["already"] += 1
        else:
            pending.append(path)
    if not pending:
        return counts
    try:
        tracker = Tracker(uri)
    except TrackingUnavailable as e:
        log(f"[mlflow] {e}; {len(pending)} record(s) left unsynced")
        counts["failed"] = len(pending)
        return counts
    for path in pending:
        ok = push_record(path, tracker=tracker, log=log)
        counts["synced" if ok else "failed"] += 1
    return counts


def server_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow server` command line for a database-backed store (``bench ui``)."""
    import sys
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    root = local_artifact_root(uri)
    if root is not None:
        cmd += ["--artifacts-destination", str(root)]
    return cmd
