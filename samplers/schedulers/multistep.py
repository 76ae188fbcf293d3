"""What the multistep exponential integrators share (public base for core samplers and plugins).

Everything is written in the *model space* of the noise schedule, ``x_t = alpha_t x0 + sigma_t eps``
(the model sees the sample unscaled), with the half log-SNR ``lambda_t = log(alpha_t / sigma_t)``
as the solvers' time variable (Lu et al. 2022, "DPM-Solver++", sec. 3). A run has ``N`` calls at
levels ``0 .. N-1`` and ends at level ``N`` (clean data, ``alpha = 1, sigma = 0``, by default), so
``N`` steps cost exactly ``N`` model evaluations.

A subclass gives, per call ``k``, the weights of its update on the current sample and on the
estimates of this and earlier calls (``m_k``, ``m_{k-1}``, ...): :meth:`MultistepScheduler.step_rule`.
The base turns them into :class:`samplers.plan.Call` rows with each estimate kept under its own name
(``"m3"``) for exactly as long as a later call uses it. Grid and warm-up conventions follow diffusers'
multistep schedulers (``DPMSolverMultistepScheduler``, ``UniPCMultistepScheduler``,
``DEISMultistepScheduler``): ``N + 1`` points laid over the training table with the last dropped,
``lambda_min_clipped``, ``final_sigmas_type``, and lower orders at the start and the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
import torch

from samplers import levels as lv
from samplers.plan import ESTIMATE, Call, Plan, Update, build_plan, dynamic_threshold_coeffs
from samplers.protocol import Scheduler
from samplers.schedules import TIMESTEP_SPACINGS, DiscreteVPSchedule

F64 = torch.float64
FINAL_SIGMAS = ("zero", "sigma_min")
# A log-SNR step may be at most this many times the one before it: beyond that, the divided differences a
# multistep rule extrapolates are rounding noise multiplied by the ratio.
MAX_STEP_RATIO = 1e3


class ExtraWeights(TypedDict, total=False):
    """Named weights a :class:`StepRule` adds to its update beside ``weights[0]`` (e.g. an eps rule's
    ``x0`` term); the names are :class:`samplers.plan.Update`'s."""

    x0: float
    eps: float
    out: float
    uncond: float


@dataclass(frozen=True)
class StepRule:
    """One call's update in model space: ``prev = sample * x + sum_j weights[j] * m_{k-j} + noise * z``.

    ``weights[0]`` weighs this call's estimate (``m_k``), ``weights[1]`` the previous call's, and so on.
    ``estimate`` is what every ``m`` is: ``"x0"`` (data prediction) or ``"eps"`` (noise prediction).
    ``brownian`` is the level interval the noise stands for (``noise="brownian"``).
    """

    sample: float
    weights: tuple[float, ...]
    noise: float = 0.0
    brownian: tuple[float, float] | None = None
    extra: ExtraWeights = field(default_factory=lambda: ExtraWeights())


@dataclass(frozen=True)
class Grid:
    """The levels of a multistep run: ``t`` [N] call times; ``alpha``, ``sigma``, ``lam`` [N+1] with the end last."""

    t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor

    @property
    def lam(self) -> torch.Tensor:
        """``log(alpha / sigma)`` [N+1]; ``+inf`` at clean data, ``-inf`` where alpha = 0."""
        return torch.log(self.alpha) - torch.log(self.sigma)

    @property
    def level(self) -> torch.Tensor:
        """Sigma-space levels ``sigma / alpha`` [N+1] (0 at clean data)."""
        return self.sigma / self.alpha

    def __len__(self) -> int:
        return len(self.t)


def discrete_timesteps(
    schedule: DiscreteVPSchedule, n: int, spacing: str, steps_offset: int, lambda_min_clipped: float
) -> torch.Tensor:
    """Descending integer timesteps [n] as diffusers' multistep solvers space them.

    ``n + 1`` points are laid over the training range and the last (least noisy) one is dropped,
    because the final step lands on clean data rather than on a training timestep; timesteps
    whose log-SNR is below ``lambda_min_clipped`` are cut off the top (needed for cosine betas).
    """
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
    total = schedule.num_train_timesteps
    if n > total:
        raise ValueError(f"num_inference_steps={n} cannot exceed num_train_timesteps={total}")
    lam = schedule.log_snr(torch.arange(total)) / 2
    flipped = torch.flip(lam, [0]).contiguous()
    clipped = int(torch.searchsorted(flipped, torch.tensor(float(lambda_min_clipped), dtype=F64)))
    last = total - clipped
    if spacing == "linspace":
        steps = np.linspace(0, last - 1, n + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ratio = last // (n + 1)
        steps = (np.arange(n + 1) * ratio).round()[::-1][:-1] + steps_offset
    else:
        steps = np.arange(last, 0, -total / n).round() - 1
    return torch.from_numpy(np.ascontiguousarray(steps, dtype=np.int64)).to(F64)


class MultistepScheduler(Scheduler):
    """Base of the multistep exponential integrators: grid, warm-up, history by name, thresholding."""

    kind = "ode-multistep"
    default_spacing = "linspace"
    estimate = "x0"  # what the solver's m_k are: "x0" (data prediction) or "eps" (noise prediction)

    # ---- grid ---------------------------------------------------------------------------------

    def check_common_config(self) -> None:
        """Validate the options every multistep solver shares (call from the subclass ``__init__``)."""
        c = self.config
        if c.get("final_sigmas_type", "zero") not in FINAL_SIGMAS:
            raise ValueError(f"final_sigmas_type must be one of {FINAL_SIGMAS}, got {c.final_sigmas_type!r}")
        if c.get("use_karras_sigmas", False) and c.get("use_lu_lambdas", False):
            raise ValueError("use_karras_sigmas and use_lu_lambdas are exclusive; pick one spacing")
        lmc = c.get("lambda_min_clipped", -math.inf)
        if isinstance(lmc, float) and math.isnan(lmc):
            raise ValueError("lambda_min_clipped must be a number, got NaN")

    def default_levels(self, n: int, mu: float | None) -> lv.Levels:
        schedule, c = self.schedule, self.config
        if isinstance(schedule, DiscreteVPSchedule):
            t = discrete_timesteps(
                schedule,
                n,
                c.get("timestep_spacing") or self.default_spacing,
                c.get("steps_offset", 0),
                c.get("lambda_min_clipped", -math.inf),
            )
            return lv.levels_at_times(schedule, t)
        return lv.levels_at_times(schedule, self._continuous_times(n))

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
        inner = schedule.time_at_level(levels[1:-1])
        return torch.cat([t[:1], inner, t[-1:]])

    def final_alpha_sigma(self) -> tuple[float, float]:
        """Where the run ends: clean data, or (``final_sigmas_type="sigma_min"``) the first training timestep."""
        if self.config.get("final_sigmas_type", "zero") == "zero":
            return 1.0, 0.0
        if not isinstance(self.schedule, DiscreteVPSchedule):
            raise ValueError("final_sigmas_type='sigma_min' needs a discrete schedule; use 'zero' on continuous ones")
        abar0 = float(self.schedule.alphas_cumprod[0])
        return math.sqrt(abar0), math.sqrt(1 - abar0)

    def grid(self, levels: lv.Levels) -> Grid:
        """The run's :class:`Grid` (levels plus the end), checked to fall strictly in noise level."""
        fa, fs = self.final_alpha_sigma()
        grid = Grid(
            t=levels.t,
            alpha=torch.cat([levels.alpha, torch.tensor([fa], dtype=F64)]),
            sigma=torch.cat([levels.sigma, torch.tensor([fs], dtype=F64)]),
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
        steps = (lam[1:] - lam[:-1]).tolist()
        for k in range(1, len(steps)):
            if not (math.isfinite(steps[k]) and math.isfinite(steps[k - 1])):
                continue
            ratio = steps[k] / steps[k - 1]
            if ratio > MAX_STEP_RATIO:  # (a step shrinking sharply is harmless: its history weights shrink too)
                raise ValueError(
                    f"the sampling grid's log-SNR step changes {ratio:.3g}-fold from call {k - 1} to call {k} "
                    f"(steps {steps[k - 1]:.3g} then {steps[k]:.3g}): a multistep rule extrapolating over such a jump "
                    "amplifies rounding without bound; space the grid more evenly (or remove near-duplicate levels)"
                )
        return grid

    # ---- plan ---------------------------------------------------------------------------------

    def make_plan(self, levels: lv.Levels, mu: float | None = None, start: int = 0) -> Plan:
        """The plan of a run over ``levels`` whose first call is ``start`` (warm-up counts from there)."""
        if mu is not None:
            raise ValueError(f"{type(self).__name__} has no dynamic time shift; call set_timesteps without mu")
        plan = build_plan(
            self.multistep_calls(levels, start),
            self.prediction_type,
            init_noise_sigma=self.initial_sigma(levels),
            brownian=self.config.get("noise") == "brownian",
            sigmas=self.run_sigmas(levels),
        )
        plan.extras["levels"] = levels
        return plan

    def plan_calls(self, levels: lv.Levels) -> list[Call]:
        return self.multistep_calls(levels, 0)

    def multistep_calls(self, levels: lv.Levels, start: int) -> list[Call]:
        """One call per level from :meth:`step_rule`; ``m_k`` is kept while a later call weighs it."""
        grid = self.grid(levels)
        rules = self.step_rules(grid, start)
        histories = [
            {f"m{k - j}": w for j, w in enumerate(rule.weights[1:], start=1) if w != 0.0}
            for k, rule in enumerate(rules)
        ]
        needed = {name for h in histories for name in h}
        calls = []
        for k, rule in enumerate(rules):
            lead = rule.weights[0]
            if self.estimate in rule.extra:
                raise TypeError(f"StepRule.extra repeats the {self.estimate!r} weight that weights[0] gives")
            terms: ExtraWeights = {**rule.extra, "eps": lead} if self.estimate == "eps" else {**rule.extra, "x0": lead}
            update = Update(sample=rule.sample, noise=rule.noise, history=histories[k], **terms)
            keep = {f"m{k}": ESTIMATE} if f"m{k}" in needed else {}
            calls.append(levels.call(k, update, keep=keep, estimate=self.estimate, brownian=rule.brownian))
        return calls

    def step_rules(self, grid: Grid, start: int) -> list[StepRule]:
        """Every call's update (model space); ``start`` is where the run begins (warm-up counts from it)."""
        raise NotImplementedError

    def initial_sigma(self, levels: lv.Levels) -> float:
        return 1.0 if self.schedule.family == "vp" else float(levels.sigma[0])

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at call ``begin_index`` (img2img): the warm-up of the multistep rule restarts there."""
        plan = self._require_plan()
        if not isinstance(begin_index, int) or not 0 <= begin_index < len(plan.timesteps):
            raise ValueError(f"begin_index must be an int in [0, {len(plan.timesteps)}), got {begin_index!r}")
        replanned = self.make_plan(plan.extras["levels"], start=begin_index)
        self.plan = replanned
        self._plan_key = None  # a later set_timesteps must not reuse this warm-up-shifted plan
        self._device_cache = {}  # rows were cached per device for the plan just replaced
        super().set_begin_index(begin_index)

    def _adjust_coeffs(self, coeffs, sample, model_output, uncond, index, state, noise=None):
        if not self.config.get("thresholding", False):
            return coeffs
        return dynamic_threshold_coeffs(
            coeffs, sample, model_output, uncond, self.config.dynamic_thresholding_ratio, self.config.sample_max_value
        )
