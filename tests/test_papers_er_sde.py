"""ER-SDE-Solver-1/2/3 (Cui et al. 2023): exact integrals, orders in the ODE limit (what is true: ER-SDE-3 as
published is second order; with the interpolant's derivative, third), the special cases, moments.

Equation labels (E1)-(E4) are those of samplers/schedulers/er_sde.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import samplers
from samplers.ops.reference import COEFF
from samplers.schedulers.er_sde import NOISE_SCALES, er_sde_integrals

import battery

F64 = torch.float64
# The order grid: log-uniform levels (uniform in lambda), EDM 80 -> 1e-4. On the Karras grid the long
# early steps dominate and fall off faster than the asymptotic rate before the float32 floor (~1e-6) is
# reached, so a third-order method measures 4-5 there; here consecutive slopes settle (3.0, 3.15, 3.13).
ORDER = {**battery.ORDER_FAMILY, "sigma_schedule": "exponential"}
STEPS = (16, 32, 64, 128)
ODE = {"noise_scale": "ode"}
FLOW = {**battery.FAMILIES["flow_shift3"], "prediction_type": "flow"}


def _closed_forms(name: str, s: float, t: float) -> tuple[float, float]:
    """(C1, C2) of (E3)-(E4) by hand: C1 = int_t^s (rho - 1), C2 = int_t^s (u - s)(rho - 1), rho = phi(t) / phi(u)."""
    if name == "ode":  # rho = t / u
        return t * math.log(s / t) - (s - t), t * ((s - t) - s * math.log(s / t)) + (s - t) ** 2 / 2
    # reverse_sde: rho = t^2 / u^2
    c1 = t * t * (1 / t - 1 / s) - (s - t)
    c2 = t * t * (math.log(s / t) - s * (1 / t - 1 / s)) + (s - t) ** 2 / 2
    return c1, c2


@pytest.mark.parametrize("name", ["ode", "reverse_sde"])
def test_integrals_match_closed_forms(name: str) -> None:
    """Gauss-Legendre in log(sigma) is exact to rounding, also over steps spanning decades."""
    for s, t in ((4096.0, 24.0), (80.0, 0.002), (1.0, 0.9), (0.03, 0.0291), (2.0, 1e-4)):
        got, want = er_sde_integrals(NOISE_SCALES[name], s, t), _closed_forms(name, s, t)
        for g, w in zip(got, want, strict=True):
            assert g == pytest.approx(w, rel=1e-11, abs=1e-14 * s * s), (name, s, t)


def _quad_integrals(psi, s: float, t: float) -> tuple[float, float]:
    """(C1, C2) by adaptive quadrature in log u (the integrands vary over decades)."""
    from scipy.integrate import quad

    def rho_minus_1(u: float) -> float:
        return (t / u) * math.exp(float(psi(np.float64(t))) - float(psi(np.float64(u)))) - 1

    c1 = quad(lambda v: rho_minus_1(math.exp(v)) * math.exp(v), math.log(t), math.log(s), epsabs=0, epsrel=1e-13)
    c2 = quad(
        lambda v: (math.exp(v) - s) * rho_minus_1(math.exp(v)) * math.exp(v),
        math.log(t),
        math.log(s),
        epsabs=0,
        epsrel=1e-13,
    )
    return c1[0], c2[0]


def test_recommended_integrals_match_adaptive_quadrature() -> None:
    psi = NOISE_SCALES["recommended"]
    for s, t in ((4096.0, 24.0), (80.0, 40.0), (5.0, 0.5), (0.1, 0.01)):
        got, want = er_sde_integrals(psi, s, t), _quad_integrals(psi, s, t)
        assert got == pytest.approx(want, rel=1e-10), (s, t)


def test_a_riemann_sum_would_make_it_first_order() -> None:
    """Why the integrals are exact: the authors' 100-point left Riemann sum errs on C1 by a fixed ~1%
    whatever the step, i.e. by O(step^2) (C1 = O(step^2)): a local error of the order of the method's own
    first-order term, so ER-SDE-2/3 drift to first order as steps shrink."""
    for step in (0.1, 0.01, 0.001):
        s, t = 1.0, 1.0 - step
        grid = t + np.arange(100) / 100 * (s - t)
        riemann = float(np.sum(t / grid - 1) * (s - t) / 100)  # phi = sigma: rho(u) - 1 = t / u - 1
        exact = er_sde_integrals(NOISE_SCALES["ode"], s, t)[0]
        assert 0.004 < abs(riemann / exact - 1) < 0.02, step


@pytest.mark.parametrize(
    ("config", "order"),
    [
        ({"solver_order": 1}, 1),
        ({"solver_order": 2}, 2),
        ({"solver_order": 3}, 2),  # as published: the backward difference d_i caps it at 2
        ({"solver_order": 3, "first_derivative": "interpolant"}, 3),
    ],
    ids=["er1", "er2", "er3_published", "er3_interpolant"],
)
def test_orders_in_the_ode_limit(config, order) -> None:
    battery.assert_order("er_sde", {**ODE, **config}, order, steps=STEPS, family=ORDER)


@pytest.mark.parametrize("solver_order", [2, 3])
def test_second_order_on_a_flow(solver_order: int) -> None:
    """Flow shift 3 (its grid ends at a level ~1/N, so no method measures above 2 there: the last jump to
    clean data costs O(level^2))."""
    battery.assert_order("er_sde", {**ODE, "solver_order": solver_order}, 2, steps=(32, 64, 128, 256), family=FLOW)


def _plan(name: str, **config):
    s = samplers.get(name, schedule="edm", sigma_schedule="karras", prediction_type="sample", **config)
    s.set_timesteps(12)
    return s.plan


def test_er_sde_1_is_ddim_and_ddpm() -> None:
    """(E2) with phi = sigma is DDIM (Euler in sigma space); with phi = sigma^2 it is DDPM (Euler ancestral)."""
    cols = [COEFF[c] for c in ("a", "b", "c")]
    ode = _plan("er_sde", solver_order=1, noise_scale="ode")
    assert torch.allclose(ode.rows[:, cols], _plan("euler").rows[:, cols], rtol=1e-12, atol=1e-15)
    assert not ode.stochastic
    sde = _plan("er_sde", solver_order=1, noise_scale="reverse_sde")
    assert torch.allclose(sde.rows[:, cols], _plan("euler_ancestral").rows[:, cols], rtol=1e-12, atol=1e-15)


def test_noise_is_admissible_and_exactly_zero_in_the_ode_limit() -> None:
    """sigma_{i+1}^2 - sigma_i^2 r^2 >= 0 needs phi / sigma non-decreasing; the noise std is its square root."""
    plan = _plan("er_sde")
    level = (plan.model_sigma / plan.model_alpha).tolist() + [0.0]
    for i in range(len(level) - 2):
        r, c = float(plan.rows[i, COEFF["a"]]), float(plan.rows[i, COEFF["c"]])
        assert r <= level[i + 1] / level[i]
        assert c == pytest.approx(math.sqrt(level[i + 1] ** 2 - (level[i] * r) ** 2), rel=1e-9)
    assert plan.stochastic and not _plan("er_sde", noise_scale="ode").stochastic
    assert float(plan.rows[-1, COEFF["b"]]) == 1.0 and float(plan.rows[-1, COEFF["a"]]) == 0.0  # x0 at the end


def test_warm_up_and_history() -> None:
    plan = _plan("er_sde", solver_order=3)
    assert [len(u) for u in plan.use[:4]] == [0, 1, 2, 2]
    assert plan.use[-1] == ()  # the step into sigma = 0 is first order


def test_moments_inside_the_noise_floor() -> None:
    mean_z, var_z = battery.moments_error("er_sde", {}, 60, n=2048)
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flow_shift3", "discrete_vp"])
def test_moments_on_other_families(family: str) -> None:
    mean_z, var_z = battery.moments_error("er_sde", {}, 100, n=4096, family=battery.FAMILIES[family])
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="solver_order"):
        samplers.get("er_sde", solver_order=4)
    with pytest.raises(ValueError, match="noise_scale"):
        samplers.get("er_sde", noise_scale="sde_5")
    with pytest.raises(ValueError, match="first_derivative"):
        samplers.get("er_sde", first_derivative="forward")
