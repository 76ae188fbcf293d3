"""Pure-PyTorch reference of the fused ops.

This module is the *definition* of what the C++/CUDA kernels compute: the test
oracle for them and the fallback where no compiler is present. Keep it short and
obviously right; speed is the kernels' job.

The sampler update (one pass per element, math in float32 whatever the storage)::

    out  = uncond + w * (model_output - uncond)   if uncond is given, else model_output
    x0   = clamp(p * x + q * out, -lim, lim) / div
    prev = a * x + b * x0 + e * out + u * (uncond or model_output) + c * noise
           + h0 * history[0] + h1 * history[1] + h2 * history[2] + h3 * history[3]

``coeffs`` holds one row of :data:`COEFF_NAMES` per batch (shape ``[1, NUM_COEFFS]``)
or per sample (``[B, NUM_COEFFS]``). ``x0`` is the call's *estimate*: the clean sample by
default, or any other affine function of ``(x, out)`` a sampler asks for (e.g. the noise).
``u`` weighs the unconditional output alone (CFG++ renoises with it); without ``uncond`` it
weighs the model output. ``noise`` is an explicit tensor, or is drawn in the op:

* Philox (default): :func:`philox_normal` keyed by ``(seeds[b], noise_stream + stream, element)``,
  where ``stream`` is the row's column (the call index), so per-sample rows key exactly as the
  scalar path does;
* Brownian (``brownian=True``): the normalised increment ``(W(bt1) - W(bt0)) / sqrt(|bt1 - bt0|)``
  of one Brownian path per sample (:func:`brownian_normal`), path ``noise_stream + stream``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

COEFF_NAMES: tuple[str, ...] = (
    "p",  # x0 = clamp(p x + q out, -lim, lim) / div: the call's estimate
    "q",
    "lim",
    "div",
    "a",  # prev = a x + b x0 + e out + u uncond + c noise + sum_j hj history[j]
    "b",
    "e",
    "c",
    "h0",
    "h1",
    "h2",
    "h3",
    "w",  # guidance weight: out = uncond + w (model_output - uncond)
    "u",
    "stream",  # Philox stream (call index) or Brownian path of this row, an integer < 2**24
    "bt0",  # Brownian times in [0, 1] of the increment this row draws (brownian=True only)
    "bt1",
)
NUM_COEFFS = len(COEFF_NAMES)
COEFF = {name: i for i, name in enumerate(COEFF_NAMES)}
HISTORY_COLUMNS: tuple[str, ...] = ("h0", "h1", "h2", "h3")
MAX_HISTORY = len(HISTORY_COLUMNS)
# In-op noise numbers Philox blocks of 4 elements with a 32-bit counter word.
MAX_NOISE_NUMEL_PER_SAMPLE = 1 << 34
# Rows carry integer streams in float32: exact below 2**24.
MAX_STREAM = 1 << 24
# Depth of the virtual Brownian tree: cells of 2**-24 in Brownian time (float32 resolves them on [0, 1]).
BROWNIAN_DEPTH = 24

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


def _normal4(
    seeds: torch.Tensor, groups: torch.Tensor, word1: torch.Tensor | int, stream: torch.Tensor | int, high_tag: int = 0
) -> torch.Tensor:
    """Four normals per (sample, Philox group): counter ``(group, word1, stream_lo, stream_hi | high_tag)``.

    Shapes broadcast: ``seeds`` [B, 1], ``groups`` [1, G] (or [B, G]), ``stream`` int or [B, 1].
    Returns ``[B, G, 4]`` float32.
    """
    key = [seeds & _MASK32, (seeds >> 32) & _MASK32]
    zero = torch.zeros_like(groups)
    stream_lo: torch.Tensor | int
    stream_hi: torch.Tensor | int
    if isinstance(stream, torch.Tensor):
        stream_lo, stream_hi = stream & _MASK32, ((stream >> 32) & _MASK32) | high_tag
    else:
        stream = int(stream) & 0xFFFFFFFFFFFFFFFF
        stream_lo, stream_hi = stream & _MASK32, (stream >> 32) | high_tag
    counter = [groups, zero + word1, zero + stream_lo, zero + stream_hi]
    r0, r1, r2, r3 = philox4x32(counter, key)
    n0, n1 = _box_muller(r0, r1)
    n2, n3 = _box_muller(r2, r3)
    return torch.stack([n0, n1, n2, n3], dim=-1)


def _stream_column(noise_stream: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor | int:
    if isinstance(noise_stream, torch.Tensor):
        if noise_stream.dtype != torch.int64 or noise_stream.shape not in ((batch,), ()):
            raise ValueError(
                f"noise_stream must be an int or an int64 tensor [{batch}], "
                f"got {noise_stream.dtype} {tuple(noise_stream.shape)}"
            )
        return noise_stream.to(device).reshape(-1, 1) if noise_stream.dim() else int(noise_stream)
    return int(noise_stream)


def philox_normal(seeds: torch.Tensor, noise_stream: int | torch.Tensor, numel_per_sample: int) -> torch.Tensor:
    """Standard normals keyed by (seed, stream, element): shape [B, numel_per_sample], float32.

    Element ``i`` of sample ``b`` comes from Philox block ``(i // 4, 0, stream_lo, stream_hi)``
    under key ``(seed_lo, seed_hi)``; outputs (r0, r1) and (r2, r3) go through Box-Muller to
    give elements ``4k, 4k+1`` and ``4k+2, 4k+3``. Depends on nothing else, so it is the same
    for any batch split, device or memory layout. ``noise_stream`` is one int, or an int64
    tensor [B] with each sample's own stream.
    """
    if seeds.dtype != torch.int64 or seeds.dim() != 1:
        raise ValueError(f"seeds must be a 1-D int64 tensor, got dtype={seeds.dtype} shape={tuple(seeds.shape)}")
    groups = (numel_per_sample + 3) // 4
    g = torch.arange(groups, device=seeds.device, dtype=torch.int64).view(1, -1)
    stream = _stream_column(noise_stream, seeds.shape[0], seeds.device)
    normals = _normal4(seeds.view(-1, 1), g, 0, stream).reshape(seeds.shape[0], groups * 4)
    return normals[:, :numel_per_sample]


# Brownian draws use counter word 3's top bit, which per-call Philox streams (< 2**24) never set,
# so the two noise sources never share a Philox block.
_BROWNIAN_TAG = 0x80000000
# sqrt((r - l) / 4) for a cell of width 2**-(d-1) at depth d = 1..BROWNIAN_DEPTH, rounded to float32 once.
_BRIDGE_SCALE = [float(np.float32(math.sqrt(2.0 ** -(d - 1) / 4))) for d in range(1, BROWNIAN_DEPTH + 1)]


def brownian_value(
    seeds: torch.Tensor, path: int | torch.Tensor, t: torch.Tensor, numel_per_sample: int
) -> torch.Tensor:
    """``W(t)`` of the virtual Brownian tree of each sample: shape [B, numel_per_sample], float32.

    One standard Brownian path on [0, 1] per (seed, path, element), ``W(0) = 0`` (Gaines & Lyons
    1997; Li et al. 2020). ``W(1)`` is Philox node 0; the midpoint of heap cell ``h`` (h = 1 is
    [0, 1], children 2h and 2h + 1) is the Brownian bridge ``(W(l) + W(r)) / 2 + sqrt((r - l) / 4) z_h``
    with ``z_h`` Philox node ``h``. ``t`` [B] (float32, in [0, 1]) is located by bisection down to
    cells of 2**-BROWNIAN_DEPTH and interpolated linearly inside its cell, so ``W`` is the same
    function of ``t`` whatever other times are queried: one path for any step count.
    """
    batch = seeds.shape[0]
    groups = (numel_per_sample + 3) // 4
    g = torch.arange(groups, device=seeds.device, dtype=torch.int64).view(1, -1)
    seed = seeds.view(-1, 1)
    stream = _stream_column(path, batch, seeds.device)
    t = t.to(torch.float32).reshape(batch, 1, 1)
    lo = torch.zeros(batch, 1, 1, dtype=torch.float32, device=seeds.device)
    hi = torch.ones(batch, 1, 1, dtype=torch.float32, device=seeds.device)
    w_lo = torch.zeros(batch, groups, 4, dtype=torch.float32, device=seeds.device)
    w_hi = _normal4(seed, g, 0, stream, _BROWNIAN_TAG)  # W(1)
    heap = torch.ones(batch, 1, dtype=torch.int64, device=seeds.device)
    for depth in range(BROWNIAN_DEPTH):
        mid = (lo + hi) * 0.5
        z = _normal4(seed, g, heap, stream, _BROWNIAN_TAG)
        w_mid = (w_lo + w_hi) * 0.5 + _BRIDGE_SCALE[depth] * z
        left = t < mid
        hi, lo = torch.where(left, mid, hi), torch.where(left, lo, mid)
        w_hi, w_lo = torch.where(left, w_mid, w_hi), torch.where(left, w_lo, w_mid)
        heap = 2 * heap + (~left).reshape(batch, 1).to(torch.int64)
    frac = (t - lo) / (hi - lo)
    w = w_lo + frac * (w_hi - w_lo)
    return w.reshape(batch, groups * 4)[:, :numel_per_sample]


def brownian_normal(
    seeds: torch.Tensor, path: int | torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, numel_per_sample: int
) -> torch.Tensor:
    """Normalised Brownian increments ``(W(t1) - W(t0)) / sqrt(|t1 - t0|)`` [B, numel_per_sample] float32.

    Standard normal for every interval; increments over disjoint intervals are independent and
    over overlapping ones correlated, as one path's are. ``t0 == t1`` gives 0.
    """
    t0 = t0.to(torch.float32).reshape(-1, 1)
    t1 = t1.to(torch.float32).reshape(-1, 1)
    dw = brownian_value(seeds, path, t1, numel_per_sample) - brownian_value(seeds, path, t0, numel_per_sample)
    span = (t1 - t0).abs()
    # The square root is the IEEE float32 one (correctly rounded, as the kernels' and CUDA's):
    # torch's float32 sqrt on CPU is not (up to 0.75 ulp with its AVX-512 path), so it goes via float64.
    root = span.clamp(min=1e-30).double().sqrt().float()
    return torch.where(span > 0, dw / root, torch.zeros_like(dw))


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
    ``base_seed`` is in ``[0, 2**64)`` and sample indices stay below ``2**64``; anything else raises.
    """
    from samplers.ops.rng import check_seed

    base_seed = check_seed(base_seed, "base_seed")
    for label, value in (("batch_size", batch_size), ("sample_offset", sample_offset)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{label} must be an int >= 0, got {value!r}")
    batch_size, sample_offset = int(batch_size), int(sample_offset)
    if sample_offset + batch_size > 2**64:
        raise ValueError(f"sample_offset + batch_size = {sample_offset + batch_size} exceeds 2**64 sample indices")
    with np.errstate(over="ignore"):
        index = np.arange(sample_offset, sample_offset + batch_size, dtype=np.uint64)
        mixed = _splitmix64(np.uint64(base_seed) ^ _splitmix64(index))
    return torch.from_numpy(mixed.view(np.int64).copy()).to(device)


def sampler_update(
    x: torch.Tensor,
    model_output: torch.Tensor,
    coeffs: torch.Tensor,
    uncond: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
    noise_stream: int = 0,
    history: Sequence[torch.Tensor] = (),
    write_x0: bool = True,
    brownian: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``samplers::sampler_update``; see the module docstring. Returns (prev, x0).

    x, model_output, uncond, noise, history[j]: [B, ...] in one floating dtype (at most
    ``MAX_HISTORY`` history tensors, weighed by columns h0, h1, ...); coeffs: [1 or B, NUM_COEFFS].
    When ``write_x0`` is False the second output is an empty tensor.
    """
    batch = x.shape[0]
    view = (-1,) + (1,) * (x.dim() - 1)

    def col(name: str) -> torch.Tensor:
        return coeffs[:, COEFF[name]].to(torch.float32).view(view)

    xf = x.float()
    out = model_output.float()
    u = out
    if uncond is not None:
        u = uncond.float()
        out = u + col("w") * (out - u)
    lim = col("lim")
    x0 = torch.clamp(col("p") * xf + col("q") * out, -lim, lim) / col("div")
    prev = col("a") * xf + col("b") * x0 + col("e") * out + col("u") * u
    if noise is not None:
        prev = prev + col("c") * noise.float()
    elif seeds is not None:
        rows = coeffs.to(torch.float32).expand(batch, -1)
        stream = rows[:, COEFF["stream"]].to(torch.int64) + int(noise_stream)
        numel = x[0].numel()
        if brownian:
            z = brownian_normal(seeds, stream, rows[:, COEFF["bt0"]], rows[:, COEFF["bt1"]], numel)
        else:
            z = philox_normal(seeds, stream, numel)
        prev = prev + col("c") * z.view(batch, *x.shape[1:])
    for name, h in zip(HISTORY_COLUMNS, history, strict=False):
        prev = prev + col(name) * h.float()
    x0_out = x0.to(x.dtype) if write_x0 else x.new_empty(0)
    return prev.to(x.dtype), x0_out
