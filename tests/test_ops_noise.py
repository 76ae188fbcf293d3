"""In-op noise: the Philox generator, the Brownian tree, their distributions, independence and keying.

The noise of element i of sample b is a function of (seeds[b], stream, i) alone (Brownian: of
(seeds[b], path, t0, t1, i)); these tests pin that it is standard normal, that neighbours /
streams / samples are uncorrelated, that Brownian increments come from one path, that the
compiled ops agree with the reference (and with a plain-Python Philox), and that batch splits and
devices do not change it.

The kernels' log / sin / cos are their own float32 polynomials, not torch's, so the reference's
normals differ from theirs by a few ulp. :func:`kernel_normals` swaps the reference's Box-Muller
for an exact NumPy replica of the kernels' (``csrc/update/philox.h``); under it the reference
must equal the compiled ops bit for bit, which pins every other operation of the contract
(Philox counters, the Brownian descent, the update itself). The replica is itself checked
against the compiled Philox normals bit for bit, and the true reference against the kernels
within a few ulp.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from unittest import mock

import numpy as np
import pytest
import torch
from scipy import stats

from samplers.ops import _build, reference, update
from samplers.ops.reference import batch_seeds, philox4x32
from samplers.ops.rng import seed_from_generator

CUDA = torch.cuda.is_available()
F32 = np.float32


@pytest.fixture(scope="module", autouse=True)
def fused_op():
    if not update._ops_loaded():
        pytest.skip(f"no compiled extension: {_build.BUILD_STATUS.get(update.EXTENSION)}")


def fused_noise(seeds: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    return torch.ops.samplers.philox_normal(seeds, stream, n)


# ---- an exact replica of the kernels' Box-Muller ------------------------------------------------


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a * b + c rounded once: the product is exact in float64, TwoSum gives the sum's
    rounding error, which decides the rare float64 results that land on a float32 tie."""
    a, b, c = (np.asarray(v, dtype=np.float32) for v in (a, b, c))
    p = a.astype(np.float64) * b.astype(np.float64)
    c64 = c.astype(np.float64)
    s = p + c64
    bb = s - p
    err = (p - (s - bb)) + (c64 - bb)  # p + c == s + err exactly
    r = s.astype(np.float32)
    r64 = r.astype(np.float64)
    other = np.nextafter(r, np.where(s > r64, F32(np.inf), F32(-np.inf)))
    tie = (r64 != s) & ((s - r64) == (other.astype(np.float64) - s))
    return np.where(tie & (err != 0) & ((err > 0) == (other > r)), other, r)


_LOG_POLY = (
    -0.11646434664726257,
    0.1190471202135086,
    -0.12411268800497055,
    0.14217890799045563,
    -0.16667643189430237,
    0.20002204179763794,
    -0.25000014901161194,
    0.3333331048488617,
)


def _log_unit(x: np.ndarray) -> np.ndarray:
    """philox.h's log_unit, operation by operation."""
    bits = x.view(np.uint32)
    e = (bits >> 23).astype(np.int32) - 127
    m = ((bits & 0x007FFFFF) | 0x3F800000).view(np.float32)
    big = m > F32(1.41421356)
    m = np.where(big, m * F32(0.5), m)
    e = np.where(big, e + 1, e)
    f = m - F32(1.0)
    ef = e.astype(np.float32)
    p = np.full_like(f, F32(0.06675271689891815))
    for coef in _LOG_POLY:
        p = _fma32(p, f, F32(coef))
    z = f * f
    y = (z * f) * p
    y = _fma32(ef, F32(-2.12194440e-4), y)
    y = _fma32(F32(-0.5), z, y)
    return (f + y) + ef * F32(0.693359375)


def _sincos_turn(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """philox.h's sincos_turn, operation by operation."""
    j = np.trunc(theta * F32(0.63661975) + F32(0.5)).astype(np.int32)
    jf = j.astype(np.float32)
    r = _fma32(jf, F32(-1.5703125), theta)
    r = _fma32(jf, F32(-4.838705062866211e-4), r)
    r = _fma32(jf, F32(4.371138828673793e-08), r)
    z = r * r
    ps = _fma32(np.full_like(z, F32(-0.00019518169574439526)), z, F32(0.008332186378538609))
    ps = _fma32(ps, z, F32(-0.16666655242443085))
    s = _fma32(r * z, ps, r)
    pc = _fma32(np.full_like(z, F32(2.443285302433651e-05)), z, F32(-0.0013887312961742282))
    pc = _fma32(pc, z, F32(0.04166664555668831))
    c = _fma32(z * z, pc, F32(-0.5) * z) + F32(1.0)
    q = j.astype(np.uint32)
    swap = (q & 1) != 0
    sv, cv = np.where(swap, c, s), np.where(swap, s, c)
    sv = (sv.view(np.uint32) ^ ((q & 2) << 30)).view(np.float32)
    cv = (cv.view(np.uint32) ^ (((q + 1) & 2) << 30)).view(np.float32)
    return sv, cv


def kernel_box_muller(r_radius: torch.Tensor, r_angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' Box-Muller on Philox words held in int64 (drop-in for reference._box_muller)."""
    rr = r_radius.cpu().numpy().astype(np.uint32)
    ra = r_angle.cpu().numpy().astype(np.uint32)
    u1 = ((rr >> 8) + 1).astype(np.int32).astype(np.float32) * F32(2.0**-24)
    u2 = (ra >> 8).astype(np.int32).astype(np.float32) * F32(2.0**-24)
    radius = np.sqrt(F32(-2.0) * _log_unit(u1))
    s, c = _sincos_turn(F32(6.2831854820251465) * u2)
    return torch.from_numpy(radius * c).to(r_radius.device), torch.from_numpy(radius * s).to(r_radius.device)


@contextlib.contextmanager
def kernel_normals() -> Iterator[None]:
    """Within: the reference draws the kernels' normals (its other operations unchanged)."""
    with mock.patch.object(reference, "_box_muller", kernel_box_muller):
        yield


def test_replica_of_the_kernel_normals_is_exact():
    """2^20 normals: the NumPy replica equals the compiled op to the last bit (tails included)."""
    seeds = batch_seeds(8, 16)
    with kernel_normals():
        want = reference.philox_normal(seeds, 5, 2**16)
    assert torch.equal(fused_noise(seeds, 5, 2**16), want)
    # and it is the kernels' own functions, not torch's: the true reference differs in the last bits
    assert not torch.equal(reference.philox_normal(seeds, 5, 4096), want[:, :4096])


# ---- the generator ------------------------------------------------------------------------------

# Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,want", KAT)
def test_reference_philox_known_answers(counter, key, want):
    got = philox4x32([torch.tensor(c) for c in counter], [torch.tensor(k) for k in key])
    assert tuple(int(v) for v in got) == want


def _python_normals(seed: int, stream: int, n: int) -> list[float]:
    """Philox + Box-Muller with Python ints and float64 math: an independent oracle."""
    m32 = 0xFFFFFFFF
    out = []
    for g in range((n + 3) // 4):
        c = [g, 0, stream & m32, (stream >> 32) & m32]
        k = [seed & m32, (seed >> 32) & m32]
        for r in range(10):
            if r:
                k = [(k[0] + 0x9E3779B9) & m32, (k[1] + 0xBB67AE85) & m32]
            p0, p1 = c[0] * 0xD2511F53, c[2] * 0xCD9E8D57
            c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & m32, (p0 >> 32) ^ c[3] ^ k[1], p0 & m32]
        for a, b in ((c[0], c[1]), (c[2], c[3])):
            u1 = ((a >> 8) + 1) * 2.0**-24
            u2 = (b >> 8) * 2.0**-24
            rad = math.sqrt(-2.0 * math.log(u1))
            out += [rad * math.cos(2 * math.pi * u2), rad * math.sin(2 * math.pi * u2)]
    return out[:n]


def test_fused_noise_matches_reference_and_plain_python():
    seeds = torch.tensor([0, 1, -1, 0x123456789ABCDEF, -(2**63)], dtype=torch.int64)
    for stream in (0, 1, 2**32 + 5, -1):
        got = fused_noise(seeds, stream, 37)
        ref = reference.philox_normal(seeds, stream, 37)
        assert got.shape == (5, 37) and got.dtype == torch.float32
        assert (got - ref).abs().max() < 4e-6
        assert (got == ref).float().mean() > 0.5  # most values agree to the last bit
        for b, seed in enumerate(seeds.tolist()):
            want = torch.tensor(_python_normals(seed & (2**64 - 1), stream & (2**64 - 1), 37))
            torch.testing.assert_close(got[b], want, rtol=0, atol=4e-6)


def test_noise_prefix_is_independent_of_length():
    seeds = batch_seeds(5, 3)
    long = fused_noise(seeds, 2, 1001)
    for n in (1, 2, 3, 4, 5, 999):
        assert torch.equal(fused_noise(seeds, 2, n), long[:, :n])


def test_batch_split_invariance_with_batch_seeds_offsets():
    whole = fused_noise(batch_seeds(77, 10), 3, 513)
    parts = [fused_noise(batch_seeds(77, hi - lo, sample_offset=lo), 3, 513) for lo, hi in [(0, 4), (4, 5), (5, 10)]]
    assert torch.equal(whole, torch.cat(parts))


def test_per_sample_streams_key_each_sample_as_its_scalar_stream():
    seeds = batch_seeds(12, 4)
    streams = torch.tensor([0, 3, 2**24 - 1, -5], dtype=torch.int64)
    got = torch.ops.samplers.philox_normal(seeds, 100, 53, streams)
    for b in range(4):
        assert torch.equal(got[b], fused_noise(seeds[b : b + 1], 100 + int(streams[b]), 53)[0]), b
    with kernel_normals():
        assert torch.equal(got, reference.philox_normal(seeds, streams + 100, 53))


def test_philox_normal_op_rejects_bad_arguments():
    op = torch.ops.samplers.philox_normal
    with pytest.raises(RuntimeError, match="seeds must be a 1-D int64"):
        op(torch.zeros(2, 2, dtype=torch.int64), 0, 5)
    with pytest.raises(RuntimeError, match=r"streams must be int64 of shape \[2\]"):
        op(batch_seeds(1, 2), 0, 5, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="numel_per_sample must be >= 0"):
        op(batch_seeds(1, 2), 0, -1)
    with pytest.raises(RuntimeError, match=f"at most {reference.MAX_NOISE_NUMEL_PER_SAMPLE} "):
        op(batch_seeds(1, 2), 0, reference.MAX_NOISE_NUMEL_PER_SAMPLE + 1)


# ---- distribution -------------------------------------------------------------------------------


def test_standard_normal_moments_and_ks():
    z = fused_noise(batch_seeds(2024, 16), 0, 2**16).double().flatten().numpy()  # 2^20 draws
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # tails: u1 >= 2^-24 bounds |z| by sqrt(2 * 24 ln 2) = 5.77; 2^20 draws reach past 4.4
    assert np.abs(z).max() <= math.sqrt(48 * math.log(2)) + 1e-5
    assert np.abs(z).max() > 4.4
    for q in (0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999):
        assert abs(np.mean(z < stats.norm.ppf(q)) - q) < 5 * math.sqrt(q * (1 - q) / n)


def test_ks_per_position_in_philox_group():
    """Each of the four outputs of a Philox block (cos and sin branches) is standard normal by itself."""
    z = fused_noise(batch_seeds(9, 8), 1, 2**16).view(-1, 4).double().numpy()
    for j in range(4):
        assert stats.kstest(z[:, j], "norm").pvalue > 1e-3, j


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_no_correlation_between_neighbours_streams_and_samples():
    n = 2**18
    bound = 5 / math.sqrt(n)
    seeds = batch_seeds(31337, 4)
    z = fused_noise(seeds, 0, n).double().numpy()
    for lag in (1, 2, 3, 4, 5, 8):
        assert abs(_corr(z[:, :-lag], z[:, lag:])) < 2 * bound, lag
    # squares too: Box-Muller pairs share a radius, which must not make them dependent
    assert abs(_corr(z[:, 0::2] ** 2, z[:, 1::2] ** 2)) < 2 * bound
    for stream_b in (1, 2, 2**32):
        other = fused_noise(seeds, stream_b, n).double().numpy()
        assert abs(_corr(z, other)) < bound, stream_b
    assert abs(_corr(z[0], z[1])) < bound and abs(_corr(z[2], z[3])) < bound
    # raw neighbouring keys (not mixed by batch_seeds) are independent too
    raw = fused_noise(torch.tensor([0, 1, 2**32], dtype=torch.int64), 0, n).double().numpy()
    assert abs(_corr(raw[0], raw[1])) < bound and abs(_corr(raw[0], raw[2])) < bound


def test_different_streams_and_seeds_give_different_noise():
    seeds = batch_seeds(1, 2)
    a = fused_noise(seeds, 0, 64)
    assert not torch.equal(a, fused_noise(seeds, 1, 64))
    assert not torch.equal(a[0], a[1])
    assert torch.equal(a, fused_noise(seeds, 0, 64))


# ---- the Brownian tree --------------------------------------------------------------------------


def fused_brownian(seeds, path, t0, t1, n: int) -> torch.Tensor:
    as_f32 = lambda t: torch.as_tensor(t, dtype=torch.float32).expand(seeds.shape[0]).contiguous()  # noqa: E731
    path = torch.as_tensor(path, dtype=torch.int64).expand(seeds.shape[0]).contiguous()
    return torch.ops.samplers.brownian_normal(seeds, path, as_f32(t0), as_f32(t1), n)


# (t0, t1): inside one cell of the first levels, far apart, reversed, equal, at the ends, one
# float32 ulp apart, a span below the 1e-30 clamp, and times on the tree's own grid.
INTERVALS = [
    (0.1, 0.7),
    (0.7, 0.1),
    (0.25, 0.5),
    (0.0, 1.0),
    (1.0, 0.0),
    (0.0, 0.3),
    (0.3, 1.0),
    (0.42, 0.42),
    (0.0, 0.0),
    (1.0, 1.0),
    (0.5, 0.5 + 2**-24),
    (0.3, float(np.nextafter(F32(0.3), F32(1)))),
    (0.0, 1e-35),
    (0.123456, 0.1234567),
    (1 - 2**-24, 1.0),
]


@pytest.mark.parametrize("n", [1, 3, 8, 37, 1030])
def test_brownian_equals_the_reference_bit_for_bit(n):
    """Per-sample intervals and paths (overlapping, equal, at 0 and 1, one ulp): the kernels' descent
    is the reference's, operation for operation; > one block / chunk at n = 1030."""
    t0 = torch.tensor([a for a, _ in INTERVALS])
    t1 = torch.tensor([b for _, b in INTERVALS])
    seeds = batch_seeds(5, len(INTERVALS))
    path = torch.arange(len(INTERVALS), dtype=torch.int64) * 7919 + 2**40
    for reversed_row in (1, 4):  # the same path as the row before, the interval reversed
        seeds[reversed_row], path[reversed_row] = seeds[reversed_row - 1], path[reversed_row - 1]
    got = torch.ops.samplers.brownian_normal(seeds, path, t0, t1, n)
    with kernel_normals():
        want = reference.brownian_normal(seeds, path, t0, t1, n)
    assert torch.equal(got, want)
    zero = t0 == t1
    assert (got[zero] == 0).all() and (got[~zero] != 0).any(dim=1).all()
    assert torch.equal(got[1], -got[0]) and torch.equal(got[4], -got[3])  # reversed interval: negated


def test_brownian_is_close_to_the_true_reference():
    """Without the replica: the reference's own normals differ by a few ulp; W moves by about as much."""
    seeds = batch_seeds(9, 6)
    t0 = torch.tensor([0.1, 0.0, 0.3, 0.9, 0.25, 0.6])
    t1 = torch.tensor([0.2, 1.0, 0.7, 0.5, 0.75, 0.6001])
    path = torch.tensor([0, 1, 2, 3, 4, 5])
    got = torch.ops.samplers.brownian_normal(seeds, path, t0, t1, 64)
    want = reference.brownian_normal(seeds, path, t0, t1, 64)
    root = (t1 - t0).abs().sqrt().view(-1, 1)
    assert ((got - want) * root).abs().max() < 3e-5  # on W itself
    assert not torch.equal(got, want)


def test_brownian_increments_come_from_one_path():
    """W(t2) - W(t0) = (W(t1) - W(t0)) + (W(t2) - W(t1)) whatever the split, and W(t) - W(0) = W(t)."""
    seeds = batch_seeds(3, 4)
    n = 4096

    def dw(a: float, b: float) -> torch.Tensor:
        return fused_brownian(seeds, 11, a, b, n).double() * math.sqrt(abs(float(F32(b)) - float(F32(a))))

    for t0, t1, t2 in [(0.1, 0.35, 0.8), (0.0, 0.5, 1.0), (0.2, 0.2000001, 0.9), (0.6, 0.3, 0.1)]:
        torch.testing.assert_close(dw(t0, t2), dw(t0, t1) + dw(t1, t2), rtol=0, atol=2e-6)
    w_at = {t: dw(0.0, t) for t in (0.3, 0.55)}
    torch.testing.assert_close(dw(0.3, 0.55), w_at[0.55] - w_at[0.3], rtol=0, atol=2e-6)


def test_brownian_increments_are_standard_normal_with_brownian_covariance():
    seeds = batch_seeds(2025, 8)
    n = 2**14
    a = fused_brownian(seeds, 0, 0.2, 0.6, n).double().flatten().numpy()  # 2^17 draws
    b = fused_brownian(seeds, 0, 0.6, 0.9, n).double().flatten().numpy()  # disjoint: independent
    c = fused_brownian(seeds, 0, 0.4, 0.8, n).double().flatten().numpy()  # overlaps a on [0.4, 0.6]
    m = a.size
    for z in (a, b, c):
        assert abs(z.mean()) < 5 / math.sqrt(m) and abs(z.var() - 1) < 5 * math.sqrt(2 / m)
        assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(_corr(a, b)) < 5 / math.sqrt(m)
    # Cov(W(0.6) - W(0.2), W(0.8) - W(0.4)) = 0.2, normalised by sqrt(0.4 * 0.4)
    assert abs(_corr(a, c) - 0.5) < 5 / math.sqrt(m)
    # different paths and seeds: independent; a Brownian path is not the Philox stream of that number
    other = fused_brownian(seeds, 1, 0.2, 0.6, n).double().flatten().numpy()
    assert abs(_corr(a, other)) < 5 / math.sqrt(m)
    w1 = fused_brownian(seeds, 0, 0.0, 1.0, n)
    assert abs(_corr(w1.double().numpy(), fused_noise(seeds, 0, n).double().numpy())) < 5 / math.sqrt(m)


def test_brownian_batch_split_and_per_sample_paths():
    seeds = batch_seeds(31, 5)
    path = torch.tensor([4, 4, 9, 0, 2**30])
    t0 = torch.tensor([0.1, 0.5, 0.0, 0.3, 0.99])
    t1 = torch.tensor([0.4, 0.25, 1.0, 0.3, 1.0])
    whole = torch.ops.samplers.brownian_normal(seeds, path, t0, t1, 77)
    for b in range(5):
        one = torch.ops.samplers.brownian_normal(
            batch_seeds(31, 1, sample_offset=b), path[b : b + 1], t0[b : b + 1], t1[b : b + 1], 77
        )
        assert torch.equal(one[0], whole[b]), b
    # float64 times are rounded to float32 first, as the reference does
    t64 = torch.ops.samplers.brownian_normal(seeds, path, t0.double(), t1.double(), 77)
    assert torch.equal(t64, whole)


def test_brownian_normal_op_rejects_bad_arguments():
    op = torch.ops.samplers.brownian_normal
    seeds = batch_seeds(1, 2)
    t = torch.tensor([0.1, 0.2])
    path = torch.tensor([0, 1])
    with pytest.raises(RuntimeError, match=r"path must be int64 of shape \[2\]"):
        op(seeds, path.float(), t, t, 4)
    with pytest.raises(RuntimeError, match=r"t1 must be a floating tensor of shape \[2\]"):
        op(seeds, path, t, t[:1], 4)
    with pytest.raises(RuntimeError, match="seeds must be a 1-D int64"):
        op(seeds.int(), path, t, t, 4)


def test_opcheck_noise_ops():
    torch.library.opcheck(torch.ops.samplers.philox_normal.default, (batch_seeds(3, 4), 5, 37))
    torch.library.opcheck(torch.ops.samplers.philox_normal.default, (batch_seeds(3, 1), 0, 1))
    torch.library.opcheck(torch.ops.samplers.philox_normal.default, (batch_seeds(3, 3), 2, 9, torch.tensor([0, 5, 1])))
    args = (
        batch_seeds(3, 3),
        torch.tensor([0, 5, 1]),
        torch.tensor([0.1, 0.0, 0.5]),
        torch.tensor([0.3, 1.0, 0.5]),
        9,
    )
    torch.library.opcheck(torch.ops.samplers.brownian_normal.default, args)


# ---- seeds from a torch.Generator --------------------------------------------------------------


def test_seed_from_cpu_generator_is_reproducible_and_advances():
    g1 = torch.Generator().manual_seed(42)
    g2 = torch.Generator().manual_seed(42)
    s1 = [seed_from_generator(g1) for _ in range(3)]
    assert s1 == [seed_from_generator(g2) for _ in range(3)]
    assert len(set(s1)) == 3 and all(0 <= s < 2**64 for s in s1)
    torch.manual_seed(7)
    a = seed_from_generator(None)
    torch.manual_seed(7)
    assert seed_from_generator(None) == a
    with pytest.raises(TypeError, match="torch.Generator"):
        seed_from_generator(42)  # type: ignore[arg-type]


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_seed_from_cuda_generator_reads_host_state():
    g = torch.Generator(device="cuda").manual_seed(3)
    before = g.get_offset()
    s1, s2 = seed_from_generator(g), seed_from_generator(g)
    assert s1 != s2 and g.get_offset() == before + 8
    assert seed_from_generator(torch.Generator(device="cuda").manual_seed(3)) == s1


# ---- CUDA ---------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_noise_is_cpu_noise_bit_for_bit_and_normal():
    seeds = batch_seeds(8, 16)
    cpu = fused_noise(seeds, 5, 2**16)
    dev = fused_noise(seeds.cuda(), 5, 2**16)
    assert torch.equal(dev.cpu(), cpu)
    assert stats.kstest(dev.double().cpu().flatten().numpy(), "norm").pvalue > 1e-3
    for n in (1, 6, 4097):  # the unaligned tail path
        assert torch.equal(fused_noise(seeds.cuda(), 5, n).cpu(), cpu[:, :n])


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_per_sample_streams_and_brownian_equal_cpu_bit_for_bit():
    seeds = batch_seeds(8, len(INTERVALS))
    t0 = torch.tensor([a for a, _ in INTERVALS])
    t1 = torch.tensor([b for _, b in INTERVALS])
    path = torch.arange(len(INTERVALS), dtype=torch.int64) * 3 + 1
    for n in (1, 6, 37, 4097):  # aligned and unaligned tails
        cpu = torch.ops.samplers.brownian_normal(seeds, path, t0, t1, n)
        dev = torch.ops.samplers.brownian_normal(seeds.cuda(), path.cuda(), t0.cuda(), t1.cuda(), n)
        assert torch.equal(dev.cpu(), cpu), n
        cpu = torch.ops.samplers.philox_normal(seeds, 3, n, path)
        assert torch.equal(torch.ops.samplers.philox_normal(seeds.cuda(), 3, n, path.cuda()).cpu(), cpu), n
    args = (seeds.cuda(), path.cuda(), t0.cuda(), t1.cuda(), 9)
    torch.library.opcheck(torch.ops.samplers.brownian_normal.default, args)
