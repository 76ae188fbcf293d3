"""What the multistep solvers share: the sampling grid, log-SNR, and a two-deep history of x0 estimates.

Everything is written in the *model space* of the noise schedule, ``x_t = alpha_t x0 + sigma_t eps``
(the model sees the sample unscaled), with the half log-SNR ``lambda_t = log(alpha_t / sigma_t)``
as the solvers' time variable (Lu et al. 2022, "DPM-Solver++", sec. 3). The grid has ``N`` model
calls at levels ``0 .. N-1`` and one final level ``N`` (clean data, ``alpha = 1, sigma = 0``, by
default), so a run of ``N`` steps costs exactly ``N`` model evaluations.

History: the fused update takes two history tensors. ``Plan.store``/``Plan.use`` keep the latest
x0 estimate under ``"x0"``; :meth:`MultistepScheduler.step_functional` moves the one before it to
``"x0_prev"`` when a later call asks for it, so a call can combine ``m_k`` (this call's x0),
``m_{k-1}`` (history0) and ``m_{k-2}`` (history1).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from samplers import schedules
from samplers.parameterization import x0_coefficients
from samplers.protocol import Plan, SamplerState, Scheduler, StepOutput, coefficient_rows, dynamic_threshold_coeffs
from samplers.schedules import DiscreteVPSchedule, NoiseSchedule

F64 = torch.float64
X0 = "x0"
X0_PREV = "x0_prev"
SPACINGS = ("linspace", "leading", "trailing")
FINAL_SIGMAS = ("zero", "sigma_min")


@dataclasses.dataclass
class Grid:
    """The levels a run visits: ``t`` [N] model times of the calls; ``alpha``, ``sigma`` [N+1] in model
    space, the last entry being where the run ends."""

    t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor

    @property
    def lam(self) -> torch.Tensor:
        """``log(alpha / sigma)`` [N+1]; ``+inf`` at clean data, ``-inf`` where alpha = 0."""
        return torch.log(self.alpha) - torch.log(self.sigma)


def discrete_timesteps(
    schedule: DiscreteVPSchedule, n: int, spacing: str, steps_offset: int, lambda_min_clipped: float
) -> torch.Tensor:
    """Descending integer timesteps [n] as diffusers' multistep solvers space them.

    ``n + 1`` points are laid over the training range and the last (least noisy) one is dropped,
    because the final step lands on clean data rather than on a training timestep; timesteps
    whose log-SNR is below ``lambda_min_clipped`` are cut off the top (needed for cosine betas).
    """
    if spacing not in SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {spacing!r}")
    total = schedule.num_train_timesteps
    if n > total:
        raise ValueError(f"num_inference_steps={n} cannot exceed num_train_timesteps={total}")
    lam = schedule.log_snr(torch.arange(total)) / 2
    clipped = int(
        torch.searchsorted(torch.flip(lam, [0]).contiguous(), torch.tensor(float(lambda_min_clipped), dtype=F64))
    )
    last = total - clipped
    if spacing == "linspace":
        steps = np.linspace(0, last - 1, n + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ratio = last // (n + 1)
        steps = (np.arange(n + 1) * ratio).round()[::-1][:-1] + steps_offset
    else:
        steps = np.arange(last, 0, -total / n).round() - 1
    return torch.from_numpy(np.ascontiguousarray(steps, dtype=np.int64)).to(F64)


def times_for_sigmas(schedule: NoiseSchedule, sigma_ve: torch.Tensor) -> torch.Tensor:
    """Model times at which ``schedule`` has sigma-space levels ``sigma_ve = sigma / alpha`` (monotone inverse)."""
    sigma_ve = sigma_ve.to(F64)
    if isinstance(schedule, DiscreteVPSchedule):
        return schedule.t_from_sigma(sigma_ve)
    hi_t = float(schedule.default_times(2).max())
    lo = torch.zeros_like(sigma_ve)
    hi = torch.full_like(sigma_ve, hi_t)
    for _ in range(80):  # bisection: 80 halvings reach float64 resolution on any range in use
        mid = (lo + hi) / 2
        above = schedule.ve_sigma(mid) > sigma_ve
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    return (lo + hi) / 2


def alpha_sigma_from_level(schedule: NoiseSchedule, sigma_ve: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-space ``(alpha, sigma)`` for sigma-space levels, exact for each family."""
    if schedule.family == "vp":
        alpha = 1 / torch.sqrt(1 + sigma_ve**2)
    elif schedule.family == "flow":
        alpha = 1 / (1 + sigma_ve)
    else:
        alpha = torch.ones_like(sigma_ve)
    return alpha, sigma_ve * alpha


class MultistepScheduler(Scheduler):
    """Base of the solvers here: builds the :class:`Grid`, the plan's x0 conversion and the history.

    A subclass implements :meth:`_solver_columns`, returning per-call update columns
    ``a, b, h0, h1, c`` [N] for ``prev = a x + b m_k + h0 m_{k-1} + h1 m_{k-2} + c z``.
    """

    family = "any"
    nfe_per_step = 1
    supports_per_sample_timesteps = False  # a multistep run carries history from call to call

    # ---- grid ---------------------------------------------------------------------------------

    def _check_common_config(self) -> None:
        c = self.config
        if c.get("final_sigmas_type", "zero") not in FINAL_SIGMAS:
            raise ValueError(f"final_sigmas_type must be one of {FINAL_SIGMAS}, got {c.final_sigmas_type!r}")
        if c.get("timestep_spacing", "linspace") not in SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {c.timestep_spacing!r}")

    def _grid(self, n: int | None, timesteps: torch.Tensor | None, sigmas: torch.Tensor | None) -> Grid:
        schedule, c = self.schedule, self.config
        discrete = isinstance(schedule, DiscreteVPSchedule)
        if c.get("use_karras_sigmas", False) and c.get("use_lu_lambdas", False):
            raise ValueError("use_karras_sigmas and use_lu_lambdas are exclusive; pick one spacing")
        spaced = n is not None and (c.get("use_karras_sigmas", False) or c.get("use_lu_lambdas", False))
        if sigmas is not None or spaced:
            if sigmas is None and c.get("use_karras_sigmas", False):
                levels = schedules.karras_sigmas(n, *self._sigma_range(), c.get("rho", 7.0))
            elif sigmas is None:  # uniform in lambda = -log(sigma / alpha) (Lu et al. 2022's "logSNR" grid)
                lo, hi = self._sigma_range()
                levels = torch.exp(torch.linspace(math.log(hi), math.log(lo), n, dtype=F64))
            else:
                levels = sigmas[:-1] if len(sigmas) > 1 and float(sigmas[-1]) == 0.0 else sigmas
            if bool((levels <= 0).any()):
                raise ValueError(f"custom sigmas must be positive (a final 0 may be appended), got {sigmas.tolist()}")
            t = times_for_sigmas(schedule, levels)
            alpha, sigma = alpha_sigma_from_level(schedule, levels.to(F64))
        else:
            if timesteps is not None:
                t = timesteps.to(F64)
                if discrete and bool(((t < 0) | (t > schedule.num_train_timesteps - 1)).any()):
                    raise ValueError(
                        f"custom timesteps must lie in [0, {schedule.num_train_timesteps - 1}], got {t.tolist()}"
                    )
            elif discrete:
                t = discrete_timesteps(
                    schedule,
                    n,
                    c.get("timestep_spacing", "linspace"),
                    c.get("steps_offset", 0),
                    c.get("lambda_min_clipped", -math.inf),
                )
            else:
                t = self._continuous_times(n)
            whole = discrete and bool((t == t.round()).all())
            alpha, sigma = schedule.alpha_sigma(t.round().long() if whole else t)
        final = self._final_alpha_sigma()
        grid = Grid(
            t=t.to(F64),
            alpha=torch.cat([alpha.to(F64), torch.tensor([final[0]], dtype=F64)]),
            sigma=torch.cat([sigma.to(F64), torch.tensor([final[1]], dtype=F64)]),
        )
        lam = grid.lam
        if not bool((lam[1:] > lam[:-1]).all()):
            hint = ""
            if len(lam) > 1 and float(lam[-1]) == float(lam[-2]):
                hint = " (the last call is already at the final level: final_sigmas_type='sigma_min' repeats it)"
            raise ValueError(
                "the sampling grid must strictly decrease in noise level (repeated or rising timesteps/sigmas)"
                f"{hint}; got log(alpha/sigma) = {[round(v, 4) for v in lam.tolist()]}"
            )
        return grid

    def _continuous_times(self, n: int) -> torch.Tensor:
        """Default calls on a continuous schedule: between the ends of its ``default_times``, evenly in log-SNR.

        Time-uniform grids (e.g. cosine's) make the log-SNR steps grow sharply toward clean data; a
        multistep rule extrapolating over a step ``1/r`` times longer than the last one overshoots, so
        the solvers here space their steps in lambda (the grid Lu et al. 2022 use for exponential
        integrators). Flow schedules start at alpha = 0 (lambda = -inf) and keep their own spacing.
        """
        schedule = self.schedule
        t = schedule.default_times(n).to(F64)
        if n < 3 or schedule.family == "flow":
            return t
        ends = schedule.ve_sigma(t[[0, -1]])
        if not bool(torch.isfinite(ends).all()) or not bool((ends > 0).all()):
            return t
        levels = torch.exp(torch.linspace(math.log(float(ends[0])), math.log(float(ends[1])), n, dtype=F64))
        inner = times_for_sigmas(schedule, levels[1:-1])
        return torch.cat([t[:1], inner, t[-1:]])

    def _sigma_range(self) -> tuple[float, float]:
        """``(sigma_min, sigma_max)`` in sigma space for Karras or lambda spacing: config, else the schedule range."""
        c = self.config
        if isinstance(self.schedule, DiscreteVPSchedule):
            lo, hi = float(self.schedule.sigmas[0]), float(self.schedule.sigmas[-1])
        else:
            ends = self.schedule.ve_sigma(self.schedule.default_times(2))
            lo, hi = float(ends.min()), float(ends.max())
        return float(c.get("sigma_min") or lo), float(c.get("sigma_max") or hi)

    def _final_alpha_sigma(self) -> tuple[float, float]:
        if self.config.get("final_sigmas_type", "zero") == "zero":
            return 1.0, 0.0
        if not isinstance(self.schedule, DiscreteVPSchedule):
            raise ValueError("final_sigmas_type='sigma_min' needs a discrete schedule; use 'zero' on continuous ones")
        abar0 = float(self.schedule.alphas_cumprod[0])
        return math.sqrt(abar0), math.sqrt(1 - abar0)

    # ---- plan ---------------------------------------------------------------------------------

    def _make_plan(self, num_inference_steps, timesteps, sigmas, mu) -> Plan:
        if mu is not None:
            raise ValueError(f"{type(self).__name__} has no dynamic time shift; call set_timesteps without mu")
        self._grid_now = self._grid(num_inference_steps, timesteps, sigmas)
        g = self._grid_now
        self.sigmas = torch.cat([g.sigma[:-1] / g.alpha[:-1], (g.sigma[-1:] / g.alpha[-1:])]).to(torch.float32)
        return self._plan_from(0)

    def _plan_from(self, start: int) -> Plan:
        """The plan for a run whose first call is ``start`` (multistep warm-up counts from there)."""
        g = self._grid_now
        n = len(g.t)
        cols = self._solver_columns(g, start)
        for name, col in cols.items():
            if not bool(torch.isfinite(col).all()):
                bad = int((~torch.isfinite(col)).nonzero()[0])
                raise ValueError(
                    f"{type(self).__name__}: non-finite {name!r} coefficient at call {bad} (grid {g.t.tolist()})"
                )
        alpha, sigma = g.alpha[:n], g.sigma[:n]
        p, q = x0_coefficients(self.prediction_type, alpha, sigma)
        rows = coefficient_rows(n, p=p, q=q, **cols)
        use = [
            ((X0, X0_PREV) if float(cols["h1"][k]) != 0 else (X0,) if float(cols["h0"][k]) != 0 else ())
            if k > start
            else ()
            for k in range(n)
        ]
        store = [(X0,) if k + 1 < n and any(use[k + 1]) else () for k in range(n)]
        self._keep_prev = [k + 1 < n and X0_PREV in use[k + 1] for k in range(n)]
        init = 1.0 if self.schedule.family == "vp" else float(g.sigma[0])
        return Plan(
            timesteps=g.t.clone(),
            rows=rows,
            input_scale=torch.ones(n, dtype=F64),
            model_alpha=alpha,
            model_sigma=sigma,
            store=store,
            use=use,
            init_noise_sigma=init,
        )

    def _solver_columns(self, grid: Grid, start: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at call ``begin_index`` (img2img): the warm-up of the multistep rule restarts there."""
        super().set_begin_index(begin_index)
        self.plan = self._plan_from(begin_index)
        self._device_cache = {}  # rows were cached per device for the plan just replaced

    # ---- stepping -----------------------------------------------------------------------------

    def step_functional(
        self, state: SamplerState, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, **kwargs: Any
    ) -> tuple[StepOutput, SamplerState]:
        """The base step, then the x0 of the previous call is kept as ``"x0_prev"`` if a later call needs it."""
        output, new_state = super().step_functional(state, model_output, timestep, sample, **kwargs)
        index = new_state.step_index - 1
        if 0 <= index < len(self._keep_prev) and self._keep_prev[index] and X0 in state.kept:
            kept = dict(new_state.kept)
            kept[X0_PREV] = state.kept[X0]
            new_state = dataclasses.replace(new_state, kept=kept)
        return output, new_state

    def _adjust_coeffs(self, coeffs, sample, model_output, uncond, index, state):
        if not self.config.get("thresholding", False):
            return coeffs
        return dynamic_threshold_coeffs(
            coeffs, sample, model_output, uncond, self.config.dynamic_thresholding_ratio, self.config.sample_max_value
        )
