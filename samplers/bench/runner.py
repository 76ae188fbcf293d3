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
import time
from collections.abc import Sequence
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
    GaussianProblem,
    ModelProblem,
    NetworkModel,
    OracleModel,
    Problem,
    get_problem,
    is_speed_only,
)
from samplers.ops.reference import batch_seeds, philox_normal

SCHEMA_VERSION = 1
F64 = torch.float64

DEFAULT_SCHEDULERS: tuple[str, ...] = ("ddim", "euler", "heun", "euler_ancestral", "ddpm")
DEFAULT_STEPS: tuple[int, ...] = (10, 20, 50, 100)
DEFAULT_PROBLEM = "gmm2d"
DEFAULT_SAMPLES = 10000
GAUSSIAN_METRICS: tuple[str, ...] = ("sw", "frechet", "kl", "kl_exact", "ode_error")
MIXTURE_METRICS: tuple[str, ...] = ("sw", "sw1", "mmd", "frechet", "ode_error")
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
    schedule: str = "linear"
    options: dict[str, Any] = field(default_factory=dict)
    ode_samples: int = 1000
    backend: str = "auto"
    warmup: bool = True

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
    problem: Problem | ModelProblem
    schedulers: list[ResolvedScheduler]
    metrics: list[M.MetricSpec]
    device: torch.device
    dtype: torch.dtype


def _close(value: str, choices: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(value, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""


def _accepted_options(cls: type) -> set[str]:
    defaults = getattr(cls, "_signature_defaults", None)
    if defaults is not None:
        return set(defaults())
    return {k for k in inspect.signature(cls.__init__).parameters if k != "self"}


def resolve_scheduler(name: str, config: BenchConfig) -> ResolvedScheduler:
    """Look a scheduler up and build its config for this benchmark (raises BenchInputError)."""
    from samplers.registry import registry

    try:
        cls = registry().scheduler_class(name)
    except KeyError as exc:
        raise BenchInputError(str(exc)) from None
    accepted = _accepted_options(cls)
    kwargs: dict[str, Any] = {k: v for k, v in BENCH_SCHEDULER_DEFAULTS.items() if k in accepted}
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
    defaults = getattr(cls, "_signature_defaults", dict)()
    return str(defaults.get("prediction_type", "epsilon"))


def prepare(config: BenchConfig) -> Prepared:
    """Validate everything before any sampling (so bad input fails fast, with one clear message)."""
    if not config.schedulers:
        raise BenchInputError("--scheduler: give at least one scheduler name")
    if not config.steps:
        raise BenchInputError("--steps: give at least one step count")
    bad_steps = [s for s in config.steps if not isinstance(s, int) or s < 1]
    if bad_steps:
        raise BenchInputError(f"--steps: every step count must be an integer >= 1, got {bad_steps}")
    if config.samples < 2:
        raise BenchInputError(f"--samples must be >= 2, got {config.samples}")
    if config.dtype not in DTYPES:
        raise BenchInputError(
            f"--dtype: unknown dtype {config.dtype!r}{_close(config.dtype, list(DTYPES))} "
            f"(expected one of: {', '.join(DTYPES)})"
        )
    if config.schedule not in SCHEDULE_PRESETS:
        raise BenchInputError(
            f"--schedule: unknown schedule {config.schedule!r}{_close(config.schedule, list(SCHEDULE_PRESETS))} "
            f"(expected one of: {', '.join(SCHEDULE_PRESETS)})"
        )
    if config.backend not in ("auto", "fused", "torch"):
        raise BenchInputError(f"--backend must be auto, fused or torch, got {config.backend!r}")
    if config.ode_samples < 1:
        raise BenchInputError(f"ode_samples must be >= 1, got {config.ode_samples}")
    try:
        device = torch.device(config.device)
    except RuntimeError:
        raise BenchInputError(f"--device: cannot parse device {config.device!r} (expected cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchInputError("--device cuda: no CUDA device is available to torch here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise BenchInputError(f"--device must be cpu or cuda, got {config.device!r}")
    try:
        problem = get_problem(config.problem)
    except (ValueError, TypeError) as exc:
        raise BenchInputError(str(exc)) from None
    scheds = [resolve_scheduler(n, config) for n in config.schedulers]
    if len({s.name for s in scheds}) != len(scheds):
        raise BenchInputError(f"--scheduler lists a name twice: {list(config.schedulers)}")
    for key in config.options:
        if not any(key in _accepted_options(s.cls) for s in scheds):
            raise BenchInputError(f"--option {key!r} is not a config option of any of {[s.name for s in scheds]}")
    for rs in scheds:  # config and grid errors (e.g. a prediction type a schedule cannot invert) surface now
        for steps in sorted(set(config.steps)):
            try:
                _build_scheduler(rs).set_timesteps(steps)
            except (ValueError, TypeError) as exc:
                raise BenchInputError(f"scheduler {rs.name!r} at {steps} steps: {exc}") from None
    if is_speed_only(problem):
        if config.metrics:
            raise BenchInputError(
                f"problem {config.problem!r} is speed only (a network with random weights, no exact answer "
                "to score against): it takes no --metric"
            )
        return Prepared(config, problem, scheds, [], device, DTYPES[config.dtype])
    names = config.metrics
    if names is None:
        names = GAUSSIAN_METRICS if isinstance(problem, GaussianProblem) else MIXTURE_METRICS
    try:
        specs = M.resolve_metrics(names)
    except ValueError as exc:
        raise BenchInputError(str(exc)) from None
    if not specs:
        raise BenchInputError("--metric: give at least one metric")
    return Prepared(config, problem, scheds, specs, device, DTYPES[config.dtype])


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

    def to_dict(self) -> dict[str, Any]:
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
)


def to_csv(result: BenchResult) -> str:
    """CSV text with :data:`CSV_COLUMNS` (every known metric has a column; blank when not computed)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
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
        }
        for name in ALL_METRICS:
            v = r.metrics.get(name)
            row[name] = "" if v is None or not math.isfinite(v) else f"{v:.8g}"
        writer.writerow(row)
    return buf.getvalue()


def check_writable(path: str | os.PathLike, flag: str) -> Path:
    """Raise BenchInputError unless ``path`` can be created or overwritten (checked before any work)."""
    p = Path(path)
    if p.is_dir():
        raise BenchInputError(f"{flag}: {str(p)!r} is a directory, expected a file path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        if parent.exists():
            raise BenchInputError(f"{flag}: cannot write {str(p)!r}: {str(parent)!r} is not a folder")
        raise BenchInputError(f"{flag}: folder {str(parent)!r} does not exist")
    # os.access says yes to root everywhere (and knows nothing of /proc or read-only mounts): try it.
    existed = p.exists()
    try:
        with open(p, "a"):
            pass
    except OSError as exc:
        raise BenchInputError(f"{flag}: cannot write {str(p)!r}: {exc.strerror or exc}") from None
    if not existed:
        try:
            p.unlink()
        except OSError:
            pass
    return p


def write_json(result: BenchResult, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return p


def write_csv(result: BenchResult, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.write_text(to_csv(result))
    return p


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
    problem: Problem,
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
    device = noise.device
    network = model is not None
    if model is None:
        prediction_type = getattr(scheduler, "prediction_type", None) or scheduler.config.get(
            "prediction_type", "epsilon"
        )
        model = OracleModel(problem, scheduler.schedule, prediction_type)
    calls_before = model.calls
    on_cuda = device.type == "cuda"
    clock = time.perf_counter
    mem = _PeakMemory(device) if measure_memory else None
    if mem is not None:
        mem.__enter__()
    if on_cuda:
        torch.cuda.synchronize(device)
        ev_pairs: list[tuple[Any, Any]] = []
    model_s = 0.0
    t0 = clock()
    scheduler.set_timesteps(steps, device=device)
    plan = getattr(scheduler, "plan", None)
    table = None
    if not network and plan is not None and getattr(plan, "model_alpha", None) is not None:
        table = (plan.model_alpha.tolist(), plan.model_sigma.tolist())
    x = noise * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    n_calls = len(timesteps)
    if progress is not None:
        progress.row_started(f"{scheduler.name} x{steps}", n_calls)
    pending = 0
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(x, t)
        if on_cuda:
            start_ev, end_ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start_ev.record()
        else:
            m0 = clock()
        out = model.at(x_in, table[0][i], table[1][i]) if table is not None else model(x_in, t)
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
    wall = clock() - t0
    if progress is not None:
        if pending:
            progress.advanced(pending)
        progress.row_finished()
    peak = mem.peak() if mem is not None else 0
    stochastic = bool(
        any(getattr(plan, "stochastic_calls", [])) if plan is not None else getattr(scheduler, "stochastic", True)
    )
    if plan is not None:
        start = (
            float(scheduler.init_noise_sigma),
            float(plan.input_scale[0]),
            float(plan.model_alpha[0]),
            float(plan.model_sigma[0]),
        )
    else:
        a0, s0 = scheduler.schedule.alpha_sigma(torch.as_tensor(timesteps[0]).cpu())
        start = (float(scheduler.init_noise_sigma), 1.0, float(a0), float(s0))
    return SampleRun(
        x, model.calls - calls_before, wall, model_s, peak, mem.kind if mem else "none", stochastic, start
    )


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
    from samplers.registry import registry

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


def run_benchmark(
    config: BenchConfig,
    progress: ProgressSink | None = None,
    dist: DistContext | None = None,
    keep_samples: int = 0,
) -> BenchResult:
    """Run every (scheduler, steps) pair of ``config``; see the module docstring for what is measured.

    Under torch.distributed (``dist.world_size > 1``) each rank samples its shard; rank 0 gathers
    and computes metrics, and its result is the one to report (other ranks' rows carry no metrics).
    ``keep_samples`` keeps that many of each run's gathered samples (and of the truth set) in the
    result, for plots (0 keeps none).
    """
    t_begin = time.perf_counter()
    prepared = prepare(config)
    dist = dist or DistContext()
    problem, device, dtype = prepared.problem, prepared.device, prepared.dtype
    n, d = config.samples, problem.dim
    n_local, offset = dist.shard(n)
    if n < dist.world_size:
        raise BenchInputError(
            f"--samples {n} is smaller than the world size {dist.world_size}: every rank needs a sample"
        )
    seeds_local = batch_seeds(config.seed, n_local, sample_offset=offset, device=device)
    noise_local = _initial_noise(seeds_local, d, dtype)
    main = dist.is_main
    timing = {
        "reference_s": 0.0,
        "warmup_s": 0.0,
        "sampling_s": 0.0,
        "model_s": 0.0,
        "metrics_s": 0.0,
        "gather_s": 0.0,
        "sync_s": 0.0,
        "model_init_s": 0.0,
    }
    speed_only = is_speed_only(problem)
    network: NetworkModel | None = None
    if speed_only:  # the network is built (weights drawn, moved to the device) once, outside the rows
        t_init = time.perf_counter()
        network = problem.make_model(device, dtype)
        timing["model_init_s"] = time.perf_counter() - t_init

    # Exact references, on rank 0 only (they do not depend on the split).
    t_ref = time.perf_counter()
    truth = target = None
    bandwidth = 1.0
    mean, cov = (None, None) if speed_only else (problem.mean(), problem.covariance())
    noise_floor: dict[str, dict[str, float]] = {}
    want = {s.name for s in prepared.metrics}
    if main and not speed_only:
        all_seeds = batch_seeds(config.seed, n)
        truth = problem.sample(n, all_seeds, DATA_STREAM)
        bandwidth = M.median_bandwidth(truth)
        components = problem.mixture_components() if hasattr(problem, "mixture_components") else None
        if components is not None and want & {"sw", "sw1", "mmd"}:
            target = M.ExactTarget(*components, bandwidth=bandwidth)
        floor_sets = [problem.sample(n, all_seeds, REFERENCE_STREAM + r) for r in range(FLOOR_SETS)]
        for spec in prepared.metrics:
            if spec.name in ("ode_error", "kl_exact"):
                continue  # exact references: no sampling noise floor
            values = [spec(M.MetricInputs(fs, truth, mean, cov, bandwidth, target=target)) for fs in floor_sets]
            vt = torch.tensor(values, dtype=F64)
            noise_floor[spec.name] = {"mean": float(vt.mean()), "std": float(vt.std()), "sets": FLOOR_SETS}
        m_ode = min(config.ode_samples, n)
        ode_noise = _initial_noise(batch_seeds(config.seed, m_ode), d, dtype) if "ode_error" in want else None
    ode_cache: dict[tuple, torch.Tensor] = {}
    timing["reference_s"] += time.perf_counter() - t_ref

    # Warm-up: one tiny run per scheduler (extension load, lazy imports, allocator) outside the timings.
    if config.warmup:
        t_w = time.perf_counter()
        w = min(16, n_local) or 1
        if network is not None:
            # One call at the timed batch size: the attention dispatcher measures each new shape once,
            # and that (and cuDNN / allocator warm-up) must not land in a timed row.
            network(noise_local, torch.zeros((), device=device))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        for rs in prepared.schedulers:
            sample_oracle(
                _build_scheduler(rs),
                problem,
                _initial_noise(batch_seeds(config.seed, w, device=device), d, dtype),
                batch_seeds(config.seed, w, device=device),
                min(config.steps),
                config.backend,
                measure_memory=False,
                model=network,
            )
        timing["warmup_s"] = time.perf_counter() - t_w

    rows: list[BenchRow] = []
    kept: dict[str, torch.Tensor] = {}
    for rs in prepared.schedulers:
        for steps in config.steps:
            sched = _build_scheduler(rs)
            run = sample_oracle(
                sched, problem, noise_local, seeds_local, steps, config.backend, progress, model=network
            )
            t_s = time.perf_counter()
            wall = dist.reduce_max(run.wall_s, device)
            model_s = dist.reduce_max(run.model_s, device)
            peak = int(dist.reduce_max(run.peak_mem_bytes, device))
            timing["sync_s"] += time.perf_counter() - t_s  # waiting for the slowest rank (0 in one process)
            timing["sampling_s"] += run.wall_s
            timing["model_s"] += run.model_s
            values: dict[str, float] = {}
            gathered = None
            if not speed_only:  # nothing to score a speed-only run against: no gather, no metrics
                t_g = time.perf_counter()
                gathered = dist.gather_rows(run.samples, n)
                timing["gather_s"] += time.perf_counter() - t_g
            t_m = time.perf_counter()
            ref_s = 0.0
            if main and not speed_only:
                assert gathered is not None and truth is not None
                ode_ref = None
                if "ode_error" in want and not run.stochastic:
                    t_r = time.perf_counter()
                    ode_ref = _ode_reference(problem, ode_noise, run.start, dtype, ode_cache)
                    ref_s += time.perf_counter() - t_r
                exact = None
                if "kl_exact" in want and isinstance(problem, GaussianProblem) and not run.stochastic:
                    t_r = time.perf_counter()
                    exact = _exact_output_gaussian(rs, problem, steps, device, config.backend)
                    ref_s += time.perf_counter() - t_r
                inputs = M.MetricInputs(
                    gathered.cpu(), truth, mean, cov, bandwidth, ode_ref, exact, not run.stochastic, target
                )
                for spec in prepared.metrics:
                    values[spec.name] = spec(inputs)
                if keep_samples:
                    kept[f"{rs.name}@{steps}"] = gathered[:keep_samples].cpu()
            metrics_s = time.perf_counter() - t_m - ref_s
            timing["metrics_s"] += metrics_s
            timing["reference_s"] += ref_s
            rows.append(
                BenchRow(
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
                    samples_per_s=n / wall if wall > 0 else math.inf,
                    step_overhead_ms=1000.0 * (wall - model_s) / steps,
                    peak_mem_bytes=peak,
                    peak_mem_kind=run.peak_mem_kind,
                    metrics_s=metrics_s,
                )
            )

    orders = fit_orders(rows, prepared.metrics) if main else {}
    sched_info = {rs.name: _scheduler_info(rs) for rs in prepared.schedulers}
    total = time.perf_counter() - t_begin
    accounted = sum(
        timing[k] for k in ("reference_s", "warmup_s", "sampling_s", "metrics_s", "gather_s", "sync_s", "model_init_s")
    )
    timing["total_s"] = total
    timing["harness_s"] = max(0.0, total - accounted)
    timing["harness_fraction"] = timing["harness_s"] / total if total > 0 else 0.0
    problem_info = dict(problem.describe()) if hasattr(problem, "describe") else {"name": config.problem, "dim": d}
    problem_info["spec"] = config.problem
    environment = _environment(prepared, dist)
    if speed_only:
        from samplers.ops.attention import attention_dispatch_report

        environment["attention"] = attention_dispatch_report()
    return BenchResult(
        config=config.to_dict(),
        problem=problem_info,
        environment=environment,
        metric_names=[s.name for s in prepared.metrics],
        rows=rows,
        noise_floor=noise_floor,
        orders=orders,
        timing=timing,
        schedulers=sched_info,
        samples=kept,
        truth=truth[:keep_samples] if (keep_samples and truth is not None) else None,
    )


def _ode_reference(
    problem: Problem,
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
