"""Error helpers shared by the whole package: one "did you mean" for every name a user types."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(value: object, choices: Iterable[str], cutoff: float = 0.5) -> str:
    """``"; did you mean 'a', 'b'?"`` for the closest choices, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3, cutoff=cutoff)
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""


def unknown(kind: str, value: object, choices: Iterable[str]) -> ValueError:
    """``ValueError`` for an unknown name of some kind, listing the choices and the closest ones."""
    options = tuple(choices)
    return ValueError(f"unknown {kind} {value!r}: expected one of {options}{did_you_mean(value, options)}")
