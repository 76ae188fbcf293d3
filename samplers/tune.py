"""Tuned step schedules: the grid of noise levels that minimises a sampler's ODE error for an NFE budget.

At a small budget (10 model evaluations) the grid decides more than the sampler does. This module
finds, for one sampler, one model and one budget, the sigma levels whose run lands closest to the
exact probability-flow ODE endpoint from the same initial noise, and writes them as a schedule file
(:class:`samplers.grids.ScheduleFile`) that every scheduler reads with ``sigma_schedule="file:PATH"``.

**Objective.** The bench's ``ode_error`` (:func:`samplers.bench.metrics.ode_error`): the RMS distance
between the sampler's outputs and the PF-ODE endpoints from the same initial noise, on a fixed set of
*tuning* seeds. On the oracle problems (``gmm2d``, ``gaussian``, ...) the endpoint is exact
(``Problem.ode_solution``); on a network (``digits``, or your own with ``model=``, as ``samplers bench
--model`` takes it) it is the bench's high-accuracy float64 solve
(:func:`samplers.bench.reference.solve_reference`), computed once per seed set and start level,
tightened as the bench does to 20x below the smallest error it scores, and reused for every candidate
grid. Each candidate run is the bench's own loop (the scheduler's plan, the oracle called at the
plan's own (alpha, sigma)), so ``samplers bench --schedule-file`` reproduces the numbers.
Stochastic samplers (ancestral, SDE), whose error to one ODE endpoint means nothing, are tuned
against a distribution metric instead (``metric=``, default ``"sw"``: the bench's sliced
Wasserstein-2 to the exact mixture, on the oracle problems; the sampler's noise is fixed by the
per-sample seeds, so the objective is deterministic); on ``digits`` and ``model=`` networks they
are refused.

**Method: two derivative-free searches over log sigma** (:func:`search`). First compass search (Hooke &
Jeeves 1961; Kolda, Lewis & Torczon 2003, "Optimization by direct search", SIAM Review 45) on the log
levels, a quarter of the budget: each sweep tries to move every free level up or down by a fraction
``step`` of the log-gap to its neighbour, keeps a move that lowers the objective, and halves ``step``
after a sweep without one. Then Powell's conjugate-direction method (Powell 1964; scipy's) over the log
gaps (:class:`LogGapCoordinates`), from the start and from the compass result, half the rest each: its
line searches move coupled levels together, which finds basins one-level moves stop short of on
multistep samplers. The best grid found is the result. Every candidate is strictly descending by
construction; the last level never goes below the schedule's lower end (``sigma_min`` of its named
grids), and the first level is held fixed. The start is the best of every named grid
(:data:`NAMED_GRIDS`: default spacing, karras, exponential, lu, beta, kl_optimal, the four Align Your
Steps tables interpolated, and the table strides on a discrete schedule) on the tuning seeds. It needs
no gradient through the plan (whose coefficients are built in float64 on the host, not differentiably)
and works for any deterministic scheduler, built-in or plugin; a 10-NFE run on a 2-D oracle costs a few
milliseconds, so the default 4,000 evaluations take seconds to tens of seconds.

*Why the first level is fixed:* the error is measured against the ODE solution from the grid's own
start, so lowering the start shortens the path to integrate and would "improve" the error without
sampling the model's full ODE. The tuned grid starts where its starting grid does.

**Held-out evaluation.** :func:`tune` reports the tuned and every named grid on a second, disjoint
seed set (by default the bench's own seeds, so ``samplers bench --schedule-file`` is a held-out
score), and :func:`transfer` scores a tuned grid interpolated in log sigma to other budgets
(:func:`interpolate_levels`) and on other problems.
"""

from __future__ import annotations

import dataclasses
import math
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from samplers import grids
from samplers import levels as lv

F64 = torch.float64

METHOD = (
    "compass search over log sigma (Kolda, Lewis & Torczon 2003), then Powell's method (Powell 1964) over the log "
    "gaps from the start and from the compass result (if it moved); the best grid found"
)
TUNE_SEED = 1  # tuning seeds: batch_seeds(1, n); the bench's default seed 0 is then held out
HELDOUT_SEED = 0
# (tuning samples, held-out samples) per kind of problem: the held-out sizes are the bench's ODE samples (a --model
# network: the bench's --samples; each sample costs a reference solve of a few hundred network calls). On the
# oracles 1,000 tuning samples: with 256, Powell's grids for DPM-Solver++(2M) on gmm2d at 12 NFE fit the tuning
# noise (0.0019 tuning, 0.0118 held out); with 1,000 they score alike (0.0019 / 0.0018).
SAMPLES = {"oracle": (1000, 1000), "data": (128, 256), "model": (32, 64), "distribution": (2000, 10000)}
# Distribution metrics a stochastic sampler is tuned against (oracle problems; exact mixture target where it has one).
DISTRIBUTION_METRICS = ("sw", "sw1", "mmd", "frechet")
MAX_EVALS = 4000  # sampler runs of one tuning search, all stages (:func:`search`)
MAX_EVALS_DISTRIBUTION = 800  # the same against a distribution metric (2,000-sample runs and a metric: ~25 ms each)
MIN_STEP = 1e-3
FIRST_STEP = 0.3

# Every named grid a tuning run starts from (name, sigma_schedule, sigma_schedule_kwargs); "default" is the
# scheduler's own spacing. Grids a schedule cannot take (e.g. table strides on a continuous one) are skipped.
NAMED_GRIDS: tuple[tuple[str, str | None, dict[str, Any]], ...] = (
    ("default", None, {}),
    ("karras", "karras", {}),
    ("exponential", "exponential", {}),
    ("lu", "lu", {}),
    ("beta", "beta", {}),
    ("kl_optimal", "kl_optimal", {}),
    *((f"ays:{m}", "ays", {"model": m}) for m in grids.AYS_TABLES),
    ("simple", "simple", {}),
    ("normal", "normal", {}),
    ("sgm_uniform", "sgm_uniform", {}),
    ("ddim_uniform", "ddim_uniform", {}),
)

__all__ = [
    "DISTRIBUTION_METRICS",
    "MAX_EVALS",
    "MAX_EVALS_DISTRIBUTION",
    "HELDOUT_SEED",
    "METHOD",
    "NAMED_GRIDS",
    "TUNE_SEED",
    "NamedScore",
    "Objective",
    "GridRefused",
    "TuneError",
    "TuneResult",
    "apply_to_diffusers",
    "interpolate_levels",
    "load_for",
    "LogGapCoordinates",
    "pattern_search",
    "powell_search",
    "search",
    "steps_for_nfe",
    "transfer",
    "tune",
]


class TuneError(ValueError):
    """Bad tuning input (unknown sampler or problem, an NFE the sampler cannot make, a stochastic sampler)."""


class GridRefused(ValueError):
    """The sampler refuses a candidate grid (its ``set_timesteps`` raised): the search treats it as infeasible."""


# --------------------------------------------------------------------------------------------
# The NFE budget
# --------------------------------------------------------------------------------------------


def _calls(scheduler: Any, steps: int) -> int:
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def steps_for_nfe(scheduler: Any, nfe: int) -> int:
    """The step count (grid levels) at which ``scheduler`` makes exactly ``nfe`` model calls.

    Counted at the model: one call per entry of the plan's timesteps (Heun: ``2 N - 1`` for N levels,
    its last step being an Euler step). An NFE no step count makes is a :class:`TuneError` naming
    the nearest counts that work.
    """
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise TuneError(f"-n/--nfe must be an int >= 1, got {nfe!r}")
    made: dict[int, int] = {}  # NFE -> steps
    for steps in range(1, nfe + 2):
        try:
            calls = _calls(scheduler, steps)
        except ValueError:
            continue  # too few steps for this sampler's order
        made.setdefault(calls, steps)
        if calls == nfe:
            return steps
        if calls > nfe:
            break
    below = max((c for c in made if c < nfe), default=None)
    above = min((c for c in made if c > nfe), default=None)
    near = " or ".join(f"{c} ({made[c]} steps)" for c in (below, above) if c is not None)
    per = getattr(scheduler, "nfe_per_step", 1)
    raise TuneError(
        f"{scheduler.name} cannot make exactly {nfe} model evaluations (it makes {per} per step"
        f"{', the last step one' if per == 2 else ''}); nearest valid NFE: {near or 'none'}"
    )


# --------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------


def _check_target(
    problem: str | None, model: str | None, data: str | None, schedule: str | None
) -> tuple[str | None, str]:
    """``(problem, schedule)`` of a tuning run on ``-p PROBLEM`` or ``--model SPEC [--data PATH]`` (one of them):
    the problem's default schedule, or the network's own training schedule (``"model"``)."""
    from samplers.bench import runner as R
    from samplers.bench.network import MODEL_SCHEDULE

    if model is not None and problem is not None:
        raise TuneError(
            f"-p/--problem {problem!r} and --model {model!r}: tune on an oracle problem or on a trained network, "
            "not both"
        )
    if data is not None and model is None:
        raise TuneError("--data: the data set of a --model network; give --model too")
    if model is not None:
        if not isinstance(model, str) or not model.strip():
            raise TuneError(f"--model: expected a model folder, module:factory or exported file, got {model!r}")
        if schedule is not None and schedule != MODEL_SCHEDULE:
            raise TuneError(
                f"--schedule {schedule!r}: a --model network is tuned on its own training schedule (--schedule "
                f"{MODEL_SCHEDULE}, read from the model): on any other the sampler would not follow that network's "
                "ODE"
            )
        return None, MODEL_SCHEDULE
    problem = problem if problem is not None else R.DEFAULT_PROBLEM
    schedule = schedule if schedule is not None else R.problem_defaults(problem)["schedule"]
    if schedule == MODEL_SCHEDULE:
        raise TuneError(f"--schedule {MODEL_SCHEDULE}: the training schedule of a --model network; give --model")
    if schedule not in R.SCHEDULE_PRESETS:
        raise TuneError(f"--schedule: unknown schedule {schedule!r} (expected one of {', '.join(R.SCHEDULE_PRESETS)})")
    return problem, schedule


@dataclass
class _Run:
    samples: torch.Tensor  # [m, d] in the objective's dtype
    start: tuple[float, float, float, float]  # (init_noise_sigma, input_scale[0], alpha_0, sigma_0)
    calls: int
    levels: torch.Tensor  # [N] float64 sigma-space levels of the run


class Objective:
    """The ODE error of one sampler on one problem from fixed noise, as a function of the grid.

    Args:
        sampler: registry name of a deterministic scheduler.
        problem: a bench problem spec (``gmm2d``, ``gaussian``, ``digits``, ``gmm2d:layout=ring``, ...);
            default ``gmm2d`` when no ``model`` is given.
        model: instead of ``problem``, a trained network as ``samplers bench --model`` takes it (a diffusers
            folder, ``module:factory``, an exported file; :func:`samplers.bench.network.load_model_problem`,
            whose errors are the bench's). It runs on its own training schedule (``schedule="model"``).
        data: with ``model``, its data set (``--data``): checked and recorded in the schedule file, so
            ``samplers bench --schedule-file`` scores SW / MMD against it; the objective stays the ODE error.
        seed: base seed of the per-sample Philox noise (``batch_seeds(seed, samples)``, the bench's).
        samples: how many initial noises ``m``.
        schedule: the model's training schedule (a bench preset; default: the problem's, as the bench; with
            ``model`` only ``"model"``, the network's own).
        options: extra scheduler config (as ``samplers bench -o``).
        dtype: sample dtype of the run (the bench's float32 by default).
        heldout: default ``samples`` to the held-out size (the bench's ODE samples) instead of the tuning size.
        metric: a distribution metric (:data:`DISTRIBUTION_METRICS`) instead of the ODE error; the default for a
            stochastic sampler is ``"sw"`` (sliced Wasserstein-2 to the exact mixture, oracle problems only).

    ``objective(levels)`` runs the sampler over sigma-space ``levels`` [N] (``set_timesteps(sigmas=)``)
    and returns the RMS error to the PF-ODE endpoints [m, d]; :meth:`named` runs a named grid through
    the scheduler's own ``sigma_schedule`` path. References are cached per start level: exact on the oracles
    (``exact``), the bench's float64 solve on a network (``digits``, ``model``), tightened by :meth:`settle`.
    """

    def __init__(
        self,
        sampler: str,
        problem: str | None = None,
        *,
        model: str | None = None,
        data: str | None = None,
        seed: int = TUNE_SEED,
        samples: int | None = None,
        schedule: str | None = None,
        options: Mapping[str, Any] | None = None,
        dtype: str = "float32",
        backend: str = "auto",
        heldout: bool = False,
        metric: str | None = None,
    ) -> None:
        from samplers.bench import runner as R
        from samplers.bench.network import ModelInputError, load_model_problem
        from samplers.bench.problems import get_problem, is_speed_only
        from samplers.ops.reference import batch_seeds

        problem, schedule = _check_target(problem, model, data, schedule)
        if dtype not in R.DTYPES:
            raise TuneError(f"--dtype: unknown dtype {dtype!r} (expected one of {', '.join(R.DTYPES)})")
        config = R.BenchConfig(
            schedulers=(sampler,),
            problem=problem or R.DEFAULT_PROBLEM,
            schedule=schedule,
            options=dict(options or {}),
            model=model,
            data=data,
        )
        try:
            # a --model network is loaded and probed first (the bench's checks and messages): its training
            # schedule is the scheduler's
            loaded = load_model_problem(model, data) if model is not None else get_problem(str(problem))
            self.resolved = R.resolve_scheduler(sampler, config, loaded)
        except (ValueError, TypeError, ModelInputError) as exc:
            raise TuneError(str(exc)) from None
        self.problem: Any = cast(Any, loaded)  # a Problem (oracle, digits) or a NetworkProblem (--model)
        if is_speed_only(self.problem):
            raise TuneError(f"problem {problem!r} is speed only (no reference solution to tune against)")
        # Oracle problems have the exact ODE endpoint; a network (digits, --model) has only the bench's
        # float64 reference solve, with an error estimate that is tightened below the errors it scores.
        self.exact = not hasattr(self.problem, "ode_reference")
        kind = "oracle" if self.exact else ("model" if model is not None else "data")
        self.sampler, self.problem_spec, self.schedule_preset = sampler, problem, schedule
        self.model_spec, self.data_path = model, data
        self.options = dict(options or {})
        self.seed, self.dtype, self.backend = int(seed), R.DTYPES[dtype], backend
        self.scheduler = self.build()
        if metric is None and self.scheduler.is_stochastic:
            metric = "sw"  # one ODE endpoint does not score a sampler that draws noise: its distribution does
        if metric is not None:
            if metric not in DISTRIBUTION_METRICS:
                raise TuneError(f"--metric: {metric!r} is not one of {', '.join(DISTRIBUTION_METRICS)}")
            if not self.exact or not hasattr(self.problem, "mixture_components"):
                raise TuneError(
                    f"tuning against a distribution metric ({metric}, as {sampler!r} draws noise or --metric asks) "
                    f"is implemented on the oracle problems only, not {self.target}; tune a deterministic sampler "
                    "there"
                )
            kind = "distribution"
        self.metric = metric
        self.samples = int(samples if samples is not None else SAMPLES[kind][1 if heldout else 0])
        if self.samples < 1:
            raise TuneError(f"samples must be >= 1, got {self.samples}")
        self._refuse_inversion()
        self.seeds = batch_seeds(self.seed, self.samples)
        from samplers.bench.problems import INIT_STREAM
        from samplers.ops.reference import philox_normal

        self.noise = philox_normal(self.seeds, INIT_STREAM, self.problem.dim).to(self.dtype)
        self._target: Any = self._distribution_target(metric) if metric is not None else None
        self.evaluations = 0
        self.reference_seconds = 0.0
        self._references: dict[tuple[str, str], torch.Tensor] = {}  # exact endpoints (oracles)
        self._solves: dict[tuple[str, str], dict[str, Any]] = {}  # reference solves (networks), kept to be resumed

    def _refuse_inversion(self) -> None:
        """An inversion (data to noise, its level rising over a 4-step plan) has no generation endpoint."""
        probe = self.build()
        probe.set_timesteps(4)
        if probe.plan.inverts:
            raise TuneError(
                f"{self.sampler!r} runs from data to noise (an inversion): there is no generation ODE endpoint to "
                "tune its grid against; tune the sampler it inverts"
            )

    def _distribution_target(self, metric: str) -> tuple[Any, ...]:
        """(metric spec, truth samples, mean, covariance, bandwidth, exact target) a distribution metric needs."""
        from samplers.bench import metrics as M
        from samplers.bench.problems import DATA_STREAM

        truth = self.problem.sample(self.samples, self.seeds, DATA_STREAM)
        components: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = self.problem.mixture_components()
        bandwidth = M.median_bandwidth(truth)
        target = M.ExactTarget(*components, bandwidth=bandwidth) if components is not None else None
        return (M.METRICS[metric], truth, self.problem.mean(), self.problem.covariance(), bandwidth, target)

    @property
    def target(self) -> str:
        """What is tuned on, as the CLI names it: ``--model 'SPEC'`` or ``'PROBLEM'``."""
        return f"--model {self.model_spec!r}" if self.model_spec is not None else repr(self.problem_spec)

    # -- the runs ---------------------------------------------------------------------------

    def build(self, **config: Any) -> Any:
        """A fresh scheduler with the tuning config (``config`` overrides, e.g. ``sigma_schedule``)."""
        cls: Any = self.resolved.cls  # a registered Scheduler class
        return cls.from_config({**self.resolved.config, **config})

    def run(self, levels: torch.Tensor | None = None, scheduler: Any = None, steps: int | None = None) -> _Run:
        """One run over ``levels`` [N] (custom sigmas), or ``scheduler`` at ``steps`` (its own grid)."""
        from samplers.bench.problems import OracleModel

        if levels is not None:
            sched = self.scheduler
            try:
                sched.set_timesteps(sigmas=levels.to(F64))
            except ValueError as exc:
                raise GridRefused(str(exc)) from exc
        else:
            sched = scheduler
            sched.set_timesteps(steps)
        plan = sched.plan
        model = OracleModel(self.problem, sched.schedule, self.resolved.prediction_type)
        alpha, sigma = plan.model_alpha.tolist(), plan.model_sigma.tolist()
        x = self.noise * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            out = model.at(sched.scale_model_input(x, t), alpha[i], sigma[i])
            x = sched.step(out, t, x, seeds=self.seeds, backend=self.backend).prev_sample
        self.evaluations += 1
        start = (float(sched.init_noise_sigma), float(plan.input_scale[0]), alpha[0], sigma[0])
        grid = levels.to(F64) if levels is not None else _plan_levels(sched)
        return _Run(x, start, model.calls, grid)

    def reference(self, start: tuple[float, float, float, float]) -> torch.Tensor:
        """The PF-ODE endpoints [m, d] float64 from this objective's noise at ``start`` (cached per start).

        A network's reference solves are shared by every objective on the same problem object, seeds and
        dtype (a held-out set and its transfers to other budgets start from the same levels).
        """
        key, gain, alpha, sigma = _start_key(start)
        if self.exact:  # an oracle: the exact endpoint, as the bench computes it
            if key not in self._references:
                init_sigma, in_scale, alpha0, sigma0 = start
                x_start = (self.noise * init_sigma).to(F64) * in_scale
                self._references[key] = self.problem.ode_solution(x_start, alpha0, sigma0)
            return self._references[key]
        if key not in self._solves:  # a network: the bench's high-accuracy float64 solve, with its error estimate
            shared = _SHARED_SOLVES.setdefault(self.problem, {})
            skey = (self.seed, self.samples, str(self.dtype), key)
            if skey not in shared:
                t0 = time.perf_counter()
                x_start = self.noise.to(F64) * gain  # as runner._ReferenceSolves.solve: same start, same solve
                sol = self.problem.ode_reference(x_start, alpha, sigma)
                shared[skey] = {"sol": sol, "x": x_start, "alpha": alpha, "sigma": sigma}
                self.reference_seconds += time.perf_counter() - t0
            self._solves[key] = shared[skey]
        return self._solves[key]["sol"].x0

    @property
    def reference_errors(self) -> dict[tuple[str, str], float]:
        """Estimated error of each reference solve used so far, by start (empty on an oracle: exact endpoints)."""
        return {k: float(e["sol"].error) for k, e in self._solves.items()}

    @property
    def reference_error(self) -> float:
        """The largest estimated error of the reference solves so far (0 on an oracle's exact endpoints)."""
        return max(self.reference_errors.values(), default=0.0)

    def reference_error_of(self, run: _Run) -> float:
        """The estimated error of the reference ``run`` is scored against (0 on an oracle: exact endpoints)."""
        self.reference(run.start)
        return self.reference_errors.get(_start_key(run.start)[0], 0.0)

    def settle(self, runs: Sequence[_Run]) -> None:
        """Tighten each reference solve until its estimated error is :data:`REFERENCE_MARGIN` times below the
        smallest ODE error of the ``runs`` that start there: the bench's rule for its table
        (``runner._ReferenceSolves.tighten``: up to four rounds of resuming at ``smallest / margin`` and
        rescoring), applied per start, so a tuned grid scored here and by ``samplers bench --schedule-file`` meets
        the same reference, and a start whose grids all score far worse is not solved to the best one's
        accuracy. Nothing to do on exact references. Rescore afterwards (:meth:`error`, :meth:`rescore`)."""
        from samplers.bench.runner import REFERENCE_MARGIN

        if self.exact or self._target is not None:
            return
        by_start: dict[tuple[str, str], list[_Run]] = {}
        for run in runs:
            by_start.setdefault(_start_key(run.start)[0], []).append(run)
        t0 = time.perf_counter()
        for key, group in by_start.items():
            for _ in range(4):
                best = min(self.error(r) for r in group)
                e = self._solves[key]  # error() solved it
                if not (math.isfinite(best) and best > 0) or e["sol"].error * REFERENCE_MARGIN <= best:
                    break
                tol = best / REFERENCE_MARGIN
                e["sol"] = self.problem.ode_reference(e["x"], e["alpha"], e["sigma"], tol=tol, resume=e["sol"])
                if not e["sol"].converged:  # the solver's step budget is spent: keep what it reached
                    break
        self.reference_seconds += time.perf_counter() - t0

    def rescore(self, named: Mapping[str, NamedScore]) -> dict[str, NamedScore]:
        """``named`` scored again from their kept runs (after :meth:`settle` moved the references)."""
        return {k: v if v.run is None else dataclasses.replace(v, error=self.error(v.run)) for k, v in named.items()}

    def error(self, run: _Run) -> float:
        """The objective of one run: ODE error to the references, or the distribution metric."""
        from samplers.bench import metrics as M

        samples = run.samples.to(F64)
        if self._target is not None:
            spec, truth, mean, cov, bandwidth, target = self._target
            inputs = M.MetricInputs(samples, truth, mean, cov, bandwidth, None, None, False, target)
            value = float(spec(inputs)) if bool(torch.isfinite(samples).all()) else math.inf
        else:
            value = M.ode_error(samples, self.reference(run.start))
        return value if math.isfinite(value) else math.inf

    @property
    def objective_name(self) -> str:
        """``"ode_error"`` or the distribution metric's name."""
        return self.metric or "ode_error"

    def __call__(self, levels: torch.Tensor) -> float:
        """ODE error of a run over sigma-space ``levels`` [N] (float64, descending, without the final 0);
        ``inf`` for a grid the sampler refuses (e.g. a multistep rule's step-ratio limit)."""
        try:
            return self.error(self.run(levels))
        except GridRefused:
            return math.inf

    def named(self, steps: int) -> dict[str, NamedScore]:
        """Every applicable named grid (:data:`NAMED_GRIDS`) at ``steps`` levels, scored; skipped ones say why."""
        out: dict[str, NamedScore] = {}
        seen: dict[tuple[float, ...], str] = {}
        for label, name, kwargs in NAMED_GRIDS:
            try:
                sched = self.build() if name is None else self.build(sigma_schedule=name, sigma_schedule_kwargs=kwargs)
                run = self.run(scheduler=sched, steps=steps)
            except (ValueError, TypeError) as exc:
                out[label] = NamedScore(label, math.nan, None, f"{type(exc).__name__}: {exc}")
                continue
            key = tuple(round(float(v), 10) for v in run.levels)
            note = f"same levels as {seen[key]}" if key in seen else ""
            seen.setdefault(key, label)
            out[label] = NamedScore(label, self.error(run), run.levels, note, run)
        return out


# A network's reference solves by problem object, then (seed, samples, dtype, start): objectives on the same noise
# share them (weakly keyed: a problem the loader's cache drops takes its solves along).
_SHARED_SOLVES: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], dict[str, Any]]] = weakref.WeakKeyDictionary()


def _start_key(start: tuple[float, float, float, float]) -> tuple[tuple[str, str], float, float, float]:
    """``(key, gain, alpha, sigma)`` of a run's start ``(init_noise_sigma, input_scale, alpha_0, sigma_0)``: the
    start in VP coordinates (``x = gain z`` at ``alpha^2 + sigma^2 = 1``), keyed to 12 digits as the bench does,
    so samplers that start from the same point share one reference."""
    init_sigma, in_scale, alpha0, sigma0 = start
    norm = math.hypot(alpha0, sigma0)
    gain = init_sigma * in_scale / norm
    return (f"{gain:.12g}", f"{math.atan2(sigma0, alpha0):.12g}"), gain, alpha0 / norm, sigma0 / norm


def _plan_levels(scheduler: Any) -> torch.Tensor:
    """Sigma-space levels of a scheduler's current run [N] (the distinct call levels of its plan)."""
    lam_levels = scheduler.plan.call_levels.to(F64)
    steps = scheduler.num_inference_steps
    if len(lam_levels) == steps:
        return lv.capped_levels(lam_levels)
    return lv.capped_levels(scheduler.run_levels(steps, None, None, None).level)


@dataclass(frozen=True)
class NamedScore:
    """A named grid's error (NaN when the scheduler cannot take it; ``note`` says why) and its levels [N]."""

    name: str
    error: float
    levels: torch.Tensor | None
    note: str = ""
    run: _Run | None = field(default=None, repr=False, compare=False)  # kept to rescore after a tighter reference

    @property
    def usable(self) -> bool:
        return self.levels is not None and math.isfinite(self.error)


def best_named(scores: Mapping[str, NamedScore]) -> NamedScore:
    usable = [s for s in scores.values() if s.usable]
    if not usable:
        reasons = "; ".join(f"{s.name}: {s.note}" for s in scores.values())
        raise TuneError(f"no named grid runs on this scheduler and schedule ({reasons})")
    return min(usable, key=lambda s: s.error)


# --------------------------------------------------------------------------------------------
# The optimiser
# --------------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    levels: torch.Tensor  # [N] float64
    value: float
    evaluations: int
    sweeps: int
    history: list[float] = field(default_factory=list)  # best value after each sweep
    stages: dict[str, float] = field(default_factory=dict)  # :func:`search`: each stage's best value


def pattern_search(
    f: Callable[[torch.Tensor], float],
    levels: torch.Tensor,
    *,
    lower: float,
    max_evals: int = MAX_EVALS,
    max_seconds: float | None = None,
    first_step: float = FIRST_STEP,
    min_step: float = MIN_STEP,
) -> SearchResult:
    """Minimise ``f(levels)`` over descending sigma levels [N] by compass search in log sigma.

    Level 0 is held fixed. A move takes level ``i`` a fraction ``step`` of the log-gap towards level
    ``i - 1`` (up) or towards level ``i + 1`` (down; for the last level, towards ``lower``), so every
    candidate stays strictly descending and above ``lower``. A sweep tries both moves of every free
    level in turn and keeps the first that lowers ``f``; after a sweep that moved, the sweep's net move is
    tried once more (Hooke & Jeeves' pattern move); a sweep without a move halves ``step``. Stops at
    ``step < min_step``, ``max_evals`` evaluations or ``max_seconds``.
    """
    if not (0.0 < first_step < 1.0):
        raise ValueError(f"first_step must be in (0, 1), got {first_step!r}")
    top = levels.to(F64)[:1].clone()
    x = torch.log(levels.to(F64)).clone()
    n = len(x)

    def grid(logs: torch.Tensor) -> torch.Tensor:
        return torch.cat([top, torch.exp(logs[1:])])  # the first level exactly as given (no exp-log rounding)

    log_lower = math.log(lower)
    if n < 2:
        return SearchResult(levels.to(F64), f(levels.to(F64)), 1, 0)
    log_lower = min(log_lower, float(x[-1]))  # a start at the very end (rounding) stays feasible
    best = f(grid(x))
    evals, sweeps, step = 1, 0, first_step
    history = [best]
    t0 = time.perf_counter()

    def out_of_budget() -> bool:
        return evals >= max_evals or (max_seconds is not None and time.perf_counter() - t0 > max_seconds)

    while step >= min_step and not out_of_budget():
        improved = False
        base = x.clone()
        for i in range(1, n):
            below = float(x[i + 1]) if i + 1 < n else log_lower
            for target in (float(x[i - 1]), below):
                gap = target - float(x[i])
                if abs(gap) < 1e-12 or out_of_budget():
                    continue
                cand = x.clone()
                cand[i] = x[i] + step * gap
                value = f(grid(cand))
                evals += 1
                if value < best:
                    x, best, improved = cand, value, True
                    break
        if improved and not out_of_budget():
            # Hooke-Jeeves pattern move: the sweep's net move once more (coupled levels move together)
            cand = x + (x - base)
            if _feasible(cand, log_lower):
                value = f(grid(cand))
                evals += 1
                if value < best:
                    x, best = cand, value
        sweeps += 1
        history.append(best)
        if not improved:
            step *= 0.5
    return SearchResult(grid(x), best, evals, sweeps, history)


def _feasible(x: torch.Tensor, log_lower: float) -> bool:
    """Strictly descending log levels, the last one at or above ``log_lower``."""
    return bool((x[1:] < x[:-1]).all()) and float(x[-1]) >= log_lower


class LogGapCoordinates:
    """Unconstrained coordinates ``w`` [N] of a grid of N levels with a fixed first level ``top`` and the others in
    ``(lower, top)``: ``log level_i = log top - (log top - log lower) * cumsum(softmax(w))_i`` for i = 1..N-1
    (the last weight is the slack between the last level and ``lower``). Every ``w`` is a strictly descending grid
    inside the range, so an unconstrained optimiser can move all levels at once."""

    def __init__(self, top: float, lower: float) -> None:
        if not (0 < lower < top and math.isfinite(top)):
            raise ValueError(f"need 0 < lower < top < inf, got lower={lower!r}, top={top!r}")
        self.top, self.lower = float(top), float(lower)
        self.span = math.log(self.top) - math.log(self.lower)

    def levels(self, w: torch.Tensor) -> torch.Tensor:
        """Levels [N] float64 of coordinates ``w`` [N] (differentiable in ``w``)."""
        frac = torch.cumsum(torch.softmax(w.to(F64), 0), 0)[:-1]
        return torch.cat([torch.tensor([self.top], dtype=F64), torch.exp(math.log(self.top) - self.span * frac)])

    def weights(self, levels: torch.Tensor) -> torch.Tensor:
        """Coordinates [N] of ``levels`` [N] (first level ``top``, descending, last one at or above ``lower``)."""
        logs = torch.log(levels.to(F64))
        gaps = torch.cat([logs[:-1] - logs[1:], (logs[-1] - math.log(self.lower)).reshape(1)])
        return torch.log(gaps.clamp_min(1e-9 * self.span))  # a last level at ``lower`` itself: a tiny slack


class _OutOfBudget(Exception):
    pass


def _scipy_minimize() -> Any:
    """``scipy.optimize.minimize``, or a :class:`TuneError` saying how to install it (the bench extra has it)."""
    try:
        from scipy.optimize import minimize
    except ImportError:
        raise TuneError("samplers tune needs scipy (its Powell stage): pip install 'samplers[bench]'") from None
    return minimize


def powell_search(
    f: Callable[[torch.Tensor], float],
    levels: torch.Tensor,
    *,
    lower: float,
    max_evals: int = MAX_EVALS,
    max_seconds: float | None = None,
) -> SearchResult:
    """Minimise ``f(levels)`` over descending sigma levels [N] by Powell's conjugate-direction method (Powell 1964,
    "An efficient method for finding the minimum of a function of several variables without calculating
    derivatives", Computer Journal 7; scipy's implementation) in :class:`LogGapCoordinates`.

    Where compass search moves one level at a time, Powell's line searches along learnt directions move coupled
    levels together: on multistep samplers it reaches basins the compass search stops short of. Level 0 is held
    fixed. Stops at scipy's tolerances, ``max_evals`` evaluations or ``max_seconds``; returns the best grid seen.
    """
    minimize = _scipy_minimize()
    levels = levels.to(F64)
    if len(levels) < 2:
        return SearchResult(levels, f(levels), 1, 0)
    coords = LogGapCoordinates(float(levels[0]), min(lower, float(levels[-1])))
    best: list[Any] = [math.inf, levels]
    evals = [0]
    t0 = time.perf_counter()

    def objective(w: Any) -> float:
        if evals[0] >= max_evals or (max_seconds is not None and time.perf_counter() - t0 > max_seconds):
            raise _OutOfBudget
        grid = coords.levels(torch.as_tensor(w, dtype=F64))
        grid[0] = levels[0]  # the first level exactly as given
        value = f(grid)
        evals[0] += 1
        if value < best[0]:
            best[:] = [value, grid]
        return value if math.isfinite(value) else 1e300  # an infeasible grid: worse than any run

    iterations = 0
    try:
        result = minimize(
            objective,
            coords.weights(levels).numpy(),
            method="Powell",
            options={"maxfev": max_evals, "xtol": 1e-4, "ftol": 1e-9},
        )
        iterations = int(result.nit)
    except _OutOfBudget:
        pass
    return SearchResult(best[1], best[0], evals[0], iterations, [best[0]])


def search(
    f: Callable[[torch.Tensor], float],
    levels: torch.Tensor,
    *,
    lower: float,
    max_evals: int = MAX_EVALS,
    max_seconds: float | None = None,
) -> SearchResult:
    """The tuner's search from ``levels`` [N] (first level fixed): compass search with a quarter of the budget
    (:func:`pattern_search`), then Powell's method (:func:`powell_search`) from the start and from the compass
    result, half the rest each (all of it from the start when the compass search never moved); the best grid
    found. The two Powell runs matter: on multistep samplers
    the one from the start can end in a better basin than the compass search's (DPM-Solver++(2M) on gmm2d at 10
    NFE: 0.0016 against the compass search's 0.0070 and Powell-from-compass's 0.0057, benchmarks/tune_bound.py),
    elsewhere they agree."""
    t0 = time.perf_counter()

    def left() -> float | None:
        return None if max_seconds is None else max(0.0, max_seconds - (time.perf_counter() - t0))

    compass = pattern_search(f, levels, lower=lower, max_evals=max(1, max_evals // 4), max_seconds=max_seconds)
    rest = max(0, max_evals - compass.evaluations)
    stages = {"compass": compass}
    starts = [("powell from the start", levels)]
    if not torch.equal(compass.levels, levels.to(F64)):  # a compass search that never moved: one Powell run
        starts.append(("powell from compass", compass.levels))
    for name, start in starts:
        budget = rest // len(starts)
        if budget >= 2 and left() != 0.0:
            stages[name] = powell_search(f, start, lower=lower, max_evals=budget, max_seconds=left())
    best = min(stages.values(), key=lambda r: r.value)
    return SearchResult(
        best.levels,
        best.value,
        sum(r.evaluations for r in stages.values()),
        sum(r.sweeps for r in stages.values()),
        [*compass.history, *(r.value for k, r in stages.items() if k != "compass")],
        {k: r.value for k, r in stages.items()},
    )


# --------------------------------------------------------------------------------------------
# Tuning, held-out scoring and transfer
# --------------------------------------------------------------------------------------------


@dataclass
class TuneResult:
    """What :func:`tune` found. ``schedule``: the file to save; ``named``: every named grid on the tuning seeds;
    ``heldout``: ``{"named": {name: error}, "best_named": name, "best_named_error", "tuned", "ratio"}``."""

    schedule: grids.ScheduleFile
    named: dict[str, NamedScore]
    start: str
    heldout: dict[str, Any]
    seconds: float
    evaluations: int
    search: SearchResult

    @property
    def levels(self) -> torch.Tensor:
        return self.schedule.grid


def _lower_end(objective: Objective) -> float:
    """The lowest level a tuned grid may reach: the schedule's named-grid range (its ``sigma_min``)."""
    sched = objective.scheduler
    lo_named = lv.level_range(sched.schedule, sched.config)[0]
    lo_reach = lv.reachable_level_range(sched.schedule)[0]
    return max(lo_named, lo_reach)


# Over 80 lines only by its keyword list and docstring (the public API's options); the body is 52 lines.
def tune(
    sampler: str,
    nfe: int,
    problem: str | None = None,
    *,
    model: str | None = None,
    data: str | None = None,
    schedule: str | None = None,
    options: Mapping[str, Any] | None = None,
    seed: int = TUNE_SEED,
    samples: int | None = None,
    heldout_seed: int | None = HELDOUT_SEED,
    heldout_samples: int | None = None,
    max_evals: int | None = None,
    max_seconds: float | None = None,
    dtype: str = "float32",
    start: str | None = None,
    metric: str | None = None,
) -> TuneResult:
    """Tune ``sampler``'s grid for ``nfe`` model evaluations on ``problem`` or a trained ``model`` (see the module
    docstring).

    Args:
        sampler / problem / model / data / schedule / options / dtype: as :class:`Objective`.
        nfe: the model-evaluation budget; a count the sampler cannot make exactly is a :class:`TuneError`.
        seed / samples: the tuning seed set. heldout_seed / heldout_samples: the held-out set (None: none).
        max_evals / max_seconds: the search budget (default :data:`MAX_EVALS` runs; a distribution metric,
            whose runs draw thousands of samples and score a metric, :data:`MAX_EVALS_DISTRIBUTION`).
        start: a named grid to start from (a label of :data:`NAMED_GRIDS`); default: the best one.
    Returns:
        :class:`TuneResult`; ``result.schedule`` is ready for :func:`samplers.grids.save`.
    """
    t0 = time.perf_counter()
    _scipy_minimize()  # before any work: a missing dependency is not found after minutes of tuning
    if seed == heldout_seed:
        raise TuneError(f"the tuning seed and the held-out seed must differ (both {seed}): nothing would be held out")
    obj = Objective(
        sampler,
        problem,
        model=model,
        data=data,
        seed=seed,
        samples=samples,
        schedule=schedule,
        options=options,
        dtype=dtype,
        metric=metric,
    )
    steps = steps_for_nfe(obj.scheduler, nfe)
    named = obj.named(steps)
    # a reference solve: tightened below the best named grid before the search (the bench's margin) ...
    obj.settle(_runs(named))
    named = obj.rescore(named)
    first = _start_grid(named, start)
    assert first.levels is not None
    if max_evals is None:
        max_evals = MAX_EVALS_DISTRIBUTION if obj.metric is not None else MAX_EVALS
    found = search(obj, first.levels, lower=_lower_end(obj), max_evals=max_evals, max_seconds=max_seconds)
    tuned = found.levels
    check = obj.run(tuned)
    if check.calls != nfe:  # counted at the model, never trusted
        raise RuntimeError(f"the tuned grid made {check.calls} model calls, not {nfe}")
    # ... and below the tuned grid's error, which the file's numbers are scored against
    obj.settle([*_runs(named), check])
    named = obj.rescore(named)
    first = named[first.name]
    after = obj.error(check)
    timesteps = obj.scheduler.run_levels(None, None, tuned, None).t
    seconds = time.perf_counter() - t0
    heldout: dict[str, Any] = {}
    if heldout_seed is not None:
        heldout = score_heldout(obj, tuned, steps, heldout_seed, heldout_samples)
    meta = _file_meta(obj, steps, first.name, named, heldout, found.evaluations, seconds)
    meta["search_stages"] = found.stages
    if not obj.exact:  # the estimated error of the tuned grid's reference (other starts' may be looser)
        meta["reference_error"] = obj.reference_error_of(check)
    schedule_file = grids.ScheduleFile(
        sampler=obj.scheduler.name,
        nfe=nfe,
        sigmas=tuple(float(v) for v in tuned),
        timesteps=tuple(float(v) for v in timesteps),
        problem=obj.problem_spec,
        model=_model_label(obj),
        objective_before=first.error,
        objective_after=after,
        meta=meta,
    )
    return TuneResult(schedule_file, named, first.name, heldout, seconds, found.evaluations, found)


def _start_grid(named: Mapping[str, NamedScore], start: str | None) -> NamedScore:
    """The named grid the search starts from: ``start`` when given (it must run here), else the best one."""
    if start is None:
        return best_named(named)
    if start not in named:
        raise TuneError(f"--start: unknown named grid {start!r} (expected one of {', '.join(named)})")
    if not named[start].usable:
        raise TuneError(f"--start {start!r} does not run here: {named[start].note}")
    return named[start]


def _file_meta(
    obj: Objective,
    steps: int,
    start: str,
    named: Mapping[str, NamedScore],
    heldout: dict[str, Any],
    evaluations: int,
    seconds: float,
) -> dict[str, Any]:
    """The schedule file's ``meta``: how the grid was found and scored (the method, seeds, named errors)."""
    meta = {
        "method": METHOD,
        "objective": obj.objective_name,
        "schedule": obj.schedule_preset,
        "scheduler_config": {k: v for k, v in obj.resolved.config.items() if _jsonable(v)},
        "prediction_type": obj.resolved.prediction_type,
        "steps": steps,
        "start": start,
        "tuning_seeds": {"seed": obj.seed, "samples": obj.samples},
        "heldout_seeds": {"seed": heldout["seed"], "samples": heldout["samples"]} if heldout else None,
        "heldout": {k: v for k, v in heldout.items() if k not in ("seed", "samples")} if heldout else None,
        "named_tuning_errors": {k: v.error for k, v in named.items() if v.usable},
        "evaluations": evaluations,
        "seconds": seconds,
        "dtype": str(obj.dtype).removeprefix("torch."),
    }
    if obj.model_spec is not None:  # what `samplers bench --schedule-file` needs to run the same network
        meta.update(model_spec=obj.model_spec, data=obj.data_path, model_description=_model_description(obj))
    return meta


def _runs(named: Mapping[str, NamedScore]) -> list[_Run]:
    return [v.run for v in named.values() if v.run is not None and v.usable]


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _model_label(obj: Objective) -> str:
    """The file's ``model``: a ``--model`` run's SPEC (what ``--model`` takes again), else a description."""
    if obj.model_spec is not None:
        return obj.model_spec
    describe = obj.problem.describe() if hasattr(obj.problem, "describe") else {}
    if not obj.exact:
        return f"{describe.get('name', obj.problem_spec)} denoiser ({describe.get('parameterization', 'network')})"
    return f"exact oracle, {obj.schedule_preset} schedule"


def _model_description(obj: Objective) -> dict[str, Any]:
    describe = obj.problem.describe()
    keys = ("model", "sample_shape", "prediction_type", "training_schedule", "network_dtype")
    return {k: describe[k] for k in keys if k in describe}


def score_heldout(
    tuning: Objective, levels: torch.Tensor, steps: int, seed: int, samples: int | None = None
) -> dict[str, Any]:
    """The tuned ``levels`` and every named grid scored on the held-out seed set ``seed``.

    On a reference solve (not an exact endpoint) the references are tightened below the smallest error
    scored (:meth:`Objective.settle`), as ``samplers bench`` does, so its ``--schedule-file`` score of the
    same seeds is this ``"tuned"`` number.
    """
    obj = Objective(
        tuning.sampler,
        tuning.problem_spec,
        model=tuning.model_spec,
        data=tuning.data_path,
        seed=seed,
        samples=samples,
        heldout=True,
        schedule=tuning.schedule_preset,
        options=tuning.options,
        dtype=str(tuning.dtype).removeprefix("torch."),
        metric=tuning.metric,
    )
    named = obj.named(steps)
    try:
        runs = [obj.run(levels)]
    except GridRefused:  # cannot happen for the grid the search accepted on the same sampler; kept honest
        runs = []
    obj.settle([*_runs(named), *runs])
    named = obj.rescore(named)
    best = best_named(named)
    tuned = obj.error(runs[0]) if runs else math.inf
    return {
        "seed": seed,
        "samples": obj.samples,
        "named": {k: v.error for k, v in named.items() if v.usable},
        "best_named": best.name,
        "best_named_error": best.error,
        "tuned": tuned,
        "ratio": best.error / tuned if tuned > 0 else math.inf,
        "reference_error": obj.reference_error_of(runs[0]) if runs else obj.reference_error,
    }


def interpolate_levels(levels: torch.Tensor, n: int) -> torch.Tensor:
    """``levels`` [N] resampled to ``n`` levels, linearly in log sigma over evenly spaced positions [n].

    Both ends are kept (position 0 is the first level, position 1 the last), so a grid tuned at one
    budget transfers to a neighbouring one with the same start and end.
    """
    grids._check_n(n)
    x = torch.log(levels.to(F64))
    if len(x) == 1 or n == 1:
        return torch.exp(x[:1].repeat(n)) if n == 1 else torch.exp(torch.linspace(float(x[0]), float(x[0]), n))
    pos = torch.linspace(0.0, len(x) - 1.0, n, dtype=F64)
    low = pos.floor().long().clamp(max=len(x) - 2)
    w = pos - low.to(F64)
    out = torch.exp(x[low] * (1 - w) + x[low + 1] * w)
    out = torch.where(w == 0, levels.to(F64)[low], out)  # nodes exactly (no exp-log rounding)
    out[-1] = levels[-1]
    return out


def transfer(
    schedule: grids.ScheduleFile,
    *,
    nfe: int | None = None,
    problem: str | None = None,
    model: str | None = None,
    data: str | None = None,
    seed: int = HELDOUT_SEED,
    samples: int | None = None,
) -> dict[str, Any]:
    """Score a tuned grid away from where it was tuned: at another ``nfe`` (interpolated in log sigma,
    :func:`interpolate_levels`) and/or on another ``problem`` or ``model`` (SPEC, with optional ``data``),
    against the best named grid there. Without ``problem`` and ``model``: what the file was tuned on.

    Returns ``{"sampler", "problem", "nfe", "steps", "tuned", "best_named", "best_named_error", "ratio"}``,
    or the same with ``"error"`` (and no scores) when the grid does not fit (e.g. outside the schedule's range).
    """
    meta = dict(schedule.meta)
    tuned_model = meta.get("model_spec")
    if problem is None and model is None:
        if tuned_model is not None:
            model, data = str(tuned_model), meta.get("data")
        else:
            problem = schedule.problem or "gmm2d"
    same = model == tuned_model if model is not None else problem == schedule.problem
    obj = Objective(
        schedule.sampler,
        problem,
        model=model,
        data=data,
        seed=seed,
        samples=samples,
        heldout=True,
        schedule=meta.get("schedule") if same else None,
        dtype=str(meta.get("dtype", "float32")),
        metric=None if meta.get("objective", "ode_error") == "ode_error" else str(meta["objective"]),
    )
    nfe = nfe if nfe is not None else schedule.nfe
    steps = steps_for_nfe(obj.scheduler, nfe)
    levels = interpolate_levels(schedule.grid, steps)
    where = f"model {model}" if model is not None else problem
    out: dict[str, Any] = {"sampler": schedule.sampler, "problem": where, "nfe": nfe, "steps": steps}
    try:
        run = obj.run(levels)
    except ValueError as exc:  # outside the schedule's range, or a grid the sampler refuses
        return {**out, "error": str(exc)}
    named = obj.named(steps)
    obj.settle([*_runs(named), run])
    best = best_named(obj.rescore(named))
    tuned = obj.error(run)
    return {
        **out,
        "tuned": tuned,
        "best_named": best.name,
        "best_named_error": best.error,
        "ratio": best.error / tuned if tuned > 0 else math.inf,
    }


# --------------------------------------------------------------------------------------------
# Schedule files for a scheduler, and into diffusers
# --------------------------------------------------------------------------------------------


def load_for(path: str | Path, sampler: str, steps: int | None = None) -> grids.ScheduleFile:
    """:func:`samplers.grids.load` for ``sampler`` at ``steps`` levels: a file tuned for another sampler or
    step count is refused with the reason (a grid is tuned to one sampler's error and one budget)."""
    return grids.load(path, sampler=sampler, steps=steps)


def apply_to_diffusers(scheduler: Any, path: str | Path, device: str | torch.device | None = None) -> None:
    """``set_timesteps`` on a *diffusers* scheduler with a schedule file's grid (the final 0 appended).

    For diffusers classes whose ``set_timesteps`` takes ``sigmas=`` (Euler, Heun, DPM-Solver++, UniPC with
    sigma-space flags, ...). The file must have been tuned for the matching samplers scheduler; a class without
    custom sigmas raises :class:`TuneError`. (Our own wrapper, ``to_diffusers(samplers.get(name,
    sigma_schedule="file:PATH"))``, carries the file in its config and needs none of this.)
    """
    import inspect

    schedule = grids.load(path)
    if "sigmas" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise TuneError(f"diffusers' {type(scheduler).__name__}.set_timesteps takes no custom sigmas")
    sigmas = [*schedule.sigmas, 0.0]
    scheduler.set_timesteps(sigmas=sigmas, device=device)
