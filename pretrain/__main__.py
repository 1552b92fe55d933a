"""``python -m pretrain`` / ``torchrun --nproc-per-node N -m pretrain ...``."""
import sys

from .cli import main

sys.exit(main())
