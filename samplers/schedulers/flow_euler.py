"""Euler on the rectified-flow ODE ``dx/dt = v`` (Liu et al. 2022; Esser et al. 2024 for the shift).

``x_{t'} = x_t + (t' - t) v_hat``, with ``v = eps - x0``; written through ``(x0_hat, eps_hat)`` this is
``schedules.ddim_transition`` at eta = 0 on the flow schedule (the two coincide exactly, since both
interpolate linearly in t). Times are shifted by SD3's ``shift`` or, with ``use_dynamic_shifting``,
by the resolution-dependent ``mu`` given to ``set_timesteps``.
"""

from __future__ import annotations

import numpy as np
import torch

from samplers import schedules
from samplers.protocol import Plan, Scheduler, eps_form_rows, init_args, model_space_x0_coefficients


class FlowMatchEulerDiscreteScheduler(Scheduler):
    name = "flow_euler"
    family = "flow"
    order = 1
    stochastic = False
    nfe_per_step = 1
    uses_mu = True  # pipelines (SD3, Flux) pass mu on every call; it applies with use_dynamic_shifting

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        prediction_type: str = "flow",
        schedule: str = "flow",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        if schedule_kwargs is None and schedule == "flow":
            schedule_kwargs = {"timestep_scale": float(num_train_timesteps)}
        super().__init__(**init_args(locals()))

    def _shifted(self, sigmas: torch.Tensor, mu: float | None) -> torch.Tensor:
        if self.config.use_dynamic_shifting:
            if mu is None:
                raise ValueError("use_dynamic_shifting=True needs set_timesteps(..., mu=...)")
            return schedules.flow_time_shift_exponential(sigmas, mu)
        return schedules.flow_time_shift(sigmas, self.config.shift)

    def _make_plan(self, num_inference_steps, timesteps, sigmas, mu) -> Plan:
        n_train = self.config.num_train_timesteps
        if sigmas is None and timesteps is None:
            # The training grid's extremes are sigma = 1 and shift(1 / T); sample evenly between them.
            lowest = float(self._shifted(torch.tensor(1.0 / n_train, dtype=torch.float64), mu))
            if self.config.use_dynamic_shifting:
                lowest = 1.0 / n_train
            sigmas = torch.from_numpy(np.linspace(1.0, lowest, num_inference_steps))
            sigmas = self._shifted(sigmas, mu)
        elif timesteps is not None:
            sigmas = timesteps.to(torch.float64) / n_train
        if bool(((sigmas <= 0) | (sigmas > 1)).any()):
            raise ValueError(f"flow sigmas must lie in (0, 1], got {sigmas.tolist()}")
        scale = float(getattr(self.schedule, "timestep_scale", 1.0))
        t = sigmas * scale
        alpha_t, sigma_t = self.schedule.alpha_sigma(t)
        s_next = torch.cat([sigmas[1:], torch.zeros(1, dtype=sigmas.dtype)])
        alpha_s, sigma_s = self.schedule.alpha_sigma(s_next * scale)
        coef_x0, coef_eps, std = schedules.ddim_transition(alpha_s, sigma_s, alpha_t, sigma_t, 0.0)
        ones = torch.ones_like(alpha_t)
        p, q = model_space_x0_coefficients(self.prediction_type, alpha_t, sigma_t, ones)
        rows = eps_form_rows(p, q, alpha_t, sigma_t, coef_x0, coef_eps, std)
        self.sigmas = torch.cat([sigmas, torch.zeros(1, dtype=sigmas.dtype)]).to(torch.float32)
        return Plan(timesteps=t, rows=rows, input_scale=ones, model_alpha=alpha_t, model_sigma=sigma_t)

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor) -> torch.Tensor:
        """diffusers' name for forward noising in flow pipelines: ``(1 - t) x0 + t noise``."""
        return self.add_noise(sample, noise, torch.as_tensor(timestep))

    def working_alpha_sigma(self, t: torch.Tensor):
        alpha, sigma = self.schedule.alpha_sigma(t.detach().cpu().to(torch.float64))
        return alpha.to(t.device), sigma.to(t.device)
