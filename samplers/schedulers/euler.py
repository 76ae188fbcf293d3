"""Euler's method on the probability-flow ODE in sigma space (Karras et al. 2022, Algorithm 1 without
the second-order correction; k-diffusion's ``sample_euler``).

``d = (x - x0_hat) / sigma`` (eq. 3 with D = x0_hat); ``x_next = x + (sigma_next - sigma) d``. In terms
of ``(x, x0_hat)`` this is ``schedules.ddim_transition`` with eta = 0 at alpha = 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from samplers import schedules
from samplers.protocol import Plan, eps_form_rows, init_args
from samplers.schedulers._sigma import SigmaSpaceScheduler


class EulerDiscreteScheduler(SigmaSpaceScheduler):
    name = "euler"
    family = "any"
    order = 1
    stochastic = False
    nfe_per_step = 1
    eta: float = 0.0

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
        super().__init__(**init_args(locals()))

    def _make_plan(self, num_inference_steps, timesteps, sigmas, mu) -> Plan:
        t, sigma = self._sigma_grid(num_inference_steps, timesteps, sigmas)
        sigma_next = torch.cat([sigma[1:], torch.zeros(1, dtype=sigma.dtype)])
        p, q, scale, model_alpha, model_sigma = self._model_space(t, sigma)
        ones = torch.ones_like(sigma)
        # Sigma space has alpha = 1 on both ends of every step.
        coef_x0, coef_eps, std = schedules.ddim_transition(ones, sigma_next, ones, sigma, self.eta)
        rows = eps_form_rows(p, q, ones, sigma, coef_x0, coef_eps, std)
        self.sigmas = torch.cat([sigma, torch.zeros(1, dtype=sigma.dtype)]).to(torch.float32)
        return Plan(
            timesteps=t,
            rows=rows,
            input_scale=scale,
            model_alpha=model_alpha,
            model_sigma=model_sigma,
            init_noise_sigma=self._init_sigma(float(sigma.max())),
        )
