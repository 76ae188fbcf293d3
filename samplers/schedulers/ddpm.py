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

from samplers import ops, schedules
from samplers.protocol import (
    Plan,
    SamplerState,
    Scheduler,
    StepOutput,
    coefficient_rows,
    dynamic_threshold_coeffs,
    init_args,
    model_space_x0_coefficients,
)
from samplers.schedulers._grid import chain_alpha_sigma, model_times, previous_times

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


class DDPMScheduler(Scheduler):
    name = "ddpm"
    family = "any"
    order = 1
    stochastic = True
    nfe_per_step = 1

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
        super().__init__(**init_args(locals()))

    @property
    def learned_variance(self) -> bool:
        return self.config.variance_type in ("learned", "learned_range")

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None, sigmas=None, mu=None, **kw):
        if num_inference_steps is None and timesteps is None and sigmas is None:
            num_inference_steps = (
                len(self.schedule.alphas_cumprod) if hasattr(self.schedule, "alphas_cumprod") else None
            )
        super().set_timesteps(num_inference_steps, device, timesteps, sigmas, mu, **kw)

    def _make_plan(self, num_inference_steps, timesteps, sigmas, mu) -> Plan:
        if sigmas is not None:
            raise ValueError("DDPM takes custom timesteps, not sigmas")
        t = model_times(self, num_inference_steps, timesteps)
        # Each step lands on the next timestep the run visits (not t - T // n): with linspace spacing, or
        # trailing with n not dividing T, the stride would leave the sample at a level the next call does
        # not model (diffusers' DDPMScheduler.previous_timestep does the same).
        s = previous_times(self, t, num_inference_steps, custom=True)
        alpha_t, sigma_t = chain_alpha_sigma(self, t)
        alpha_s, sigma_s = chain_alpha_sigma(self, s)
        post = schedules.posterior(alpha_s, sigma_s, alpha_t, sigma_t)  # eq. 6-7 for any s < t
        _, beta_ts = schedules.transition(alpha_s, sigma_s, alpha_t, sigma_t)  # "beta_t" of the spaced chain
        small = post.variance.clamp(min=1e-20)
        self._log_var_bounds = (small.log(), beta_ts.clamp(min=1e-20).log())
        kind = self.config.variance_type
        variance = beta_ts if kind.startswith("fixed_large") else small
        std = torch.where(t > 0, variance.sqrt(), torch.zeros_like(variance))  # no noise into x_0
        if self.learned_variance:
            std = torch.where(t > 0, torch.ones_like(std), torch.zeros_like(std))  # noise comes pre-scaled
        self._noisy_call = t > 0
        ones = torch.ones_like(alpha_t)
        p, q = model_space_x0_coefficients(self.prediction_type, alpha_t, sigma_t, ones)
        clip = self.config.clip_sample_range if self.config.clip_sample else float("inf")
        rows = coefficient_rows(len(t), p=p, q=q, lim=clip, a=post.coef_xt, b=post.coef_x0, c=std)
        return Plan(
            timesteps=t,
            rows=rows,
            input_scale=ones,
            model_alpha=alpha_t,
            model_sigma=sigma_t,
            init_noise_sigma=float((alpha_t[0] ** 2 + sigma_t[0] ** 2).sqrt()),
        )

    def _adjust_coeffs(self, coeffs, sample, model_output, uncond, index, state):
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
        index = self._resolve_call(state, timestep)
        channels = sample.shape[1]
        if model_output.dim() < 2 or model_output.shape[1] != 2 * channels:
            raise ValueError(
                f"variance_type={self.config.variance_type!r} needs model_output with 2x the sample's channels "
                f"({2 * channels}), got shape {tuple(model_output.shape)}"
            )
        var_out = model_output[:, channels:].float()
        log_small, log_large = (b[index].item() for b in self._log_var_bounds)
        if self.config.variance_type == "learned":
            log_var = var_out
        else:  # learned_range: v in [-1, 1] -> log-space interpolation (Improved DDPM eq. 15)
            frac = (var_out + 1) / 2
            log_var = frac * log_large + (1 - frac) * log_small
        noise = kwargs.pop("noise", None)
        if self._noisy_call[index]:
            if noise is None:
                seeds, state = self.resolve_seeds(
                    state, kwargs.pop("seeds", None), kwargs.pop("generator", None), sample
                )
                noise = ops.philox_normal(seeds, index, sample[0].numel()).view_as(sample).to(sample.device)
            noise = (torch.exp(0.5 * log_var) * noise.float()).to(sample.dtype)
        else:
            noise = torch.zeros_like(sample)
        kwargs.pop("seeds", None)
        kwargs.pop("generator", None)
        return super().step_functional(state, model_output[:, :channels], timestep, sample, noise=noise, **kwargs)
