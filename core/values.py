"""Config values, read the same way for pretraining configs and readout suites: a
``key=value`` override parsed as YAML, and the allowed range of a number."""
from __future__ import annotations

import math
from dataclasses import dataclass


def parse_value(item: str, raw: str, error: type[Exception]):
    """The YAML value of a ``key=value`` override; malformed YAML raises `error` naming it."""
    import yaml
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        why = str(getattr(e, "problem", "") or e).splitlines()[0]
        raise error(f"override {item!r}: {raw!r} is not valid YAML ({why}); a list is "
                    f"[a, b], a mapping {{k: v}}") from None


def is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float (not a bool, not NaN)."""
    return (is_whole(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Range:
    """The numbers a value may take: ``low`` and ``high`` (None: open-ended), each bound
    included unless ``open_low`` / ``open_high``; ``whole`` asks for an int. ``str()`` is
    how messages state it (``>= 1``, ``> 0``, ``in [0, 1)``)."""
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    whole: bool = False
    note: str = ""

    def __contains__(self, value) -> bool:
        if not (is_whole(value) if self.whole else is_number(value)):
            return False
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else
                                      value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            text = f"{'>' if self.open_low else '>='} {self.low}"
        else:
            text = (f"in {'(' if self.open_low else '['}{self.low}, {self.high}"
                    f"{')' if self.open_high else ']'}")
        return text + (f" {self.note}" if self.note else "")
