"""Annealed Langevin dynamics (Song & Ermon 2019, "NCSN", Algorithm 1).

For noise levels ``sigma_1 > ... > sigma_L`` (sigma space) and ``K`` steps per level, with step
size ``alpha_i = eps * sigma_i^2 / sigma_L^2``::

    x <- x + (alpha_i / 2) * score(x, sigma_i) + sqrt(alpha_i) z,    score = (x0_hat - x) / sigma_i^2

Each Langevin step is one model call, so ``timesteps`` repeats every level ``K`` times. With
``final_denoise`` the last call returns Tweedie's ``x0_hat`` (Jolicoeur-Martineau et al. 2021).

The step moves ``x`` a fraction ``r = alpha_i / (2 sigma_i^2) = eps / (2 sigma_L^2)`` of the way to
``x0_hat``, the same at every level; where the level dwarfs the data's scale ``x0_hat`` barely
depends on ``x``, so ``x`` is multiplied by about ``1 - r`` per step and the run diverges for
``r >= 2``. So ``eps`` is set relative to the smallest level, ``eps = 2 step_ratio sigma_L^2``
(NCSN's eps = 2e-5 at sigma_L = 0.01 is step_ratio = 0.1), which keeps the default stable on every
schedule, and an absolute ``step_size`` with ``r >= 2`` is refused.
"""

from __future__ import annotations

import math

from samplers.levels import Levels
from samplers.plan import Call, Update
from samplers.schedulers.sigma_space import SigmaSpaceScheduler


class AnnealedLangevinScheduler(SigmaSpaceScheduler):
    name = "langevin"
    kind = "langevin"
    paper = "Song & Ermon 2019, Generative Modeling by Estimating Gradients of the Data Distribution, Alg. 1"
    order = 1
    stochastic = True
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
        step_size: float | None = None,
        step_ratio: float = 0.1,
        final_denoise: bool = True,
        use_karras_sigmas: bool = False,
        rho: float = 7.0,
        timestep_spacing: str = "linspace",
        interpolation_type: str = "log_linear",
    ) -> None:
        if steps_per_level < 1:
            raise ValueError(f"steps_per_level must be >= 1, got {steps_per_level}")
        if step_size is not None and not (isinstance(step_size, (int, float)) and step_size > 0):
            raise ValueError(f"step_size must be > 0 (or None for step_ratio), got {step_size!r}")
        if not 0 < step_ratio < 1:
            raise ValueError(
                f"step_ratio must be in (0, 1): the share of the way to x0_hat per step; got {step_ratio}"
            )
        if self.config.noise == "brownian":
            raise ValueError("noise='brownian' needs steps along the noise levels; Langevin MCMC repeats each level")
        self.nfe_per_step = steps_per_level

    def plan_calls(self, levels: Levels) -> list[Call]:
        c = self.config
        sigma = levels.level.tolist()
        floor = sigma[-1] ** 2
        eps = c.step_size if c.step_size is not None else 2 * c.step_ratio * floor
        if eps / (2 * floor) >= 2:
            raise ValueError(
                f"step_size={eps:g} diverges at this schedule's smallest level sigma_L={sigma[-1]:g}: each step "
                f"would move x {eps / (2 * floor):.3g}x the way to x0_hat (must be < 2, i.e. step_size < "
                f"{4 * floor:.3g}); use step_ratio, which scales with the schedule, instead of an absolute step_size"
            )
        calls = []
        for i, level in enumerate(sigma):
            step = eps * level**2 / floor  # alpha_i, NCSN Algorithm 1 line 3
            half = step / (2 * level**2)
            for k in range(c.steps_per_level):
                last = i + 1 == len(sigma) and k + 1 == c.steps_per_level
                if last and c.final_denoise:
                    update = Update(x0=1.0)  # x <- x0_hat(x, sigma_L)
                    calls.append(self.call_at(levels, i, update))
                    continue
                update = Update(sample=1 - half, x0=half, noise=math.sqrt(step))  # line 6
                calls.append(self.call_at(levels, i, update))
        return calls

    def initial_sigma(self, levels: Levels) -> float:
        return float(levels.level[0])
