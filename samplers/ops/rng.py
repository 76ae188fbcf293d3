"""Seeds for the in-op Philox noise, taken reproducibly from a ``torch.Generator``."""

from __future__ import annotations

import torch

_MASK64 = 0xFFFFFFFFFFFFFFFF


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
