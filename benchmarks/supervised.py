"""The "Supervised" bound of the learning study: the same backbone trained from random init
on segmentation labels (the training splits of the given datasets), with the readout loop
itself (``finetune``: backbone and head both train, BatchNorm in train mode), then exported
as a ``flowssl-backbone/1`` checkpoint that every readout loads like any other.

The run folder holds what a pretraining run holds: ``config.yaml``, ``curve.json``,
``backbone.pth`` (and ``readout_checkpoint.pth`` while it trains: a killed run resumes).
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from core.checkpoint import make_checkpoint

BACKBONE_NAME = "backbone.pth"
PROTOCOL_KEYS = ("iterations", "batch_size", "lr", "momentum", "weight_decay", "poly_power",
                 "crop", "resize", "flip")


def supervised_config(*, arch: str, datasets, head: str, protocol: dict) -> dict:
    unknown = sorted(set(protocol) - set(PROTOCOL_KEYS))
    missing = sorted(set(PROTOCOL_KEYS) - set(protocol))
    if unknown or missing:
        raise ValueError(f"supervised protocol: unknown keys {unknown}, missing keys {missing}; "
                         f"keys: {', '.join(PROTOCOL_KEYS)}")
    return {"method": "supervised", "arch": arch, "datasets": list(datasets), "head": head,
            "protocol": dict(protocol)}


def train_supervised(config: dict, *, data_root, out_dir, seed: int, device="cpu",
                     progress: bool = True, log=print) -> Path:
    """Train and export; returns ``out_dir/backbone.pth`` (kept as is when it exists)."""
    import torch

    from readout.backbone import save_checkpoint, scratch_checkpoint
    from readout.datasets import build_dataset
    from readout.model import build_segmentation_model
    from readout.train import ReadoutSchedule, train_readout

    out_dir = Path(out_dir)
    done = out_dir / BACKBONE_NAME
    if done.is_file():
        return done
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = out_dir / "config.yaml"
    resolved = {**config, "seed": seed}
    if saved.is_file() and yaml.safe_load(saved.read_text()) != resolved:
        raise ValueError(f"{out_dir} holds a supervised run with another config ({saved}); "
                         f"pick another folder or delete it")
    saved.write_text(yaml.safe_dump(resolved, sort_keys=False))
    parts = [build_dataset(name, data_root, "train") for name in config["datasets"]]
    classes = {tuple(p.classes) for p in parts}
    if len(classes) != 1:
        raise ValueError(f"supervised datasets {config['datasets']} have different classes")
    train_set = torch.utils.data.ConcatDataset(parts)
    init = scratch_checkpoint(config["arch"], seed)
    model = build_segmentation_model(init, config["head"], parts[0].num_classes,
                                     finetune=True, log=log)
    p = config["protocol"]
    schedule = ReadoutSchedule(
        iterations=p["iterations"], batch_size=p["batch_size"], lr=float(p["lr"]),
        momentum=float(p["momentum"]), weight_decay=float(p["weight_decay"]), flip=p["flip"],
        checkpoint_every=max(1, p["iterations"] // 4), poly_power=float(p["poly_power"]),
        crop=tuple(p["crop"]), resize=p["resize"], seed=seed)
    log(f"supervised {config['arch']} on {'+'.join(config['datasets'])} train "
        f"({len(train_set)} images), {schedule.iterations} iterations x {schedule.batch_size}")
    curve = train_readout(model, train_set, schedule, device=device, work_dir=out_dir,
                          progress=progress)
    (out_dir / "curve.json").write_text(json.dumps(curve))
    state = {k: v.detach().cpu().contiguous().clone()  # not channels-last: plain tensors
             for k, v in model.backbone.state_dict().items()}
    checkpoint = make_checkpoint(
        arch=config["arch"], state_dict=state, method="supervised",
        pretrain_data=str(data_root),
        epochs=schedule.iterations * schedule.batch_size / len(train_set),
        iterations=schedule.iterations, config=resolved)
    save_checkpoint(checkpoint, done)  # atomic
    (out_dir / "readout_checkpoint.pth").unlink(missing_ok=True)
    return done
