"""The levels a sampling run visits, on a scheduler's noise schedule (public building blocks).

``samplers.grids`` names the spacings users pick (karras, exponential, beta, AYS, ...); this module
meets a picked grid with the training schedule: model times <-> sigma-space levels, the model-space
``(alpha, sigma)`` at each call, the spacing conventions of diffusers' ``timestep_spacing``, and the
checks that a user's ``timesteps=`` / ``sigmas=`` lie in the schedule's domain. Built-in samplers and
plugins use the same functions, so a grid means the same thing in every sampler.

Conventions: times descend (noisiest first); sigma-space levels are ``sigma / alpha`` and descend;
a grid of N levels has no final 0 (each sampler decides where its run ends).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from samplers import schedules
from samplers.plan import Call, Update
from samplers.schedules import DiscreteVPSchedule, NoiseSchedule

F64 = torch.float64
# A zero-terminal-SNR schedule ends at level inf; as diffusers does, sigma-space grids use 2**12 there.
ZERO_SNR_LEVEL = 4096.0
# set_timesteps refuses longer runs: their tables would not fit in memory that a sampler should use.
MAX_INFERENCE_STEPS = 100_000


@dataclass(frozen=True)
class Levels:
    """The N calls' levels of a run: model times ``t`` [N] and model-space ``alpha``, ``sigma`` [N] (float64)."""

    t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    # How the grid was chosen: "spacing" (the scheduler's default), "named", "timesteps" or "sigmas".
    source: str = "spacing"

    def __len__(self) -> int:
        return len(self.t)

    @property
    def level(self) -> torch.Tensor:
        """Sigma-space levels ``sigma / alpha`` [N] (the infinite level of zero terminal SNR capped)."""
        return capped_levels(self.sigma / self.alpha)

    @property
    def lam(self) -> torch.Tensor:
        """Half log-SNR ``log(alpha / sigma)`` [N] (``-inf`` where alpha = 0)."""
        return torch.log(self.alpha) - torch.log(self.sigma)

    def call(self, i: int, update: Update, *, sigma_space: bool = False, **options: Any) -> Call:
        """The :class:`~samplers.plan.Call` at level ``i``: model space, or sigma space (the model sees
        ``alpha * x``). ``options`` go to :class:`~samplers.plan.Call` (keep, estimate, clip, brownian)."""
        alpha = float(self.alpha[i])
        return Call(
            t=float(self.t[i]),
            alpha=alpha,
            sigma=float(self.sigma[i]),
            update=update,
            input_scale=alpha if sigma_space else 1.0,
            **options,
        )


def level_of(alpha: float, sigma: float) -> float:
    """The sigma-space level ``sigma / alpha`` of one model-space point; ``inf`` at pure noise (alpha = 0)."""
    return sigma / alpha if alpha > 0 else math.inf


def capped_levels(levels: torch.Tensor) -> torch.Tensor:
    """Sigma-space levels with the infinite one of a zero-terminal-SNR schedule replaced by ``ZERO_SNR_LEVEL``."""
    return torch.nan_to_num(levels, nan=float("nan"), posinf=ZERO_SNR_LEVEL)  # a NaN stays visible


def check_steps(num_inference_steps: int) -> None:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
    if num_inference_steps > MAX_INFERENCE_STEPS:
        raise ValueError(f"num_inference_steps={num_inference_steps} exceeds the limit of {MAX_INFERENCE_STEPS}")


def custom_grid(values: Any, what: str) -> torch.Tensor:
    """A user's ``timesteps`` / ``sigmas``: float64 [N], finite, strictly descending, within the size limit."""
    try:
        grid = torch.as_tensor(values, dtype=F64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"custom {what} must be a sequence of numbers, got {type(values).__name__}: {exc}") from None
    if grid.dim() > 1 and sum(s > 1 for s in grid.shape) <= 1:
        grid = grid.flatten()  # [N, 1] or [1, N]: one run's grid all the same
    if grid.dim() != 1:
        raise ValueError(f"custom {what} must be one-dimensional, got shape {tuple(grid.shape)}")
    if len(grid) == 0:
        raise ValueError(f"custom {what} must not be empty")
    if len(grid) > MAX_INFERENCE_STEPS + 1:
        raise ValueError(f"custom {what} has {len(grid)} entries; the limit is {MAX_INFERENCE_STEPS}")
    if not bool(torch.isfinite(grid).all()):
        raise ValueError(f"custom {what} must be finite, got {grid.tolist()[:8]}")
    if bool((grid[1:] >= grid[:-1]).any()):
        i = int((grid[1:] >= grid[:-1]).nonzero()[0])
        raise ValueError(
            f"custom {what} must be strictly descending (noisiest first); entry {i + 1} ({float(grid[i + 1]):g}) "
            f"does not fall below entry {i} ({float(grid[i]):g})"
        )
    return grid


def levels_from_sigmas(schedule: NoiseSchedule, sigmas: torch.Tensor) -> torch.Tensor:
    """Sigma-space levels [N] of a user's ``sigmas`` (a final 0 is dropped), checked against the schedule."""
    levels = sigmas[:-1] if len(sigmas) > 1 and float(sigmas[-1]) == 0.0 else sigmas
    if bool((levels <= 0).any()):
        raise ValueError(
            f"custom sigmas must be positive (a final 0 may be appended), got {sigmas.tolist()[:8]}; "
            "sigma-space levels are sigma / alpha >= 0"
        )
    lo, hi = reachable_level_range(schedule)
    tol = 1e-6
    if float(levels.max()) > hi * (1 + tol) or float(levels.min()) < lo * (1 - tol):
        raise ValueError(
            f"custom sigmas must lie in [{lo:g}, {hi:g}], the levels the {type(schedule).__name__} reaches; "
            f"got [{float(levels.min()):g}, {float(levels.max()):g}]"
        )
    return levels


def reachable_level_range(schedule: NoiseSchedule) -> tuple[float, float]:
    """The smallest and largest sigma-space level the schedule reaches over its whole time domain."""
    if isinstance(schedule, DiscreteVPSchedule):
        table = capped_levels(schedule.sigmas)
        return float(table[0]), float(table[-1])
    lo, hi = schedule.time_domain()
    ends = schedule.ve_sigma(torch.tensor([lo, hi if math.isfinite(hi) else 1e300], dtype=F64))
    return float(ends.min()), float(ends.max())


def alpha_sigma_at(schedule: NoiseSchedule, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-space ``(alpha, sigma)`` at model times [N]: the training table's entries at whole timesteps."""
    t = t.to(F64)
    if isinstance(schedule, DiscreteVPSchedule) and bool((t == t.round()).all()):
        return schedule.alpha_sigma(t.round().long())
    return schedule.alpha_sigma(t)


def levels_at_times(schedule: NoiseSchedule, t: torch.Tensor) -> Levels:
    """The :class:`Levels` of calls at model times ``t`` [N]."""
    alpha, sigma = alpha_sigma_at(schedule, t)
    return Levels(t.to(F64), alpha.to(F64), sigma.to(F64))


def levels_at_levels(schedule: NoiseSchedule, levels: torch.Tensor) -> Levels:
    """The :class:`Levels` of calls at sigma-space levels [N] (times from the schedule's inverse)."""
    levels = levels.to(F64)
    alpha, sigma = schedule.alpha_sigma_at_level(levels)
    return Levels(schedule.time_at_level(levels).to(F64), alpha, sigma)


def spaced_times(
    schedule: NoiseSchedule, config: Mapping[str, Any], n: int, default_spacing: str = "leading"
) -> torch.Tensor:
    """Default descending model times [n]: ``timestep_spacing`` on a discrete table, else the schedule's own.

    Discrete schedules use the config's ``timestep_spacing`` (and ``steps_offset``), as diffusers does;
    continuous ones the schedule's ``default_times`` (or evenly from config ``t_max`` down to ``t_max / n``).
    """
    if isinstance(schedule, DiscreteVPSchedule):
        spacing = config.get("timestep_spacing") or default_spacing
        return schedules.spaced_timesteps(schedule.num_train_timesteps, n, spacing, config.get("steps_offset", 0)).to(
            F64
        )
    if config.get("t_max") is not None:
        high = float(config["t_max"])
        return torch.linspace(high, high / n, n, dtype=F64)
    return schedule.default_times(n).to(F64)


def stride_targets(schedule: NoiseSchedule, t: torch.Tensor, n: int | None, custom: bool) -> torch.Tensor:
    """The time each call steps to; ``-1`` marks the end of the chain (clean data).

    On a discrete table with a spaced grid a call steps by the stride ``T // n`` (DDIM's tau, sec. 4.2,
    as diffusers' DDIM does); custom or continuous grids step to the next entry.
    """
    if isinstance(schedule, DiscreteVPSchedule) and not custom and n is not None:
        return t - schedule.num_train_timesteps // n
    return next_times(t)


def next_times(t: torch.Tensor) -> torch.Tensor:
    """Each call's next entry of the grid, ``-1`` after the last."""
    return torch.cat([t[1:], torch.tensor([-1.0], dtype=t.dtype)])


def chain_alpha_sigma(
    schedule: NoiseSchedule, t: torch.Tensor, final: tuple[float, float] = (1.0, 0.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-space ``(alpha, sigma)`` at times ``t``, with ``final`` where ``t < 0`` (the chain's end)."""
    done = t < 0
    alpha, sigma = alpha_sigma_at(schedule, torch.where(done, torch.zeros_like(t), t))
    fa, fs = final
    return torch.where(done, torch.full_like(alpha, fa), alpha), torch.where(done, torch.full_like(sigma, fs), sigma)


def step_targets(
    levels: Levels, schedule: NoiseSchedule, *, stride: bool = False, final: tuple[float, float] = (1.0, 0.0)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(t_s, alpha_s, sigma_s)`` [N]: where each call steps to (model space); ``t_s = -1`` at the end.

    The next call's level; or, with ``stride`` on a discrete table, ``t - T // N`` (DDIM's tau, as
    diffusers' DDIM and its kin step). The chain ends at ``final`` = (alpha, sigma), clean data by default.
    """
    n = len(levels)
    if stride and isinstance(schedule, DiscreteVPSchedule):
        t_s = stride_targets(schedule, levels.t, n, custom=False)
        alpha_s, sigma_s = chain_alpha_sigma(schedule, t_s, final)
        return t_s, alpha_s, sigma_s
    fa, fs = final
    t_s = next_times(levels.t)
    alpha_s = torch.cat([levels.alpha[1:], torch.tensor([fa], dtype=F64)])
    sigma_s = torch.cat([levels.sigma[1:], torch.tensor([fs], dtype=F64)])
    return t_s, alpha_s, sigma_s


def level_range(schedule: NoiseSchedule, config: Mapping[str, Any]) -> tuple[float, float]:
    """``(sigma_min, sigma_max)`` for named spacings: config ``sigma_min`` / ``sigma_max`` over the schedule's range.

    Discrete: the ends of the training table; continuous: the levels at the ends of ``default_times``.
    """
    if isinstance(schedule, DiscreteVPSchedule):
        table = capped_levels(schedule.sigmas)
        lo, hi = float(table[0]), float(table[-1])
    else:
        ends = capped_levels(schedule.ve_sigma(schedule.default_times(2)))
        lo, hi = float(ends.min()), float(ends.max())
    return float(config.get("sigma_min") or lo), float(config.get("sigma_max") or hi)


def linspace_times(schedule: DiscreteVPSchedule, n: int) -> torch.Tensor:
    """``n`` unrounded times evenly from ``T - 1`` to 0 (diffusers' sigma-space ``linspace`` spacing)."""
    return torch.from_numpy(np.linspace(0, schedule.num_train_timesteps - 1, n)[::-1].copy())


def interpolated_levels(schedule: NoiseSchedule, t: torch.Tensor, interpolation: str = "log_linear") -> torch.Tensor:
    """Sigma-space levels at model times [N]; on a discrete table ``"linear"`` interpolates the levels
    linearly between whole timesteps (diffusers' Euler family), ``"log_linear"`` the log levels."""
    if isinstance(schedule, DiscreteVPSchedule) and interpolation == "linear":
        table = capped_levels(schedule.sigmas).numpy()
        return torch.from_numpy(np.interp(t.numpy(), np.arange(len(table)), table))
    alpha, sigma = alpha_sigma_at(schedule, t)
    return capped_levels(sigma / alpha)


def named_grid(
    name: str,
    n: int,
    schedule: NoiseSchedule,
    level_span: tuple[float, float],
    *,
    sampler: str | None = None,
    **params: Any,
) -> Levels:
    """Levels of a named spacing from ``samplers.grids`` (or a ``"file:PATH"`` schedule file) on this schedule.

    Range grids span ``level_span = (sigma_min, sigma_max)``; table grids stride over the training table;
    flow grids (flow times ``t``) keep their noise-to-signal ratio ``t / (1 - t)`` on a non-flow schedule.
    A schedule file must hold ``n`` levels and, when ``sampler`` (the scheduler's name) is given, have been
    tuned for that sampler.
    """
    from samplers import grids

    table = capped_levels(schedule.sigmas) if isinstance(schedule, DiscreteVPSchedule) else None
    space: grids.Space
    if name.startswith("file:"):
        if params:
            raise ValueError(f"sigma_schedule={name!r} (a schedule file) takes no sigma_schedule_kwargs, got {params}")
        loaded = grids.load(name[len("file:") :], sampler=sampler, steps=n)
        values, space = loaded.grid, loaded.space
    else:
        info = grids.GRIDS.get(name)
        if info is None:
            raise ValueError(f"unknown sigma_schedule {name!r}: expected one of {tuple(grids.GRIDS)} or 'file:PATH'")
        kwargs: dict[str, Any] = {}
        if "sigma_min" in info.inputs:
            kwargs.update(sigma_min=level_span[0], sigma_max=level_span[1])
        if "table" in info.inputs:
            if table is None:
                raise ValueError(
                    f"sigma_schedule={name!r} strides over a discrete training table; this schedule has none"
                )
            kwargs["table"] = table
        values = grids.make(name, n, **kwargs, **params)
        space = info.space
    if space == "flow":
        if schedule.family == "flow":
            return levels_at_times(schedule, values * float(getattr(schedule, "timestep_scale", 1.0)))
        values = capped_levels(values / (1 - values))  # the same noise-to-signal ratio on this schedule
    return levels_at_levels(schedule, levels_from_sigmas(schedule, values))
