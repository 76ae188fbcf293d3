"""DPM-Solver and DPM-Solver++ multistep, ODE and SDE forms, orders 1-3.

Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around
10 Steps" (noise prediction, eq. 3.7 and Alg. 2) and "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models" (data prediction, Alg. 2 and App. B for the SDE form).

With ``lambda = log(alpha / sigma)``, ``h = lambda_{k+1} - lambda_k`` and the estimates ``m`` of this
and earlier calls (x0 for ``dpmsolver++``, eps for ``dpmsolver``), a step integrates the linear part
of the probability-flow ODE exactly and approximates ``m`` by a polynomial in lambda through the last
``order`` estimates: ``D0 = m_k``, ``D1 = (m_k - m_{k-1}) / r0`` with ``r0 = h_{k-1} / h`` (order 2,
"midpoint" weight 1/2 or the ``phi_2`` "heun" weight), and second divided differences for order 3::

    ++ :  x_{k+1} = (sigma_{k+1}/sigma_k) x_k + alpha_{k+1} (1 - e^{-h}) D0 + ...        (DPM-Solver++ eq. 8)
    eps:  x_{k+1} = (alpha_{k+1}/alpha_k) x_k - sigma_{k+1} (e^h - 1) D0 - ...           (DPM-Solver eq. 3.7)

The SDE forms integrate the reverse SDE the same way (``e^{-h}`` becomes ``e^{-2h}`` and fresh noise of
std ``sigma_{k+1} sqrt(1 - e^{-2h})`` is added); SDE-DPM-Solver++(1) is exactly the posterior draw
``q(x_{k+1} | x_k, m_k)``. Warm-up and final-step rules follow diffusers' DPMSolverMultistepScheduler
(``lower_order_final``, ``euler_at_final``, ``final_sigmas_type``), so the two agree call by call.
Noise-prediction variants step into clean data with ``x0_hat`` (the ``h -> inf`` limit of their first-order
step), where diffusers refuses ``final_sigmas_type="zero"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch

from samplers.schedulers.multistep import Grid, MultistepScheduler, StepRule

ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
SOLVER_TYPES = ("midpoint", "heun")


class DPMSolverMultistepScheduler(MultistepScheduler):
    """DPM-Solver++(2M) by default; ``solver_order`` and ``algorithm_type`` pick the other members."""

    name = "dpmpp_2m"
    paper = "Lu et al. 2022, DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
    order = 2
    stochastic = False
    default_algorithm: ClassVar[str] = "dpmsolver++"
    default_solver_order: ClassVar[int] = 2

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
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -math.inf,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if solver_order is not None and solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3 (or None for the default), got {solver_order!r}")
        algorithm = algorithm_type or self.default_algorithm
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm_type must be one of {ALGORITHMS}, got {algorithm_type!r}")
        if solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
        if algorithm == "sde-dpmsolver" and (solver_order or self.default_solver_order) == 3:
            raise ValueError("algorithm_type='sde-dpmsolver' has orders 1 and 2 (no third-order SDE-DPM-Solver)")
        self.check_common_config()
        self.algorithm = algorithm
        self.solver_order = solver_order or self.default_solver_order
        self.estimate = "x0" if algorithm.endswith("++") else "eps"
        self.solver_type = solver_type

    @property
    def is_sde(self) -> bool:
        return self.algorithm.startswith("sde-")

    def step_orders(self, grid: Grid, start: int) -> list[int]:
        """Order used at each call: warm-up from ``start``, lower order near the end, and first order
        wherever a log-SNR it would use is infinite (a step into clean data or out of alpha = 0)."""
        c = self.config
        n = len(grid)
        lam = grid.lam
        short = c.lower_order_final and n < 15
        orders = []
        for k in range(n):
            o = 1 if k <= start else min(self.solver_order, k - start + 1)
            if k == n - 1 and (c.euler_at_final or short or c.final_sigmas_type == "zero"):
                o = 1
            elif k == n - 2 and short:
                o = min(o, 2)
            while o > 1 and not bool(torch.isfinite(lam[k - o + 1 : k + 2]).all()):
                o -= 1
            orders.append(o)
        return orders

    def step_rules(self, grid: Grid, start: int) -> list[StepRule]:
        return [self.step_rule(grid, k, order) for k, order in enumerate(self.step_orders(grid, start))]

    def step_rule(self, grid: Grid, k: int, order: int) -> StepRule:
        """Call ``k``'s update at the given order."""
        lam, alpha, sigma = grid.lam.tolist(), grid.alpha.tolist(), grid.sigma.tolist()
        a_s, s_s, a_t, s_t = alpha[k], sigma[k], alpha[k + 1], sigma[k + 1]
        interval = (s_s / a_s if a_s > 0 else math.inf, s_t / a_t) if self.is_sde else None  # alpha = 0: pure noise
        if self.estimate == "eps" and (s_t == 0.0 or a_s == 0.0):
            # into clean data (x0_hat: the h -> inf limit) or out of pure noise (DDIM, the eps form's alpha_s = 0
            # limit): read x0_hat from the output rather than dividing by a zero alpha or sigma
            x0_weight, eps_weight = a_t, s_t
            return StepRule(sample=0.0, weights=(eps_weight,), extra={"x0": x0_weight})
        h = lam[k + 1] - lam[k]
        if self.estimate == "x0":
            decay = -math.expm1(-2 * h) if self.is_sde else -math.expm1(-h)  # 1 - e^{-h} (1 - e^{-2h} SDE)
            carry = s_t / s_s * (math.exp(-h) if self.is_sde else 1.0)
            phi = a_t * decay
            # weights of D1 (heun / order 3) and D2
            if self.is_sde:
                w1 = a_t * (decay / (-2 * h) + 1) if math.isfinite(h) else a_t
                w2 = a_t * ((decay - 2 * h) / (2 * h) ** 2 - 0.5) if math.isfinite(h) else 0.0
            else:
                w1 = a_t * (math.expm1(-h) / h + 1) if math.isfinite(h) else a_t
                w2 = -a_t * ((math.expm1(-h) + h) / h**2 - 0.5) if math.isfinite(h) else 0.0
            midpoint = 0.5 * phi
        else:
            sig_eh = a_t * s_s / a_s  # sigma_t e^h, finite as sigma_t -> 0
            growth = sig_eh - s_t  # sigma_t (e^h - 1)
            carry = a_t / a_s
            scale = 2.0 if self.is_sde else 1.0
            phi = -scale * growth
            w1 = -scale * (growth / h - s_t)  # sigma_t ((e^h - 1) / h - 1)
            w2 = -(((growth - s_t * h) / h**2) - 0.5 * s_t)  # sigma_t ((e^h - 1 - h) / h^2 - 1/2)
            midpoint = -0.5 * scale * growth
        noise = 0.0
        if self.is_sde:
            noise = s_t * math.sqrt(-math.expm1(-2 * h)) if self.estimate == "x0" else math.sqrt(sig_eh**2 - s_t**2)
        weights = [phi, 0.0, 0.0]
        if order >= 2:
            r0 = (lam[k] - lam[k - 1]) / h
            d1_0 = (1 / r0, -1 / r0, 0.0)  # D1 on (m_k, m_{k-1}, m_{k-2})
            if order == 2:
                w = w1 if self.solver_type == "heun" else midpoint
                weights = [wi + w * di for wi, di in zip(weights, d1_0, strict=True)]
            else:
                r1 = (lam[k - 1] - lam[k - 2]) / h
                d1_1 = (0.0, 1 / r1, -1 / r1)
                diff = [p - q for p, q in zip(d1_0, d1_1, strict=True)]
                d1 = [p + r0 / (r0 + r1) * q for p, q in zip(d1_0, diff, strict=True)]
                d2 = [q / (r0 + r1) for q in diff]
                weights = [wi + w1 * p + w2 * q for wi, p, q in zip(weights, d1, d2, strict=True)]
        return StepRule(sample=carry, weights=tuple(weights[:order]), noise=noise, brownian=interval)


class DPMSolver3MScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++(3M): third-order multistep data prediction."""

    name = "dpmpp_3m"
    order = 3
    default_solver_order = 3


class DPMSolverSDEMultistepScheduler(DPMSolverMultistepScheduler):
    """SDE-DPM-Solver++(2M): the stochastic data-prediction form; keeps the data marginals."""

    name = "dpmpp_2m_sde"
    kind = "sde"
    paper = "Lu et al. 2022, DPM-Solver++, App. B (SDE-DPM-Solver++)"
    stochastic = True
    default_algorithm = "sde-dpmsolver++"


class DPMSolver3MSDEScheduler(DPMSolverSDEMultistepScheduler):
    """SDE-DPM-Solver++(3M)."""

    name = "dpmpp_3m_sde"
    order = 3
    default_solver_order = 3


class DPMSolverNoisePredictionScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver (noise prediction) multistep, order 2 by default (``algorithm_type="sde-dpmsolver"`` for the SDE)."""

    name = "dpm_multistep"
    paper = "Lu et al. 2022, DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling, eq. 3.7"
    stochastic = True  # with algorithm_type="sde-dpmsolver"
    stochastic_when = "algorithm_type = sde-dpmsolver"
    default_algorithm = "dpmsolver"
