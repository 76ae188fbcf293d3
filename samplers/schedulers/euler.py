"""Euler's method on the probability-flow ODE in sigma space (Karras et al. 2022, Algorithm 1 without
the second-order correction; k-diffusion's ``sample_euler``).

``d = (x - x0_hat) / sigma`` (eq. 3 with D = x0_hat); ``x_next = x + (sigma_next - sigma) d``. In terms
of ``(x0_hat, eps_hat)`` this is ``schedules.ddim_transition`` with eta = 0 at alpha = 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from samplers import schedules
from samplers.levels import Levels
from samplers.plan import Call, Update
from samplers.schedulers.sigma_space import SigmaSpaceScheduler


class EulerDiscreteScheduler(SigmaSpaceScheduler):
    name = "euler"
    kind = "ode-single-step"
    paper = "Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative Models, Alg. 1"
    order = 1
    stochastic = False
    eta: float = 0.0  # the ancestral variant's share of fresh noise

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
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
        rescale_betas_zero_snr: bool = False,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if interpolation_type not in ("linear", "log_linear"):
            raise ValueError(f"interpolation_type must be 'linear' or 'log_linear', got {interpolation_type!r}")

    def plan_calls(self, levels: Levels) -> list[Call]:
        sigma = levels.level.tolist() + [0.0]
        calls = []
        for i in range(len(levels)):
            # Sigma space has alpha = 1 on both ends of every step.
            coef_x0, coef_eps, std = schedules.ddim_transition(1.0, sigma[i + 1], 1.0, sigma[i], self.eta)
            update = Update(x0=coef_x0, eps=coef_eps, noise=std)
            calls.append(self.call_at(levels, i, update, brownian=(sigma[i], sigma[i + 1]) if std else None))
        return calls
