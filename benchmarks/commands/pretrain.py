"""`bench pretrain`: the pretraining loop (the same parser and run as ``python -m pretrain``)."""
from __future__ import annotations

from pretrain.cli import add_arguments, run


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain FlowE / PooDLe / BYOL variants on videos",
                       description="Pretrain a method on a folder of videos and export a "
                                   "flowssl-backbone/1 checkpoint. Under torchrun every "
                                   "process runs it: torchrun --nproc-per-node N -m pretrain ...")
    add_arguments(p)
    p.set_defaults(func=run)
