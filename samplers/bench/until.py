"""``samplers bench --until``: for each sampler, the fewest NFE that reach a target error.

The target is either the sampling noise floor (``--until floor``: the primary distribution metric at
or below ``floor mean + 2 sd``, the rule that marks a table cell ``*``) or a number (``--until 0.01``:
the primary metric at or below it). The primary metric of a sampler is, for a number, the ODE error
where the run computes it and the sampler is deterministic (a stochastic sampler has no ODE
solution to compare with), else the first distribution metric of :data:`DISTRIBUTION_ORDER` the
run computes; for ``floor``, the first of those that has a noise floor. ``--metric`` therefore
chooses: ``-m sw`` searches on SW2 for every sampler.

The search, per sampler, over step counts in ``[lo, hi]`` (the bounds from ``--steps``, see
:func:`search_bounds`): exponential bracketing from ``lo`` (lo, 2 lo, 4 lo, ... clamped to ``hi``)
until a run reaches the target, then bisection between the last step count that missed it and the
first that reached it, down to neighbours. Every (sampler, steps) pair runs at most once (the runs
are cached and every run stays a row of the table), so a search costs about ``2 log2(S)`` runs.
The answer is the smallest step count ``S`` that reaches the target while ``S - 1`` (run too) does
not, which is the fewest steps when the error decreases with the step count; NFE is the row's
count of model calls, taken at the model.

:class:`UntilSearch` is the planner the runner drives (:func:`samplers.bench.runner.run_benchmark`'s
``search``); :func:`summarize` reads the answer off the finished rows (after any reference
tightening), and :func:`render`, :func:`csv_cells` present it.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from samplers.bench.runner import BenchInputError

if TYPE_CHECKING:
    from rich.console import Console

    from samplers.bench.distributed import DistContext
    from samplers.bench.runner import BenchResult, BenchRow

# Distribution metrics in the order the primary one is picked (SW1 first: least noisy on multimodal data).
DISTRIBUTION_ORDER: tuple[str, ...] = ("sw1", "sw", "mmd", "frechet", "kl", "fd_features")
FLOOR_SDS = 2.0  # "at the floor": metric <= floor mean + FLOOR_SDS * floor sd (the table's "*")
# The search's bounds when --steps is not given. Not 1: at one step a sampler with "leading" spacing
# starts at the clean end of the schedule, where its ODE error (to the ODE from its own start) is
# trivially small while its samples are far from the data.
DEFAULT_MIN_STEPS = 2
DEFAULT_MAX_STEPS = 1000
CSV_COLUMNS: tuple[str, ...] = ("until_metric", "until_target", "until")


class UntilInputError(BenchInputError):
    """A bad ``--until`` value or an option that conflicts with it (one line in the CLI)."""


@dataclass(frozen=True)
class UntilSpec:
    """What ``--until`` asks: ``target`` is ``"floor"`` or a positive error; ``lo``/``hi`` bound the steps."""

    target: str | float
    lo: int = DEFAULT_MIN_STEPS
    hi: int = DEFAULT_MAX_STEPS

    @property
    def floor(self) -> bool:
        return self.target == "floor"

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "steps_range": [self.lo, self.hi]}


def parse_until(text: str) -> str | float:
    """``--until`` text -> ``"floor"`` or a positive finite float (raises :class:`UntilInputError`)."""
    value = text.strip().lower()
    if value == "floor":
        return "floor"
    try:
        number = float(value)
    except ValueError:
        raise UntilInputError(f"--until: expected 'floor' or a positive error such as 0.01, got {text!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise UntilInputError(f"--until: the target error must be a positive finite number, got {text!r}")
    return number


def search_bounds(steps: Sequence[int] | None, max_steps: int) -> tuple[int, int]:
    """The step range searched: ``--steps`` not given -> ``[DEFAULT_MIN_STEPS, DEFAULT_MAX_STEPS]``; one
    value ``v`` -> ``[DEFAULT_MIN_STEPS, v]`` (``[v, v]`` for ``v`` below it); two or more -> ``[min, max]``
    (the values between are not run unless the search picks them)."""
    if not steps:
        return DEFAULT_MIN_STEPS, min(DEFAULT_MAX_STEPS, max_steps)
    bad = [s for s in steps if not isinstance(s, int) or s < 1 or s > max_steps]
    if bad:
        raise UntilInputError(f"--steps with --until: every bound must be an integer in [1, {max_steps:,}], got {bad}")
    if len(steps) == 1:
        return min(DEFAULT_MIN_STEPS, int(steps[0])), int(steps[0])
    return int(min(steps)), int(max(steps))


def primary_metric(target: str | float, metric_names: Sequence[str], stochastic: bool) -> str | None:
    """The metric a sampler is searched on (None: the run computes none that fits).

    For a number, the ODE error of a deterministic sampler comes first; otherwise the first metric of
    :data:`DISTRIBUTION_ORDER` the run computes (each has a noise floor). Decided from names and the
    sampler's kind only, so every rank of a torchrun job decides alike.
    """
    if target != "floor" and not stochastic and "ode_error" in metric_names:
        return "ode_error"
    return next((name for name in DISTRIBUTION_ORDER if name in metric_names), None)


def check_metrics(spec: UntilSpec, metric_names: Sequence[str]) -> None:
    """Refuse, before any run, a metric set that gives ``spec`` nothing to search on."""
    if not metric_names:
        raise UntilInputError("--until: the problem is speed only (no accuracy metric to reach)")
    if spec.floor and primary_metric("floor", metric_names, True) is None:
        raise UntilInputError(
            f"--until floor needs a distribution metric with a sampling noise floor "
            f"({', '.join(DISTRIBUTION_ORDER)}); --metric gives {', '.join(metric_names)}"
        )


def target_value(spec: UntilSpec, metric: str, floors: dict[str, dict[str, float]]) -> float:
    """The error ``metric`` must reach: the number given, or ``floor mean + FLOOR_SDS * sd``."""
    if not spec.floor:
        return float(spec.target)
    floor = floors.get(metric)
    if not floor:
        return math.nan
    return float(floor["mean"]) + FLOOR_SDS * float(floor.get("std", 0.0))


def _reaches(value: float | None, target: float) -> bool:
    return value is not None and math.isfinite(value) and math.isfinite(target) and value <= target


class UntilSearch:
    """The step planner for :func:`samplers.bench.runner.run_benchmark` (its ``search`` argument).

    For each scheduler the runner iterates :meth:`plan`, runs each step count it yields and appends
    the row to ``rows`` before asking for the next one. Only rank 0 has metrics; under torchrun its
    verdict (reached or not) is broadcast so every rank runs the same step counts.
    """

    def __init__(self, spec: UntilSpec) -> None:
        self.spec = spec
        self.runs: dict[tuple[str, int], BenchRow] = {}  # (scheduler, steps) -> its row: nothing runs twice

    def plan(
        self,
        scheduler: str,
        rows: list[BenchRow],
        metric_names: Sequence[str],
        noise_floor: dict[str, dict[str, float]],
        dist: DistContext,
    ) -> Iterator[int]:
        """Yield the step counts to run for ``scheduler``: bracketing, then bisection (see the module doc).

        A sampler is searched on the ODE error only while all its runs are deterministic (DDPM at one
        step is); when a stochastic run turns up, the search starts over on the distribution metric,
        from the cached runs.
        """
        while True:
            metric = self.metric(scheduler, metric_names)
            yield from self._search(scheduler, rows, metric_names, noise_floor, dist)
            if self.metric(scheduler, metric_names) == metric:
                return

    def metric(self, scheduler: str, metric_names: Sequence[str]) -> str | None:
        """The metric ``scheduler`` is judged on, given its runs so far (see :func:`primary_metric`)."""
        stochastic = any(row.stochastic for (name, _), row in self.runs.items() if name == scheduler)
        return primary_metric(self.spec.target, metric_names, stochastic)

    def _search(
        self,
        scheduler: str,
        rows: list[BenchRow],
        metric_names: Sequence[str],
        noise_floor: dict[str, dict[str, float]],
        dist: DistContext,
    ) -> Iterator[int]:
        lo, hi = self.spec.lo, self.spec.hi
        missed, reached = None, None  # the largest step count known to miss, the smallest known to reach
        steps = lo
        run = (scheduler, rows, metric_names, noise_floor, dist)
        while reached is None:  # bracketing: lo, 2 lo, 4 lo, ... up to hi
            ok = yield from self._run(steps, *run)
            if ok is None:
                return  # nothing to judge on (a stochastic sampler when only the ODE error is computed)
            if ok:
                reached = steps
            else:
                missed = steps
                if steps >= hi:
                    return
                steps = min(2 * steps, hi)
        while missed is not None and reached - missed > 1:  # bisection down to neighbours
            mid = (missed + reached) // 2
            ok = yield from self._run(mid, *run)
            if ok is None:
                return
            if ok:
                reached = mid
            else:
                missed = mid

    def _run(
        self,
        steps: int,
        scheduler: str,
        rows: list[BenchRow],
        metric_names: Sequence[str],
        noise_floor: dict[str, dict[str, float]],
        dist: DistContext,
    ) -> Generator[int, None, bool | None]:
        """Run ``steps`` (unless cached) and return whether it reaches the target (None: no metric to judge)."""
        key = (scheduler, steps)
        if key not in self.runs:
            yield steps
            self.runs[key] = rows[-1]
        metric = self.metric(scheduler, metric_names)
        if metric is None:
            return None
        verdict = None
        if dist.is_main:
            verdict = _reaches(self.runs[key].metrics.get(metric), target_value(self.spec, metric, noise_floor))
        return bool(dist.broadcast_object(verdict))


def summarize(result: BenchResult, spec: UntilSpec) -> dict[str, Any]:
    """The ``--until`` answer per scheduler, read off the finished rows (JSON-ready).

    Per scheduler: ``metric``, ``target``, ``reached``; when reached, ``steps``/``nfe``/``error`` of the
    smallest step count that reaches the target and ``below`` (the run at one step fewer, which
    misses it; None when the answer is the lower bound); otherwise ``best`` (the smallest error run).
    ``runs`` and ``model_calls`` are what the search cost; ``floor`` is the metric's noise-floor mean
    (None for the ODE error, which has an exact reference).
    """
    out: dict[str, Any] = {**spec.to_dict(), "floor_sds": FLOOR_SDS if spec.floor else None, "samplers": {}}
    names = list(dict.fromkeys(r.scheduler for r in result.rows))
    for name in names:
        rows = sorted((r for r in result.rows if r.scheduler == name), key=lambda r: r.steps)
        metric = primary_metric(spec.target, result.metric_names, any(r.stochastic for r in rows))
        entry: dict[str, Any] = {
            "metric": metric,
            "runs": len(rows),
            "model_calls": sum(r.nfe for r in rows),
            "max_nfe": rows[-1].nfe,
            "max_steps": rows[-1].steps,
        }
        out["samplers"][name] = entry
        if metric is None:
            entry.update(reached=False, target=None, best=None, reason="no metric to search on")
            continue
        target = target_value(spec, metric, result.noise_floor)
        floor = result.noise_floor.get(metric)
        entry.update(target=target, floor=float(floor["mean"]) if floor else None)
        passing = [r for r in rows if _reaches(r.metrics.get(metric), target)]
        entry["reached"] = bool(passing)
        if passing:
            first = passing[0]
            below = next((r for r in rows if r.steps == first.steps - 1), None)
            entry.update(_point(first, metric), below=_point(below, metric) if below is not None else None)
        else:
            finite = [r for r in rows if _finite(r.metrics.get(metric))]
            best = min(finite, key=lambda r: r.metrics[metric]) if finite else None
            entry["best"] = _point(best, metric) if best is not None else None
    return out


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _point(row: BenchRow, metric: str) -> dict[str, Any]:
    return {"steps": row.steps, "nfe": row.nfe, "error": row.metrics.get(metric)}


def describe(name: str, entry: dict[str, Any], spec: dict[str, Any]) -> str:
    """One line: ``"euler: reaches ODE err <= 0.01 at 57 NFE (57 steps), error 0.00987"`` or why not."""
    from samplers.bench.metrics import METRICS

    metric = entry.get("metric")
    if metric is None:
        return f"{name}: not searched ({entry.get('reason', 'no metric')})"
    label = METRICS[metric].label if metric in METRICS else metric
    what = f"{label} <= {_num(entry['target'])}" + (" (noise floor)" if spec.get("target") == "floor" else "")
    floor = entry.get("floor")
    if spec.get("target") != "floor" and floor is not None and entry["target"] < floor:
        what += f" (below its noise floor {_num(floor)}: sampling noise alone is larger)"
    if entry.get("reached"):
        line = f"{name}: reaches {what} at {entry['nfe']} NFE (steps {entry['steps']}), error {_num(entry['error'])}"
        below = entry.get("below")
        if below is not None:
            line += f"; {below['steps']} steps: {_num(below['error'])}"
        return line
    best = entry.get("best")
    line = f"{name}: does not reach {what} within {entry['max_nfe']} NFE (steps {entry['max_steps']})"
    if best is not None:
        line += f": best {_num(best['error'])} at {best['nfe']} NFE (steps {best['steps']})"
    return line


def _num(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.4g}" if 1e-3 <= abs(v) < 1000 else f"{v:.3e}"


def render(result: BenchResult, console: Console) -> None:
    """Print the ``--until`` answer: a header naming the rule, then one line per sampler."""
    until = result.until
    if not until:
        return
    lo, hi = until["steps_range"]
    rule = (
        f"noise floor (floor mean + {FLOOR_SDS:g} sd)" if until["target"] == "floor" else f"error {until['target']:g}"
    )
    metric = (
        "a distribution metric with a noise floor (named per line)"
        if until["target"] == "floor"
        else "the ODE error where the run has it and the sampler is deterministic, else a distribution metric "
        "(named per line)"
    )
    console.print(
        f"--until {rule}: fewest steps in [{lo}, {hi}] by bracketing and bisection; metric: {metric}",
        highlight=False,
        soft_wrap=True,
    )
    for name, entry in until["samplers"].items():
        console.print("  " + describe(name, entry, until), highlight=False, soft_wrap=True)


def csv_cells(result: BenchResult, row: BenchRow) -> dict[str, str]:
    """The ``--until`` columns of one CSV row: its scheduler's metric and target, and ``reached`` on the
    answer's row (``best`` on the best row of a scheduler that does not reach the target)."""
    entry = (result.until or {}).get("samplers", {}).get(row.scheduler)
    if not entry or entry.get("metric") is None:
        return dict.fromkeys(CSV_COLUMNS, "")
    mark = ""
    if entry.get("reached") and entry.get("steps") == row.steps:
        mark = "reached"
    elif not entry.get("reached") and (entry.get("best") or {}).get("steps") == row.steps:
        mark = "best"
    return {"until_metric": entry["metric"], "until_target": f"{entry['target']:.8g}", "until": mark}
