"""Name -> class registries (datasets, heads); an unknown name lists the known ones."""
from __future__ import annotations

from typing import Callable


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[type], type]:
        def deco(cls: type) -> type:
            if name in self:
                raise KeyError(f"{self.kind} {name!r} registered twice")
            cls.name = name
            self[name] = cls
            return cls
        return deco

    def get_class(self, name: str) -> type:
        try:
            return self[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known {self.kind}s: "
                           f"{', '.join(sorted(self))}") from None
