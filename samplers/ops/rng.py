"""Seeds for the in-op Philox noise, taken reproducibly from a ``torch.Generator``, and the range a
user seed must lie in.

A seed is a 64-bit key: every seed argument takes an int in ``[0, 2**64)`` (:data:`SEED_RANGE`).
Anything outside is an error naming the argument, never reduced mod 2**64 (which would make,
say, ``-1`` and ``2**64 - 1`` the same noise without a word).
"""

from __future__ import annotations

import operator
from typing import SupportsIndex

import torch

_MASK64 = 0xFFFFFFFFFFFFFFFF
SEED_RANGE = "0 <= {name} < 2**64"


def check_seed(value: object, name: str = "seed") -> int:
    """``value`` as a Python int in ``[0, 2**64)``; TypeError / ValueError naming ``name`` otherwise.

    Integers of any kind (Python, numpy) are accepted; bools, floats and strings are not.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int in [0, 2**64), got the bool {value!r}")
    try:
        if not isinstance(value, SupportsIndex):
            raise TypeError
        seed = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int in [0, 2**64), got {type(value).__name__} {value!r}") from None
    if not 0 <= seed <= _MASK64:
        raise ValueError(f"{name}={seed} is out of range: seeds are 64-bit, {SEED_RANGE.format(name=name)}")
    return seed


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def seed_from_generator(generator: torch.Generator | None = None) -> int:
    """One 64-bit seed (a Python int in [0, 2**64)) drawn from ``generator``.

    - ``None``: torch's default CPU generator (so ``torch.manual_seed`` makes runs reproducible).
    - a CPU generator: one ``randint`` draw advances it, so a freshly seeded generator gives the
      same seed and successive calls give different ones.
    - a CUDA generator: its host-side state (initial seed, Philox offset) is read and the offset
      advanced by one increment, as a ``torch.randn`` on that device would; no kernel runs and the
      host never waits for the device.
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator is None or generator.device.type == "cpu":
        draw = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, generator=generator)
        return int(draw[0]) & _MASK64
    offset = generator.get_offset()
    generator.set_offset(offset + 4)  # torch's CUDA Philox offsets move in multiples of 4
    return _splitmix64(_splitmix64(generator.initial_seed() & _MASK64) ^ (offset & _MASK64))
