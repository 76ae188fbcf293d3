"""Annealed Langevin dynamics (Song & Ermon 2019, "NCSN", Algorithm 1).

For noise levels ``sigma_1 > ... > sigma_L`` (sigma space) and ``K`` steps per level, with step
size ``alpha_i = eps * sigma_i^2 / sigma_L^2``::

    x <- x + (alpha_i / 2) * score(x, sigma_i) + sqrt(alpha_i) z,    score = (x0_hat - x) / sigma_i^2

Each Langevin step is one model call, so ``timesteps`` repeats every level ``K`` times. With
``final_denoise`` the last call returns Tweedie's ``x0_hat`` (Jolicoeur-Martineau et al. 2021).
"""

from __future__ import annotations

from samplers.protocol import Plan, coefficient_rows, init_args
from samplers.schedulers._sigma import SigmaSpaceScheduler


class AnnealedLangevinScheduler(SigmaSpaceScheduler):
    name = "langevin"
    family = "any"
    order = 1
    stochastic = True
    supports_per_sample_timesteps = False
    nfe_per_step = 5  # per noise level with the default config; instances set their own

    def __init__(
        self,
        schedule: str = "ve",
        schedule_kwargs: dict | None = None,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        prediction_type: str = "epsilon",
        steps_per_level: int = 5,
        step_size: float = 2e-5,
        final_denoise: bool = True,
        use_karras_sigmas: bool = False,
        rho: float = 7.0,
        timestep_spacing: str = "linspace",
        interpolation_type: str = "log_linear",
    ) -> None:
        if steps_per_level < 1:
            raise ValueError(f"steps_per_level must be >= 1, got {steps_per_level}")
        if step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        super().__init__(**init_args(locals()))
        self.nfe_per_step = steps_per_level

    def _make_plan(self, num_inference_steps, timesteps, sigmas, mu) -> Plan:
        t, sigma = self._sigma_grid(num_inference_steps, timesteps, sigmas)
        k = self.config.steps_per_level
        t_calls = t.repeat_interleave(k)
        level = sigma.repeat_interleave(k)
        step = self.config.step_size * level**2 / sigma[-1] ** 2  # alpha_i, NCSN Algorithm 1 line 3
        p, q, scale, model_alpha, model_sigma = self._model_space(t_calls, level)
        half = step / (2 * level**2)
        rows = coefficient_rows(len(level), p=p, q=q, a=1 - half, b=half, c=step.sqrt())  # line 6
        if self.config.final_denoise:
            rows[-1, 4:] = coefficient_rows(1, b=1.0)[0, 4:]  # x <- x0_hat(x, sigma_L)
        return Plan(
            timesteps=t_calls,
            rows=rows,
            input_scale=scale,
            model_alpha=model_alpha,
            model_sigma=model_sigma,
            init_noise_sigma=float(sigma[0]),
        )
