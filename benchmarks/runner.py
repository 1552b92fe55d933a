"""Run a resolved suite on a checkpoint: build, train the readout, evaluate, and write the
local record (metrics.json, resolved_suite.yaml, per_class.csv) that tracking builds on."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import socket
import time
import uuid
from contextlib import contextmanager, nullcontext
from pathlib import Path

import yaml

from core.checkpoint import git_sha
from core.io import atomic_path, remove_stale_temporaries
from readout.datasets import build_dataset
from readout.datasets.base import data_root
from readout.datasets.stats import class_statistics, read_stats_csv, write_stats_csv

from .lr_sweep import HOLDOUT_DEFAULT, select_head, sweep_split
from .suite import suite_hash

PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published"
RECORD_NAME = "metrics.json"
QUALITATIVE_IMAGES = 3


class RunLocked(ValueError):
    """Another live process is running the same (checkpoint, suite, seed)."""


def record_dir(out_dir, resolved: dict, checkpoint_sha256: str, seed: int) -> Path:
    """One folder per result key (checkpoint sha256, suite hash, seed)."""
    return (Path(out_dir) / resolved["name"]
            / f"{checkpoint_sha256[:12]}-{suite_hash(resolved)[:8]}" / f"seed{seed}")


def checkpoint_key(checkpoint_path, checkpoint: dict | None = None) -> str:
    """The checkpoint part of a result key: the file's sha256, or, for a trunk converted to
    the suite's input convention when read (core.reading.to_suite_input: files written
    before checkpoints declared it), a hash of the sha256 and the convention it was
    converted from, so that results read out before that conversion existed are not
    reused. `checkpoint`: the file as read, if at hand."""
    from readout.backbone import file_sha256, read_checkpoint
    sha = file_sha256(checkpoint_path)
    if checkpoint is None:
        checkpoint = read_checkpoint(checkpoint_path, log=None)
    converted = checkpoint["meta"].get("input_converted_from")
    if converted is None:
        return sha
    return hashlib.sha256(f"{sha} input {json.dumps(converted, sort_keys=True)}"
                          .encode()).hexdigest()


def finished_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RECORD_NAME
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("status") == "finished" else None


LEASE_SECONDS = 300  # a holder renews its lease every LEASE_SECONDS / 4


def lock_identity() -> str:
    """Who holds a key: the Slurm job (array task), which a requeued job keeps on whatever
    node it lands, else this process."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm:{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm:{env['SLURM_JOB_ID']}"
    return f"pid:{os.getpid()}"


def _holder(fd) -> dict:
    """``host pid identity lease-end`` as the holder wrote it (older locks: ``host pid``)."""
    words = os.pread(fd, 300, 0).decode(errors="replace").split()
    keys = ("host", "pid", "identity", "until")
    holder = dict(zip(keys, words))
    holder["until"] = float(holder.get("until", 0))
    return holder


def _describe(holder: dict) -> str:
    if "pid" not in holder:
        return "another process"
    job = holder.get("identity", "")
    return (f"process {holder['pid']} on {holder['host']}"
            + (f" (Slurm job {job[6:]})" if job.startswith("slurm:") else ""))


def _live_foreign_lease(holder: dict, host: str, me: str) -> bool:
    """A lease written on another node by another job, and not yet expired."""
    return (holder.get("host", host) != host and holder.get("identity") != me
            and holder["until"] > time.time())


def _describe_lease(holder: dict) -> str:
    until = time.strftime("%H:%M:%S", time.localtime(holder["until"]))
    return f"{_describe(holder)}, lease renewed until {until}"


def lock_holder(run_dir: Path) -> str | None:
    """Who holds ``record_lock(run_dir)``, read without taking it (nothing is written, no
    lease starts): None when ``record_lock`` would be granted to a new process here."""
    import fcntl
    lock = Path(run_dir) / ".lock"
    if not lock.is_file():
        return None
    fd = os.open(lock, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(_holder(fd))
        holder = _holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        if _live_foreign_lease(holder, socket.gethostname(), lock_identity()):
            return _describe_lease(holder)
        return None
    finally:
        os.close(fd)


@contextmanager
def record_lock(run_dir: Path, lease_seconds: float | None = None):
    """An exclusive lock on ``<run_dir>/.lock``: a second live process or job with the same
    key fails fast instead of producing a second result.

    ``flock`` makes taking it atomic on a host, and the kernel releases it when its holder
    exits or is killed, so a stale lock of this host cannot exist. Across the nodes of a
    cluster, where a file system may not share ``flock``, the file holds a lease its holder
    renews: a holder on another node whose lease is live refuses the key; an expired lease,
    or one held by this very Slurm job (requeued after pre-emption or a timeout, on any
    node), is taken over. The file stays (unlinking it would let two processes lock two
    different files)."""
    import fcntl
    import threading
    lease = float(os.environ.get("BENCH_LOCK_LEASE_S", LEASE_SECONDS)
                  if lease_seconds is None else lease_seconds)
    lock = Path(run_dir) / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    me, host = lock_identity(), socket.gethostname()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunLocked(f"{run_dir} is being run by {_describe(holder)} (lock {lock}); wait "
                        f"for it to finish") from None
    holder = _holder(fd)
    if _live_foreign_lease(holder, host, me):
        os.close(fd)
        raise RunLocked(f"{run_dir} is being run by {_describe_lease(holder)} (lock {lock}); "
                        f"wait for it to finish") from None

    def write_lease():
        line = f"{host} {os.getpid()} {me} {time.time() + lease:.1f}".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, line, 0)

    write_lease()
    done = threading.Event()

    def renew():
        while not done.wait(lease / 4):
            write_lease()

    renewer = threading.Thread(target=renew, daemon=True, name="record-lock-lease")
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()
        os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock


@contextmanager
def group_lock(run_dir: Path):
    """``record_lock`` for a torchrun group: rank 0 takes it for every rank, and a refusal
    stops every rank with rank 0's message."""
    from core.runtime import rank_world
    rank, world = rank_world()
    if world == 1:
        with record_lock(run_dir):
            yield
        return
    import torch.distributed as dist
    held = record_lock(run_dir) if rank == 0 else nullcontext()
    refused = [None]
    try:
        held.__enter__()
    except RunLocked as e:
        refused = [str(e)]
    dist.broadcast_object_list(refused, src=0)
    if refused[0]:
        raise RunLocked(refused[0])
    try:
        yield
    finally:
        held.__exit__(None, None, None)


def run_or_reuse(resolved: dict, checkpoint_path, *, seed: int, out_dir="runs",
                 force: bool = False, log=print, **kwargs) -> dict:
    """The finished record of this key if there is one (unless `force`), else run it.
    With `force` the old folder is kept, renamed ``seedN.replaced-<time>``."""
    run_dir = record_dir(out_dir, resolved, checkpoint_key(checkpoint_path), seed)
    with group_lock(run_dir):
        return _reuse_or_run(run_dir, resolved, checkpoint_path, seed, out_dir, force, log,
                             kwargs)


def _reuse_or_run(run_dir, resolved, checkpoint_path, seed, out_dir, force, log, kwargs):
    old = finished_record(run_dir)
    if old and not force:
        log(f"[skip] {resolved['name']} seed {seed} on {checkpoint_path} is already finished "
            f"({run_dir / RECORD_NAME}); --force runs it again")
        return old
    if old:
        kept = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        for item in run_dir.iterdir():
            if item.name != ".lock":
                kept.mkdir(exist_ok=True)
                item.rename(kept / item.name)
        log(f"[force] previous result kept in {kept}")
    return run_seed(resolved, checkpoint_path, seed=seed, out_dir=out_dir, log=log, **kwargs)


def world_version(root) -> int | None:
    """The synthetic world's version (benchmarks.synth.world.VERSIONS) of data under
    `root` (data generated by `bench data synth` carries synth_manifest.json at its root),
    None for real data; a manifest written before versions existed is world 1."""
    root = Path(root).resolve()
    for p in (root, *root.parents):
        manifest = p / "synth_manifest.json"
        if manifest.is_file():
            try:
                return int(json.loads(manifest.read_text()).get("world_version", 1))
            except (ValueError, OSError) as e:
                raise ValueError(f"{manifest}: unreadable synthetic-world manifest ({e}); "
                                 f"regenerate it with `bench data synth`") from e
    return None


def protocol_kwargs(resolved: dict, seed: int, num_workers: int = 0,
                    train_images: int | None = None) -> dict:
    """The one place a resolved suite turns into ReadoutSchedule keyword arguments.

    Detection protocols count epochs (FlowE Sec. 4.2: 12 epochs, steps at 8 and 11):
    iterations = round(epochs x training images / batch), as detectron2's 1x schedule does.
    """
    p = resolved["protocol"]
    common = dict(batch_size=p["batch_size"], lr=float(p["lr"]), momentum=float(p["momentum"]),
                  weight_decay=float(p["weight_decay"]), flip=p["flip"],
                  checkpoint_every=p["checkpoint_every"], schedule=p["schedule"],
                  num_workers=num_workers, seed=seed)
    if resolved["task"] == "object_detection":
        per_epoch = train_images / p["batch_size"]
        return dict(common, iterations=max(1, round(p["epochs"] * per_epoch)),
                    lr_steps=tuple(round(e * per_epoch) for e in p["lr_steps"]),
                    gamma=float(p["gamma"]), warmup_iterations=p["warmup_iterations"],
                    warmup_factor=float(p["warmup_factor"]))
    optional = {k: p[k] for k in ("warmup_iterations", "loss", "loss_average") if k in p}
    optional.update({k: float(p[k]) for k in ("warmup_factor", "weight_decay_norm", "loss_top_k",
                                              "poly_power", "poly_min_lr", "gamma") if k in p})
    if "lr_steps" in p:  # segmentation counts them in iterations
        optional["lr_steps"] = tuple(int(e) for e in p["lr_steps"])
    if "lr_sweep" in p:
        optional["lr_sweep"] = tuple(float(v) for v in p["lr_sweep"])
    return dict(common, iterations=p["iterations"], crop=tuple(p["crop"]), resize=p["resize"],
                **optional)


def class_group_indices(resolved: dict, train_set, run_dir: Path) -> dict[str, list[int]]:
    """Groups from the paper's table (``published:FILE``) or the training split's labels."""
    spec = resolved["class_groups"]
    if spec.startswith("published:"):
        stats = read_stats_csv(PUBLISHED / spec.split(":", 1)[1])
    elif spec == "train_statistics":
        stats = class_statistics((train_set.load_label(i) for i in range(len(train_set))),
                                 train_set.classes)
        write_stats_csv(stats, run_dir / "class_stats_train.csv")
    else:
        raise ValueError(f"class_groups {spec!r}: use 'published:<csv>' or 'train_statistics'")
    index = {name: i for i, name in enumerate(train_set.classes)}
    unknown = [s.name for s in stats if s.name not in index]
    if unknown:
        raise ValueError(f"class table names {unknown} are not classes of {train_set.name}")
    groups = {"small": [], "large": [], "rare": [], "common": []}
    for s in stats:
        if s.total_image_pct == 0 and spec == "train_statistics":
            continue  # absent from the training split: in no group
        groups["large" if s.size_group == "L" else "small"].append(index[s.name])
        groups["common" if s.freq_group == "C" else "rare"].append(index[s.name])
    return groups


def run_seed(resolved: dict, checkpoint_path, *, data_root_dir=None, seed: int = 0,
             device: str = "cpu", out_dir="runs", num_workers: int = 0,
             progress: bool = True, log=print, stop_after: int | None = None,
             skip_bad: bool = False) -> dict:
    from readout.backbone import file_sha256, read_checkpoint
    from core.runtime import rank_world
    from readout.train import ReadoutSchedule, train_readout
    import torch

    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    root = data_root(data_root_dir)
    ckpt = read_checkpoint(checkpoint_path, log=log)
    sha = file_sha256(checkpoint_path)
    run_dir = record_dir(out_dir, resolved, checkpoint_key(checkpoint_path, ckpt), seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank_world()[0] == 0:
        remove_stale_temporaries(run_dir, log=log)
        (run_dir / "resolved_suite.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    # every pair is checked (file headers: sizes) before anything trains
    train_set = build_dataset(resolved["dataset"], root, resolved["splits"]["train"],
                              skip_bad=skip_bad)
    eval_set = build_dataset(resolved["dataset"], root, resolved["splits"]["eval"],
                             skip_bad=skip_bad)
    skipped = {split: [str(p) for p in ds.skipped] for split, ds in
               (("train", train_set), ("eval", eval_set)) if ds.skipped}
    for split, problems in skipped.items():
        log(f"[skip-bad] {len(problems)} {split} pair(s) left out (listed in the record): "
            f"{problems[0]}" + (" ..." if len(problems) > 1 else ""))
    torch.manual_seed(seed)
    task = _detection if resolved["task"] == "object_detection" else _segmentation
    model, evaluate_fn, extra, illustrate = task(resolved, ckpt, train_set, run_dir, log)
    t0 = time.perf_counter()
    if resolved["task"] == "retrieval_segmentation":  # nothing trains: fill the memory bank
        from readout.knn import fill_memory
        p = resolved["protocol"]
        schedule_info = fill_memory(
            model, train_set, memory_size=p["memory_size"], augment_epochs=p["augment_epochs"],
            resize=p["resize"], crop=p["crop"], flip=p["flip"], seed=seed, device=device,
            progress=progress)
        curve = []
    else:
        indices = model.training_indices(train_set)  # detection: a scan of every box
        schedule = ReadoutSchedule(**protocol_kwargs(resolved, seed, num_workers,
                                                     train_images=len(indices)))
        train_indices, held = sweep_split(
            indices, schedule.lr_sweep,
            resolved["protocol"].get("lr_sweep_holdout", HOLDOUT_DEFAULT), seed)
        curve = train_readout(model, train_set, schedule, device=device, work_dir=run_dir,
                              stop_after=stop_after, progress=progress, indices=train_indices)
        if len(curve) < schedule.iterations:
            return {"status": "interrupted", "run_dir": str(run_dir), "iteration": len(curve)}
        schedule_info = {"iterations": schedule.iterations, "lr_steps": list(schedule.lr_steps),
                         "warmup_iterations": schedule.warmup_iterations}
        if schedule.lr_sweep:
            extra["lr_sweep"] = select_head(model, evaluate_fn, train_set, eval_set, held,
                                            schedule.lr_sweep, device=device,
                                            progress=progress)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics, per_class_metric, per_class = evaluate_fn(model, eval_set, device, progress)
    if "lr_sweep" in extra and "val_mIoU" in extra["lr_sweep"]:
        swept = extra["lr_sweep"]
        swept["val_mIoU"][swept["selected_head"]] = metrics["mIoU"]
    confusion = metrics.pop("confusion", None)
    world = world_version(root)
    synthetic = world is not None
    record = {
        "status": "finished", "record_id": uuid.uuid4().hex, "suite": resolved["name"], "suite_hash": suite_hash(resolved),
        "seed": seed, "checkpoint": str(checkpoint_path), "checkpoint_sha256": sha,
        "checkpoint_meta": _jsonable(ckpt.get("meta", {})), "arch": ckpt["arch"],
        "task": resolved["task"], "dataset": resolved["dataset"], "data_root": str(root),
        "synthetic": synthetic, "world": world, "head": resolved["head"],
        "scale": resolved["scale"], "metrics": metrics,
        "per_class_metric": per_class_metric,
        "per_class": dict(zip(train_set.classes, per_class)), **extra,
        "schedule": schedule_info, "skipped_pairs": skipped,
        "loss_curve": curve, "seconds": {"train": round(train_s, 2),
                                         "eval": round(time.perf_counter() - t0, 2)},
        "device": str(device), "host": platform.node(), "run_dir": str(run_dir),
        "git_sha": git_sha(), "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if rank_world()[0] > 0:  # under torchrun only rank 0 writes the record
        return record
    with (run_dir / "per_class.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", per_class_metric])
        for name, v in record["per_class"].items():
            w.writerow([name, "" if math.isnan(v) else f"{v:.4f}"])
    _write_figures(record, confusion, train_set.classes, run_dir, illustrate, model, eval_set,
                   device)
    # the record is written last: its presence means the folder is complete
    with atomic_path(run_dir / RECORD_NAME) as tmp:
        tmp.write_text(json.dumps(record, indent=1, allow_nan=True))
    return record


def _write_figures(record, confusion, classes, run_dir, illustrate, model, eval_set, device):
    from . import plots
    tag = "SYNTHETIC " if record["synthetic"] else ""
    title = (f"{record['suite']} ({tag}{record['dataset']}), checkpoint "
             f"{record['checkpoint_sha256'][:12]}, seed {record['seed']}")
    plots.per_class_bars(list(classes), list(record["per_class"].values()),
                         record["per_class_metric"], run_dir / "per_class.png", title)
    if confusion is not None:
        (run_dir / "confusion.json").write_text(json.dumps({"classes": list(classes),
                                                            "confusion": confusion}))
        plots.confusion_matrix(confusion, list(classes), run_dir / "confusion.png", title)
    if illustrate is not None:
        illustrate(model, eval_set, device, run_dir / "qualitative", title)


def evaluate_suite(model, resolved: dict, eval_set, num_classes: int, groups, *, device,
                   progress: bool) -> dict:
    """readout.train.evaluate with the suite's evaluation settings (mode, crop, stride,
    resize): the one place a resolved suite turns into them."""
    from readout.train import evaluate
    ev = resolved["eval"]
    return evaluate(model, eval_set, num_classes=num_classes, device=device,
                    mode=ev.get("mode", "whole"), crop=ev.get("crop"), stride=ev.get("stride"),
                    resize=ev.get("resize"), class_groups=groups, progress=progress)


def _segmentation(resolved, ckpt, train_set, run_dir, log):
    """Model, evaluation and record extras of a semantic segmentation suite."""
    from readout.model import build_segmentation_model
    groups = class_group_indices(resolved, train_set, run_dir)
    p = resolved["protocol"]
    head_kwargs = ({"k": p["k"], "temperature": float(p["temperature"])}
                   if resolved["task"] == "retrieval_segmentation"
                   else resolved.get("head_options", {}))
    sweep = resolved["protocol"].get("lr_sweep")
    model = build_segmentation_model(ckpt, resolved["head"], train_set.num_classes,
                                     finetune=resolved["finetune"], log=log,
                                     head_kwargs=head_kwargs,
                                     sweep_heads=len(sweep) if sweep else None)
    ev = resolved["eval"]

    def evaluate_fn(model, eval_set, device, progress):
        metrics = evaluate_suite(model, resolved, eval_set, train_set.num_classes, groups,
                                 device=device, progress=progress)
        return {k: v for k, v in metrics.items() if k != "IoU"}, "IoU", metrics["IoU"]

    extra = {"class_groups": {g: [train_set.classes[i] for i in idx]
                              for g, idx in groups.items()}}

    def illustrate(model, eval_set, device, folder, title):
        """The first few evaluation images: image | ground truth | prediction."""
        import torch
        from readout.transforms import to_tensor
        from readout.train import predict
        from . import plots
        model.eval()
        for i in range(min(QUALITATIVE_IMAGES, len(eval_set))):
            item = eval_set[i]
            with torch.no_grad():
                pred = predict(model, to_tensor(item["image"]).to(device),
                               mode=ev.get("mode", "whole"), crop=ev.get("crop"),
                               stride=ev.get("stride"), resize=ev.get("resize"))
            plots.qualitative(item["image"], item["label"], pred.cpu().numpy(),
                              train_set.classes, getattr(train_set, "palette", None),
                              folder / f"{i:02d}.png", f"{title}, image {i}")

    return model, evaluate_fn, extra, illustrate


def _detection(resolved, ckpt, train_set, run_dir, log):
    """Model, evaluation and record extras of an object detection suite."""
    from readout.detection import build_detection_model
    from readout.train import evaluate_detection
    model = build_detection_model(ckpt, resolved["head"], train_set.num_classes, log=log)

    def evaluate_fn(model, eval_set, device, progress):
        metrics = evaluate_detection(model, eval_set, device=device, progress=progress)
        return {k: v for k, v in metrics.items() if k != "AP"}, "AP", metrics["AP"]

    return (model, evaluate_fn,
            {"train_images_with_boxes": len(model.training_indices(train_set))}, None)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))
