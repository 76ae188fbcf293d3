"""Linear multistep (Adams-Bashforth) on the probability-flow ODE in sigma space, orders 1-4
(Karras et al. 2022, eq. 3 for the ODE; k-diffusion's ``sample_lms``, diffusers' ``LMSDiscreteScheduler``).

In sigma space (``x = x0 + sigma eps``) the probability-flow ODE is ``dx / dsigma = d(x, sigma)`` with
``d = (x - x0_hat) / sigma``, the noise estimate. A step from ``sigma_i`` to ``sigma_{i+1}`` integrates
the polynomial through the last ``o = min(i + 1, order)`` derivatives (the Adams-Bashforth
construction on a variable grid)::

    x_{i+1} = x_i + sum_{j<o} c_{ij} d_{i-j},      c_{ij} = int_{sigma_i}^{sigma_{i+1}} l_j(s) ds,

with ``l_j`` the Lagrange basis polynomial of the nodes ``sigma_i, ..., sigma_{i-o+1}`` that is 1 at
``sigma_{i-j}``. The integrand has degree ``o - 1 <= 3``, so :func:`lagrange_integrals` evaluates it
exactly with Gauss-Legendre quadrature (2 nodes per interval suffice); both references call an adaptive
quadrature with ``epsrel=1e-4`` that lands within 2e-7 of these values.

Each call estimates ``eps_hat`` (= ``d``) and keeps it; a step weighs this call's and the previous
``o - 1`` kept estimates, so order 4 uses 3 history slots.

**Order.** The warm-up (orders 1, 2, 3 on the first three steps) has local errors ``O(h^2)``, ``O(h^3)``,
``O(h^4)``. On grids that start at a large level (EDM's Karras grid from sigma = 80) the ODE is nearly
linear in sigma there and the warm-up costs nothing measurable: LMS-k fits order 0.97 / 1.93 / 2.83 / 3.68
for k = 1-4 over 32-256 steps (the asymptotic regime of that grid; below 32 steps its large first
steps dominate). Started at sigma = 2 on a uniform grid, the Euler first step dominates and LMS-4 is
second order (fitted 2.46). On a flow grid from t = 1 the first levels are ~3n/k (n steps), so the first
steps keep an O(1) ratio of successive levels at any n: 3.9 over 8-32 steps, tending to 2 beyond
(tests/test_samplers_kd.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from samplers.levels import Levels
from samplers.plan import ESTIMATE, Call, Plan, Update, build_plan
from samplers.protocol import Scheduler
from samplers.schedulers.sigma_space import SigmaSpaceScheduler

ORDERS = (1, 2, 3, 4)


def lagrange_integrals(nodes: Sequence[float], start: float, end: float) -> list[float]:
    """``int_start^end l_j(s) ds`` for each node ``j``: the Lagrange basis of ``nodes`` integrated exactly.

    Gauss-Legendre with ``ceil(len(nodes) / 2)`` points integrates polynomials up to degree
    ``len(nodes) - 1`` exactly (float64). The weights sum to ``end - start``. With ``nodes = (0, -1, ...,
    -(k-1))`` over ``[0, 1]`` they are the k-step Adams-Bashforth coefficients (e.g. 55/24, -59/24, 37/24,
    -9/24 for k = 4).
    """
    nodes = [float(v) for v in nodes]
    if not nodes:
        raise ValueError("lagrange_integrals needs at least one node")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"Lagrange nodes must be distinct, got {nodes}")
    points, weights = np.polynomial.legendre.leggauss(max(1, math.ceil(len(nodes) / 2)))
    half, mid = (end - start) / 2, (end + start) / 2
    taus = mid + half * points
    result = []
    for j, node in enumerate(nodes):
        basis = np.ones_like(taus)
        for k, other in enumerate(nodes):
            if k != j:
                basis *= (taus - other) / (node - other)
        result.append(float(half * np.dot(weights, basis)))
    return result


def adams_bashforth_weights(steps: int) -> list[float]:
    """The ``steps``-step Adams-Bashforth weights on a uniform grid, newest first (sum 1)."""
    return lagrange_integrals([-float(j) for j in range(steps)], 0.0, 1.0)


class WarmUpRestart(Scheduler):
    """For multistep samplers whose ``make_plan(levels, start=k)`` restarts the warm-up at call ``k``:
    ``set_begin_index`` (img2img) re-plans so the run can begin there, as diffusers' LMS and iPNDM begin
    with an empty history. A mixin, listed before the scheduler base it refines."""

    def set_begin_index(self, begin_index: int = 0) -> None:
        plan = self._require_plan()
        if not isinstance(begin_index, int) or not 0 <= begin_index < len(plan.timesteps):
            raise ValueError(f"begin_index must be an int in [0, {len(plan.timesteps)}), got {begin_index!r}")
        # the classes mixing this in define make_plan(levels, mu=None, start=0); the base's has no start
        self.plan = self.make_plan(plan.extras["levels"], start=begin_index)  # type: ignore[call-arg]
        self._device_cache = {}
        super().set_begin_index(begin_index)


class LMSDiscreteScheduler(WarmUpRestart, SigmaSpaceScheduler):
    """Linear multistep in sigma space; ``solver_order`` 1-4 (diffusers passes ``order=4`` to ``step``)."""

    name = "lms"
    kind = "ode-multistep"
    paper = "Karras et al. 2022, eq. 3 (the ODE); Adams-Bashforth linear multistep; k-diffusion sample_lms"
    order = 4
    stochastic = False

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        solver_order: int = 4,
        interpolation_type: str = "linear",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if solver_order not in ORDERS:
            raise ValueError(f"solver_order must be one of {ORDERS}, got {solver_order!r}")
        if interpolation_type not in ("linear", "log_linear"):
            raise ValueError(f"interpolation_type must be 'linear' or 'log_linear', got {interpolation_type!r}")
        self.order = solver_order

    def plan_calls(self, levels: Levels) -> list[Call]:
        return self.lms_calls(levels, 0)

    def lms_calls(self, levels: Levels, start: int) -> list[Call]:
        """One call per level; the polynomial's degree restarts at call ``start`` (a mid-schedule begin)."""
        sigma = levels.level.tolist() + [0.0]
        calls = []
        for i in range(len(levels)):
            o = min(i - start + 1, self.config.solver_order) if i >= start else 1
            weights = lagrange_integrals(sigma[i - o + 1 : i + 1][::-1], sigma[i], sigma[i + 1])
            history = {f"d{i - j}": weights[j] for j in range(1, o)}
            update = Update(sample=1.0, eps=weights[0], history=history)
            calls.append(self.call_at(levels, i, update, estimate="eps", keep={f"d{i}": ESTIMATE}))
        return calls

    def make_plan(self, levels: Levels, mu: float | None = None, start: int = 0) -> Plan:
        """The plan; the warm-up restarts at call ``start`` (``set_begin_index``). diffusers' LMS begun mid-run
        instead keeps the order-4 weights and drops the terms of the derivatives it does not have yet."""
        plan = build_plan(
            self.lms_calls(levels, start),
            self.prediction_type,
            init_noise_sigma=self.initial_sigma(levels),
            sigmas=self.run_sigmas(levels),
        )
        plan.extras["levels"] = levels
        return plan


__all__ = ["LMSDiscreteScheduler", "WarmUpRestart", "adams_bashforth_weights", "lagrange_integrals"]
