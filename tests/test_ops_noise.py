"""In-op Philox noise: the generator itself, its distribution, its independence, its keying.

The noise of element i of sample b is a function of (seeds[b], noise_stream, i) alone; these
tests pin that it is standard normal, that neighbours / streams / samples are uncorrelated, that
the compiled op agrees with the reference (and with a plain-Python Philox), and that batch splits
and devices do not change it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from samplers.ops import _build, reference, update
from samplers.ops.reference import batch_seeds, philox4x32
from samplers.ops.rng import seed_from_generator

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module", autouse=True)
def fused_op():
    if not update._ops_loaded():
        pytest.skip(f"no compiled extension: {_build.BUILD_STATUS.get(update.EXTENSION)}")


def fused_noise(seeds: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    return torch.ops.samplers.philox_normal(seeds, stream, n)


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
