"""Heun's second-order method with EDM's stochastic churn (Karras et al. 2022, Algorithm 2).

Per step i (sigma-space levels ``sigma_i``, ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` inside
``[S_tmin, S_tmax]``, ``sigma_hat_i = (1 + gamma_i) sigma_i``)::

    x_hat   = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise z           (lines 5-6)
    d_1     = (x_hat - D(x_hat, sigma_hat)) / sigma_hat              (line 7)
    x_pred  = x_hat + (sigma_{i+1} - sigma_hat) d_1                   (line 8, one call)
    d_2     = (x_pred - D(x_pred, sigma_{i+1})) / sigma_{i+1}         (line 10)
    x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d_1 + d_2) / 2       (line 11, a second call)

The churn noise of step i+1 is added at the end of step i, so every call's model time is the
level the model actually sees (``timesteps`` lists ``sigma_hat_i`` then ``sigma_{i+1}``, as
diffusers' HeunDiscreteScheduler lists its doubled timesteps). The step into sigma = 0 is Euler.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from samplers.levels import Levels
from samplers.plan import ESTIMATE, SAMPLE, Call, Update
from samplers.schedulers.sigma_space import SigmaSpaceScheduler

# What the predictor call of a Heun step keeps for its corrector.
HEUN_KEEP = {"x_hat": SAMPLE, "x0_1": ESTIMATE}


def heun_updates(sigma_hat: float, sigma_next: float, noise: float = 0.0) -> tuple[Update, Update | None]:
    """One Heun step ``sigma_hat -> sigma_next`` in sigma space as the updates of its two calls.

    The predictor (line 8, ``x_pred = x_hat + h (x_hat - x0_1) / sigma_hat``, its call keeps :data:`HEUN_KEEP`)
    and the corrector at ``sigma_next`` (line 11, ``noise`` added after it); into ``sigma_next = 0`` the
    predictor is the whole step (Euler: ``x_next = x0_hat``) and the corrector is ``None``.
    """
    if sigma_next == 0.0:
        return Update(x0=1.0), None
    h = sigma_next - sigma_hat
    first = Update(sample=1 + h / sigma_hat, x0=-h / sigma_hat)
    second = Update(
        sample=h / (2 * sigma_next),
        x0=-h / (2 * sigma_next),
        history={"x_hat": 1 + h / (2 * sigma_hat), "x0_1": -h / (2 * sigma_hat)},
        noise=noise,
    )
    return first, second


def churn_levels(
    sigma: list[float], s_churn: float, s_tmin: float, s_tmax: float, s_noise: float
) -> tuple[list[float], list[float]]:
    """EDM's churn (Algorithm 2, lines 4-6) over a run's levels: ``(sigma_hat, churn std)`` per level.

    ``gamma = min(S_churn / N, sqrt(2) - 1)`` inside ``[S_tmin, S_tmax]`` (else 0), ``sigma_hat = (1 + gamma)
    sigma`` and the std ``S_noise sqrt(sigma_hat^2 - sigma^2)`` that raises the level to ``sigma_hat``.
    """
    gamma_max = min(s_churn / len(sigma), math.sqrt(2) - 1)
    hats, stds = [], []
    for s in sigma:
        gamma = gamma_max if s_tmin <= s <= s_tmax else 0.0
        hats.append(s * (1 + gamma))
        stds.append(s_noise * math.sqrt(max(hats[-1] ** 2 - s**2, 0.0)))
    return hats, stds


class HeunDiscreteScheduler(SigmaSpaceScheduler):
    name = "heun"
    kind = "ode-single-step"
    paper = "Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative Models, Alg. 2"
    order = 2
    stochastic = True  # only when s_churn > 0
    stochastic_when = "s_churn > 0"
    nfe_per_step = 2

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if s_churn < 0 or s_noise < 0:
            raise ValueError(f"s_churn and s_noise must be >= 0, got s_churn={s_churn}, s_noise={s_noise}")
        if interpolation_type not in ("linear", "log_linear"):
            raise ValueError(f"interpolation_type must be 'linear' or 'log_linear', got {interpolation_type!r}")

    def _churn(self, sigma: torch.Tensor) -> tuple[list[float], list[float]]:
        """``(sigma_hat, churn std)`` per level (lines 4-6)."""
        c = self.config
        return churn_levels(sigma.tolist(), c.s_churn, c.s_tmin, c.s_tmax, c.s_noise)

    def plan_calls(self, levels: Levels) -> list[Call]:
        sigma = levels.level
        sigma_hat, churn = self._churn(sigma)
        n = len(sigma)
        calls = []
        for i in range(n):
            s_hat = sigma_hat[i]
            s_next = float(sigma[i + 1]) if i + 1 < n else 0.0
            first, second = heun_updates(s_hat, s_next, churn[i + 1] if i + 1 < n else 0.0)
            first_options = {"keep": HEUN_KEEP} if second is not None else {}
            if s_hat == float(sigma[i]):
                calls.append(self.call_at(levels, i, first, **first_options))
            else:
                t_hat = float(self.schedule.time_at_level(torch.tensor(s_hat, dtype=torch.float64)))
                calls.append(self.call_at_level(t_hat, s_hat, first, **first_options))
            if second is None:
                continue
            # the second call at s_next on x_pred (line 11), then the next step's churn (line 6)
            interval = (s_next, sigma_hat[i + 1]) if churn[i + 1] else None
            calls.append(self.call_at(levels, i + 1, second, brownian=interval))
        return calls

    def initial_sigma(self, levels: Levels) -> float:
        churn = self._churn(levels.level)[1][0]  # the first step's churn is part of the prior
        return self.prior_std(math.sqrt(float(levels.level[0]) ** 2 + churn**2))

    @property
    def state_in_first_order(self) -> bool:
        """True when the next call is the first of a step (diffusers exposes this for Heun)."""
        plan = self._require_plan()
        i = self._state.step_index
        return i >= len(plan.use) or not plan.use[i]
