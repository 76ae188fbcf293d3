"""DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", Algorithm 2), ODE and SDE forms, orders 1-3.

With ``m_k`` the data prediction (x0 estimate) at call ``k``, ``lambda = log(alpha / sigma)`` and
``h = lambda_{k+1} - lambda_k``, the step to level ``k+1`` integrates the linear part of the
probability-flow ODE exactly and approximates ``m`` by a polynomial in lambda through the last
``order`` estimates:

* order 1 (DDIM):  ``x_{k+1} = (sigma_{k+1}/sigma_k) x_k + alpha_{k+1} (1 - e^{-h}) m_k``
* order 2 (2M):    ``... + w alpha_{k+1} (1 - e^{-h}) D1`` with ``D1 = (m_k - m_{k-1}) / r``,
  ``r = h_{k-1} / h``; ``w = 1/2`` ("midpoint", Algorithm 2) or the ``phi_2`` weight ("heun")
* order 3 (3M):    adds the second divided difference with ``phi_2`` and ``phi_3`` weights.

The SDE form (``dpmpp_2m_sde``) integrates the reverse SDE the same way: ``e^{-h}`` becomes
``e^{-2h}``, ``x_k`` is scaled by ``e^{-h}`` and ``sigma_{k+1} sqrt(1 - e^{-2h}) z`` is added. Its
first-order step is exactly the posterior draw ``q(x_{k+1} | x_k, m_k)`` (the DDPM step), so it
keeps the data marginals; the tests check this against ``samplers.schedules.posterior``.

Every coefficient is a float64 function of the grid's ``(alpha, sigma)`` (from ``samplers.schedules``),
written as one fused-update row per call: ``prev = a x + b m_k + h0 m_{k-1} + h1 m_{k-2} + c z``.
The warm-up and final-step rules follow diffusers' ``DPMSolverMultistepScheduler``
(``lower_order_final``, ``euler_at_final``, ``final_sigmas_type``), so the two agree call by call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch

from samplers.protocol import init_args
from samplers_dpmsolver._multistep import Grid, MultistepScheduler

ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")


class DPMSolverMultistepScheduler(MultistepScheduler):
    """DPM-Solver++(2M) by default; ``solver_order=3`` is 3M. Registry name ``dpmpp_2m``."""

    name = "dpmpp_2m"
    order = 2
    stochastic = False
    algorithm_type: ClassVar[str] = "dpmsolver++"
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
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
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
        if solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
        super().__init__(**init_args(locals()))
        self._check_common_config()
        self.solver_order = solver_order or self.default_solver_order
        self.order = self.solver_order

    def _orders(self, grid: Grid, start: int) -> list[int]:
        """Order used at each call: warm-up from ``start``, lower order near the end, and first order
        wherever a log-SNR it would use is infinite (a step into clean data or out of alpha = 0)."""
        c = self.config
        n = len(grid.t)
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

    def _solver_columns(self, grid: Grid, start: int) -> dict[str, torch.Tensor]:
        n = len(grid.t)
        lam, alpha, sigma = grid.lam, grid.alpha, grid.sigma
        sde = self.algorithm_type == "sde-dpmsolver++"
        heun = self.config.solver_type == "heun"
        cols = {name: torch.zeros(n, dtype=torch.float64) for name in ("a", "b", "h0", "h1", "c")}
        for k, o in enumerate(self._orders(grid, start)):
            h = lam[k + 1] - lam[k]
            ratio = sigma[k + 1] / sigma[k]
            a_t = alpha[k + 1]
            if sde:
                # 1 - e^{-2h} and the phi-weights of the SDE form
                one_minus = -torch.special.expm1(-2 * h)
                a = ratio * torch.exp(-h)
                w_d1_heun = torch.special.expm1(-2 * h) / (2 * h) + 1
                w_d2 = (one_minus - 2 * h) / (2 * h) ** 2 - 0.5
                cols["c"][k] = sigma[k + 1] * torch.sqrt(one_minus)
            else:
                one_minus = -torch.special.expm1(-h)  # 1 - e^{-h}
                a = ratio
                w_d1_heun = torch.special.expm1(-h) / h + 1
                w_d2 = -((torch.special.expm1(-h) + h) / h**2 - 0.5)
            # weights on (m_k, m_{k-1}, m_{k-2})
            weights = torch.tensor([float(a_t * one_minus), 0.0, 0.0], dtype=torch.float64)
            if o >= 2:
                r0 = (lam[k] - lam[k - 1]) / h
                d1_0 = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64) / r0
                if o == 2:
                    w_d1 = a_t * w_d1_heun if heun else 0.5 * a_t * one_minus
                    weights = weights + w_d1 * d1_0
                else:
                    r1 = (lam[k - 1] - lam[k - 2]) / h
                    d1_1 = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64) / r1
                    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                    d2 = (d1_0 - d1_1) / (r0 + r1)
                    weights = weights + a_t * w_d1_heun * d1 + a_t * w_d2 * d2
            cols["a"][k] = a
            cols["b"][k], cols["h0"][k], cols["h1"][k] = weights
        return cols


class DPMSolver3MScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++(3M): third-order multistep (``solver_order=3`` by default). Registry name ``dpmpp_3m``."""

    name = "dpmpp_3m"
    order = 3
    default_solver_order = 3


class DPMSolverSDEScheduler(DPMSolverMultistepScheduler):
    """SDE-DPM-Solver++(2M): the stochastic form; keeps the data marginals. Registry name ``dpmpp_2m_sde``."""

    name = "dpmpp_2m_sde"
    order = 2
    stochastic = True
    algorithm_type = "sde-dpmsolver++"
