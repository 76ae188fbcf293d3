"""Seeds for the in-op Philox noise, taken reproducibly from a torch.Generator."""

from __future__ import annotations

import torch


def seed_from_generator(generator: torch.Generator | None = None) -> int:
    """One 64-bit seed drawn from ``generator`` (torch's default CPU generator when None).

    A CPU generator advances by one draw, so a freshly seeded generator gives the same seed.
    A CUDA generator is read and advanced on the host (seed and Philox offset): no device sync.
    """
    if generator is None or generator.device.type == "cpu":
        return int(torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, generator=generator))
    offset = generator.get_offset()
    generator.set_offset(offset + 4)
    return (generator.initial_seed() * 0x9E3779B97F4A7C15 + offset) & 0xFFFFFFFFFFFFFFFF
