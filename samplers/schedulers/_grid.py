"""Sampling grids shared by the built-in schedulers: which model times a run visits.

Two working spaces exist (DESIGN.md): *model space*, where ``x_t = alpha_t x0 + sigma_t eps``
(DDPM, DDIM, flow Euler), and *sigma space* (k-diffusion's), where the sample is ``x / alpha``
and the noise level is ``sigma / alpha`` (Euler, Heun, Langevin). The model always sees the
model-space input: ``input_scale = 1`` in model space and ``alpha`` in sigma space.
"""

from __future__ import annotations

import torch

from samplers import schedules
from samplers.protocol import Scheduler
from samplers.schedules import DiscreteVPSchedule

F64 = torch.float64
# A zero-terminal-SNR schedule ends at sigma = inf; as diffusers does, sigma-space grids use 2**12 there.
ZERO_SNR_SIGMA = 4096.0


def capped_sigmas(sigmas_ve: torch.Tensor) -> torch.Tensor:
    """Sigma-space levels with the infinite one of a zero-terminal-SNR schedule replaced by ``ZERO_SNR_SIGMA``."""
    return torch.nan_to_num(sigmas_ve, nan=float("nan"), posinf=ZERO_SNR_SIGMA)  # a NaN stays visible


def model_times(
    scheduler: Scheduler,
    num_inference_steps: int | None,
    timesteps: torch.Tensor | None,
    default_spacing: str = "leading",
    t_min: float | None = None,
) -> torch.Tensor:
    """Descending model times [N] for a run: custom ``timesteps``, or ``num_inference_steps`` spaced.

    Discrete schedules use the config's ``timestep_spacing`` (and ``steps_offset``); continuous
    ones use the schedule's ``default_times`` (or evenly from config ``t_max`` down to ``t_min``).
    """
    cfg = scheduler.config
    schedule = scheduler.schedule
    if timesteps is not None:
        _check_range(scheduler, timesteps)
        return timesteps.to(F64)
    assert num_inference_steps is not None
    if isinstance(schedule, DiscreteVPSchedule):
        spacing = cfg.get("timestep_spacing", default_spacing)
        return schedules.spaced_timesteps(
            schedule.num_train_timesteps, num_inference_steps, spacing, cfg.get("steps_offset", 0)
        ).to(F64)
    if cfg.get("t_max") is not None or t_min is not None:
        high = float(cfg.get("t_max") or 1.0)
        low = t_min if t_min is not None else high / num_inference_steps
        return torch.linspace(high, low, num_inference_steps, dtype=F64)
    return schedule.default_times(num_inference_steps)


def _check_range(scheduler: Scheduler, t: torch.Tensor) -> None:
    schedule = scheduler.schedule
    if isinstance(schedule, DiscreteVPSchedule):
        n = schedule.num_train_timesteps
        if bool(((t < 0) | (t > n - 1)).any()):
            raise ValueError(f"custom timesteps must lie in [0, {n - 1}] for this schedule, got {t.tolist()}")


def sigma_space(scheduler: Scheduler, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sigma_ve, model_alpha, model_sigma)`` at model times ``t`` [N], float64."""
    t = t.to(F64)
    if isinstance(scheduler.schedule, DiscreteVPSchedule) and bool((t == t.round()).all()):
        alpha, sigma = scheduler.schedule.alpha_sigma(t.round().long())
    else:
        alpha, sigma = scheduler.schedule.alpha_sigma(t)
    return sigma / alpha, alpha, sigma


def times_for_sigmas(scheduler: Scheduler, sigmas_ve: torch.Tensor) -> torch.Tensor:
    """Model times at which the schedule has the given sigma-space noise levels (inverse of sigma_space)."""
    schedule = scheduler.schedule
    sigmas_ve = sigmas_ve.to(F64)
    if isinstance(schedule, DiscreteVPSchedule):
        return schedule.t_from_sigma(sigmas_ve)
    if isinstance(schedule, schedules.EDMSchedule):
        return sigmas_ve.clone()
    if isinstance(schedule, schedules.RectifiedFlowSchedule):
        # sigma_ve = t / (1 - t)  =>  t = sigma_ve / (1 + sigma_ve)
        return sigmas_ve / (1 + sigmas_ve) * schedule.timestep_scale
    if isinstance(schedule, schedules.VESchedule):
        return torch.log(sigmas_ve / schedule.sigma_min) / torch.log(
            torch.tensor(schedule.sigma_max / schedule.sigma_min, dtype=F64)
        )
    # Generic monotone inverse by bisection on ve_sigma (VP cosine / linear): 60 halvings reach float64.
    lo = torch.zeros_like(sigmas_ve)
    hi = torch.ones_like(sigmas_ve)
    for _ in range(60):
        mid = (lo + hi) / 2
        above = schedule.ve_sigma(mid) > sigmas_ve
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    return (lo + hi) / 2


def karras_or_custom_sigmas(
    scheduler: Scheduler, num_inference_steps: int | None, sigmas: torch.Tensor | None
) -> torch.Tensor | None:
    """Sigma-space levels [N] from custom ``sigmas`` or, with ``use_karras_sigmas``, EDM's rho-spacing."""
    if sigmas is not None:
        return sigmas[sigmas > 0] if bool((sigmas[-1:] == 0).all()) else sigmas
    if not scheduler.config.get("use_karras_sigmas", False):
        return None
    assert num_inference_steps is not None
    lo, hi = _spaced_sigma_range(scheduler, num_inference_steps)
    lo = scheduler.config.get("sigma_min") or lo
    hi = scheduler.config.get("sigma_max") or hi
    return schedules.karras_sigmas(num_inference_steps, lo, hi, scheduler.config.get("rho", 7.0))


def _spaced_sigma_range(scheduler: Scheduler, num_inference_steps: int) -> tuple[float, float]:
    """Karras' default range: on a discrete schedule, the sigma-space levels at the extremes of the
    ``timestep_spacing`` grid (``leading`` / ``trailing`` do not reach both ends of the training table; diffusers'
    Euler and Heun take the range from this grid too); elsewhere the schedule's whole range."""
    schedule = scheduler.schedule
    if not isinstance(schedule, DiscreteVPSchedule):
        return sigma_range(scheduler)
    t = model_times(scheduler, num_inference_steps, None, default_spacing="linspace")
    table = capped_sigmas(schedule.sigmas)
    return float(table[int(t.min().round())]), float(table[int(t.max().round())])


def sigma_range(scheduler: Scheduler) -> tuple[float, float]:
    """Smallest and largest sigma-space noise level the training schedule reaches."""
    schedule = scheduler.schedule
    if isinstance(schedule, DiscreteVPSchedule):
        s = schedule.sigmas
        return float(s[0]), float(s[-1])
    if isinstance(schedule, schedules.VESchedule):
        return schedule.sigma_min, schedule.sigma_max
    if isinstance(schedule, schedules.EDMSchedule):
        return schedule.sigma_min, schedule.sigma_max
    t_max = float(scheduler.config.get("t_max", getattr(schedule, "t_max", 1.0)))
    scale = getattr(schedule, "timestep_scale", 1.0)
    return float(schedule.ve_sigma(torch.tensor(1e-3 * scale))), float(
        schedule.ve_sigma(torch.tensor(t_max * scale * 0.999))
    )


def previous_times(scheduler: Scheduler, t: torch.Tensor, n: int | None, custom: bool) -> torch.Tensor:
    """The time each call steps to; ``-1`` marks the end of the chain (x_0).

    Discrete schedules step by the spacing's stride (DDIM's tau, sec. 4.2); custom or continuous
    grids step to the next entry.
    """
    if isinstance(scheduler.schedule, DiscreteVPSchedule) and not custom:
        return t - scheduler.schedule.num_train_timesteps // n
    return torch.cat([t[1:], torch.tensor([-1.0], dtype=t.dtype)])


def chain_alpha_sigma(
    scheduler: Scheduler, t: torch.Tensor, final: tuple[float, float] = (1.0, 0.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-space ``(alpha, sigma)`` at times ``t``, with ``final`` where ``t < 0`` (the chain's end)."""
    done = t < 0
    safe = torch.where(done, torch.zeros_like(t), t)
    _, alpha, sigma = sigma_space(scheduler, safe)
    fa, fs = final
    return torch.where(done, torch.full_like(alpha, fa), alpha), torch.where(done, torch.full_like(sigma, fs), sigma)
