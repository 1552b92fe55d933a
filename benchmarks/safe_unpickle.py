"""Reading pickled checkpoints that hold more than tensors without running code from them.

Released training checkpoints carry Python objects besides their weights (PooDLe and FlowE:
an omegaconf ``DictConfig`` under ``'args'``; raw PixPro files: an ``argparse.Namespace``
under ``'opt'``; BYOL: haiku and optax containers), which torch's ``weights_only=True``
refuses. This module is a pickle module for ``torch.load(..., weights_only=False,
pickle_module=safe_unpickle)``: its ``Unpickler.find_class`` returns the real object only
for the explicit allow-list below (what rebuilds tensors, numpy arrays and ordered dicts;
torch resolves storages itself before asking) and, for any other name, an inert ``Stub``
class, never importing the named module. Calling a stub or giving it its pickled state
only stores the arguments, so a ``__reduce__`` naming ``os.system`` stores a command and
runs nothing.
"""
from __future__ import annotations

import functools
import pickle

# what rebuilds numpy arrays and scalars (and bytes in protocol-2 pickles): also the whole
# allow-list of benchmarks.convert's plain-data unpickler
NUMPY_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
})
ALLOWED = NUMPY_GLOBALS | {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
}


class Stub:
    """Stands in for an object of a class (or a function's result) the file named; keeps
    the pickled arguments and state, does nothing else."""
    source = "?"  # "module.name" the file asked for

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__.update(stub_args=args, stub_kwargs=kwargs, stub_state=None, stub_items=[])
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.stub_state = state

    def __setitem__(self, key, value):
        self.stub_items.append((key, value))

    def append(self, value):
        self.stub_items.append(value)

    def extend(self, values):
        self.stub_items.extend(values)

    def __repr__(self):
        return f"<inert stub of {self.source}>"


@functools.lru_cache(maxsize=None)
def stub_class(module: str, name: str) -> type:
    return type(name, (Stub,), {"source": f"{module}.{name}", "__module__": __name__})


class Unpickler(pickle.Unpickler):
    """`replacements`: {(module, name): object} for formats that need a stand-in that
    behaves (e.g. BYOL's NamedTuple of parameters); set on a subclass."""
    replacements: dict = {}

    def find_class(self, module, name):
        if (module, name) in self.replacements:
            return self.replacements[(module, name)]
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        return stub_class(module, name)


def load(file, **kwargs):
    """``pickle.load`` with this module's Unpickler (torch reads a legacy file's header
    with it)."""
    return Unpickler(file, **kwargs).load()


def stubs_in(obj, _seen=None) -> list[str]:
    """The sorted names the stubs in `obj` (dicts, lists, tuples, stubs) stand in for."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    found = set()
    if isinstance(obj, type) and issubclass(obj, Stub):
        found.add(obj.source)
    elif isinstance(obj, Stub):
        found.add(obj.source)
        children = [obj.stub_args, obj.stub_kwargs, obj.stub_state, obj.stub_items]
        found.update(n for c in children for n in stubs_in(c, seen))
    elif isinstance(obj, dict):
        found.update(n for v in obj.values() for n in stubs_in(v, seen))
    elif isinstance(obj, (list, tuple)):
        found.update(n for v in obj for n in stubs_in(v, seen))
    return sorted(found)


def torch_load(path):
    """``torch.load`` on the CPU through this module: tensors as saved, other objects as
    stubs."""
    import sys

    import torch
    return torch.load(path, map_location="cpu", weights_only=False,
                      pickle_module=sys.modules[__name__])


def pickle_load(path, replacements: dict | None = None):
    """A plain pickle file (e.g. BYOL's dill protocol 2) through this module's Unpickler,
    with `replacements` for names that need a stand-in that behaves."""
    cls = type("Unpickler", (Unpickler,), {"replacements": dict(replacements or {})})
    with open(path, "rb") as f:
        return cls(f, encoding="latin1").load()
