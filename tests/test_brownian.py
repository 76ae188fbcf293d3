"""noise="brownian": one Brownian path per sample seed, so an SDE sampler converges pathwise (issue 13).

With a fixed seed, the final samples at N and 2N steps of an SDE sampler differ by an amount that
shrinks as N grows when its noise is the increment of one Brownian path (a strong-order check on the
exact Gaussian oracle), and does not when every call draws independent Philox noise: then the runs at
N and 2N are unrelated draws from (nearly) the same distribution.
"""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from samplers import ops

from battery import MU, STD, run

F64 = torch.float64
EDM = {"schedule": "edm", "schedule_kwargs": {"sigma_min": 0.02, "sigma_max": 80.0}}
STEPS = (10, 20, 40, 80, 160)
FAST = dict(backend="auto", dtype=torch.float32)  # the compiled op (the reference tree is slow in PyTorch)


def _pathwise_gaps(name: str, noise: str, **config) -> list[float]:
    """RMS difference between the final samples at N and 2N steps, same start and seeds."""
    z = torch.randn(1000, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    seeds = ops.batch_seeds(77, 1000)
    finals = []
    for n in STEPS:
        s = samplers.get(name, noise=noise, **EDM, **config)
        s.set_timesteps(n)
        x, _ = run(s, z, seeds=seeds, **FAST)
        finals.append(x)
    return [float((b - a).pow(2).mean().sqrt()) for a, b in zip(finals, finals[1:], strict=False)]


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde"])
def test_brownian_runs_converge_pathwise_and_philox_runs_do_not(name):
    brownian = _pathwise_gaps(name, "brownian")
    philox = _pathwise_gaps(name, "philox")
    assert all(b < 0.8 * a for a, b in zip(brownian, brownian[1:], strict=False)), brownian
    assert brownian[-1] < 0.1, brownian
    assert min(philox) > 0.5, philox  # independent draws: as far apart as two samples of the data
    slope = math.log(brownian[0] / brownian[-1]) / math.log(STEPS[-2] / STEPS[0])
    assert slope > 0.4, f"pathwise gap shrinks with order {slope:.2f}: {brownian}"


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde"])
def test_brownian_mode_keeps_the_output_distribution(name):
    """Brownian increments are standard normal per call: the output distribution is the Philox mode's."""
    z = torch.randn(4096, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    moments = {}
    for noise in ("philox", "brownian"):
        s = samplers.get(name, noise=noise, **EDM)
        s.set_timesteps(60)
        x, _ = run(s, z, seeds=ops.batch_seeds(5, 4096), **FAST)
        moments[noise] = (x.mean(0), x.var(0))
    se_mean = STD / math.sqrt(4096)
    se_var = STD**2 * math.sqrt(2 / 4095)
    for noise, (mean, _) in moments.items():
        assert bool(((mean - MU).abs() < 5 * se_mean).all()), (noise, mean)
    diff = (moments["brownian"][1] - moments["philox"][1]).abs()
    assert bool((diff < 7 * se_var).all()), (moments["brownian"][1], moments["philox"][1])


def test_brownian_noise_is_the_same_on_the_fused_and_reference_backends():
    s = samplers.get("dpmpp_2m_sde", noise="brownian", **EDM)
    s.set_timesteps(12)
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    seeds = ops.batch_seeds(3, 8)
    ref, _ = run(s, z.double(), seeds=seeds, backend="torch", dtype=torch.float32)
    fused, _ = run(s, z.double(), seeds=seeds, backend="auto", dtype=torch.float32)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)


def test_brownian_mode_is_refused_where_it_means_nothing():
    with pytest.raises(ValueError, match="brownian"):
        samplers.get("langevin", noise="brownian")
    with pytest.raises(ValueError, match="unknown noise"):
        samplers.get("ddpm", noise="gaussian")
