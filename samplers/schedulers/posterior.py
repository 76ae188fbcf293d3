"""Few-step posterior sampling from an x0-predicting model (Xiao et al. 2022, "Denoising Diffusion
GANs", eq. 4-5 and sec. 3.2).

Each step draws ``x_s ~ q(x_s | x_t, x0_hat)`` (``schedules.posterior`` for any ``s < t``) on a short
chain; by default the continuous VP-SDE with ``beta_min = 0.1``, ``beta_max = 20`` evaluated at
``t = k / N`` (its discrete betas are then exactly DDGAN's ``beta_t``), four steps, and a
``sample``-predicting model. Any schedule and prediction type the math allows work too.
"""

from __future__ import annotations

from samplers import levels as lv
from samplers import schedules
from samplers.plan import Call, Update
from samplers.protocol import Scheduler


class PosteriorSamplingScheduler(Scheduler):
    name = "posterior"
    kind = "sde"
    paper = "Xiao, Kreis & Vahdat 2022, Tackling the Generative Learning Trilemma with Denoising Diffusion GANs, eq. 4"
    order = 1
    stochastic = True
    default_spacing = "trailing"

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
        pass

    def default_num_inference_steps(self) -> int:
        return 4  # the few-step regime this sampler is for (Denoising Diffusion GAN)

    def plan_calls(self, levels: lv.Levels) -> list[Call]:
        _, alpha_s, sigma_s = lv.step_targets(levels, self.schedule, stride=levels.source == "spacing")
        post = schedules.posterior(alpha_s, sigma_s, levels.alpha, levels.sigma)  # DDGAN eq. 4
        std = post.variance.clamp(min=0).sqrt()
        clip = self.config.clip_sample_range if self.config.clip_sample else None
        calls = []
        for i in range(len(levels)):
            update = Update(sample=float(post.coef_xt[i]), x0=float(post.coef_x0[i]), noise=float(std[i]))
            interval = (float(levels.level[i]), float(sigma_s[i] / alpha_s[i])) if std[i] else None
            calls.append(levels.call(i, update, clip=clip, brownian=interval))
        return calls
