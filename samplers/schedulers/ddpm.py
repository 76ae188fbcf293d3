"""DDPM ancestral sampling (Ho, Jain & Abbeel 2020, Algorithm 2).

Each step draws ``x_s ~ q(x_s | x_t, x0_hat)``: mean from the posterior (eq. 7, for any
``s < t`` so spaced schedules work), variance by ``variance_type``:

* ``fixed_small``: the posterior variance ``beta_tilde`` (eq. 7), ``fixed_large``: ``beta_t`` itself,
* ``learned``: the model predicts the log-variance in extra channels,
* ``learned_range``: the model predicts ``v`` in [-1, 1] interpolating the two in log space
  (Nichol & Dhariwal 2021, eq. 15).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from samplers import levels as lv
from samplers import ops, schedules
from samplers.ops.reference import COEFF
from samplers.plan import Call, Plan, Update, dynamic_threshold_coeffs
from samplers.protocol import SamplerState, Scheduler, StepOutput

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


class DDPMScheduler(Scheduler):
    name = "ddpm"
    kind = "sde"
    paper = "Ho, Jain & Abbeel 2020, Denoising Diffusion Probabilistic Models, Alg. 2"
    order = 1
    stochastic = True
    default_spacing = "leading"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"unknown variance_type {variance_type!r}: expected one of {VARIANCE_TYPES}")

    @property
    def learned_variance(self) -> bool:
        return self.config.variance_type in ("learned", "learned_range")

    def default_num_inference_steps(self) -> int:
        """Every training timestep (DDPM's own sampler), when the schedule is a discrete table."""
        table = getattr(self.schedule, "alphas_cumprod", None)
        if table is None:
            return super().default_num_inference_steps()
        return len(table)

    def plan_calls(self, levels: lv.Levels) -> list[Call]:
        # Each step lands on the next timestep the run visits (not t - T // n): with linspace spacing, or
        # trailing with n not dividing T, the stride would leave the sample at a level the next call does
        # not model (diffusers' DDPMScheduler.previous_timestep does the same).
        _, alpha_s, sigma_s = lv.step_targets(levels, self.schedule)
        post = schedules.posterior(alpha_s, sigma_s, levels.alpha, levels.sigma)  # eq. 6-7 for any s < t
        _, beta_ts = schedules.transition(alpha_s, sigma_s, levels.alpha, levels.sigma)  # "beta_t" of the chain
        small = post.variance.clamp(min=0.0)
        variance = beta_ts if self.config.variance_type.startswith("fixed_large") else small
        noisy = levels.t > 0  # no noise into x_0
        std = torch.where(noisy, variance.clamp(min=0.0).sqrt(), torch.zeros_like(variance))
        if self.learned_variance:
            std = noisy.to(std.dtype)  # the noise comes pre-scaled by the predicted variance
        clip = self.config.clip_sample_range if self.config.clip_sample else None
        calls = []
        for i in range(len(levels)):
            update = Update(sample=float(post.coef_xt[i]), x0=float(post.coef_x0[i]), noise=float(std[i]))
            interval = (float(levels.level[i]), float(sigma_s[i] / alpha_s[i])) if std[i] else None
            calls.append(levels.call(i, update, clip=clip, brownian=interval))
        return calls

    def make_plan(self, levels: lv.Levels, mu: float | None = None) -> Plan:
        plan = super().make_plan(levels, mu)
        _, alpha_s, sigma_s = lv.step_targets(levels, self.schedule)
        post = schedules.posterior(alpha_s, sigma_s, levels.alpha, levels.sigma)
        _, beta_ts = schedules.transition(alpha_s, sigma_s, levels.alpha, levels.sigma)
        plan.extras["log_variance_bounds"] = (post.variance.clamp(min=1e-20).log(), beta_ts.clamp(min=1e-20).log())
        return plan

    def _adjust_coeffs(self, coeffs, sample, model_output, uncond, index, state, noise=None):
        if not self.config.thresholding:
            return coeffs
        return dynamic_threshold_coeffs(
            coeffs, sample, model_output, uncond, self.config.dynamic_thresholding_ratio, self.config.sample_max_value
        )

    def _prepare_model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        model_output = super()._prepare_model_output(model_output, sample)
        if model_output.dim() > 1 and sample.dim() > 1 and model_output.shape[1] == 2 * sample.shape[1]:
            return model_output[:, : sample.shape[1]]  # predicted variance channels: used by learned*, else dropped
        return model_output

    def step_functional(
        self, state: SamplerState, model_output, timestep, sample, **kwargs
    ) -> tuple[StepOutput, SamplerState]:
        if not self.learned_variance:
            return super().step_functional(state, model_output, timestep, sample, **kwargs)
        if isinstance(timestep, torch.Tensor) and timestep.dim() == 1 and timestep.numel() > 1:
            raise ValueError("learned variance with per-sample timesteps is not supported")
        plan = self._require_plan()
        index = self._resolve_call(state, timestep)
        channels = sample.shape[1]
        if model_output.dim() < 2 or model_output.shape[1] != 2 * channels:
            raise ValueError(
                f"variance_type={self.config.variance_type!r} needs model_output with 2x the sample's channels "
                f"({2 * channels}), got shape {tuple(model_output.shape)}"
            )
        var_out = model_output[:, channels:].float()
        log_small, log_large = (float(b[index]) for b in plan.extras["log_variance_bounds"])
        if self.config.variance_type == "learned":
            log_var = var_out
        else:  # learned_range: v in [-1, 1] -> log-space interpolation (Improved DDPM eq. 15)
            frac = (var_out + 1) / 2
            log_var = frac * log_large + (1 - frac) * log_small
        noise = kwargs.pop("noise", None)
        seeds, generator = kwargs.pop("seeds", None), kwargs.pop("generator", None)
        if plan.stochastic_calls[index]:
            if noise is None:
                seeds, state = self.resolve_seeds(state, seeds, generator, sample)
                noise = self._in_step_noise(plan, index, seeds, sample)
            noise = (torch.exp(0.5 * log_var) * noise.float()).to(sample.dtype)
        else:
            noise = torch.zeros_like(sample)
        return super().step_functional(state, model_output[:, :channels], timestep, sample, noise=noise, **kwargs)

    def _in_step_noise(self, plan: Plan, index: int, seeds: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The noise the fused op would draw for this call (Philox, or the Brownian increment)."""
        row = plan.rows[index]
        numel = sample[0].numel()
        if self.config.get("noise") == "brownian":
            t0 = torch.full((sample.shape[0],), float(row[COEFF["bt0"]]), device=sample.device)
            t1 = torch.full((sample.shape[0],), float(row[COEFF["bt1"]]), device=sample.device)
            z = ops.brownian_normal(seeds, int(row[COEFF["stream"]]), t0, t1, numel)
        else:
            z = ops.philox_normal(seeds, int(row[COEFF["stream"]]), numel)
        return z.view_as(sample).to(sample.device)
