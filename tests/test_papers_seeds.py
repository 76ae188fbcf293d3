"""SEEDS-2/3 (Gonzalez et al. 2023): the noise-free drift solver's order on a Gaussian mixture, the rewrite
that carries the correlated noise through the latest stage (checked against the correlated form (S3)-(S5)
with the same normals), SEEDS-1 = Euler ancestral, Brownian intervals, moments.

Equation labels (S1)-(S5) are those of samplers/schedulers/seeds.py.
"""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch

import samplers
from samplers import parameterization
from samplers.bench.problems import GaussianMixtureProblem
from samplers.ops.reference import COEFF
from samplers.schedulers.seeds import SEEDSScheduler, sde_weights

import battery

F64 = torch.float64
# A 1-D two-component mixture: D is not linear in x, so the DDPM-type mean map is not exact (on Gaussian
# data every SEEDS variant integrates the noise-free drift exactly and an order test measures nothing).
GMM = GaussianMixtureProblem([[-1.5], [2.0]], [0.3, 0.5], [0.4, 0.6])
X_START = torch.linspace(-2.0, 2.0, 16, dtype=F64).view(-1, 1)
STEPS = {"edm": (16, 32, 64, 128), "flow_shift3": (8, 16, 32, 64)}  # flow's errors reach the float32 floor sooner


def _drift_reference(start: torch.Tensor, levels: list[float], substeps: int = 2000) -> list[torch.Tensor]:
    """RK4 on the noise-free SDE drift dx/dlambda = 2 (D(x, e^-lambda) - x) (sigma space, lambda = -log level)
    from levels[0], returning the solution at each later level (descending)."""
    x, out = start.clone(), []
    f = lambda x, lam: 2 * (GMM.denoise(x, 1.0, math.exp(-lam)) - x)  # noqa: E731
    for a, b in zip(levels[:-1], levels[1:], strict=True):
        lam, h = -math.log(a), (math.log(a) - math.log(b)) / substeps
        for _ in range(substeps):
            k1 = f(x, lam)
            k2 = f(x + h / 2 * k1, lam + h / 2)
            k3 = f(x + h / 2 * k2, lam + h / 2)
            k4 = f(x + h * k3, lam + h)
            x, lam = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), lam + h
        out.append(x)
    return out


def _noise_free_errors(name: str, family: str) -> list[float]:
    """RMS error of the s_noise = 0 sampler to the exact drift ODE: both end with x = D at the last level."""
    runs = []
    for n in STEPS[family]:
        s = samplers.get(name, **FAMILIES[family], s_noise=0.0)
        s.set_timesteps(n)
        assert not s.is_stochastic
        plan, x = s.plan, X_START * s.init_noise_sigma
        state = s.init_state()
        for i, t in enumerate(s.timesteps):
            alpha, sigma = float(plan.model_alpha[i]), float(plan.model_sigma[i])
            x_in = x * float(plan.input_scale[i])
            out = parameterization.model_output_from_x0(
                s.prediction_type, GMM.denoise(x_in, alpha, sigma), x_in, alpha, sigma
            )
            result, state = s.step_functional(state, out, t, x, backend="torch")
            x = result.prev_sample
        levels = (plan.model_sigma / plan.model_alpha).tolist()
        runs.append((x, levels[0], levels[-1]))  # the last call (at the last level) returns D there
    start = runs[0][1]
    lasts = sorted({r[2] for r in runs}, reverse=True)
    ends = dict(zip(lasts, _drift_reference(X_START * start, [start, *lasts]), strict=True))
    errors = []
    for x, first, last in runs:
        assert first == start
        exact = GMM.denoise(ends[last], 1.0, last)
        errors.append(float((x - exact).pow(2).mean().sqrt()))
    return errors


FAMILIES = {
    "edm": {"schedule": "edm", "schedule_kwargs": {"sigma_min": 1e-3, "sigma_max": 80.0}, "prediction_type": "sample"},
    "flow_shift3": {**battery.FAMILIES["flow_shift3"], "prediction_type": "flow"},
}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize(("name", "order"), [("seeds_2", 2), ("seeds_3", 3)])
def test_noise_free_drift_order_on_a_mixture(name: str, order: int, family: str) -> None:
    errors = _noise_free_errors(name, family)
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    slope = battery.fitted_order(errors, STEPS[family])
    assert abs(slope - order) <= 0.35, (slope, errors)


def test_noise_free_drift_is_exact_on_gaussian_data() -> None:
    """Why the mixture: on Gaussian data D is constant along the drift's exact path, so every variant is exact."""
    s = samplers.get("seeds_2", schedule="edm", prediction_type="sample", s_noise=0.0)
    s.set_timesteps(6)
    x, _ = battery.run(s, torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=F64))
    level = float(s.plan.model_sigma[-1])
    start = float(s.plan.model_sigma[0])
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=F64) * s.init_noise_sigma
    # drift ODE solution for Gaussian data: x - MU scales with (STD^2 + level^2); then x = D at the last level
    y = battery.MU + (z - battery.MU) * (battery.STD**2 + level**2) / (battery.STD**2 + start**2)
    exact = battery.MU + battery.STD**2 / (battery.STD**2 + level**2) * (y - battery.MU)
    assert float((x - exact).abs().max()) < 1e-5


def _one_step(name: str, noises: list[torch.Tensor], x: torch.Tensor, **config) -> tuple[torch.Tensor, list]:
    """One step 3.0 -> 1.7 of ``name`` (EDM, Gaussian data) with explicit per-call noise."""
    s = samplers.get(name, schedule="edm", prediction_type="sample", **config)
    s.set_timesteps(sigmas=[3.0, 1.7, 0.0])
    state, levels = s.init_state(), []
    for i in range(len(s.timesteps) - 1):  # the calls of the first step only
        level = float(s.plan.model_sigma[i])
        levels.append(level)
        out = battery.MU + battery.STD**2 / (battery.STD**2 + level**2) * (x.to(F64) - battery.MU)
        result, state = s.step_functional(state, out, s.timesteps[i], x, noise=noises[i], backend="torch")
        x = result.prev_sample
    return x, levels


def _denoise(x: torch.Tensor, level: float) -> torch.Tensor:
    return battery.MU + battery.STD**2 / (battery.STD**2 + level**2) * (x - battery.MU)


def test_seeds_2_rewrite_reproduces_the_correlated_noise() -> None:
    """Each call from the stage sample with fresh noise over its own interval equals (S4) from x_t with the
    correlated increments of (S3), normal for normal."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 4, generator=gen, dtype=F64) * 3.0
    za, zb = (torch.randn(64, 4, generator=gen, dtype=F64) for _ in range(2))
    ours, (s, m) = _one_step("seeds_2", [za, zb], x)
    t, h, r = 1.7, math.log(3.0 / 1.7), 0.5
    assert m == pytest.approx(s * math.exp(-r * h))
    w0, w1 = sde_weights(h)
    w0r = sde_weights(r * h)[0]
    d_t = _denoise(x, s)
    x_m = (m / s) ** 2 * x + w0r * d_t + m * math.sqrt(w0r) * za
    d_m = _denoise(x_m, m)
    # N(t -> n) = e^{-(lam_n - lam_m)} (sigma_n / sigma_m) N(t -> m) + sigma_n sqrt(1 - e^{-2 (lam_n - lam_m)}) z_b
    noise = (t / m) ** 2 * m * math.sqrt(w0r) * za + t * math.sqrt(sde_weights((1 - r) * h)[0]) * zb
    direct = (t / s) ** 2 * x + w0 * d_t + w1 / (r * h) * (d_m - d_t) + noise
    assert float((ours - direct).abs().max()) < 1e-5 * float(direct.abs().max())


def test_seeds_3_rewrite_reproduces_the_correlated_noise() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(64, 4, generator=gen, dtype=F64) * 3.0
    z = [torch.randn(64, 4, generator=gen, dtype=F64) for _ in range(3)]
    ours, (s, s1, s2) = _one_step("seeds_3", z, x)
    t, h = 1.7, math.log(3.0 / 1.7)
    r1, r2 = 1 / 3, 2 / 3
    assert (s1, s2) == pytest.approx((s * math.exp(-r1 * h), s * math.exp(-r2 * h)))

    def increment(a: float, b: float) -> float:  # std of the fresh normal over [a, b]
        return b * math.sqrt(sde_weights(math.log(a / b))[0])

    # the correlated noises N(t -> s1), N(t -> s2), N(t -> n) of (S3), built from the disjoint pieces
    n1 = increment(s, s1) * z[0]
    n2 = (s2 / s1) ** 2 * n1 + increment(s1, s2) * z[1]
    n3 = (t / s2) ** 2 * n2 + increment(s2, t) * z[2]
    d_t = _denoise(x, s)
    x1 = (s1 / s) ** 2 * x + sde_weights(r1 * h)[0] * d_t + n1
    d1 = _denoise(x1, s1)
    w0, w1 = sde_weights(r2 * h)
    x2 = (s2 / s) ** 2 * x + w0 * d_t + w1 / (r1 * h) * (d1 - d_t) + n2
    d2 = _denoise(x2, s2)
    w0, w1 = sde_weights(h)
    direct = (t / s) ** 2 * x + w0 * d_t + w1 / (r2 * h) * (d2 - d_t) + n3
    assert float((ours - direct).abs().max()) < 1e-5 * float(direct.abs().max())


class _SEEDS1(SEEDSScheduler):
    """The one-stage member of the family (not registered: it is Euler ancestral, see below)."""

    name = "seeds_1_probe"
    stage_fractions: ClassVar[tuple[float, ...]] = ()


def test_seeds_1_is_euler_ancestral() -> None:
    """Why there is no seeds_1: with D constant over the step, (S4) is the DDPM posterior draw."""
    seeds1 = _SEEDS1(schedule="edm", sigma_schedule="karras", prediction_type="sample")
    seeds1.set_timesteps(12)
    ea = samplers.get("euler_ancestral", schedule="edm", sigma_schedule="karras", prediction_type="sample")
    ea.set_timesteps(12)
    cols = [COEFF[c] for c in ("a", "b", "c")]
    assert torch.allclose(seeds1.plan.rows[:, cols], ea.plan.rows[:, cols], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["seeds_2", "seeds_3"])
def test_brownian_intervals_partition_each_step(name: str) -> None:
    s = samplers.get(name, schedule="edm", sigma_schedule="karras", noise="brownian")
    s.set_timesteps(8)
    level = (s.plan.model_sigma / s.plan.model_alpha).tolist()
    intervals = [iv for iv in s.plan.noise_intervals if iv is not None]
    assert len(intervals) == len(level) - 1  # every call but the last (into sigma = 0) draws noise
    for i, (a, b) in enumerate(intervals):
        assert a == pytest.approx(level[i])
        assert b == pytest.approx(level[i + 1])  # the next call's level: consecutive, disjoint


@pytest.mark.parametrize("name", ["seeds_2", "seeds_3"])
def test_moments_inside_the_noise_floor(name: str) -> None:
    mean_z, var_z = battery.moments_error(name, {}, 40, n=1024)
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["seeds_2", "seeds_3"])
def test_moments_on_a_flow(name: str) -> None:
    mean_z, var_z = battery.moments_error(name, {}, 100, n=2048, family=FAMILIES["flow_shift3"])
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="r "):
        samplers.get("seeds_2", r=1.0)
    with pytest.raises(ValueError, match="s_noise"):
        samplers.get("seeds_3", s_noise=-0.5)
