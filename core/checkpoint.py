"""The ``flowssl-backbone/1`` checkpoint: the only thing `readout` and the converters read
from `pretrain`. A ``torch.save``d dict of tensors and plain values (read with
``weights_only=True``)::

    format      "flowssl-backbone/1"
    arch        resnet18 | resnet34 | resnet50 | resnet101
    state_dict  torchvision ResNet keys (no fc)
    decoder     None, or {"kind": "sdm", "order": "authors" | "paper", "state_dict": {...}}
                (PooDLe's spatial decoder; no "order": "paper", see core.decoders), or
                {"kind": "fpn", "strides": [4, 8, 16, 32], "state_dict": {...}} (PiCO's
                semantic FPN: 128-d map at stride 4)
    meta        method, pretrain_data, epochs, iterations, config, git_sha, mlflow_run_id,
                created, input (the input convention the trunk was trained on:
                {mean, std, range, channels}, core.inputs) (+ e.g. imported_from)
"""
from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

from .inputs import IMAGENET, InputConvention

FORMAT = "flowssl-backbone/1"


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def make_checkpoint(*, arch: str, state_dict: dict, method: str, decoder: dict | None = None,
                    pretrain_data: str = "", epochs: float = 0, iterations: int = 0,
                    config: dict | None = None, mlflow_run_id: str = "",
                    with_git_sha: bool = True, input_convention: InputConvention = IMAGENET,
                    **extra_meta) -> dict:
    """The one builder of a checkpoint dict (tensors detached, on the CPU, copied);
    `input_convention`: what the trunk was trained on (every trunk of this suite: ImageNet
    mean / std, core.inputs)."""
    def plain(state):
        return {k: v.detach().cpu().clone() for k, v in state.items()}
    return {"format": FORMAT, "arch": arch, "state_dict": plain(state_dict),
            "decoder": ({**decoder, "state_dict": plain(decoder["state_dict"])}
                        if decoder else None),
            "meta": {"method": method, "pretrain_data": pretrain_data, "epochs": epochs,
                     "iterations": iterations, "config": config or {},
                     "git_sha": git_sha() if with_git_sha else "",
                     "mlflow_run_id": mlflow_run_id,
                     "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                     "input": input_convention.meta(), **extra_meta}}
