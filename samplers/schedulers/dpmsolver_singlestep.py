"""DPM-Solver and DPM-Solver++ singlestep, orders 1-3 (diffusers' DPMSolverSinglestepScheduler).

Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10
Steps", Alg. 1 (DPM-Solver-2) and Alg. 2 (DPM-Solver-3), and "DPM-Solver++", Alg. 1 (DPM-Solver++(2S)).
A singlestep method spends ``k`` model calls on one step of order ``k``: its intermediate stages are
themselves grid levels, so the grid is walked in groups of calls with orders ``1, 2, (3)`` (the order
list, :func:`singlestep_orders`). Every call of a group at grid index ``g`` jumps *from the group's first
sample* ``x_g`` to the next level ``t``, with ``h = lambda_t - lambda_g`` and the estimates ``m`` (x0 for
``dpmsolver++``, eps for ``dpmsolver``) of the group's calls so far::

    order 1:  x_t = carry x_g + phi D0                                      (DPM-Solver-1, eq. 3.7 / DDIM)
    order 2:  ... + w D1,  D1 = (m_{g+1} - m_g) / r0,  r0 = (lambda_{g+1} - lambda_g) / h       (Alg. 1)
    order 3:  midpoint: ... + phi_2 D1_1;  heun: ... + phi_2 D1 + chi D2                       (Alg. 2)
              D1_0 = (m_{g+1} - m_g) / r1, D1_1 = (m_{g+2} - m_g) / r0,
              D1 = (r0 D1_0 - r1 D1_1) / (r0 - r1), D2 = 2 (D1_1 - D1_0) / (r0 - r1)

with the weights ``carry, phi, phi_2 (heun), phi_1 / 2 (midpoint), chi`` of
:func:`samplers.schedulers.dpmsolver.step_weights` (the multistep solvers' own). Here ``D2 ~ m'' h^2`` is
the full second difference, so the third-order heun update is third order (unlike DPM++ 3M's).
``midpoint`` of order 3 is Alg. 2's "last stage only" form, third order for ``r0 ~ 2/3``.

``sde-dpmsolver++`` (noise fraction ``eta``, default 1) adds ``sigma_t sqrt(1 - e^{-2 eta h}) z`` at every
call. diffusers' third-order *heun* SDE update has the wrong sign on the 1/2 of its D2 weight (as its
multistep class does); this module uses the consistent weight ``1/2 - phi_2 / H``, so ``from_diffusers``
refuses that one configuration.

diffusers' order list: ``lower_order_final`` is forced on whenever ``final_sigmas_type="zero"`` or the step
count is not a multiple of the order, and the last call is first order with ``"zero"``. A run started
mid-schedule (``set_begin_index``) regroups from there, as diffusers lowers the order where the earlier
outputs are missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch

from samplers import levels as lv
from samplers.levels import level_of
from samplers.plan import ESTIMATE, SAMPLE, Call, Update
from samplers.schedulers.dpmsolver import DPMSolverMultistepScheduler, step_weights
from samplers.schedulers.multistep import Grid

SINGLESTEP_ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver")


def singlestep_orders(n: int, order: int, lower_order_final: bool, final_zero: bool) -> list[int]:
    """The order of each of ``n`` calls: repeated groups ``1, 2, .., order``, with a lower-order tail.

    ``lower_order_final`` ends on a complete lower-order group (``[1, 2, 3] * (n // 3 - 1) + [1, 2, 1]`` for
    order 3 and n % 3 == 0; otherwise the remainder's group); without it, full groups only (n must then be a
    multiple of ``order``). ``final_zero``: the last call is first order (a step into clean data).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if not lower_order_final and n % order:
        raise ValueError(f"without lower_order_final the step count must be a multiple of {order}, got {n}")
    group = list(range(1, order + 1))
    full, rest = divmod(n, order)
    if not lower_order_final or order == 1:
        orders = group * full
    elif rest:
        orders = group * full + group[:rest]
    else:
        orders = group * (full - 1) + group[: order - 1] + [1]
    if final_zero:
        orders[-1] = 1
    return orders


def _weights_on_estimates(order: int, w, r0: float, r1: float, solver_type: str) -> list[float]:
    """Weights on ``(m_g, m_{g+1}, .., m_k)`` of a group call of this order (module docstring)."""
    if order == 1:
        return [w.phi]
    if order == 2:
        d1 = (w.heun if solver_type == "heun" else w.midpoint) / r0  # on (m_k - m_g)
        return [w.phi - d1, d1]
    if solver_type == "midpoint":  # phi D0 + phi_2 D1_1
        return [w.phi - w.heun / r0, 0.0, w.heun / r0]
    # D1_0 = (m1 - m0) / r1, D1_1 = (m2 - m0) / r0 on (m0, m1, m2) = (m_g, m_{g+1}, m_{g+2})
    d1_0, d1_1 = (-1 / r1, 1 / r1, 0.0), (-1 / r0, 0.0, 1 / r0)
    d1 = [(r0 * a - r1 * b) / (r0 - r1) for a, b in zip(d1_0, d1_1, strict=True)]
    d2 = [2 * (b - a) / (r0 - r1) for a, b in zip(d1_0, d1_1, strict=True)]
    return [(w.phi if j == 0 else 0.0) + w.heun * d1[j] + w.chi * d2[j] for j in range(3)]


class DPMSolverSinglestepScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++ singlestep, DPM-Solver++(2S) by default (``algorithm_type``, ``solver_order``: the others)."""

    name = "dpmpp_singlestep"
    kind = "ode-single-step"
    paper = "Lu et al. 2022, DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models, Alg. 1"
    order = 2
    stochastic = True  # with algorithm_type="sde-dpmsolver++"
    stochastic_when = "algorithm_type = sde-dpmsolver++"
    cosine_skips_rounding = False  # diffusers' singlestep class rounds karras times whatever the betas

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        solver_order: int | None = None,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str | None = None,
        solver_type: str = "midpoint",
        lower_order_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -math.inf,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        eta: float | None = None,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if (algorithm_type or self.default_algorithm) not in SINGLESTEP_ALGORITHMS:
            raise ValueError(f"algorithm_type must be one of {SINGLESTEP_ALGORITHMS}, got {algorithm_type!r}")
        self.setup_solver(solver_order, algorithm_type, solver_type, thresholding, eta)
        self.check_common_config()
        self.check_flow_config()

    def group_orders(self, grid: Grid, start: int) -> list[int]:
        """Each call's order: diffusers' order list, regrouped from ``start``, and lowered where a level it would
        use has an infinite log-SNR (a group that starts at pure noise, alpha = 0)."""
        c = self.config
        n = len(grid)
        final_zero = float(grid.sigma[-1]) == 0.0
        lower = c.lower_order_final or final_zero or n % self.solver_order != 0
        base = singlestep_orders(n, self.solver_order, lower, final_zero)
        lam = grid.lam
        orders: list[int] = []
        for k in range(n):
            o = 1 if k <= start else min(base[k], orders[-1] + 1)
            while o > 1 and not bool(torch.isfinite(lam[k - o + 1 : k + 2]).all()):
                o -= 1
            orders.append(o)
        return orders

    def multistep_calls(self, levels: lv.Levels, start: int) -> list[Call]:
        grid = self.grid(levels)
        orders = self.group_orders(grid, start)
        lam, alpha, sigma = grid.lam.tolist(), grid.alpha.tolist(), grid.sigma.tolist()
        # each call's update and the level interval its noise stands for (SDE variants)
        updates: list[tuple[Update, tuple[float, float] | None]] = []
        for k, o in enumerate(orders):
            g = k - o + 1
            a_g, s_g, a_t, s_t = alpha[g], sigma[g], alpha[k + 1], sigma[k + 1]
            if self.estimate == "eps" and (s_t == 0.0 or a_g == 0.0):  # x0 read from the output (see dpmsolver.py)
                updates.append((Update(eps=s_t, x0=a_t), None))
                continue
            w = step_weights(self.estimate, a_g, s_g, a_t, s_t, self.eta, self.is_sde)
            h = lam[k + 1] - lam[g]
            r0 = (lam[k] - lam[g]) / h
            r1 = (lam[g + 1] - lam[g]) / h if o == 3 else 0.0
            weights = _weights_on_estimates(o, w, r0, r1, self.config.solver_type)
            history = {f"m{g + j}": weights[j] for j in range(o - 1) if weights[j] != 0.0}
            if o > 1:
                history[f"x{g}"] = w.carry
            x0, eps = (0.0, weights[-1]) if self.estimate == "eps" else (weights[-1], 0.0)
            interval = (level_of(a_g, s_g), level_of(a_t, s_t)) if self.is_sde else None
            sample = w.carry if o == 1 else 0.0
            updates.append((Update(sample=sample, x0=x0, eps=eps, noise=w.noise, history=history), interval))
        needed = {name for update, _ in updates for name in update.history}
        calls = []
        for k, (update, interval) in enumerate(updates):
            keep = {name: what for name, what in ((f"x{k}", SAMPLE), (f"m{k}", ESTIMATE)) if name in needed}
            calls.append(levels.call(k, update, keep=keep, estimate=self.estimate, brownian=interval))
        return calls


class DPMSolverSinglestepNoisePredictionScheduler(DPMSolverSinglestepScheduler):
    """DPM-Solver singlestep (noise prediction; Lu et al. 2022, Alg. 1-2), order 2 by default."""

    name = "dpm_singlestep"
    paper = "Lu et al. 2022, DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling, Alg. 1-2"
    default_algorithm: ClassVar[str] = "dpmsolver"
