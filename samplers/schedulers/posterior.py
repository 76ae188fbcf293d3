"""Few-step posterior sampling from an x0-predicting model (Xiao et al. 2022, "Denoising Diffusion
GANs", eq. 4-5 and sec. 3.2).

Each step draws ``x_s ~ q(x_s | x_t, x0_hat)`` (``schedules.posterior`` for any ``s < t``) on a short
chain; by default the continuous VP-SDE with ``beta_min = 0.1``, ``beta_max = 20`` evaluated at
``t = k / N`` (its discrete betas are then exactly DDGAN's ``beta_t``), four steps, and a
``sample``-predicting model. Any schedule and prediction type the math allows work too.
"""

from __future__ import annotations

import torch

from samplers import schedules
from samplers.protocol import Plan, Scheduler, coefficient_rows, init_args, model_space_x0_coefficients
from samplers.schedulers._grid import chain_alpha_sigma, model_times, previous_times


class PosteriorSamplingScheduler(Scheduler):
    name = "posterior"
    family = "any"
    order = 1
    stochastic = True
    nfe_per_step = 1

    def __init__(
        self,
        schedule: str = "vp_linear",
        schedule_kwargs: dict | None = None,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        prediction_type: str = "sample",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "trailing",
        steps_offset: int = 0,
        t_max: float = 1.0,
    ) -> None:
        super().__init__(**init_args(locals()))

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None, sigmas=None, mu=None, **kw):
        if num_inference_steps is None and timesteps is None and sigmas is None:
            num_inference_steps = 4  # the few-step regime this sampler is for (Denoising Diffusion GAN)
        super().set_timesteps(num_inference_steps, device, timesteps, sigmas, mu, **kw)

    def _make_plan(self, num_inference_steps, timesteps, sigmas, mu) -> Plan:
        if sigmas is not None:
            raise ValueError("posterior sampling takes custom timesteps, not sigmas")
        t = model_times(self, num_inference_steps, timesteps)
        s = previous_times(self, t, num_inference_steps, timesteps is not None)
        alpha_t, sigma_t = chain_alpha_sigma(self, t)
        alpha_s, sigma_s = chain_alpha_sigma(self, s)
        post = schedules.posterior(alpha_s, sigma_s, alpha_t, sigma_t)  # DDGAN eq. 4
        ones = torch.ones_like(alpha_t)
        p, q = model_space_x0_coefficients(self.prediction_type, alpha_t, sigma_t, ones)
        clip = self.config.clip_sample_range if self.config.clip_sample else float("inf")
        rows = coefficient_rows(
            len(t), p=p, q=q, lim=clip, a=post.coef_xt, b=post.coef_x0, c=post.variance.clamp(min=0).sqrt()
        )
        return Plan(
            timesteps=t,
            rows=rows,
            input_scale=ones,
            model_alpha=alpha_t,
            model_sigma=sigma_t,
            init_noise_sigma=float((alpha_t[0] ** 2 + sigma_t[0] ** 2).sqrt()),
        )
