"""The benchmark runner: any registered scheduler, on an oracle problem, at several step counts.

Pure functions over dataclasses: :func:`run_benchmark` takes a :class:`BenchConfig` and returns a
:class:`BenchResult` (rows of accuracy and speed numbers, the sampling noise floor, fitted
convergence orders, and where the time went). :func:`write_json` / :func:`write_csv` write it with
a stable schema (:data:`SCHEMA_VERSION`). Printing, progress bars and plots live elsewhere.

What "the model" is: one oracle (exact denoiser) trained, as it were, with one noise schedule
(``BenchConfig.schedule``, DDPM's linear betas by default) that every scheduler able to run on any
schedule is given, so all of them sample the same model; a scheduler tied to a family (e.g.
``flow_euler``) keeps its own. x0 clipping is turned off (the oracle is exact and the data are
not in [-1, 1]). Each scheduler's noise levels come from its own plan, so the oracle always agrees
with the sampler about (alpha, sigma) at every call.

Timing of one row: ``wall_s`` covers ``set_timesteps`` through the last update (synchronized on
CUDA); ``model_s`` is the time inside the oracle's calls; ``step_overhead_ms = (wall - model) / steps``
is what the scheduler itself costs per step. The runner's own bookkeeping is reported in
``BenchResult.timing`` (``harness_s``).

Speed-only problems (``--problem dit``: a network with seeded random weights, see
:class:`~samplers.bench.problems.ModelProblem`) run the same loop with the network in place of the
oracle. There is no right answer to compare with, so their rows carry timings and no metrics.

Real-data problems (``--problem digits``: a trained network, see
:class:`~samplers.bench.problems.DigitsProblem`) run the oracle loop with the network as the
denoiser. Distribution metrics compare against the training split, the held-out split is the noise
floor, and the ODE error is measured against a high-accuracy solve of the network's own
probability-flow ODE (:mod:`samplers.bench.reference`) whose estimated error the result reports
(``problem["ode_reference"]``), next to the smallest ODE error of the table.
"""

from __future__ import annotations

import csv
import datetime
import inspect
import io
import json
import math
import os
import platform
import resource
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from samplers.bench import metrics as M
from samplers.bench.distributed import DistContext
from samplers.bench.problems import (
    DATA_STREAM,
    INIT_STREAM,
    REFERENCE_STREAM,
    BenchProblem,
    FeatureProblem,
    GaussianProblem,
    MixtureProblem,
    NetworkModel,
    OracleModel,
    OracleProblem,
    SampledProblem,
    get_problem,
    is_data_problem,
    is_speed_only,
)
from samplers.ops.reference import batch_seeds, philox_normal

SCHEMA_VERSION = 1
F64 = torch.float64

DEFAULT_SCHEDULERS: tuple[str, ...] = ("ddim", "euler", "heun", "euler_ancestral", "ddpm")
DEFAULT_STEPS: tuple[int, ...] = (10, 20, 50, 100)
DEFAULT_PROBLEM = "gmm2d"
DEFAULT_SAMPLES = 10000
DEFAULT_ODE_SAMPLES = 1000
DEFAULT_SCHEDULE = "linear"
# Problems whose sensible run differs from the oracle defaults (a trained network costs more per call).
PROBLEM_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {
        "schedulers": ("ddim", "euler", "heun", "euler_ancestral", "ddpm"),
        "steps": (10, 20, 50, 100),
        "samples": 256,
        "ode_samples": 256,
        # The network is EDM-preconditioned and trained on s in [0.002, 500]: EDM's Karras grid
        # (sigma 80 down to 0.002) is its natural schedule. On DDPM's linear one every sampler's last
        # level (s = 0.01 with linspace, up to 0.34 at 10 trailing steps) leaves an O(s) jump to the
        # data that hides its order.
        "schedule": "edm",
    },
}
GAUSSIAN_METRICS: tuple[str, ...] = ("sw", "frechet", "kl", "kl_exact", "ode_error")
MIXTURE_METRICS: tuple[str, ...] = ("sw", "sw1", "mmd", "frechet", "ode_error")
DATA_METRICS: tuple[str, ...] = ("sw", "mmd", "fd_features", "ode_error")  # real data (digits)
ALL_METRICS: tuple[str, ...] = tuple(M.METRICS)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
FLOOR_SETS = 8  # independent true sets used to estimate the sampling noise floor (mean and spread)

# The model's training schedule given to every scheduler that runs on any schedule.
SCHEDULE_PRESETS: dict[str, dict[str, Any]] = {
    "linear": {
        "schedule": "discrete",
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "num_train_timesteps": 1000,
    },
    "scaled_linear": {
        "schedule": "discrete",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "num_train_timesteps": 1000,
    },
    "cosine": {"schedule": "discrete", "beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000},
    "vp_cosine": {"schedule": "vp_cosine"},
    "vp_linear": {"schedule": "vp_linear"},
    "ve": {"schedule": "ve"},
    "edm": {"schedule": "edm"},
    "flow": {"schedule": "flow"},
    "default": {},
}
# Options that would make a sampler disagree with an exact oracle on data outside [-1, 1].
BENCH_SCHEDULER_DEFAULTS: dict[str, Any] = {"clip_sample": False, "thresholding": False}


class BenchInputError(ValueError):
    """Bad benchmark input (unknown name, bad number, incompatible option): one clear line for the CLI."""


MAX_STEPS = 100_000  # per run; a plan is O(steps) host memory and every step is a model call on every sample
THREADS_PER_CORE = 4  # --threads above this many per usable core only adds contention (and libgomp fails far above)
MEMORY_FRACTION = 0.8  # of the memory available when the run starts


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def max_threads() -> int:
    """The largest ``--threads`` accepted: :data:`THREADS_PER_CORE` per usable core."""
    return THREADS_PER_CORE * usable_cores()


def check_threads(threads: int) -> None:
    """``--threads``: 0 (torch's default) up to :func:`max_threads`."""
    limit = max_threads()
    if threads < 0 or threads > limit:
        raise BenchInputError(
            f"--threads must be in [0, {limit}] (at most {limit}: {THREADS_PER_CORE} per usable core, "
            f"{usable_cores()} here), got {threads}"
        )


def memory_limit_bytes() -> int:
    """What a run may plan to allocate on the host: :data:`MEMORY_FRACTION` of the memory available now
    (``MemAvailable`` of /proc/meminfo; physical memory where that is missing)."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            avail = 8 * 2**30
    return int(MEMORY_FRACTION * avail)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """What to run. ``metrics=None`` picks per problem (Gaussian: exact KL and ODE error too).

    Attributes:
        schedulers: registry names (built-in or plugin).
        steps: inference step counts (each >= 1).
        problem: problem name or spec (``"gmm2d:layout=ring"``).
        samples: total samples (split across ranks under torchrun).
        prediction_type: the oracle's output type; None = each scheduler's default.
        schedule: key of :data:`SCHEDULE_PRESETS` (the model's training schedule).
        options: extra scheduler config, applied to the schedulers that accept each key.
        ode_samples: how many samples get an exact ODE reference (integration cost).
        backend: sampler-update backend ("auto", "fused", "torch").
        model: ``--model`` SPEC (:mod:`samplers.bench.network`): a trained network replaces ``problem``.
        data: ``--data`` PATH, the data set a ``model`` run's distribution metrics compare with.
    """

    schedulers: tuple[str, ...] = DEFAULT_SCHEDULERS
    steps: tuple[int, ...] = DEFAULT_STEPS
    problem: str = DEFAULT_PROBLEM
    samples: int = DEFAULT_SAMPLES
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    prediction_type: str | None = None
    metrics: tuple[str, ...] | None = None
    schedule: str = DEFAULT_SCHEDULE
    options: dict[str, Any] = field(default_factory=dict)
    ode_samples: int = DEFAULT_ODE_SAMPLES
    backend: str = "auto"
    warmup: bool = True
    model: str | None = None
    data: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["schedulers"], d["steps"] = list(self.schedulers), list(self.steps)
        d["metrics"] = list(self.metrics) if self.metrics is not None else None
        return d


@dataclass
class ResolvedScheduler:
    name: str
    cls: type
    config: dict[str, Any]
    schedule_label: str
    prediction_type: str


@dataclass
class Prepared:
    """A validated configuration: the problem, scheduler configs and metric specs."""

    config: BenchConfig
    problem: BenchProblem
    schedulers: list[ResolvedScheduler]
    metrics: list[M.MetricSpec]
    device: torch.device
    dtype: torch.dtype


def _close(value: str, choices: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(value, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""


def _accepted_options(cls: type[Any]) -> set[str]:
    defaults = getattr(cls, "_signature_defaults", None)
    if defaults is not None:
        return set(defaults())
    return {k for k in inspect.signature(cls.__init__).parameters if k != "self"}


def _accepted_by(rs: ResolvedScheduler) -> set[str]:
    accepted = getattr(rs, "accepted", None)  # a foreign adapter knows its own (class, step or function keywords)
    return set(accepted) if accepted is not None else _accepted_options(rs.cls)


def problem_defaults(problem: str) -> dict[str, Any]:
    """Schedulers, steps, samples, ODE samples and model schedule a run of ``problem`` (a name or spec) uses
    unless told."""
    from samplers.bench.problems import parse_problem_spec

    try:
        name = parse_problem_spec(problem)[0]
    except ValueError:
        name = ""  # a malformed spec fails in prepare(), with its own message
    out = {
        "schedulers": DEFAULT_SCHEDULERS,
        "steps": DEFAULT_STEPS,
        "samples": DEFAULT_SAMPLES,
        "ode_samples": DEFAULT_ODE_SAMPLES,
        "schedule": DEFAULT_SCHEDULE,
    }
    out.update(PROBLEM_DEFAULTS.get(name, {}))
    return out


def resolve_scheduler(name: str, config: BenchConfig, problem: Any = None) -> ResolvedScheduler:
    """Look a scheduler up and build its config for this benchmark (raises BenchInputError).

    A foreign spec (``diffusers:Class``, ``k-diffusion:fn``, ``module:Name``) resolves through
    :mod:`samplers.bench.foreign` into an adapter the rest of the runner treats the same way.
    ``problem`` with a ``scheduler_preset`` (a ``--model`` network) gives the model schedule itself
    when ``config.schedule`` is ``"model"``.
    """
    from samplers.bench import foreign
    from samplers.registry import registry

    if foreign.is_foreign_spec(name):
        return foreign.resolve_foreign(name, config, problem)

    try:
        cls = registry().scheduler_class(name)
    except KeyError as exc:
        raise BenchInputError(str(exc)) from None
    accepted = _accepted_options(cls)
    kwargs: dict[str, Any] = {k: v for k, v in BENCH_SCHEDULER_DEFAULTS.items() if k in accepted}
    from samplers.bench.network import MODEL_SCHEDULE

    if config.schedule == MODEL_SCHEDULE:
        preset = getattr(problem, "scheduler_preset", {})
    else:
        preset = SCHEDULE_PRESETS[config.schedule]
    label = "own default"
    if preset and getattr(cls, "family", "any") == "any" and set(preset) <= accepted:
        kwargs.update(preset)
        label = config.schedule
    kwargs.update({k: v for k, v in config.options.items() if k in accepted})
    supported = tuple(getattr(cls, "prediction_types", ()))
    if config.prediction_type is not None:
        from samplers.parameterization import canonical_prediction_type

        try:
            pt = canonical_prediction_type(config.prediction_type)
        except ValueError as exc:
            raise BenchInputError(str(exc)) from None
        if supported and pt not in supported:
            raise BenchInputError(
                f"scheduler {name!r} does not take prediction type {pt!r}; it takes {', '.join(supported)}"
            )
        kwargs["prediction_type"] = pt
    pt = kwargs.get("prediction_type") or _default_prediction_type(cls)
    return ResolvedScheduler(name, cls, kwargs, label, pt)


def _default_prediction_type(cls: type) -> str:
    defaults: dict[str, Any] = getattr(cls, "_signature_defaults", dict)()
    return str(defaults.get("prediction_type", "epsilon"))


def prepare(config: BenchConfig) -> Prepared:
    """Validate everything before any sampling (so bad input fails fast, with one clear message).

    The phases: the numbers and names of ``config`` (:func:`_check_config`), the device, the problem
    (a ``--model`` network is loaded and probed here), the schedulers (each grid is built once), the
    metrics the problem can be scored with, and the memory the run will need (:func:`_check_memory`).
    """
    _check_config(config)
    device = _check_device(config)
    problem = _load_problem(config)
    scheds = _resolve_schedulers(config, problem)
    if is_speed_only(problem):
        if config.metrics:
            raise BenchInputError(
                f"problem {config.problem!r} is speed only (a network with random weights, no exact answer "
                "to score against): it takes no --metric"
            )
        return _check_memory(Prepared(config, problem, scheds, [], device, DTYPES[config.dtype]))
    specs = _metric_specs(config, problem)
    return _check_memory(Prepared(config, problem, scheds, specs, device, DTYPES[config.dtype]))


def _check_config(config: BenchConfig) -> None:
    """The step counts, sample counts, dtype, schedule, ``--model`` / ``--data`` pairing and backend."""
    if not config.schedulers:
        raise BenchInputError("--scheduler: give at least one scheduler name")
    if not config.steps:
        raise BenchInputError("--steps: give at least one step count")
    bad_steps = [s for s in config.steps if not isinstance(s, int) or s < 1]
    if bad_steps:
        raise BenchInputError(f"--steps: every step count must be an integer >= 1, got {bad_steps}")
    too_many = [s for s in config.steps if s > MAX_STEPS]
    if too_many:
        raise BenchInputError(f"--steps: at most {MAX_STEPS:,} steps per run, got {too_many}")
    if config.samples < 2:
        raise BenchInputError(f"--samples must be >= 2, got {config.samples}")
    if config.dtype not in DTYPES:
        raise BenchInputError(
            f"--dtype: unknown dtype {config.dtype!r}{_close(config.dtype, list(DTYPES))} "
            f"(expected one of: {', '.join(DTYPES)})"
        )
    from samplers.bench.network import MODEL_SCHEDULE

    if config.schedule == MODEL_SCHEDULE and config.model is None:
        raise BenchInputError(f"--schedule {MODEL_SCHEDULE}: the training schedule of a --model network; give --model")
    if config.data is not None and config.model is None:
        raise BenchInputError("--data: the data set of a --model network; give --model too")
    if config.schedule not in SCHEDULE_PRESETS and config.schedule != MODEL_SCHEDULE:
        raise BenchInputError(
            f"--schedule: unknown schedule {config.schedule!r}{_close(config.schedule, list(SCHEDULE_PRESETS))} "
            f"(expected one of: {', '.join(SCHEDULE_PRESETS)})"
        )
    if config.backend not in ("auto", "fused", "torch"):
        raise BenchInputError(f"--backend must be auto, fused or torch, got {config.backend!r}")
    if config.ode_samples < 1:
        raise BenchInputError(f"ode_samples must be >= 1, got {config.ode_samples}")


def _check_device(config: BenchConfig) -> torch.device:
    try:
        device = torch.device(config.device)
    except RuntimeError:
        raise BenchInputError(f"--device: cannot parse device {config.device!r} (expected cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchInputError("--device cuda: no CUDA device is available to torch here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise BenchInputError(f"--device must be cpu or cuda, got {config.device!r}")
    return device


def _load_problem(config: BenchConfig) -> BenchProblem:
    """``--problem`` by name, or a ``--model`` network loaded and probed here, before any sampling."""
    from samplers.bench.network import ModelInputError, load_model_problem

    problem: BenchProblem
    try:
        if config.model is not None:
            problem = load_model_problem(config.model, config.data)
        else:
            problem = get_problem(config.problem)
    except (ValueError, TypeError, ModelInputError) as exc:
        raise BenchInputError(str(exc)) from None
    return problem


def _resolve_schedulers(config: BenchConfig, problem: BenchProblem) -> list[ResolvedScheduler]:
    """Each ``--scheduler`` resolved, ``--option`` keys checked, and every grid built once (errors surface now)."""
    scheds = [resolve_scheduler(n, config, problem) for n in config.schedulers]
    if len({s.name for s in scheds}) != len(scheds):
        raise BenchInputError(f"--scheduler lists a name twice: {list(config.schedulers)}")
    for key in config.options:
        if not any(key in _accepted_by(s) for s in scheds):
            raise BenchInputError(f"--option {key!r} is not a config option of any of {[s.name for s in scheds]}")
    for rs in scheds:  # config and grid errors (e.g. a prediction type a schedule cannot invert) surface now
        for steps in sorted(set(config.steps)):
            try:
                built = _build_scheduler(rs)
                built.set_timesteps(steps)
            except (ValueError, TypeError) as exc:
                raise BenchInputError(f"scheduler {rs.name!r} at {steps} steps: {exc}") from None
            _refuse_inversion(rs.name, built)
    return scheds


def _refuse_inversion(name: str, scheduler: Any) -> None:
    """An inversion (its level rises: data to noise) has nothing the bench can score: it samples noise to data."""
    plan = getattr(scheduler, "plan", None)
    if plan is not None and plan.inverts:
        raise BenchInputError(
            f"scheduler {name!r} runs from data to noise (an inversion): the bench scores noise-to-data sampling; "
            "check an inversion by reconstruction instead (invert, then sample back with the sampler it inverts)"
        )


def _metric_specs(config: BenchConfig, problem: OracleProblem) -> list[M.MetricSpec]:
    """``--metric`` (or the problem's defaults) resolved and checked against what the problem can score."""
    names = config.metrics
    if config.model is not None and names is not None and not is_data_problem(problem):
        if set(names) - {"ode_error"}:
            raise BenchInputError(
                f"--metric {','.join(names)}: a --model run without --data measures ode_error only; give --data "
                "for distribution metrics"
            )
    if names is None and hasattr(problem, "default_metrics"):
        names = tuple(problem.default_metrics)
    if names is None:
        if is_data_problem(problem):
            names = DATA_METRICS
        else:
            names = GAUSSIAN_METRICS if isinstance(problem, GaussianProblem) else MIXTURE_METRICS
    try:
        specs = M.resolve_metrics(names)
    except ValueError as exc:
        raise BenchInputError(str(exc)) from None
    for spec in specs:
        if spec.name in M.FEATURE_METRICS and not hasattr(problem, "features"):
            raise BenchInputError(
                f"--metric {spec.name}: problem {config.problem!r} has no feature extractor (a real-data "
                "problem such as digits has one)"
            )
    if not specs:
        raise BenchInputError("--metric: give at least one metric")
    return specs


def estimate_bytes(prepared: Prepared) -> dict[str, int]:
    """The host memory a run plans to allocate, by cause (bytes; an estimate from the sizes, made before
    anything is allocated). Keys: ``samples`` (the sampling loop's state and the oracle's float64 work),
    ``references`` (true sets, noise-floor sets, metric work on rank 0), ``mixture`` (the exact mixture
    target's pairwise terms and the denoiser's work arrays) and ``ode`` (the ODE reference's stages).
    """
    cfg, problem = prepared.config, prepared.problem
    n, d = int(cfg.samples), int(problem.dim)
    item = torch.empty((), dtype=prepared.dtype).element_size()
    # x, x_in, output, noise, history (<= 2), prev, seeds; the oracle's x64, x0 and output in float64
    out = {"samples": n * d * (8 * item + 4 * 8) + 3 * n * 8}
    if is_speed_only(problem) or not prepared.metrics:
        out.update(references=0, mixture=0, ode=0)
        return out
    projections = 64 if d == 2 else 128
    # truth, FLOOR_SETS floor sets, the gathered samples; sorted projections and exact quantiles (SW)
    out["references"] = n * d * 8 * (2 + FLOOR_SETS) + 4 * projections * n * 8 + 3 * 2000 * 2000 * 8 + 8 * d * d * 8
    k = int(getattr(problem, "num_components", 0) or 0)
    mixture = 0
    if k:
        rows = min(n, max(1, (1 << 24) // (k * d)))  # GaussianMixtureProblem's chunking
        mixture += 6 * rows * k * d * 8  # the denoiser's [rows, K, d] work arrays
        if {s.name for s in prepared.metrics} & {"sw", "sw1", "mmd"}:
            mixture += 5 * k * k * d * d * 8  # ExactTarget: [K, K, d, d] pairwise covariance sums and factors
    out["mixture"] = mixture
    out["ode"] = min(cfg.ode_samples, n) * d * 8 * 8
    return out


def _check_memory(prepared: Prepared) -> Prepared:
    """Refuse a run whose :func:`estimate_bytes` is over :func:`memory_limit_bytes` (and, for CUDA, the
    samples over the device's free memory), naming what takes the memory and the limit."""
    parts = estimate_bytes(prepared)
    total, limit = sum(parts.values()), memory_limit_bytes()
    cfg = prepared.config
    gib = 2**30
    if total > limit:
        cause = max(parts, key=lambda k: parts[k])
        if cause == "mixture":
            what = f"problem {cfg.problem!r} ({getattr(prepared.problem, 'num_components', '?')} components)"
            fix = "use fewer components or a smaller dimension"
        elif cause == "ode":
            what, fix = f"--ode-samples {cfg.ode_samples}", "lower --ode-samples"
        else:
            what, fix = f"--samples {cfg.samples:,} of dimension {prepared.problem.dim}", "lower --samples"
        raise BenchInputError(
            f"{what}: the run needs about {total / gib:.1f} GiB of memory, over the limit of {limit / gib:.1f} GiB "
            f"({int(MEMORY_FRACTION * 100)} % of the memory available now); {fix}"
        )
    if prepared.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(prepared.device)
        if parts["samples"] > MEMORY_FRACTION * free:
            raise BenchInputError(
                f"--samples {cfg.samples:,}: the samples need about {parts['samples'] / gib:.1f} GiB on "
                f"{prepared.device}, over the limit of {MEMORY_FRACTION * free / gib:.1f} GiB "
                f"({int(MEMORY_FRACTION * 100)} % of its free memory); lower --samples"
            )
    return prepared


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class BenchRow:
    """One (scheduler, steps) run. Times in seconds unless the name says otherwise."""

    scheduler: str
    steps: int
    nfe: int
    prediction_type: str
    schedule: str
    stochastic: bool
    order: int
    metrics: dict[str, float]
    wall_s: float
    model_s: float
    samples_per_s: float
    step_overhead_ms: float
    peak_mem_bytes: int
    peak_mem_kind: str
    metrics_s: float
    error: str | None = None  # a foreign sampler that failed at run time: its message (numbers NaN)


@dataclass
class BenchResult:
    """Everything a run produced; ``to_dict`` is the JSON document (schema :data:`SCHEMA_VERSION`)."""

    config: dict[str, Any]
    problem: dict[str, Any]
    environment: dict[str, Any]
    metric_names: list[str]
    rows: list[BenchRow]
    noise_floor: dict[str, dict[str, float]]
    orders: dict[str, dict[str, dict[str, float]]]
    timing: dict[str, float]
    schedulers: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # "scheduler@steps" -> [k, d] (rank 0)
    truth: torch.Tensor | None = field(default=None, repr=False)
    until: dict[str, Any] | None = None  # the --until answer (samplers.bench.until.summarize); in JSON only when set

    def to_dict(self) -> dict[str, Any]:
        extra = {"until": self.until} if self.until is not None else {}
        return _jsonable(
            {
                "schema_version": SCHEMA_VERSION,
                "kind": "samplers.bench",
                "config": self.config,
                "problem": self.problem,
                "environment": self.environment,
                "metric_names": self.metric_names,
                "schedulers": self.schedulers,
                "noise_floor": self.noise_floor,
                "rows": [asdict(r) for r in self.rows],
                "orders": self.orders,
                "timing": self.timing,
                **extra,
            }
        )


def _jsonable(obj: Any) -> Any:
    """NaN/inf -> None (strict JSON), tensors -> lists, tuples -> lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    return obj


CSV_COLUMNS: tuple[str, ...] = (
    "schema_version",
    "problem",
    "scheduler",
    "prediction_type",
    "schedule",
    "steps",
    "nfe",
    "stochastic",
    *ALL_METRICS,
    "wall_s",
    "model_s",
    "samples_per_s",
    "step_overhead_ms",
    "peak_mem_bytes",
    "peak_mem_kind",
    "samples",
    "device",
    "dtype",
    "seed",
    "world_size",
    "error",
)


def to_csv(result: BenchResult) -> str:
    """CSV text with :data:`CSV_COLUMNS` (every known metric has a column; blank when not computed)."""
    from samplers.bench import until as U

    buf = io.StringIO()
    columns = list(CSV_COLUMNS) + (list(U.CSV_COLUMNS) if result.until is not None else [])
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    cfg, env = result.config, result.environment
    for r in result.rows:
        row: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "problem": result.problem.get("spec", result.problem.get("name")),
            "scheduler": r.scheduler,
            "prediction_type": r.prediction_type,
            "schedule": r.schedule,
            "steps": r.steps,
            "nfe": r.nfe,
            "stochastic": int(r.stochastic),
            "wall_s": f"{r.wall_s:.6g}",
            "model_s": f"{r.model_s:.6g}",
            "samples_per_s": f"{r.samples_per_s:.6g}",
            "step_overhead_ms": f"{r.step_overhead_ms:.6g}",
            "peak_mem_bytes": r.peak_mem_bytes,
            "peak_mem_kind": r.peak_mem_kind,
            "samples": cfg["samples"],
            "device": cfg["device"],
            "dtype": cfg["dtype"],
            "seed": cfg["seed"],
            "world_size": env.get("world_size", 1),
            "error": r.error or "",
        }
        for name in ALL_METRICS:
            v = r.metrics.get(name)
            row[name] = "" if v is None or not math.isfinite(v) else f"{v:.8g}"
        if result.until is not None:
            row.update(U.csv_cells(result, r))
        writer.writerow(row)
    return buf.getvalue()


def _target(path: str | os.PathLike) -> Path:
    """The file a path names, through any symlinks (so a write replaces the file, not the link)."""
    return Path(os.path.realpath(os.fspath(path)))


def check_writable(path: str | os.PathLike, flag: str) -> Path:
    """Raise BenchInputError unless ``path`` can be written as :func:`write_text_atomic` writes it.

    Checked before any work: the folder exists and takes a new file (tried, then removed), and an
    existing path is a regular, writable file (a FIFO, device or socket is refused, not opened: opening
    a FIFO blocks until a reader comes). Nothing at ``path`` itself is created or changed.
    """
    p = Path(path)
    if p.is_dir():
        raise BenchInputError(f"{flag}: {str(p)!r} is a directory, expected a file path")
    real = _target(p)
    parent = real.parent
    if not parent.is_dir():
        if parent.exists():
            raise BenchInputError(f"{flag}: cannot write {str(p)!r}: {str(p.parent)!r} is not a folder")
        raise BenchInputError(f"{flag}: folder {str(p.parent)!r} does not exist")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise BenchInputError(f"{flag}: cannot write {str(p)!r}: {exc.strerror or exc}") from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise BenchInputError(
                f"{flag}: {str(p)!r} is not a regular file (a FIFO, device or socket); give a file path"
            )
        if not os.access(real, os.W_OK):
            raise BenchInputError(f"{flag}: cannot write {str(p)!r}: the file is read-only")
    # os.access says yes to root everywhere (and knows nothing of /proc or read-only mounts): try it.
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise BenchInputError(f"{flag}: cannot write {str(p)!r}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)
    return p


def check_outputs(paths: dict[str, str | os.PathLike | None]) -> None:
    """:func:`check_writable` for each ``flag -> path`` given, and no two flags naming one file
    (compared after resolving symlinks and relative paths)."""
    seen: dict[Path, str] = {}
    for flag, path in paths.items():
        if path is None:
            continue
        check_writable(path, flag)
        real = _target(path)
        if real in seen:
            raise BenchInputError(
                f"{seen[real]} and {flag} name the same file {str(real)!r}: give each output its own path"
            )
        seen[real] = flag


def write_text_atomic(path: str | os.PathLike, text: str | bytes) -> Path:
    """Write ``text`` (str as UTF-8, or bytes) to ``path`` so that it is either the whole new content or untouched.

    The text goes to a temporary file in the same folder, is flushed and fsynced, and replaces the
    target in one ``os.replace`` (atomic on POSIX and Windows); on any error the temporary file is
    removed and the previous file is left as it was. A symlink is written through to its target.
    An existing file keeps its permission bits.
    """
    real = _target(path)
    try:
        mode = stat.S_IMODE(os.stat(real).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, real)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return Path(path)


def write_json(result: BenchResult, path: str | os.PathLike) -> Path:
    """The result as JSON (schema :data:`SCHEMA_VERSION`), written atomically (:func:`write_text_atomic`)."""
    return write_text_atomic(path, json.dumps(result.to_dict(), indent=2) + "\n")


def write_csv(result: BenchResult, path: str | os.PathLike) -> Path:
    """:func:`to_csv`, written atomically (:func:`write_text_atomic`)."""
    return write_text_atomic(path, to_csv(result))


# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------


class _PeakMemory:
    """Peak memory of a block: CUDA max_memory_allocated, else the process's peak-RSS growth.

    On Linux the RSS high-water mark is reset through ``/proc/self/clear_refs`` (value 5) so each
    block reads its own peak; elsewhere the lifetime ``ru_maxrss`` growth is a lower bound.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "none"
        self.base = 0

    @staticmethod
    def _status_kb(key: str) -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.kind = "cuda_max_allocated"
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            rss = self._status_kb("VmRSS:")
            if rss is None:
                raise OSError
            self.base, self.kind = rss * 1024, "rss_peak"
        except OSError:
            self.base, self.kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
        return self

    def peak(self) -> int:
        if self.kind == "cuda_max_allocated":
            return int(torch.cuda.max_memory_allocated(self.device) - self.base)
        if self.kind == "rss_peak":
            hwm = self._status_kb("VmHWM:")
            return max(0, (hwm or 0) * 1024 - self.base)
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base)

    def __exit__(self, *exc: Any) -> None:
        return None


class ProgressSink(Protocol):
    """What the runner tells a progress display (the CLI's rich bars; None = nothing)."""

    def row_started(self, label: str, calls: int) -> None: ...

    def advanced(self, calls: int) -> None: ...

    def row_finished(self) -> None: ...


class StepPlanner(Protocol):
    """Chooses a scheduler's step counts as its rows come in (``--until``: :class:`samplers.bench.until.UntilSearch`).

    :meth:`plan` is iterated once per scheduler; each step count it yields is run and its row appended
    to ``rows`` before the next one is asked for.
    """

    def plan(
        self,
        scheduler: str,
        rows: list[BenchRow],
        metric_names: Sequence[str],
        noise_floor: dict[str, dict[str, float]],
        dist: DistContext,
    ) -> Iterator[int]: ...


@dataclass
class SampleRun:
    """Output of :func:`sample_oracle`: samples [n, d] and the timings of the loop."""

    samples: torch.Tensor
    nfe: int
    wall_s: float
    model_s: float
    peak_mem_bytes: int
    peak_mem_kind: str
    stochastic: bool
    start: tuple[float, float, float, float]  # (init_noise_sigma, input_scale[0], alpha_0, sigma_0)


def sample_oracle(
    scheduler: Any,
    problem: BenchProblem,
    noise: torch.Tensor,
    seeds: torch.Tensor,
    steps: int,
    backend: str = "auto",
    progress: ProgressSink | None = None,
    measure_memory: bool = True,
    model: NetworkModel | None = None,
) -> SampleRun:
    """Run ``scheduler`` for ``steps`` steps with the exact oracle from standard-normal ``noise`` [n, d].

    The loop is the diffusers one (set_timesteps, scale_model_input, model, step). The oracle is
    evaluated at the scheduler's own (alpha, sigma) for each call when its plan exposes them.
    ``model``, if given, replaces the oracle: a network called as ``model(x_in, t)`` with the
    scheduler's timestep (speed-only problems).
    """
    from samplers.bench.foreign import ForeignRun

    if isinstance(scheduler, ForeignRun):  # diffusers / k-diffusion loop, NFE counted at the model
        return scheduler.run(problem, noise, seeds, steps, progress, measure_memory, model)
    device = noise.device
    oracle: OracleModel | None = None
    call: OracleModel | NetworkModel
    if model is None:
        assert not is_speed_only(problem), "a speed-only problem has no oracle: pass its network as model"
        prediction_type = getattr(scheduler, "prediction_type", None) or scheduler.config.get(
            "prediction_type", "epsilon"
        )
        oracle = call = OracleModel(problem, scheduler.schedule, prediction_type)
    else:
        call = model
    calls_before = call.calls
    mem = _PeakMemory(device) if measure_memory else None
    if mem is not None:
        mem.__enter__()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    scheduler.set_timesteps(steps, device=device)
    plan = getattr(scheduler, "plan", None)
    levels = None
    if oracle is not None and plan is not None and getattr(plan, "model_alpha", None) is not None:
        levels = (oracle, plan.model_alpha.tolist(), plan.model_sigma.tolist())
    x = noise * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    if progress is not None:
        progress.row_started(f"{scheduler.name} x{steps}", len(timesteps))
    x, model_s, pending = _sampling_loop(scheduler, timesteps, call, levels, x, seeds, backend, progress)
    wall = time.perf_counter() - t0
    if progress is not None:
        if pending:
            progress.advanced(pending)
        progress.row_finished()
    peak = mem.peak() if mem is not None else 0
    stochastic = bool(
        any(getattr(plan, "stochastic_calls", [])) if plan is not None else getattr(scheduler, "stochastic", True)
    )
    start = _start_level(scheduler, plan, timesteps)
    return SampleRun(x, call.calls - calls_before, wall, model_s, peak, mem.kind if mem else "none", stochastic, start)


def _sampling_loop(
    scheduler: Any,
    timesteps: Any,
    call: OracleModel | NetworkModel,
    levels: tuple[OracleModel, list[float], list[float]] | None,
    x: torch.Tensor,
    seeds: torch.Tensor,
    backend: str,
    progress: ProgressSink | None,
) -> tuple[torch.Tensor, float, int]:
    """The timed loop over ``timesteps`` from ``x`` [n, d]: ``(samples, seconds in the model, progress
    calls not yet reported)``. ``levels``: the oracle with the plan's (alpha, sigma) per call, used instead of
    ``call(x_in, t)`` so no interpolation of fractional timesteps can disagree with the sampler."""
    device = x.device
    on_cuda = device.type == "cuda"
    clock = time.perf_counter
    ev_pairs: list[tuple[Any, Any]] = []
    model_s = 0.0
    pending = 0
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(x, t)
        if on_cuda:
            start_ev, end_ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start_ev.record()
        else:
            m0 = clock()
        if levels is not None:  # the oracle at the sampler's own (alpha, sigma)
            out = levels[0].at(x_in, levels[1][i], levels[2][i])
        else:
            out = call(x_in, t)
        if on_cuda:
            end_ev.record()
            ev_pairs.append((start_ev, end_ev))
        else:
            model_s += clock() - m0
        x = scheduler.step(out, t, x, seeds=seeds, backend=backend).prev_sample
        if progress is not None:
            pending += 1
            if pending == 64:
                progress.advanced(pending)
                pending = 0
    if on_cuda:
        torch.cuda.synchronize(device)
        model_s = sum(a.elapsed_time(b) for a, b in ev_pairs) / 1000.0
    return x, model_s, pending


def _start_level(scheduler: Any, plan: Any, timesteps: Any) -> tuple[float, float, float, float]:
    """Where the sampler started: ``(init_noise_sigma, input_scale[0], alpha_0, sigma_0)``."""
    if plan is not None:
        return (
            float(scheduler.init_noise_sigma),
            float(plan.input_scale[0]),
            float(plan.model_alpha[0]),
            float(plan.model_sigma[0]),
        )
    a0, s0 = scheduler.schedule.alpha_sigma(torch.as_tensor(timesteps[0]).cpu())
    return (float(scheduler.init_noise_sigma), 1.0, float(a0), float(s0))


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def _environment(prepared: Prepared, dist: DistContext) -> dict[str, Any]:
    import samplers
    from samplers.ops import _build

    status = _build.BUILD_STATUS.get("update")
    backend = prepared.config.backend
    if backend == "torch" or prepared.dtype == torch.float64:
        live = "torch reference"
    elif status is None or status.backend == "torch":
        live = f"torch reference ({status.reason if status else 'extension not loaded'})"
    else:
        live = f"fused {status.backend}"
    dev = prepared.device
    return {
        "samplers": samplers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device_name": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else (platform.processor() or platform.machine()),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": _load_average(),
        "world_size": dist.world_size,
        "dist_backend": dist.backend,
        "sampler_update_backend": live,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _scheduler_info(rs: ResolvedScheduler) -> dict[str, Any]:
    """Class, source distribution and the full config a scheduler ran with (provenance for plugins)."""
    from samplers.bench.foreign import ForeignScheduler
    from samplers.registry import registry

    if isinstance(rs, ForeignScheduler):
        return rs.info()

    entry = registry().entries.get(rs.name)
    sched = _build_scheduler(rs)
    return {
        "class": f"{rs.cls.__module__}.{rs.cls.__qualname__}",
        "source": str(entry.source) if entry is not None else "?",
        "family": getattr(rs.cls, "family", "?"),
        "order": getattr(rs.cls, "order", None),
        "nfe_per_step": getattr(rs.cls, "nfe_per_step", None),
        "schedule": rs.schedule_label,
        "config": _jsonable(dict(getattr(sched, "config", rs.config))),
    }


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _build_scheduler(rs: ResolvedScheduler) -> Any:
    from samplers.bench.foreign import ForeignScheduler

    if isinstance(rs, ForeignScheduler):
        return rs.build()
    try:
        return rs.cls.from_config(rs.config) if hasattr(rs.cls, "from_config") else rs.cls(**rs.config)
    except (ValueError, TypeError) as exc:
        raise BenchInputError(f"scheduler {rs.name!r}: {exc}") from None


def _initial_noise(seeds: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    return philox_normal(seeds, INIT_STREAM, dim).to(dtype)


def _exact_output_gaussian(
    rs: ResolvedScheduler, problem: GaussianProblem, steps: int, device: torch.device, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of a deterministic sampler's output on the Gaussian problem, exactly.

    Oracle and update are affine in the initial noise ``z``, so ``out(z) = A z + b``: probing with
    ``z = 0`` and the unit vectors gives ``b`` and ``A``, and ``z ~ N(0, I)`` maps to ``N(b, A A^T)``.
    """
    d = problem.dim
    probe = torch.cat([torch.zeros(1, d, dtype=F64), torch.eye(d, dtype=F64)]).to(device)
    run = sample_oracle(
        _build_scheduler(rs),
        problem,
        probe,
        batch_seeds(0, d + 1, device=device),
        steps,
        backend,
        measure_memory=False,
    )
    out = run.samples.to(F64).cpu()
    b = out[0]
    a = (out[1:] - b).T
    return b, a @ a.T


@dataclass
class _References:
    """What a run's rows are scored against (filled on rank 0; empty for a speed-only problem).

    ``truth`` [n, d] is the exact sample set (or a real-data problem's reference split), ``mean`` /
    ``cov`` the exact moments (every rank), ``target`` the closed forms of a Gaussian mixture, and
    ``solves`` the high-accuracy ODE solves of a network problem (real data, or a ``--model`` without data).
    """

    truthless: bool = False  # a --model network without --data: no samples to compare with, the ODE error only
    truth: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    cov: torch.Tensor | None = None
    bandwidth: float = 1.0
    target: M.ExactTarget | None = None
    features: Callable[[torch.Tensor], torch.Tensor] | None = None
    feature_ref: tuple[torch.Tensor, torch.Tensor] | None = None
    truth_kernel: float | None = None
    noise_floor: dict[str, dict[str, float]] = field(default_factory=dict)
    ode_noise: torch.Tensor | None = None  # the first samples' initial noise, given an ODE reference
    ode_cache: dict[tuple, torch.Tensor] = field(default_factory=dict)
    solves: _ReferenceSolves | None = None
    solved_rows: list[tuple[int, tuple[str, str], torch.Tensor]] = field(default_factory=list)  # (row, key, samples)

    def inputs(
        self,
        samples: torch.Tensor,
        ode_ref: torch.Tensor | None = None,
        exact: tuple[torch.Tensor, torch.Tensor] | None = None,
        deterministic: bool = True,
    ) -> M.MetricInputs:
        """The metrics' view of ``samples`` [n, d] against these references."""
        return M.MetricInputs(
            samples,
            self.truth,
            self.mean,
            self.cov,
            self.bandwidth,
            ode_ref,
            exact,
            deterministic,
            self.target,
            self.features,
            self.feature_ref,
            self.truth_kernel,
        )


@dataclass
class _RunContext:
    """One run's fixed inputs and running totals, shared by the phases of :func:`run_benchmark`."""

    prepared: Prepared
    dist: DistContext
    oracle: OracleProblem | None  # None: a speed-only problem, sampled with ``network``
    network: NetworkModel | None
    seeds_local: torch.Tensor  # this rank's per-sample seeds [n_local] and initial noise [n_local, d]
    noise_local: torch.Tensor
    timing: dict[str, float]
    refs: _References = field(default_factory=_References)
    rows: list[BenchRow] = field(default_factory=list)
    kept: dict[str, torch.Tensor] = field(default_factory=dict)  # "scheduler@steps" -> samples, for plots

    @property
    def config(self) -> BenchConfig:
        return self.prepared.config

    @property
    def wanted(self) -> set[str]:
        return {s.name for s in self.prepared.metrics}


def run_benchmark(
    config: BenchConfig,
    progress: ProgressSink | None = None,
    dist: DistContext | None = None,
    keep_samples: int = 0,
    search: StepPlanner | None = None,
) -> BenchResult:
    """Run every (scheduler, steps) pair of ``config``; see the module docstring for what is measured.

    Under torch.distributed (``dist.world_size > 1``) each rank samples its shard; rank 0 gathers
    and computes metrics, and its result is the one to report (other ranks' rows carry no metrics).
    ``keep_samples`` keeps that many of each run's gathered samples (and of the truth set) in the
    result, for plots (0 keeps none). ``search``, if given, picks each scheduler's step counts as the
    rows come in (``config.steps`` then only bounds the search and warms up at its smallest value).

    The phases: validate (:func:`prepare`), build a speed-only network, the references the rows are
    scored against (:func:`_prepare_references`), warm-up (:func:`_warm_up`), the rows
    (:func:`_run_row`), and the result with its timing (:func:`_assemble_result`).
    """
    t_begin = time.perf_counter()
    prepared = prepare(config)
    dist = dist or DistContext()
    n = config.samples
    n_local, offset = dist.shard(n)
    if n < dist.world_size:
        raise BenchInputError(
            f"--samples {n} is smaller than the world size {dist.world_size}: every rank needs a sample"
        )
    seeds_local = batch_seeds(config.seed, n_local, sample_offset=offset, device=prepared.device)
    noise_local = _initial_noise(seeds_local, prepared.problem.dim, prepared.dtype)
    timing = dict.fromkeys(
        ("reference_s", "warmup_s", "sampling_s", "model_s", "metrics_s", "gather_s", "sync_s", "model_init_s"), 0.0
    )
    oracle, network = _build_network(prepared, timing)
    ctx = _RunContext(prepared, dist, oracle, network, seeds_local, noise_local, timing)
    ctx.refs = _prepare_references(ctx)
    if config.warmup:
        _warm_up(ctx)
    metric_names = [s.name for s in prepared.metrics]
    for rs in prepared.schedulers:
        plan = (
            config.steps
            if search is None
            else search.plan(rs.name, ctx.rows, metric_names, ctx.refs.noise_floor, dist)
        )
        for steps in plan:
            ctx.rows.append(_run_row(ctx, rs, steps, progress, keep_samples))
    return _assemble_result(ctx, t_begin, keep_samples)


def _build_network(prepared: Prepared, timing: dict[str, float]) -> tuple[OracleProblem | None, NetworkModel | None]:
    """``(oracle problem, None)``, or for a speed-only problem ``(None, its network)``: built (weights drawn,
    moved to the device) once, outside the rows."""
    problem = prepared.problem
    if not is_speed_only(problem):
        return problem, None
    t_init = time.perf_counter()
    network = problem.make_model(prepared.device, prepared.dtype)
    timing["model_init_s"] = time.perf_counter() - t_init
    return None, network


def _prepare_references(ctx: _RunContext) -> _References:
    """The exact references, on rank 0 only (they do not depend on the split): truth, noise floor, ODE noise."""
    t_ref = time.perf_counter()
    oracle, config, main = ctx.oracle, ctx.config, ctx.dist.is_main
    data_problem = is_data_problem(oracle)
    refs = _References()
    refs.truthless = oracle is not None and not data_problem and not isinstance(oracle, SampledProblem)
    if oracle is not None and not refs.truthless:
        refs.mean, refs.cov = oracle.mean(), oracle.covariance()
    if main and oracle is not None and not refs.truthless:
        floor_sets, floor_info = _truth_and_floor_sets(refs, oracle, config, ctx.wanted)
        refs.noise_floor = _noise_floor(refs, floor_sets, floor_info, ctx.prepared.metrics)
    if main and oracle is not None:
        m_ode = min(config.ode_samples, config.samples)
        if "ode_error" in ctx.wanted:
            refs.ode_noise = _initial_noise(batch_seeds(config.seed, m_ode), oracle.dim, ctx.prepared.dtype)
    if oracle is not None and (data_problem or refs.truthless):
        refs.solves = _ReferenceSolves(oracle)
    ctx.timing["reference_s"] += time.perf_counter() - t_ref
    return refs


def _truth_and_floor_sets(
    refs: _References, oracle: OracleProblem, config: BenchConfig, want: set[str]
) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Fill ``refs`` (truth, bandwidth, kernel term, mixture target, features) and return the noise-floor sets."""
    n = config.samples
    floor_info: dict[str, Any] = {"sets": FLOOR_SETS}
    if is_data_problem(oracle):  # real data: the training split is the reference, the held-out split the floor
        truth = oracle.reference_data()
        floor_sets, floor_info = _heldout_sets(oracle.heldout_data(), n, config.seed)
        if want & set(M.FEATURE_METRICS):
            assert isinstance(oracle, FeatureProblem), "prepare() refuses a feature metric without features"
            refs.features = oracle.features
            refs.feature_ref = M.gaussian_fit(oracle.features(truth))
    else:
        assert isinstance(oracle, SampledProblem), "not truthless and not a data problem: it samples"
        all_seeds = batch_seeds(config.seed, n)
        truth = oracle.sample(n, all_seeds, DATA_STREAM)
        floor_sets = [oracle.sample(n, all_seeds, REFERENCE_STREAM + r) for r in range(FLOOR_SETS)]
    refs.truth = truth
    refs.bandwidth = M.median_bandwidth(truth)
    if is_data_problem(oracle) and "mmd" in want:  # one fixed data set: its kernel term once, not per row
        refs.truth_kernel = M.rbf_self_mean(truth, refs.bandwidth)
    components = oracle.mixture_components() if isinstance(oracle, MixtureProblem) else None
    if components is not None and want & {"sw", "sw1", "mmd"}:
        refs.target = M.ExactTarget(*components, bandwidth=refs.bandwidth)
    return floor_sets, floor_info


def _noise_floor(
    refs: _References, floor_sets: list[torch.Tensor], floor_info: dict[str, Any], specs: Sequence[M.MetricSpec]
) -> dict[str, dict[str, float]]:
    """Each sampled metric on true sets scored like a sampler's output: mean and spread over the sets."""
    floor: dict[str, dict[str, float]] = {}
    for spec in specs:
        if spec.name in ("ode_error", "kl_exact"):
            continue  # exact references: no sampling noise floor
        values = [spec(refs.inputs(fs)) for fs in floor_sets]
        vt = torch.tensor(values, dtype=F64)
        std = float(vt.std()) if len(values) > 1 else 0.0
        floor[spec.name] = {"mean": float(vt.mean()), "std": std, **floor_info}
    return floor


def _warm_up(ctx: _RunContext) -> None:
    """One tiny run per scheduler (extension load, lazy imports, allocator) outside the timings."""
    from samplers.bench.foreign import ForeignRunError

    config, device, dtype = ctx.config, ctx.prepared.device, ctx.prepared.dtype
    t_w = time.perf_counter()
    w = min(16, ctx.noise_local.shape[0]) or 1
    if ctx.network is not None:
        # One call at the timed batch size: the attention dispatcher measures each new shape once,
        # and that (and cuDNN / allocator warm-up) must not land in a timed row.
        ctx.network(ctx.noise_local, torch.zeros((), device=device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    for rs in ctx.prepared.schedulers:
        try:
            sample_oracle(
                _build_scheduler(rs),
                ctx.prepared.problem,
                _initial_noise(batch_seeds(config.seed, w, device=device), ctx.prepared.problem.dim, dtype),
                batch_seeds(config.seed, w, device=device),
                min(config.steps),
                config.backend,
                measure_memory=False,
                model=ctx.network,
            )
        except ForeignRunError:
            pass  # a foreign sampler that fails reports it in its own rows
    ctx.timing["warmup_s"] = time.perf_counter() - t_w


def _run_row(
    ctx: _RunContext, rs: ResolvedScheduler, steps: int, progress: ProgressSink | None, keep_samples: int
) -> BenchRow:
    """Sample one (scheduler, steps) pair, time it across ranks, and score it on rank 0."""
    from samplers.bench.foreign import ForeignRunError
    from samplers.bench.foreign import error_row as foreign_error_row

    config, dist, device, timing = ctx.config, ctx.dist, ctx.prepared.device, ctx.timing
    sched = _build_scheduler(rs)
    try:
        run = sample_oracle(
            sched,
            ctx.prepared.problem,
            ctx.noise_local,
            ctx.seeds_local,
            steps,
            config.backend,
            progress,
            model=ctx.network,
        )
    except ForeignRunError as exc:  # that row's error; the rest of the run completes
        return foreign_error_row(rs, steps, exc)
    t_s = time.perf_counter()
    wall = dist.reduce_max(run.wall_s, device)
    model_s = dist.reduce_max(run.model_s, device)
    peak = int(dist.reduce_max(run.peak_mem_bytes, device))
    timing["sync_s"] += time.perf_counter() - t_s  # waiting for the slowest rank (0 in one process)
    timing["sampling_s"] += run.wall_s
    timing["model_s"] += run.model_s
    values: dict[str, float] = {}
    gathered = None
    if ctx.oracle is not None:  # nothing to score a speed-only run against: no gather, no metrics
        t_g = time.perf_counter()
        gathered = dist.gather_rows(run.samples, config.samples)
        timing["gather_s"] += time.perf_counter() - t_g
    t_m = time.perf_counter()
    ref_s = 0.0
    if dist.is_main and ctx.oracle is not None:
        assert gathered is not None and (ctx.refs.truth is not None or ctx.refs.truthless)
        values, ref_s = _score_row(ctx, ctx.oracle, rs, steps, run, gathered)
        if keep_samples:
            ctx.kept[f"{rs.name}@{steps}"] = gathered[:keep_samples].cpu()
    metrics_s = time.perf_counter() - t_m - ref_s
    timing["metrics_s"] += metrics_s
    timing["reference_s"] += ref_s
    return BenchRow(
        scheduler=rs.name,
        steps=steps,
        nfe=run.nfe,
        prediction_type=rs.prediction_type,
        schedule=rs.schedule_label,
        stochastic=run.stochastic,
        order=int(getattr(rs.cls, "order", 1)),
        metrics=values,
        wall_s=wall,
        model_s=model_s,
        samples_per_s=config.samples / wall if wall > 0 else math.inf,
        step_overhead_ms=1000.0 * (wall - model_s) / steps,
        peak_mem_bytes=peak,
        peak_mem_kind=run.peak_mem_kind,
        metrics_s=metrics_s,
    )


def _score_row(
    ctx: _RunContext, oracle: OracleProblem, rs: ResolvedScheduler, steps: int, run: SampleRun, gathered: torch.Tensor
) -> tuple[dict[str, float], float]:
    """Every metric of one row's gathered samples [n, d], and the seconds spent on its exact references."""
    refs, want, prepared = ctx.refs, ctx.wanted, ctx.prepared
    ref_s = 0.0
    ode_ref = None
    if "ode_error" in want and not run.stochastic and math.isfinite(run.start[0]):
        assert refs.ode_noise is not None, "drawn by _prepare_references whenever ode_error is wanted"
        t_r = time.perf_counter()
        if refs.solves is not None:
            key = refs.solves.solve(refs.ode_noise, run.start)
            ode_ref = refs.solves.x0(key)
            refs.solved_rows.append((len(ctx.rows), key, gathered[: ode_ref.shape[0]].cpu()))
        else:
            ode_ref = _ode_reference(oracle, refs.ode_noise, run.start, prepared.dtype, refs.ode_cache)
        ref_s += time.perf_counter() - t_r
    exact = None
    if "kl_exact" in want and isinstance(oracle, GaussianProblem) and not run.stochastic:
        t_r = time.perf_counter()
        exact = _exact_output_gaussian(rs, oracle, steps, prepared.device, prepared.config.backend)
        ref_s += time.perf_counter() - t_r
    inputs = refs.inputs(gathered.cpu(), ode_ref, exact, not run.stochastic)
    return {spec.name: spec(inputs) for spec in prepared.metrics}, ref_s


def _assemble_result(ctx: _RunContext, t_begin: float, keep_samples: int) -> BenchResult:
    """Tighten the ODE references, fit the orders, and account for the time: the :class:`BenchResult`."""
    prepared, config, timing, rows, refs = ctx.prepared, ctx.config, ctx.timing, ctx.rows, ctx.refs
    if refs.solves is not None and refs.solved_rows:
        t_r = time.perf_counter()
        refs.solves.tighten(rows, refs.solved_rows)
        timing["reference_s"] += time.perf_counter() - t_r
    orders = fit_orders(rows, prepared.metrics) if ctx.dist.is_main else {}
    sched_info = {rs.name: _scheduler_info(rs) for rs in prepared.schedulers}
    total = time.perf_counter() - t_begin
    accounted = sum(
        timing[k] for k in ("reference_s", "warmup_s", "sampling_s", "metrics_s", "gather_s", "sync_s", "model_init_s")
    )
    timing["total_s"] = total
    timing["harness_s"] = max(0.0, total - accounted)
    timing["harness_fraction"] = timing["harness_s"] / total if total > 0 else 0.0
    problem = prepared.problem
    problem_info = (
        dict(problem.describe()) if hasattr(problem, "describe") else {"name": config.problem, "dim": problem.dim}
    )
    problem_info["spec"] = config.model if config.model is not None else config.problem
    if refs.solves is not None and refs.solves.entries:
        problem_info["ode_reference"] = refs.solves.summary(rows)
    environment = _environment(prepared, ctx.dist)
    if ctx.oracle is None:  # speed only
        from samplers.ops.attention import attention_dispatch_report

        environment["attention"] = attention_dispatch_report()
    truth = refs.truth
    return BenchResult(
        config=config.to_dict(),
        problem=problem_info,
        environment=environment,
        metric_names=[s.name for s in prepared.metrics],
        rows=rows,
        noise_floor=refs.noise_floor,
        orders=orders,
        timing=timing,
        schedulers=sched_info,
        samples=ctx.kept,
        truth=truth[:keep_samples] if (keep_samples and truth is not None) else None,
    )


def _ode_reference(
    problem: OracleProblem,
    noise: torch.Tensor,
    start: tuple[float, float, float, float],
    dtype: torch.dtype,
    cache: dict[tuple, torch.Tensor],
) -> torch.Tensor:
    """Exact PF-ODE endpoints for the first samples, from the sampler's own start (cached per start)."""
    init_sigma, in_scale, alpha0, sigma0 = start
    key = (init_sigma, in_scale, alpha0, sigma0)
    if key not in cache:
        x_start = (noise * init_sigma).to(F64)  # what the sampler started from (same rounding in ``dtype``)
        cache[key] = problem.ode_solution(x_start * in_scale, alpha0, sigma0)
    return cache[key]


def _heldout_sets(heldout: torch.Tensor, n: int, seed: int) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """The noise floor of a real-data problem: held-out digits scored like a sampler's output.

    With ``n`` below the held-out size, :data:`FLOOR_SETS` random subsets of ``n`` (each without
    replacement, from ``seed``), so the floor has the run's sample size; otherwise the whole split once.
    """
    h = heldout.shape[0]
    if n >= h:
        return [heldout], {"sets": 1, "samples": h, "source": "held-out split"}
    gen = torch.Generator().manual_seed(int(seed))
    sets = [heldout[torch.randperm(h, generator=gen)[:n]] for _ in range(FLOOR_SETS)]
    return sets, {"sets": FLOOR_SETS, "samples": n, "source": "held-out split"}


REFERENCE_MARGIN = 20.0  # the reference's estimated error is tightened to this far below the best row (>= 10 shown)


class _ReferenceSolves:
    """A real-data problem's PF-ODE references for one run: one solve per physical start, tightened at the end.

    Samplers that start from the same point (e.g. Euler's ``157 z`` at VE level 157 and DDIM's ``z``
    at the same VP level, both in ``trailing`` spacing) share one solve: the key is the start in VP
    coordinates (the scale of ``z`` and the angle ``atan2(sigma, alpha)``), to 12 significant digits.
    The first solves use the problem's own tolerance; once every row is known, :meth:`tighten`
    continues the solves (no work is redone) until the estimated error is :data:`REFERENCE_MARGIN`
    times below the smallest ODE error of the table, and rescores the rows against the tighter references.
    """

    def __init__(self, problem: Any) -> None:
        self.problem = problem
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}

    def solve(self, noise: torch.Tensor, start: tuple[float, float, float, float]) -> tuple[str, str]:
        init_sigma, in_scale, alpha0, sigma0 = start
        norm = math.hypot(alpha0, sigma0)
        gain = init_sigma * in_scale / norm
        key = (f"{gain:.12g}", f"{math.atan2(sigma0, alpha0):.12g}")
        if key not in self.entries:
            t0 = time.perf_counter()
            x_start, a, s = noise.to(F64) * gain, alpha0 / norm, sigma0 / norm
            sol = self.problem.ode_reference(x_start, a, s)
            self.entries[key] = {"sol": sol, "x": x_start, "alpha": a, "sigma": s, "seconds": time.perf_counter() - t0}
        return key

    def x0(self, key: tuple[str, str]) -> torch.Tensor:
        return self.entries[key]["sol"].x0

    def worst(self) -> float:
        return max(float(e["sol"].error) for e in self.entries.values())

    def tighten(self, rows: list[BenchRow], solved: list[tuple[int, tuple[str, str], torch.Tensor]]) -> None:
        """Resume the solves until they are :data:`REFERENCE_MARGIN` x below the best row (rescoring the rows)."""
        for _ in range(4):  # a tighter reference moves the rows' errors a little: settle in a few rounds
            best = min((rows[i].metrics["ode_error"] for i, _, _ in solved), default=math.nan)
            if not (math.isfinite(best) and best > 0) or self.worst() * REFERENCE_MARGIN <= best:
                return
            tol = best / REFERENCE_MARGIN
            exhausted = False
            for e in self.entries.values():
                t0 = time.perf_counter()
                e["sol"] = self.problem.ode_reference(e["x"], e["alpha"], e["sigma"], tol=tol, resume=e["sol"])
                e["seconds"] += time.perf_counter() - t0
                exhausted |= not e["sol"].converged  # the solver's step budget is spent: report what it reached
            for i, key, samples in solved:
                rows[i].metrics["ode_error"] = M.ode_error(samples, self.x0(key))
            if exhausted:
                return

    def summary(self, rows: Sequence[BenchRow]) -> dict[str, Any]:
        """The reference solves of the run and how much tighter than the table they are."""
        worst = self.worst()
        errors = [r.metrics.get("ode_error") for r in rows]
        finite = [e for e in errors if e is not None and math.isfinite(e) and e > 0]
        best = min(finite) if finite else math.nan
        solves = [
            {"alpha": e["alpha"], "sigma": e["sigma"], **e["sol"].describe(), "seconds": e["seconds"]}
            for e in self.entries.values()
        ]
        return {
            "method": "RK4 in w = log tan(phi/2), float64, Richardson error estimate at the observed order",
            "estimated_error": worst,
            "smallest_table_error": best,
            "margin": best / worst if finite and worst > 0 else math.inf,
            "solves": solves,
        }


def fit_orders(rows: Sequence[BenchRow], specs: Sequence[M.MetricSpec]) -> dict[str, dict[str, dict[str, float]]]:
    """Empirical convergence order per scheduler for every order metric with >= 2 finite points."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for spec in specs:
        if not spec.order_metric:
            continue
        by_sched: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            v = r.metrics.get(spec.name)
            if v is not None and math.isfinite(v):
                by_sched.setdefault(r.scheduler, []).append((r.nfe, v))
        for name, pts in by_sched.items():
            fit = M.convergence_order([p[0] for p in pts], [p[1] for p in pts])
            if fit is not None:
                out.setdefault(name, {})[spec.name] = fit.to_dict()
    return out
