"""DDIM (Song, Meng & Ermon 2021): the non-Markovian family with a noise knob ``eta``.

Each step (eq. 12) ``x_s = alpha_s x0 + sqrt(sigma_s^2 - std^2) eps + std z`` with
``std = eta * sqrt(posterior variance)`` (eq. 16); coefficients from ``schedules.ddim_transition``.
eta = 0 is the deterministic DDIM ODE solver, eta = 1 the DDPM ancestral step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from samplers import schedules
from samplers.protocol import (
    Plan,
    Scheduler,
    dynamic_threshold_coeffs,
    eps_form_rows,
    init_args,
    model_space_x0_coefficients,
)
from samplers.schedulers._grid import chain_alpha_sigma, model_times, previous_times
from samplers.schedules import DiscreteVPSchedule


class DDIMScheduler(Scheduler):
    name = "ddim"
    family = "any"
    order = 1
    stochastic = True  # for eta > 0
    stochastic_when = "eta > 0"
    nfe_per_step = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        super().__init__(**init_args(locals()))

    def _make_plan(self, num_inference_steps, timesteps, sigmas, mu) -> Plan:
        if sigmas is not None:
            raise ValueError("DDIM takes custom timesteps, not sigmas")
        t = model_times(self, num_inference_steps, timesteps)
        s = previous_times(self, t, num_inference_steps, timesteps is not None)
        self._grid = (t, s)
        return self._plan_for(t, s, self.config.eta)

    def _final_alpha_sigma(self) -> tuple[float, float]:
        """x_0's (alpha, sigma); ``set_alpha_to_one=False`` stops at the first training timestep instead."""
        if isinstance(self.schedule, DiscreteVPSchedule) and not self.config.set_alpha_to_one:
            abar0 = float(self.schedule.alphas_cumprod[0])
            return math.sqrt(abar0), math.sqrt(1 - abar0)
        return 1.0, 0.0

    def _plan_for(self, t: torch.Tensor, s: torch.Tensor, eta: float) -> Plan:
        final = self._final_alpha_sigma()
        alpha_t, sigma_t = chain_alpha_sigma(self, t, final)
        alpha_s, sigma_s = chain_alpha_sigma(self, s, final)
        coef_x0, coef_eps, std = schedules.ddim_transition(alpha_s, sigma_s, alpha_t, sigma_t, eta)  # eq. 12, 16
        ones = torch.ones_like(alpha_t)
        p, q = model_space_x0_coefficients(self.prediction_type, alpha_t, sigma_t, ones)
        clip = self.config.clip_sample_range if self.config.clip_sample else None
        rows = eps_form_rows(
            p,
            q,
            alpha_t,
            sigma_t,
            coef_x0,
            coef_eps,
            std,
            # eps comes from the raw output whenever x0 is clipped or thresholded (DDIM eq. 12 uses the
            # model's own eps; diffusers does the same), unless use_clipped_model_output asks otherwise.
            eps_from_raw_output=(clip is not None or bool(self.config.thresholding))
            and not self.config.use_clipped_model_output,
            clip=clip,
        )
        return Plan(
            timesteps=t,
            rows=rows,
            input_scale=ones,
            model_alpha=alpha_t,
            model_sigma=sigma_t,
            init_noise_sigma=float((alpha_t[0] ** 2 + sigma_t[0] ** 2).sqrt()),
        )

    def _step_overrides(self, eta: float | None = None, use_clipped_model_output: bool | None = None, **kwargs: Any):
        super()._step_overrides(**kwargs)
        return {"eta": eta, "use_clipped_model_output": use_clipped_model_output}

    def _row_for_call(self, index: int, overrides: dict[str, Any]) -> torch.Tensor | None:
        eta, clipped = overrides.get("eta"), overrides.get("use_clipped_model_output")
        if (eta is None or eta == self.config.eta) and (
            clipped is None or clipped == self.config.use_clipped_model_output
        ):
            return None
        if eta is not None and not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        other = type(self).from_config(
            self.config,
            eta=self.config.eta if eta is None else eta,
            use_clipped_model_output=self.config.use_clipped_model_output if clipped is None else clipped,
        )
        t, s = self._grid
        return other._plan_for(t[index : index + 1], s[index : index + 1], other.config.eta).rows[0]

    def _adjust_coeffs(self, coeffs, sample, model_output, uncond, index, state):
        if not self.config.thresholding:
            return coeffs
        return dynamic_threshold_coeffs(
            coeffs, sample, model_output, uncond, self.config.dynamic_thresholding_ratio, self.config.sample_max_value
        )
