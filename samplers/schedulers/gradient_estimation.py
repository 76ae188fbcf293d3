"""The gradient-estimation sampler of Permenter & Yuan 2024 (sigma space).

Permenter & Yuan 2024, "Interpreting and Improving Diffusion Models from an Optimization Perspective",
ICML 2024, arXiv:2306.04848; the authors' MIT-licensed ``smalldiffusion`` was read for behaviour.
Equation labels (G1), (G2) are those of our research notes.

The paper reads the noise estimate ``eps(x, sigma)`` as the gradient of a distance function to the data
manifold and DDIM as gradient descent on it. Its sampler descends along a combination of the current and
the previous estimate, which corrects the estimate's error to first order:

    eps_bar_k = gamma eps(x_k, sigma_k) + (1 - gamma) eps(x_{k-1}, sigma_{k-1})     (eps_bar_0 = eps_0)   (G1)
    x_{k+1}   = x_k - (sigma_k - sigma_{k+1}) eps_bar_k                                                (G2)

``gamma = 2`` is the paper's sampler, ``gamma = 1`` is DDIM exactly. As an ODE solver (G2) is a linear
two-step method in sigma; with ``gamma = 2`` it matches the exact step's ``eps(sigma_k) - (step / 2) eps'`` only
when each step is twice the previous one, so it is **first order** (``gamma = 1.5`` is Adams-Bashforth 2 on
a uniform grid). The calls estimate eps, so the history is the previous call's eps alone (one slot).

The sampler runs in model space (``x = alpha x_bar``: ``x_{k+1} = (alpha_{k+1} / alpha_k) x_k - alpha_{k+1} (sigma_k -
sigma_{k+1}) eps_bar_k``, sigmas as levels) on the multistep grids (:class:`MultistepScheduler`). Model space
keeps the stored sample O(1) however noisy the level: with ``gamma = 2`` a perturbation of the sample is
carried by ``1 - gamma * step / sigma``, which barely contracts on long steps, so the rounding of a
sigma-space sample (``|x| ~ sigma``) in bfloat16 would reach the result. A call at ``alpha = 0`` (a flow's
``t = 1``) takes the DDIM step from its x0 estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from samplers.schedulers.multistep import Grid, MultistepScheduler, StepRule


class GradientEstimationScheduler(MultistepScheduler):
    """Gradient estimation (G1)-(G2) with ``gamma`` (2 by default; 1 is DDIM)."""

    name = "gradient_estimation"
    kind = "ode-multistep"
    paper = (
        "Permenter & Yuan 2024, Interpreting and Improving Diffusion Models from an Optimization Perspective, "
        "ICML 2024, arXiv:2306.04848"
    )
    order = 1
    stochastic = False
    estimate = "eps"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
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
        gamma: float = 2.0,
    ) -> None:
        if not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(
                f"gamma (the weight of the current eps estimate) must be a finite number > 0, got {gamma}"
            )
        self.check_common_config()

    def step_rules(self, grid: Grid, start: int) -> list[StepRule]:
        gamma = float(self.config.gamma)
        alpha, sigma = grid.alpha.tolist(), grid.sigma.tolist()
        rules = []
        for k in range(len(grid)):
            a_s, s_s, a_t, s_t = alpha[k], sigma[k], alpha[k + 1], sigma[k + 1]
            if a_s == 0.0:  # out of pure noise: DDIM from the x0 estimate (eps_bar_0 = eps_0)
                rules.append(StepRule(sample=0.0, weights=(s_t,), extra={"x0": a_t}))
                continue
            step = s_s / a_s - s_t / a_t
            weights: tuple[float, ...] = (-a_t * step,)  # eps_bar_0 = eps_0: a DDIM step
            if start < k and s_t > 0.0:  # (G1)-(G2); into clean data first order (module docstring)
                weights = (-a_t * step * gamma, -a_t * step * (1 - gamma))
            rules.append(StepRule(sample=a_t / a_s, weights=weights))
        return rules
