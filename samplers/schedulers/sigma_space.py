"""Base of the samplers that work in sigma space (k-diffusion's coordinates); public for plugins.

The sample is ``x / alpha`` with noise level ``sigma_ve = sigma / alpha``; the model sees
``alpha * sample`` (``scale_model_input``) and its output is read with the model-space
``(alpha, sigma)``. On a VE or EDM schedule alpha = 1 and nothing is rescaled. The grid conventions
follow diffusers' Euler family: unrounded ``linspace`` times on a discrete table, levels interpolated
per ``interpolation_type``, and named spacings (Karras, ...) spanning the spaced grid's ends.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from samplers import levels as lv
from samplers import schedules
from samplers.plan import Call, Update
from samplers.protocol import Scheduler
from samplers.schedules import DiscreteVPSchedule

F64 = torch.float64


class SigmaSpaceScheduler(Scheduler):
    """Grid building and model-space conversion for samplers whose updates are written in sigma space."""

    default_spacing = "linspace"

    def run_levels(self, n, timesteps, sigmas, mu) -> lv.Levels:
        """The base grid, with a pure-noise level (alpha = 0: a flow schedule's t = 1, zero terminal SNR)
        moved to the capped level ``ZERO_SNR_LEVEL``: sigma space cannot hold an infinite level."""
        levels = super().run_levels(n, timesteps, sigmas, mu)
        infinite = levels.alpha <= 0
        if not bool(infinite.any()):
            return levels
        capped = torch.where(infinite, torch.full_like(levels.t, lv.ZERO_SNR_LEVEL), levels.sigma / levels.alpha)
        t = torch.where(infinite, self.schedule.time_at_level(capped), levels.t)
        alpha, sigma = self.schedule.alpha_sigma_at_level(capped)
        return lv.Levels(t, alpha, sigma, source=levels.source)

    def levels_at_times(self, t: torch.Tensor) -> lv.Levels:
        """Levels at model times: the level by the configured interpolation, ``(alpha, sigma)`` from the level
        (so the conversion holds at interpolated levels too)."""
        level = lv.interpolated_levels(self.schedule, t, self.config.get("interpolation_type") or "log_linear")
        alpha, sigma = self.schedule.alpha_sigma_at_level(level)
        return lv.Levels(t.to(F64), alpha, sigma)

    def default_levels(self, n: int, mu: float | None) -> lv.Levels:
        schedule = self.schedule
        if isinstance(schedule, DiscreteVPSchedule):
            if n > schedule.num_train_timesteps:
                raise ValueError(
                    f"num_inference_steps={n} cannot exceed num_train_timesteps={schedule.num_train_timesteps}"
                )
            if (self.config.get("timestep_spacing") or self.default_spacing) == "linspace":
                return self.levels_at_times(lv.linspace_times(schedule, n))  # unrounded, as diffusers does
        return self.levels_at_times(lv.spaced_times(schedule, self.config, n, self.default_spacing))

    def named_level_span(self, n: int) -> tuple[float, float]:
        """Karras' default range on a discrete table: the levels at the ends of the ``timestep_spacing`` grid
        (``leading`` / ``trailing`` do not reach both ends of the table; diffusers' Euler and Heun take the
        range from this grid too); elsewhere the schedule's whole range. Config sigma_min/max win."""
        schedule = self.schedule
        if not isinstance(schedule, DiscreteVPSchedule):
            return lv.level_range(schedule, self.config)
        t = lv.spaced_times(schedule, self.config, n, "linspace")
        table = lv.capped_levels(schedule.sigmas)
        lo, hi = float(table[int(t.min().round())]), float(table[int(t.max().round())])
        return float(self.config.get("sigma_min") or lo), float(self.config.get("sigma_max") or hi)

    def initial_sigma(self, levels: lv.Levels) -> float:
        return self.prior_std(float(levels.level[0]))

    def prior_std(self, level: float) -> float:
        """Std of ``x_T`` at the first level: ``sqrt(level^2 + 1)`` under ``leading`` spacing on VP (diffusers'
        rule), else the level itself."""
        spacing = self.config.get("timestep_spacing") or self.default_spacing
        if isinstance(self.schedule, DiscreteVPSchedule) and spacing not in ("linspace", "trailing"):
            return float((level**2 + 1) ** 0.5)
        return level

    def call_at(self, levels: lv.Levels, i: int, update: Update, **options: Any) -> Call:
        """A sigma-space call at level ``i`` (the model sees ``alpha * x``)."""
        return levels.call(i, update, sigma_space=True, **options)

    def time_at_level(self, level: float) -> float:
        """The model time whose level, read as :meth:`levels_at_times` reads it, is ``level`` (for calls
        between grid levels: the ``linear`` interpolation of a discrete table inverts linearly)."""
        schedule = self.schedule
        if isinstance(schedule, DiscreteVPSchedule) and self.config.get("interpolation_type") == "linear":
            table = lv.capped_levels(schedule.sigmas).numpy()
            return float(np.interp(level, table, np.arange(len(table))))
        return float(schedule.time_at_level(torch.tensor(level, dtype=F64)))

    def call_at_level(self, t: float, level: float, update: Update, **options: Any) -> Call:
        """A sigma-space call at an arbitrary level (e.g. a churned one) with model time ``t``."""
        alpha, sigma = self.schedule.alpha_sigma_at_level(torch.tensor(level, dtype=F64))
        return Call(t=t, alpha=float(alpha), sigma=float(sigma), update=update, input_scale=float(alpha), **options)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """Sigma space: ``x0 + sigma_ve(t) * noise`` (as k-diffusion and diffusers' Euler do)."""
        t = torch.as_tensor(timesteps)
        if t.numel() == 1:  # one timestep for the batch (pipelines pass [1] too)
            t = t.reshape(()).expand(original_samples.shape[0])
        if t.shape != (original_samples.shape[0],):
            raise ValueError(
                f"timesteps must be a scalar or [batch={original_samples.shape[0]}], got {tuple(t.shape)}"
            )
        host = t.detach().cpu().to(F64)
        self.schedule.check_times(host, "add_noise timesteps")
        level = lv.interpolated_levels(self.schedule, host, self.config.get("interpolation_type") or "log_linear")
        sigma = level.to(original_samples.device, original_samples.dtype)
        return schedules.q_sample(original_samples, noise, 1.0, sigma.view(-1, *([1] * (original_samples.dim() - 1))))
