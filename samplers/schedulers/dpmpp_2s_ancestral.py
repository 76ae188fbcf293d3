"""DPM-Solver++(2S) with ancestral noise, in sigma space (Lu et al. 2022, "DPM-Solver++: Fast Solver for
Guided Sampling of Diffusion Probabilistic Models", Algorithm 1 with r = 1/2; k-diffusion's
``sample_dpmpp_2s_ancestral``).

With ``lambda = -log sigma`` (sigma space, alpha = 1), DPM-Solver++'s first-order step with a data
prediction is ``x_t = (sigma_t / sigma_s) x_s + (1 - sigma_t / sigma_s) x0_hat`` (eq. 9 at alpha = 1).
The second-order single-step solver (2S) evaluates the model at the lambda midpoint
``sigma_mid = sqrt(sigma_s sigma_t)`` and takes the full step with that estimate::

    u   = (sigma_mid / sigma_s) x_s + (1 - sigma_mid / sigma_s) D(x_s, sigma_s)        (call 1)
    x_t = (sigma_t / sigma_s) x_s + (1 - sigma_t / sigma_s) D(u, sigma_mid)           (call 2)

The ancestral form steps to ``sigma_t = sigma_down`` and adds ``sigma_up`` of fresh noise
(``sigma_up^2 + sigma_down^2 = sigma_next^2``, ``sigma_up = eta * sqrt(posterior variance)``), as
:mod:`samplers.schedulers.euler_ancestral` does. The step into sigma = 0 is one call
(``x = x0_hat``). ``eta = 0`` is the deterministic DPM-Solver++(2S), of order 2; with ancestral noise
the sampler is weakly first order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from samplers import schedules
from samplers.levels import Levels
from samplers.plan import SAMPLE, Call, Update
from samplers.schedulers.kdpm2 import PlanLevelNoising, call_at_sigma
from samplers.schedulers.sigma_space import SigmaSpaceScheduler


class DPMSolverPlusPlus2SAncestralScheduler(PlanLevelNoising, SigmaSpaceScheduler):
    name = "dpmpp_2s_ancestral"
    kind = "sde"
    paper = "Lu et al. 2022, DPM-Solver++, Alg. 1 (2S, r = 1/2) in sigma space, with ancestral noise"
    order = 1
    nfe_per_step = 2
    stochastic = True
    stochastic_when = "eta > 0"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        eta: float = 1.0,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        if interpolation_type not in ("linear", "log_linear"):
            raise ValueError(f"interpolation_type must be 'linear' or 'log_linear', got {interpolation_type!r}")

    def plan_calls(self, levels: Levels) -> list[Call]:
        sigma = levels.level.tolist() + [0.0]
        calls = []
        for i in range(len(levels)):
            s, s_next = sigma[i], sigma[i + 1]
            _, down, up = schedules.ddim_transition(1.0, s_next, 1.0, s, self.config.eta)  # sigma_down, sigma_up
            interval = (s, s_next) if up else None
            if down == 0.0:  # into sigma = 0: x = x0_hat
                calls.append(self.call_at(levels, i, Update(x0=1.0, noise=up), brownian=interval))
                continue
            mid = math.sqrt(s * down)
            calls.append(self.call_at(levels, i, Update(sample=mid / s, x0=1 - mid / s), keep={"x_s": SAMPLE}))
            second = Update(x0=1 - down / s, history={"x_s": down / s}, noise=up)
            calls.append(call_at_sigma(self, mid, second, brownian=interval))
        return calls


__all__ = ["DPMSolverPlusPlus2SAncestralScheduler"]
