"""DPM2 and DPM2 ancestral: DPM-Solver-2 steps in sigma space (Lu et al. 2022, "DPM-Solver: A Fast ODE
Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps", Algorithm 1 with r_1 = 1/2), with
Karras et al. 2022's churn (Algorithm 2) or ancestral noise; k-diffusion's ``sample_dpm_2`` /
``sample_dpm_2_ancestral``, diffusers' ``KDPM2DiscreteScheduler`` / ``KDPM2AncestralDiscreteScheduler``.

In sigma space (``x = x0 + sigma eps``, ``lambda = -log sigma``) DPM-Solver's exponential integrator with
a noise prediction reduces to ``x_t = x_s + (sigma_t - sigma_s) eps`` (eq. 3.7 at alpha = 1). Its
second-order single-step form (eq. 3.8 / Algorithm 1, ``r_1 = 1/2``) evaluates the noise at the
log-sigma midpoint ``sigma_mid = sqrt(sigma_s sigma_t)``::

    u       = x_s + (sigma_mid - sigma_s) d(x_s, sigma_s)             (call 1)
    x_t     = x_s + (sigma_t - sigma_s) d(u, sigma_mid)               (call 2)

with ``d = (x - x0_hat) / sigma`` (Karras et al. eq. 3). The step into sigma = 0 is one Euler call.
DPM2 starts each step from EDM's churned level ``sigma_hat`` (Algorithm 2, lines 4-6; the churn of
step i+1 is added by the last call of step i, as in :mod:`samplers.schedulers.heun`). DPM2 ancestral
steps to ``sigma_down`` and adds ``sigma_up`` of fresh noise (``sigma_up^2 + sigma_down^2 =
sigma_next^2``, ``sigma_up = eta * sqrt(posterior variance)``: Ho et al. 2020's ancestral step in sigma
space, as in :mod:`samplers.schedulers.euler_ancestral`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from samplers import levels as lv
from samplers import schedules
from samplers.plan import SAMPLE, Call, Update
from samplers.protocol import Scheduler
from samplers.schedulers.heun import HeunDiscreteScheduler
from samplers.schedulers.sigma_space import SigmaSpaceScheduler
from samplers.schedules import DiscreteVPSchedule

F64 = torch.float64
FirstCall = Callable[[Update, dict], Call]


def call_at_sigma(scheduler: SigmaSpaceScheduler, level: float, update: Update, **options) -> Call:
    """A sigma-space call at an intermediate ``level`` (a midpoint, a churned level), at the schedule's
    model time of that level (diffusers' ``sigma_to_t`` on a training table)."""
    t = float(scheduler.schedule.time_at_level(torch.tensor(level, dtype=F64)))
    return scheduler.call_at_level(t, level, update, **options)


def dpm_solver_2_calls(
    scheduler: SigmaSpaceScheduler,
    first: FirstCall,
    sigma_from: float,
    sigma_to: float,
    noise: float = 0.0,
    brownian: tuple[float, float] | None = None,
) -> list[Call]:
    """The calls of one DPM-Solver-2 step in sigma space from ``sigma_from`` to ``sigma_to`` (module docstring).

    ``first(update, options)`` builds the call at ``sigma_from`` (the caller knows its model time);
    ``noise`` (std) and ``brownian`` go on the step's last call. ``sigma_to = 0`` gives one Euler call.
    """
    if sigma_to == 0.0:
        return [first(Update(x0=1.0, noise=noise), {"brownian": brownian if noise else None})]
    sigma_mid = math.sqrt(sigma_from * sigma_to)  # the log-sigma (lambda) midpoint
    ratio = sigma_mid / sigma_from
    head = first(Update(sample=ratio, x0=1.0 - ratio), {"keep": {"x_from": SAMPLE}})
    dt = sigma_to - sigma_from
    tail = Update(sample=dt / sigma_mid, x0=-dt / sigma_mid, history={"x_from": 1.0}, noise=noise)
    return [head, call_at_sigma(scheduler, sigma_mid, tail, brownian=brownian if noise else None)]


class PlanLevelNoising(Scheduler):
    """``add_noise`` at a timestep of the plan uses that call's level: a midpoint call's level is not the one the
    table interpolation gives at its (``sigma_to_t``) time. Other timesteps interpolate as usual. A mixin,
    listed before the scheduler base it refines."""

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        plan = self.plan
        t = torch.as_tensor(timesteps).detach().to("cpu", F64).reshape(-1)
        if plan is None or original_samples.shape != noise.shape or t.numel() not in (1, original_samples.shape[0]):
            return super().add_noise(original_samples, noise, timesteps)
        hits = (plan.timesteps[None, :] - t[:, None]).abs() <= 1e-4 * t.abs().clamp(min=1.0)[:, None]
        if not bool(hits.any(dim=1).all()):
            return super().add_noise(original_samples, noise, timesteps)
        level = plan.call_levels[hits.to(torch.int8).argmax(dim=1)]
        level = level.expand(original_samples.shape[0]).to(original_samples.device, original_samples.dtype)
        return original_samples + noise * level.view(-1, *([1] * (original_samples.dim() - 1)))


class KDPM2DiscreteScheduler(PlanLevelNoising, HeunDiscreteScheduler):
    """DPM2 with optional EDM churn (``s_churn``; k-diffusion's ``sample_dpm_2``)."""

    name = "dpm2"
    kind = "ode-single-step"
    paper = "Lu et al. 2022, DPM-Solver, Alg. 1 (r1 = 1/2) in sigma space; Karras et al. 2022, Alg. 2 churn"
    order = 2
    nfe_per_step = 2
    stochastic = True  # only when s_churn > 0
    stochastic_when = "s_churn > 0"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        interpolation_type: str = "linear",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if s_churn < 0 or s_noise < 0:
            raise ValueError(f"s_churn and s_noise must be >= 0, got s_churn={s_churn}, s_noise={s_noise}")
        _check_interpolation(interpolation_type)

    def run_levels(self, n, timesteps, sigmas, mu) -> lv.Levels:
        return _karras_times_rounded(self, super().run_levels(n, timesteps, sigmas, mu))

    def plan_calls(self, levels: lv.Levels) -> list[Call]:
        sigma = levels.level
        sigma_hat, churn = self._churn(sigma)
        n = len(sigma)
        calls: list[Call] = []
        for i in range(n):
            s_hat = sigma_hat[i]
            s_next = float(sigma[i + 1]) if i + 1 < n else 0.0
            if s_hat == float(sigma[i]):
                first = lambda update, options, i=i: self.call_at(levels, i, update, **options)  # noqa: E731
            else:
                first = lambda update, options, s=s_hat: call_at_sigma(self, s, update, **options)  # noqa: E731
            # the next step's churn (Algorithm 2, line 6) rides on this step's last call
            next_churn = churn[i + 1] if i + 1 < n else 0.0
            interval = (s_next, sigma_hat[i + 1]) if next_churn else None
            calls += dpm_solver_2_calls(self, first, s_hat, s_next, next_churn, interval)
        return calls


class KDPM2AncestralDiscreteScheduler(KDPM2DiscreteScheduler):
    """DPM2 to ``sigma_down`` plus ``sigma_up`` of fresh noise (k-diffusion's ``sample_dpm_2_ancestral``).

    Weak order 1 (the ancestral noise); ``eta = 0`` is DPM2 itself (order 2).
    """

    name = "dpm2_ancestral"
    kind = "sde"
    paper = "Lu et al. 2022, DPM-Solver, Alg. 1 (r1 = 1/2) in sigma space, with ancestral noise (Ho et al. 2020)"
    order = 1
    stochastic = True
    stochastic_when = "eta > 0"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        interpolation_type: str = "linear",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        eta: float = 1.0,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
    ) -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        _check_interpolation(interpolation_type)

    def plan_calls(self, levels: lv.Levels) -> list[Call]:
        sigma = levels.level.tolist() + [0.0]
        calls: list[Call] = []
        for i in range(len(levels)):
            # sigma_down and sigma_up: DDIM's eta-family at alpha = 1 (k-diffusion's get_ancestral_step)
            _, down, up = schedules.ddim_transition(1.0, sigma[i + 1], 1.0, sigma[i], self.config.eta)
            first = lambda update, options, i=i: self.call_at(levels, i, update, **options)  # noqa: E731
            calls += dpm_solver_2_calls(self, first, sigma[i], down, up, (sigma[i], sigma[i + 1]))
        return calls

    def initial_sigma(self, levels: lv.Levels) -> float:
        return self.prior_std(float(levels.level[0]))


def _check_interpolation(interpolation_type: str) -> None:
    if interpolation_type not in ("linear", "log_linear"):
        raise ValueError(f"interpolation_type must be 'linear' or 'log_linear', got {interpolation_type!r}")


def _karras_times_rounded(scheduler: SigmaSpaceScheduler, levels: lv.Levels) -> lv.Levels:
    """diffusers' KDPM2 classes feed the model ``round(t)`` on a Karras grid over a training table (the
    levels stay the Karras ones); the midpoint calls keep fractional times."""
    if not scheduler.config.get("use_karras_sigmas") or not isinstance(scheduler.schedule, DiscreteVPSchedule):
        return levels
    if levels.source != "named" or scheduler.config.get("sigma_schedule") is not None:
        return levels
    return lv.Levels(levels.t.round(), levels.alpha, levels.sigma, source=levels.source)


__all__ = [
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "PlanLevelNoising",
    "call_at_sigma",
    "dpm_solver_2_calls",
]
