"""Writing pretrained backbones in the ``flowssl-backbone/1`` contract (core.checkpoint)."""
from __future__ import annotations

from pathlib import Path

from core.checkpoint import make_checkpoint
from core.io import save_torch


def backbone_checkpoint(*, arch: str, state_dict: dict, decoder: dict | None = None,
                        method: str, pretrain_data: str, epochs: float, iterations: int,
                        config: dict, mlflow_run_id: str = "", **extra_meta) -> dict:
    """`decoder`: the method's decoder entry (``SpatialDecoder.checkpoint_entry()``) or None;
    `extra_meta`: e.g. ``deviations``."""
    return make_checkpoint(arch=arch, state_dict=state_dict, method=method, decoder=decoder,
                           pretrain_data=pretrain_data, epochs=epochs, iterations=iterations,
                           config=config, mlflow_run_id=mlflow_run_id, **extra_meta)


def write_checkpoint(checkpoint: dict, path) -> Path:
    return save_torch(checkpoint, path)
