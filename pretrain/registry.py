"""Name -> class tables for pretrain (methods, flow estimators): ``registry(kind)`` returns
the table, its decorator and its lookup, which lists the known names on a miss."""
from __future__ import annotations


def registry(kind: str):
    table: dict[str, type] = {}

    def register(name: str):
        def add(cls):
            if name in table:
                raise KeyError(f"{kind} {name!r} registered twice")
            cls.name = name
            table[name] = cls
            return cls
        return add

    def lookup(name: str) -> type:
        if name not in table:
            raise KeyError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(table))}")
        return table[name]

    return table, register, lookup
