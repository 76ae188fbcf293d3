"""Third-order multistep exponential integrators with the exact quadratic weights (ODE and SDE).

DPM-Solver++(3M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2 extended to third order) integrates the
linear part of the probability-flow ODE exactly and the data prediction ``m`` through a polynomial in
``lambda = log(alpha / sigma)``. As published (and in diffusers, the DPM-Solver code and k-diffusion),
the second divided difference carries half the weight the quadratic interpolant needs, so the method
converges at order 2. Here the weights are the integrals of the interpolant itself: with
``h = lambda_{k+1} - lambda_k``, ``v = lambda_{k+1} - lambda`` and the Newton form
``P(lambda) = m_k + a1 (lambda - lambda_k) + a2 (lambda - lambda_k)(lambda - lambda_{k-1})``::

    ODE:  x_{k+1} = (sigma_{k+1} / sigma_k) x_k + alpha_{k+1} int_0^h e^{-v} P dv            (DPM-Solver++ eq. 9)
    SDE:  x_{k+1} = (sigma_{k+1} / sigma_k) e^{-h} x_k + alpha_{k+1} int_0^h 2 e^{-2v} P dv
                    + sigma_{k+1} sqrt(1 - e^{-2h}) z                                         (SDE-DPM-Solver++)

and ``K_j = int_0^h r e^{-r v} (h - v)^j dv`` in closed form (rate ``r`` = 1 for the ODE, 2 for the
SDE), so the step is exact for quadratic ``m``: third order. Warm-up uses orders 1 and 2 with the same
exact integrals; the step into clean data (``h = inf``) is first order, ``x0_hat``.

Written with samplers' public building blocks only: ``MultistepScheduler`` turns the per-call
``StepRule`` (weights on this and the two previous estimates) into plan rows, keeps each estimate
while a later call weighs it, and gives every schedule, prediction type and named grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from samplers.levels import level_of
from samplers.schedulers.multistep import Grid, MultistepScheduler, StepRule


def exponential_moments(h: float, rate: float) -> tuple[float, float, float]:
    """``(K_0, K_1, K_2)`` with ``K_j = int_0^h rate e^{-rate v} (h - v)^j dv``, stable for small ``h``."""
    d = -math.expm1(-rate * h)  # 1 - e^{-rate h}
    k1 = h - d / rate
    k2 = h * h - 2 * h / rate + 2 * d / rate**2
    if rate * h < 1e-2:  # the closed forms cancel; their Taylor series do not
        x = rate * h
        k1 = h * x / 2 * (1 - x / 3 + x * x / 12)
        k2 = h * h * x / 3 * (1 - x / 4 + x * x / 20)
    return d, k1, k2


class Exact3MScheduler(MultistepScheduler):
    """Third-order multistep data-prediction solver with exact quadratic weights; registry name ``dpmpp_3m_exact``."""

    name = "dpmpp_3m_exact"
    paper = "Lu et al. 2022 (DPM-Solver++) with the quadratic interpolant's exact weights"
    order = 3
    stochastic = False
    rate: ClassVar[float] = 1.0  # 1: probability-flow ODE; 2: reverse SDE

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        lower_order_final: bool = True,
        final_sigmas_type: str = "zero",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        self.check_common_config()

    def step_rules(self, grid: Grid, start: int) -> list[StepRule]:
        lam, alpha, sigma = grid.lam.tolist(), grid.alpha.tolist(), grid.sigma.tolist()
        n = len(grid)
        rules = []
        for k in range(n):
            order = min(3, k - start + 1)
            if self.config.lower_order_final and n < 15:
                order = min(order, n - k)  # few steps: the last ones take shorter histories
            h = lam[k + 1] - lam[k]
            if not math.isfinite(h):  # into clean data or out of pure noise: the first-order (DDIM) step
                order = 1
            rules.append(self._rule(lam, alpha, sigma, k, order))
        return rules

    def _rule(self, lam: list[float], alpha: list[float], sigma: list[float], k: int, order: int) -> StepRule:
        h = lam[k + 1] - lam[k]
        a_t, s_t = alpha[k + 1], sigma[k + 1]
        sde = self.rate == 2.0
        carry = s_t / sigma[k] * (math.exp(-h) if sde else 1.0)
        noise = s_t * math.sqrt(-math.expm1(-2 * h)) if sde else 0.0
        interval = (level_of(alpha[k], sigma[k]), level_of(a_t, s_t)) if sde else None
        if not math.isfinite(h):
            return StepRule(
                sample=carry if math.isfinite(carry) else 0.0, weights=(a_t,), noise=noise, brownian=interval
            )
        k0, k1, k2 = exponential_moments(h, self.rate)
        weights = [k0, 0.0, 0.0]  # on (m_k, m_{k-1}, m_{k-2})
        if order >= 2:
            h1 = lam[k] - lam[k - 1]
            a1 = (1 / h1, -1 / h1, 0.0)  # first divided difference [lambda_k, lambda_{k-1}]
            weights = [w + k1 * d for w, d in zip(weights, a1, strict=True)]
            if order >= 3:
                h2 = lam[k - 1] - lam[k - 2]
                b1 = (0.0, 1 / h2, -1 / h2)
                a2 = [(p - q) / (h1 + h2) for p, q in zip(a1, b1, strict=True)]  # second divided difference
                weights = [w + (k2 + h1 * k1) * d for w, d in zip(weights, a2, strict=True)]
        return StepRule(sample=carry, weights=tuple(a_t * w for w in weights[:order]), noise=noise, brownian=interval)


class Exact3MSDEScheduler(Exact3MScheduler):
    """The reverse-SDE form (fresh noise every step); registry name ``dpmpp_3m_sde_exact``."""

    name = "dpmpp_3m_sde_exact"
    kind = "sde"
    paper = "Lu et al. 2022 (SDE-DPM-Solver++) with the quadratic interpolant's exact weights"
    stochastic = True
    rate = 2.0
