"""Shared base of the samplers that work in sigma space (k-diffusion's coordinates).

The sample is ``x / alpha`` with noise level ``sigma_ve = sigma / alpha``; the model sees
``alpha * sample`` (``scale_model_input``) and its output is converted with the model-space
``(alpha, sigma)``. On a VE or EDM schedule alpha = 1 and nothing is rescaled.
"""

from __future__ import annotations

import numpy as np
import torch

from samplers import schedules
from samplers.protocol import Scheduler, model_space_x0_coefficients
from samplers.schedulers._grid import (
    capped_sigmas,
    karras_or_custom_sigmas,
    model_times,
    sigma_space,
    times_for_sigmas,
)
from samplers.schedules import DiscreteVPSchedule

F64 = torch.float64


class SigmaSpaceScheduler(Scheduler):
    """Grid building for sigma-space samplers: model times, sigma levels and model-space conversion."""

    def _sigma_grid(
        self, num_inference_steps: int | None, timesteps: torch.Tensor | None, sigmas: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t_model [N], sigma_ve [N])`` descending, without the final zero level."""
        levels = karras_or_custom_sigmas(self, num_inference_steps, sigmas)
        if levels is not None:
            return times_for_sigmas(self, levels), levels.to(F64)
        schedule = self.schedule
        if (
            isinstance(schedule, DiscreteVPSchedule)
            and num_inference_steps is not None
            and num_inference_steps > schedule.num_train_timesteps
        ):
            raise ValueError(
                f"num_inference_steps={num_inference_steps} cannot exceed "
                f"num_train_timesteps={schedule.num_train_timesteps}"
            )
        if isinstance(schedule, DiscreteVPSchedule) and timesteps is None:
            spacing = self.config.get("timestep_spacing", "linspace")
            n_train = schedule.num_train_timesteps
            if spacing == "linspace":  # unrounded, as diffusers' sigma-space schedulers do
                t = torch.from_numpy(np.linspace(0, n_train - 1, num_inference_steps)[::-1].copy())
            else:
                t = model_times(self, num_inference_steps, None).to(F64)
        else:
            t = model_times(self, num_inference_steps, timesteps)
        return t, self._sigma_at(t)

    def _sigma_at(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma-space level at model times (``interpolation_type='linear'``: linear in the discrete table)."""
        schedule = self.schedule
        if isinstance(schedule, DiscreteVPSchedule) and self.config.get("interpolation_type", "linear") == "linear":
            table = capped_sigmas(schedule.sigmas).numpy()
            return torch.from_numpy(np.interp(t.numpy(), np.arange(len(table)), table))
        return capped_sigmas(sigma_space(self, t)[0])

    def _model_space(
        self, t: torch.Tensor, sigma_ve: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(p, q, input_scale, model_alpha, model_sigma)`` for calls at sigma-space levels ``sigma_ve``.

        The model-space alpha follows from the level: VP ``alpha = 1/sqrt(1 + s^2)``, VE/EDM ``1``,
        flow ``1/(1 + s)``; so the conversion holds at interpolated levels too.
        """
        family = self.schedule.family
        if family == "vp":
            alpha = 1 / torch.sqrt(1 + sigma_ve**2)
        elif family == "flow":
            alpha = 1 / (1 + sigma_ve)
        else:
            alpha = torch.ones_like(sigma_ve)
        sigma = sigma_ve * alpha
        p, q = model_space_x0_coefficients(self.prediction_type, alpha, sigma, alpha)
        return p, q, alpha, alpha, sigma

    def _init_sigma(self, sigma_max: float) -> float:
        """Std of the initial sample: ``sqrt(sigma_max^2 + 1)`` under ``leading`` spacing on VP (diffusers' rule)."""
        if isinstance(self.schedule, DiscreteVPSchedule) and self.config.get("timestep_spacing", "linspace") not in (
            "linspace",
            "trailing",
        ):
            return float((sigma_max**2 + 1) ** 0.5)
        return float(sigma_max)

    def add_noise(self, original_samples, noise, timesteps):
        """Sigma space: ``x0 + sigma_ve(t) * noise`` (as k-diffusion and diffusers' Euler do)."""
        t = torch.as_tensor(timesteps)
        if t.dim() == 0:
            t = t.expand(original_samples.shape[0])
        sigma = self._sigma_at(t.detach().cpu().to(F64)).to(original_samples.device, original_samples.dtype)
        return schedules.q_sample(original_samples, noise, 1.0, sigma.view(-1, *([1] * (original_samples.dim() - 1))))
