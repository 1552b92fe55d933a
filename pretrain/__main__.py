"""``python -m pretrain`` / ``torchrun --nproc-per-node N -m pretrain ...``: the same command
as ``bench pretrain`` (one parser, one run, the same record and MLflow run from rank 0).
Only this launcher reaches into ``benchmarks``; the ``pretrain`` package never does."""
import sys

from benchmarks.cli import main

sys.exit(main(["pretrain", *sys.argv[1:]]))
