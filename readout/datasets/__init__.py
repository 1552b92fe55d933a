"""Dataset loaders, registered by name (``build_dataset("cityscapes", root, split)``)."""
from . import ade20k, bdd100k, cityscapes  # noqa: F401  (registration)
from .base import (DATASETS, CorruptFileError, LayoutError, PairMismatchError, Problem,
                   build_dataset, get_dataset_class, register_dataset)

__all__ = ["DATASETS", "CorruptFileError", "LayoutError", "PairMismatchError", "Problem",
           "build_dataset", "get_dataset_class", "register_dataset"]
