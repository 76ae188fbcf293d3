"""Pure-PyTorch reference of the fused ops.

This module is the *definition* of what the C++/CUDA kernels compute: the test
oracle for them and the fallback where no compiler is present. Keep it short and
obviously right; speed is the kernels' job.

The sampler update (one pass per element, math in float32 whatever the storage)::

    out  = uncond + w * (model_output - uncond)   if uncond is given, else model_output
    x0   = clamp(p * x + q * out, -lim, lim) / div
    prev = a * x + b * x0 + e * out + c * noise + h0 * history0 + h1 * history1

``coeffs`` holds one row of :data:`COEFF_NAMES` per batch (shape ``[1, NUM_COEFFS]``)
or per sample (``[B, NUM_COEFFS]``). ``noise`` is an explicit tensor, or is drawn
from :func:`philox_normal` keyed by ``(seeds[b], noise_stream, element index)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

COEFF_NAMES: tuple[str, ...] = ("p", "q", "lim", "div", "a", "b", "e", "c", "h0", "h1", "w")
NUM_COEFFS = len(COEFF_NAMES)
COEFF = {name: i for i, name in enumerate(COEFF_NAMES)}

# Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def _mulhilo32(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * b for 32-bit unsigned values held in int64.

    b is split in 16-bit halves so no intermediate leaves int64's range.
    """
    t_lo = a * (b & 0xFFFF)  # < 2**48
    t_hi = a * (b >> 16)  # < 2**48
    low = ((t_hi & 0xFFFF) << 16) + t_lo  # < 2**49
    hi = (t_hi >> 16) + (low >> 32)
    return hi & _MASK32, low & _MASK32


def philox4x32(counter: list[torch.Tensor], key: list[torch.Tensor]) -> list[torch.Tensor]:
    """Philox4x32 with 10 rounds on int64 tensors holding uint32 values (broadcasting)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_index in range(10):
        if round_index:
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo32(c0, _PHILOX_M0)
        hi1, lo1 = _mulhilo32(c2, _PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def _box_muller(r_radius: torch.Tensor, r_angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # u1 in (0, 1] and u2 in [0, 1), both exact in float32 (24-bit mantissas).
    u1 = ((r_radius >> 8) + 1).to(torch.float32) * (2.0**-24)
    u2 = (r_angle >> 8).to(torch.float32) * (2.0**-24)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * math.pi) * u2
    return radius * torch.cos(angle), radius * torch.sin(angle)


def philox_normal(seeds: torch.Tensor, noise_stream: int, numel_per_sample: int) -> torch.Tensor:
    """Standard normals keyed by (seed, stream, element): shape [B, numel_per_sample], float32.

    Element ``i`` of sample ``b`` comes from Philox block ``(i // 4, 0, stream_lo, stream_hi)``
    under key ``(seed_lo, seed_hi)``; outputs (r0, r1) and (r2, r3) go through Box-Muller to
    give elements ``4k, 4k+1`` and ``4k+2, 4k+3``. Depends on nothing else, so it is the same
    for any batch split, device or memory layout.
    """
    if seeds.dtype != torch.int64 or seeds.dim() != 1:
        raise ValueError(f"seeds must be a 1-D int64 tensor, got dtype={seeds.dtype} shape={tuple(seeds.shape)}")
    device = seeds.device
    groups = (numel_per_sample + 3) // 4
    seed = seeds.view(-1, 1)
    key = [seed & _MASK32, (seed >> 32) & _MASK32]
    g = torch.arange(groups, device=device, dtype=torch.int64).view(1, -1)
    zero = torch.zeros_like(g)
    stream = int(noise_stream) & 0xFFFFFFFFFFFFFFFF
    counter = [g, zero, zero + (stream & _MASK32), zero + (stream >> 32)]
    r0, r1, r2, r3 = philox4x32(counter, key)
    n0, n1 = _box_muller(r0, r1)
    n2, n3 = _box_muller(r2, r3)
    normals = torch.stack([n0, n1, n2, n3], dim=-1).reshape(seeds.shape[0], groups * 4)
    return normals[:, :numel_per_sample]


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def batch_seeds(
    base_seed: int, batch_size: int, sample_offset: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Per-sample Philox keys, shape [batch_size] int64.

    Sample ``sample_offset + b`` gets ``splitmix64(base_seed ^ splitmix64(sample_offset + b))``, so a
    batch split into pieces (each with its own ``sample_offset``) draws exactly the same noise.
    """
    with np.errstate(over="ignore"):
        index = np.arange(sample_offset, sample_offset + batch_size, dtype=np.uint64)
        mixed = _splitmix64(np.uint64(base_seed & 0xFFFFFFFFFFFFFFFF) ^ _splitmix64(index))
    return torch.from_numpy(mixed.view(np.int64).copy()).to(device)


def sampler_update(
    x: torch.Tensor,
    model_output: torch.Tensor,
    coeffs: torch.Tensor,
    uncond: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
    noise_stream: int = 0,
    history0: torch.Tensor | None = None,
    history1: torch.Tensor | None = None,
    write_x0: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``samplers::sampler_update``; see the module docstring. Returns (prev, x0).

    x, model_output, uncond, noise, history*: [B, ...] in one floating dtype; coeffs: [1 or B, NUM_COEFFS].
    When ``write_x0`` is False the second output is an empty tensor.
    """
    batch = x.shape[0]
    view = (-1,) + (1,) * (x.dim() - 1)

    def col(name: str) -> torch.Tensor:
        return coeffs[:, COEFF[name]].to(torch.float32).view(view)

    xf = x.float()
    out = model_output.float()
    if uncond is not None:
        u = uncond.float()
        out = u + col("w") * (out - u)
    lim = col("lim")
    x0 = torch.clamp(col("p") * xf + col("q") * out, -lim, lim) / col("div")
    prev = col("a") * xf + col("b") * x0 + col("e") * out
    if noise is not None:
        prev = prev + col("c") * noise.float()
    elif seeds is not None:
        z = philox_normal(seeds, noise_stream, x[0].numel()).view(batch, *x.shape[1:])
        prev = prev + col("c") * z
    if history0 is not None:
        prev = prev + col("h0") * history0.float()
    if history1 is not None:
        prev = prev + col("h1") * history1.float()
    x0_out = x0.to(x.dtype) if write_x0 else x.new_empty(0)
    return prev.to(x.dtype), x0_out
