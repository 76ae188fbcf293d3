"""Restart sampling (Xu et al. 2023): an ODE solve with forward-noise restarts over chosen intervals.

Xu, Deng, Cheng, Tian, Liu & Jaakkola 2023, "Restart Sampling for Improving Generative Processes",
NeurIPS 2023, arXiv:2306.14878. Implemented from the paper's description (the authors' code builds on
a non-commercial codebase and was not read); equation labels (X1)-(X3) are those of our research notes.

The main backward process is Heun's method on the probability-flow ODE (Karras et al. 2022, Alg. 1; the
step into ``sigma = 0`` is Euler). A restart interval ``[t_min, t_max]`` with ``K`` repeats: when the
main solve reaches ``t_min``, repeat K times

    forward:  x_{t_max} = x_{t_min} + sqrt(t_max^2 - t_min^2) z_k                                     (X1)
    backward: x_{t_min} = ODE(x_{t_max}; t_max -> t_min)  (``steps`` Heun steps, Karras rho-grid)    (X2)

then continue the main solve. In sigma space (X1) is exactly the forward transition ``q(x_{t_max} |
x_{t_min})`` (X3), so a cycle keeps the marginal at ``t_min`` while contracting the error accumulated
so far; the backward pass adds only ODE discretisation error.

Rows: no model call belongs to a forward jump, so its noise is merged into the row of the call that
*ends* at ``t_min`` (the Heun corrector there): ``c = sqrt(t_max^2 - t_min^2)``, the next call starting
at ``t_max``. ``t_min`` is snapped to the nearest level of the main grid (excluding the first; an
interval whose ``t_max`` is not above the snapped level is skipped: the grid has no room for it;
``plan.extras["restarts"]`` lists the restarts a run makes). The kick ``z_k`` is keyed by the restart
(interval, repeat), not by the call index: Philox stream ``RESTART_STREAM + interval * MAX_REPEATS + k``,
or, with ``noise="brownian"``, ``W(1) - W(0)`` of its own Brownian path. So a seed gives the same kicks
at every step count: with fixed kicks Restart is an ODE solver and converges at Heun's order 2.

``restart_intervals`` is a list of ``[steps, repeats, t_min, t_max]`` (sigma-space levels). ``steps = None``
gives the backward pass as many steps as the main grid spends on the interval (one more than its levels
inside ``(t_min, t_max]``), so the restart cycles refine with the main grid and the whole run converges at
order 2 (with 3 fixed steps, say, the cycles' discretisation error stays as the main grid refines: on the
Gaussian oracle, 3 Heun steps over [0.1, 2] with 2 repeats leave the sample variance 24% off at any step
count). ``restart_intervals=None`` means :data:`DEFAULT_INTERVALS`: one interval, restarted twice, inside
the range the paper restarts Stable Diffusion in (sigma from about 0.1 to 2); the paper tunes intervals per
model and NFE budget.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from samplers import levels as lv
from samplers import schedules
from samplers.ops.reference import COEFF, MAX_STREAM
from samplers.plan import Call, Plan, Update
from samplers.schedulers.heun import HEUN_KEEP, heun_updates
from samplers.schedulers.sigma_space import SigmaSpaceScheduler

F64 = torch.float64
DEFAULT_INTERVALS: tuple[tuple[int | None, int, float, float], ...] = ((None, 2, 0.1, 2.0),)
MAX_REPEATS = 1 << 12
MAX_INTERVALS = 1 << 11
# Kick streams live above every call index a plan of fewer than RESTART_STREAM calls uses.
RESTART_STREAM = MAX_STREAM >> 1
TAG = "restart"


def check_intervals(intervals: Any) -> list[tuple[int | None, int, float, float]]:
    """``[[steps, repeats, t_min, t_max], ...]`` as tuples; errors name the entry and what was expected."""
    if not isinstance(intervals, Sequence) or isinstance(intervals, str):
        raise TypeError(f"restart_intervals must be a list of [steps, repeats, t_min, t_max], got {intervals!r}")
    if len(intervals) > MAX_INTERVALS:
        raise ValueError(f"restart_intervals has {len(intervals)} entries; at most {MAX_INTERVALS}")
    checked = []
    for i, entry in enumerate(intervals):
        if not isinstance(entry, Sequence) or isinstance(entry, str) or len(entry) != 4:
            raise ValueError(f"restart_intervals[{i}] must be [steps, repeats, t_min, t_max], got {entry!r}")
        steps, repeats, t_min, t_max = entry
        ints = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (steps or 1, repeats))
        if not ints or (steps is not None and steps < 1) or not 0 <= repeats < MAX_REPEATS:
            raise ValueError(
                f"restart_intervals[{i}]: steps must be an int >= 1 (or None: as the main grid) and repeats an "
                f"int in [0, {MAX_REPEATS}), "
                f"got steps={steps!r}, repeats={repeats!r}"
            )
        reals = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (t_min, t_max))
        if not reals or not (0 < t_min < t_max < math.inf):
            raise ValueError(
                f"restart_intervals[{i}]: need finite levels 0 < t_min < t_max, got t_min={t_min!r}, t_max={t_max!r}"
            )
        checked.append((None if steps is None else int(steps), int(repeats), float(t_min), float(t_max)))
    return checked


class RestartScheduler(SigmaSpaceScheduler):
    """Heun on the main grid plus restart cycles (X1)-(X2); ``nfe_per_step`` is set per run (calls / steps)."""

    name = "restart"
    kind = "sde"
    paper = "Xu et al. 2023, Restart Sampling for Improving Generative Processes, NeurIPS 2023, arXiv:2306.14878"
    order = 2
    stochastic = True
    stochastic_when = "some interval restarts (repeats > 0)"
    nfe_per_step = 2  # the main grid's; a run's restarts add 2 * steps * repeats calls per interval

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
        restart_intervals: list | None = None,
        restart_rho: float = 7.0,
    ) -> None:
        if restart_intervals is not None:
            check_intervals(restart_intervals)
        if not (math.isfinite(restart_rho) and restart_rho > 0):
            raise ValueError(f"restart_rho must be a finite number > 0, got {restart_rho}")
        if interpolation_type not in ("linear", "log_linear"):
            raise ValueError(f"interpolation_type must be 'linear' or 'log_linear', got {interpolation_type!r}")

    def intervals(self) -> list[tuple[int | None, int, float, float]]:
        given = self.config.get("restart_intervals")
        return check_intervals(DEFAULT_INTERVALS if given is None else given)

    def restarts(self, sigma: list[float]) -> dict[int, list[tuple[int, int, int, float]]]:
        """``{main-grid index j: [(interval, steps, repeats, t_max), ...]}``: where each interval restarts."""
        found: dict[int, list[tuple[int, int, int, float]]] = {}
        if len(sigma) < 2:
            return found
        for index, (steps, repeats, t_min, t_max) in enumerate(self.intervals()):
            j = min(range(1, len(sigma)), key=lambda i: abs(math.log(sigma[i] / t_min)))
            if repeats and sigma[j] < t_max:
                if steps is None:  # as many steps as the main grid spends on [sigma_j, t_max]
                    steps = 1 + sum(1 for v in sigma[:j] if v <= t_max)
                found.setdefault(j, []).append((index, steps, repeats, t_max))
        return found

    def plan_calls(self, levels: lv.Levels) -> list[Call]:
        sigma = levels.level.tolist()
        calls: list[Call] = []
        for i, s in enumerate(sigma):
            s_next = sigma[i + 1] if i + 1 < len(sigma) else 0.0
            first, second = heun_updates(s, s_next)
            calls.append(self.call_at(levels, i, first, keep=HEUN_KEEP if second else {}))
            if second is not None:
                calls.append(self.call_at(levels, i + 1, second))
        # insert the cycles after the main step ending at each restart level, last level first
        ends = {j: 2 * j - 1 for j in range(1, len(sigma))}  # the corrector ending at main level j
        for j, cycles in sorted(self.restarts(sigma).items(), reverse=True):
            block: list[Call] = []  # the cycles at main level j; each kick rides on the call ending at t_min
            for index, steps, repeats, t_max in cycles:
                grid = self._restart_grid(steps, sigma[j], t_max)
                for k in range(repeats):
                    end = block[-1] if block else calls[ends[j]]
                    kicked = _with_kick(end, sigma[j], t_max, f"{TAG}:{index}:{k}")
                    if block:
                        block[-1] = kicked
                    else:
                        calls[ends[j]] = kicked
                    block.extend(self._backward_pass(levels, j, grid))
            calls[ends[j] + 1 : ends[j] + 1] = block
        return calls

    def _restart_grid(self, steps: int, t_min: float, t_max: float) -> list[float]:
        """``steps + 1`` levels from ``t_max`` down to ``t_min`` (EDM's rho-spacing, ends exact)."""
        grid = schedules.karras_sigmas(steps + 1, t_min, t_max, float(self.config.restart_rho)).tolist()
        grid[0], grid[-1] = t_max, t_min
        return grid

    def _backward_pass(self, levels: lv.Levels, j: int, grid: list[float]) -> list[Call]:
        """The Heun calls of (X2) over ``grid``; the last one ends at main level ``j``."""
        calls = []
        for a, b in zip(grid[:-1], grid[1:], strict=True):
            first, second = heun_updates(a, b)
            assert second is not None  # a backward pass ends at t_min > 0: every step has its corrector
            calls.append(self._call_at(a, first, keep=HEUN_KEEP))
            last = b == grid[-1]
            calls.append(self.call_at(levels, j, second) if last else self._call_at(b, second))
        return calls

    def _call_at(self, level: float, update: Update, **options: Any) -> Call:
        return self.call_at_level(self.time_at_level(level), level, update, **options)

    def make_plan(self, levels: lv.Levels, mu: float | None = None) -> Plan:
        plan = super().make_plan(levels, mu)
        if len(plan) >= RESTART_STREAM:
            raise ValueError(f"a restart plan holds fewer than {RESTART_STREAM} calls, got {len(plan)}")
        brownian = self.config.get("noise") == "brownian"
        for call, tag in enumerate(plan.tags):
            if tag.startswith(TAG + ":"):
                index, k = (int(v) for v in tag.split(":")[1:])
                plan.rows[call, COEFF["stream"]] = RESTART_STREAM + index * MAX_REPEATS + k
                if brownian:  # W(1) - W(0) of the kick's own path: independent of the step count
                    plan.rows[call, COEFF["bt0"]], plan.rows[call, COEFF["bt1"]] = 0.0, 1.0
        sigma = levels.level.tolist()
        plan.extras["restarts"] = [
            {"interval": index, "level_index": j, "t_min": sigma[j], "t_max": t_max, "steps": steps, "repeats": r}
            for j, cycles in sorted(self.restarts(sigma).items())
            for index, steps, r, t_max in cycles
        ]
        return plan

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        plan, n = self._require_plan(), self.num_inference_steps or 1
        self.nfe_per_step = math.ceil(len(plan) / n)


def _with_kick(call: Call, t_min: float, t_max: float, tag: str) -> Call:
    """The call ending at ``t_min`` with the forward jump to ``t_max`` (X1) merged into its row."""
    if call.update.noise:
        raise ValueError("a restart kick merges into a noise-free row (the inner solver is an ODE)")
    update = dataclasses.replace(call.update, noise=math.sqrt(t_max * t_max - t_min * t_min))
    return dataclasses.replace(call, update=update, brownian=(t_min, t_max), tag=tag)
