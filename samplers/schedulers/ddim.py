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

from samplers import levels as lv
from samplers import schedules
from samplers.ops.reference import COEFF
from samplers.plan import Call, Plan, Update, build_plan, dynamic_threshold_coeffs
from samplers.protocol import Scheduler
from samplers.schedules import DiscreteVPSchedule


class DDIMScheduler(Scheduler):
    name = "ddim"
    kind = "ode-single-step"
    paper = "Song, Meng & Ermon 2021, Denoising Diffusion Implicit Models, eq. 12"
    order = 1
    stochastic = True  # only when eta > 0
    stochastic_when = "eta > 0"
    default_spacing = "leading"

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

    def final_alpha_sigma(self) -> tuple[float, float]:
        """x_0's (alpha, sigma); ``set_alpha_to_one=False`` stops at the first training timestep instead."""
        if isinstance(self.schedule, DiscreteVPSchedule) and not self.config.set_alpha_to_one:
            abar0 = float(self.schedule.alphas_cumprod[0])
            return math.sqrt(abar0), math.sqrt(1 - abar0)
        return 1.0, 0.0

    def plan_calls(self, levels: lv.Levels, eta: float | None = None) -> list[Call]:
        c = self.config
        eta = c.eta if eta is None else eta
        stride = levels.source == "spacing"
        _, alpha_s, sigma_s = lv.step_targets(levels, self.schedule, stride=stride, final=self.final_alpha_sigma())
        clip = c.clip_sample_range if c.clip_sample else None
        # eps comes from the raw output whenever x0 is clipped or thresholded (DDIM eq. 12 uses the model's
        # own eps; diffusers does the same), unless use_clipped_model_output asks otherwise.
        raw_eps = (clip is not None or bool(c.thresholding)) and not c.use_clipped_model_output
        calls = []
        for i in range(len(levels)):
            a_t, s_t, a_s, s_s = (float(v[i]) for v in (levels.alpha, levels.sigma, alpha_s, sigma_s))
            coef_x0, coef_eps, std = schedules.ddim_transition(a_s, s_s, a_t, s_t, eta)  # eq. 12, 16
            update = Update(x0=coef_x0, eps=coef_eps, noise=std, eps_from_raw=raw_eps)
            interval = (s_t / a_t, s_s / a_s) if std else None
            calls.append(levels.call(i, update, clip=clip, brownian=interval))
        return calls

    def make_plan(self, levels: lv.Levels, mu: float | None = None) -> Plan:
        plan = super().make_plan(levels, mu)
        plan.extras["levels"] = levels  # per-call eta / use_clipped_model_output overrides rebuild one row
        return plan

    def _step_overrides(self, eta: float | None = None, use_clipped_model_output: bool | None = None, **kwargs: Any):
        super()._step_overrides(**kwargs)
        return {"eta": eta, "use_clipped_model_output": use_clipped_model_output}

    def _row_for_call(self, index: int, overrides: dict[str, Any]) -> torch.Tensor | None:
        eta, clipped = overrides.get("eta"), overrides.get("use_clipped_model_output")
        c = self.config
        if (eta is None or eta == c.eta) and (clipped is None or clipped == c.use_clipped_model_output):
            return None
        if eta is not None and not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        other = type(self).from_config(
            c,
            eta=c.eta if eta is None else eta,
            use_clipped_model_output=c.use_clipped_model_output if clipped is None else clipped,
        )
        plan = self._require_plan()
        call = other.plan_calls(plan.extras["levels"])[index]
        brownian = c.get("noise") == "brownian"
        row = build_plan([call], self.prediction_type, init_noise_sigma=1.0, brownian=brownian).rows[0]
        row[COEFF["stream"]] = plan.rows[index, COEFF["stream"]]  # the call's own noise stream
        return row

    def _adjust_coeffs(self, coeffs, sample, model_output, uncond, index, state, noise=None):
        if not self.config.thresholding:
            return coeffs
        return dynamic_threshold_coeffs(
            coeffs, sample, model_output, uncond, self.config.dynamic_thresholding_ratio, self.config.sample_max_value
        )
