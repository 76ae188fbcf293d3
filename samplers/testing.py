"""The conformance kit: what a scheduler (built-in or plugin) must satisfy to work everywhere.

Run it from Python, from pytest, or from the command line::

    from samplers.testing import check_scheduler, assert_conforms
    results = check_scheduler("dpmpp_2m")            # list[CheckResult]
    assert_conforms(MyScheduler, eta=0.5)            # raises AssertionError with a readable report

    $ samplers check dpmpp_2m --device cuda -o solver_order=3

Properties checked (each one a :class:`CheckResult`):

``protocol``          class metadata (name, family, order, NFE per step, stochastic, prediction types),
                      the diffusers-style surface (set_timesteps/timesteps/init_noise_sigma/step/
                      scale_model_input/add_noise/step_index/config) and clear errors for misuse.
``config_roundtrip``  ``save_config`` + ``from_pretrained`` (and ``from_config``) rebuild the same
                      config and exactly the same plan.
``shapes_dtypes``     [B, D] and [B, C, H, W] samples in float32, float64 and bfloat16: output shapes,
                      dtypes and devices, finite values, agreement across dtypes (and CPU vs CUDA
                      when a GPU is present), inputs never modified in place.
``determinism``       same seed -> identical output; different seeds -> different output exactly
                      when the plan draws noise (and then the class must say ``stochastic``);
                      ``step_functional`` runs interleaved equal runs made one at a time.
``marginals``         stochastic samplers: on a Gaussian oracle (exact denoiser) the final samples'
                      mean and variance (pooled over standardized coordinates) match the data within
                      ``z`` standard errors of the sample count, or their bias beyond that noise
                      shrinks at least ``bias_shrink``-fold from N to 4N steps. (An ancestral step
                      given the exact posterior mean omits ``c^2 Var[x0 | x_t]`` of variance: a
                      deficit that vanishes as steps grow; a wrong noise scale does not.)
``accuracy``          on the Gaussian oracle the error falls from few to many steps: RMS distance to
                      the exact probability-flow ODE solution (deterministic samplers) or the KL of
                      the Gaussian fit of the standardized samples to N(0, 1) (stochastic ones).
``public_api``        a plugin's modules (the package that defines the class) use samplers' public API
                      only: no import of, or attribute access to, a private name (``samplers.x._y``,
                      ``from samplers.x import _y``); a private name may change in any release.
``no_device_sync``    on CUDA (when available): a whole sampling loop of ``step_functional()`` calls
                      (device timesteps, per-sample seeds, after one warm-up run) runs under
                      ``torch.cuda.set_sync_debug_mode("error")`` without a host-device sync.

The Gaussian oracle: data ``N(mu, diag(s^2))`` has ``E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 +
sigma^2) (x_t - alpha mu)`` and its probability-flow ODE maps ``x_T`` to ``mu + s (x_T - alpha_T mu) /
sqrt(alpha_T^2 s^2 + sigma_T^2)``, so every error measured is the sampler's own. The fake model
reads the noise level of each call from the scheduler's plan (``plan.model_alpha/model_sigma``) and
returns the exact output for the scheduler's prediction type.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import typer

from samplers import parameterization
from samplers.errors import did_you_mean
from samplers.ops.update import Backend, is_backend
from samplers.plan import Plan
from samplers.protocol import SamplerState, Scheduler, StepOutput

CHECKS: tuple[str, ...] = (
    "protocol",
    "config_roundtrip",
    "shapes_dtypes",
    "determinism",
    "marginals",
    "accuracy",
    "no_device_sync",
    "public_api",
)
FAMILIES = ("vp", "ve", "flow", "any")
F64 = torch.float64


@dataclass
class CheckResult:
    """One property: ``passed`` (a skipped check counts as passed), a one-line ``detail``, its wall time."""

    name: str
    passed: bool
    detail: str
    skipped: bool = False
    seconds: float = 0.0

    @property
    def status(self) -> str:
        return "SKIP" if self.skipped else ("PASS" if self.passed else "FAIL")


@dataclass(frozen=True)
class KitSettings:
    """Sizes of the runs. :meth:`quick` is what test suites use; the defaults are what ``samplers check`` uses.

    Stochastic runs use wide samples ``[batch, width]`` (each element an independent coordinate of the
    oracle) so that many coordinates cost few per-sample noise keys.
    """

    accuracy_steps: tuple[int, ...] = (4, 8, 16, 32)
    accuracy_samples: int = 1024
    stochastic_accuracy_steps: tuple[int, ...] = (4, 50)
    marginal_steps: tuple[int, int] = (50, 200)
    stochastic_batch: int = 64
    stochastic_width: int = 512
    dim: int = 4
    z: float = 5.0
    improvement: float = (
        0.5  # deterministic: the most-steps error must be at most this fraction of the fewest-steps one
    )
    bias_shrink: float = 0.6  # stochastic: a moment bias beyond sampling noise must shrink at least this much
    shape_steps: int = 6
    seed: int = 0
    backend: Backend = "auto"
    cpu_threads: int | None = 1  # the runs are small: one intra-op thread avoids oversubscription on busy machines

    @classmethod
    def quick(cls, **changes: Any) -> KitSettings:
        base = cls(
            accuracy_steps=(4, 16),
            accuracy_samples=256,
            stochastic_accuracy_steps=(4, 40),
            marginal_steps=(25, 100),
            stochastic_batch=32,
            shape_steps=4,
        )
        return dataclasses.replace(base, **changes)


class ConformanceError(AssertionError):
    """Raised by :func:`assert_conforms`; ``results`` holds every :class:`CheckResult`."""

    def __init__(self, message: str, results: list[CheckResult]) -> None:
        super().__init__(message)
        self.results = results


# --------------------------------------------------------------------------------------------
# The Gaussian oracle
# --------------------------------------------------------------------------------------------


class GaussianOracle:
    """Data ``N(mean, diag(std^2))`` over a per-sample shape, with its exact denoiser and ODE map.

    ``mean`` and ``std`` have the per-sample shape (e.g. [D] or [C, H, W]); all math is float64.
    Means stay within +-0.2 and stds within [0.15, 0.3], so data rarely reaches +-1 and samplers
    that clip x0 to [-1, 1] by default (DDPM, DDIM) are scored on what they compute, not on clipping.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        if mean.shape != std.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must have one shape")
        self.mean = mean.to(F64)
        self.std = std.to(F64)

    @classmethod
    def for_shape(cls, shape: Sequence[int]) -> GaussianOracle:
        n = math.prod(shape)
        j = torch.arange(n, dtype=F64)
        mean = 0.2 * torch.sin(1.0 + 0.7 * j)
        std = 0.15 + 0.15 * torch.remainder(0.37 * j + 0.1, 1.0)
        return cls(mean.view(*shape), std.view(*shape))

    def _to(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean.to(x.device), self.std.to(x.device)

    def denoise(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """``E[x0 | x_t = x]`` for model-space ``x`` [B, *shape]; float64."""
        mu, s = self._to(x)
        var = alpha * alpha * s * s + sigma * sigma
        return mu + alpha * s * s / var * (x.to(F64) - alpha * mu)

    def model_output(self, prediction_type: str, x_in: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """The exact network output of ``prediction_type`` for model input ``x_in``, in ``x_in``'s dtype.

        ``E[eps | x_t] = sigma (x - alpha mu) / (alpha^2 s^2 + sigma^2)`` in closed form, so the output stays
        finite at clean data (sigma = 0, where an inversion starts).
        """
        x64 = x_in.to(F64)
        mu, s = self._to(x64)
        x0 = self.denoise(x64, alpha, sigma)
        eps = sigma * (x64 - alpha * mu) / (alpha * alpha * s * s + sigma * sigma)
        return parameterization.training_target(prediction_type, x0, eps, alpha, sigma).to(x_in.dtype)

    def ode_solution(
        self, x_t: torch.Tensor, alpha: float, sigma: float, end: tuple[float, float] = (1.0, 0.0)
    ) -> torch.Tensor:
        """Probability-flow ODE solution at ``end = (alpha, sigma)`` (clean data by default) from model-space
        ``x_t`` at ``(alpha, sigma)``: ``a_1 mu + r_1 / r_0 (x_t - alpha mu)`` with ``r = sqrt(a^2 s^2 + sigma^2)``."""
        mu, s = self._to(x_t)
        a1, s1 = end
        r0 = torch.sqrt(alpha * alpha * s * s + sigma * sigma)
        return a1 * mu + torch.sqrt(a1 * a1 * s * s + s1 * s1) * (x_t.to(F64) - alpha * mu) / r0

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` for samples [n, *shape]: standard normal for exact samples, float64."""
        mu, s = self._to(x)
        return (x.to(F64) - mu) / s

    def pooled_kl(self, x: torch.Tensor) -> float:
        """``KL(N(m, v) || N(0, 1))`` of the standardized samples' pooled mean ``m`` and variance ``v``."""
        u = self.standardize(x)
        m, v = float(u.mean()), float(u.var())
        return 0.5 * (v - 1 - math.log(v) + m * m) if v > 0 else math.inf


def oracle_start(plan: Plan, oracle: GaussianOracle, noise: torch.Tensor) -> torch.Tensor:
    """A run's first sample from standard-normal ``noise``: ``noise * init_noise_sigma``, or, for a run that
    inverts (its plan ends at ``extras["end_alpha_sigma"]``, not clean data), the oracle's data samples."""
    if "end_alpha_sigma" not in plan.extras:
        return noise * plan.init_noise_sigma
    mean, std = oracle._to(noise)
    return (mean + std * noise.to(F64)).to(noise.dtype)


def run_oracle(
    scheduler: Scheduler,
    oracle: GaussianOracle,
    noise: torch.Tensor,
    steps: int,
    *,
    seeds: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: Backend = "auto",
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample from standard-normal ``noise`` [B, *shape] with the exact oracle as the model.

    Returns ``(final sample, exact ODE endpoint from the same start)``, both [B, *shape]; the
    second is only meaningful for deterministic runs.
    """
    scheduler.set_timesteps(steps, device=device if device is not None else noise.device)
    plan = scheduler._require_plan()
    x = start_x = oracle_start(plan, oracle, noise)
    start = (float(plan.input_scale[0]), float(plan.model_alpha[0]), float(plan.model_sigma[0]))
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, t)
        out = oracle.model_output(
            scheduler.prediction_type, x_in, float(plan.model_alpha[i]), float(plan.model_sigma[i])
        )
        x = scheduler.step(out, t, x, generator=generator, seeds=seeds, backend=backend).prev_sample
    end = plan.extras.get("end_alpha_sigma", (1.0, 0.0))
    exact = oracle.ode_solution(start_x.to(F64) * start[0], start[1], start[2], end)
    return x, exact


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------


class _Context:
    """What every check needs: the class, how to build it, where to run, how big."""

    def __init__(
        self,
        cls: type[Scheduler],
        registry_name: str | None,
        config: dict[str, Any],
        device: torch.device,
        settings: KitSettings,
    ) -> None:
        self.cls = cls
        self.registry_name = registry_name
        self.config = config
        self.device = device
        self.settings = settings

    def make(self, **changes: Any) -> Scheduler:
        return self.cls.from_config({**self.config, **changes})

    def make_planned(self, steps: int) -> Scheduler:
        s = self.make()
        s.set_timesteps(steps)
        return s

    def seeds(self, batch: int, base: int) -> torch.Tensor:
        """Per-sample Philox keys [batch] for the scheduler's own noise (``settings.seed`` shifts them all)."""
        from samplers.ops import batch_seeds

        return batch_seeds(base + 1000 * self.settings.seed, batch, device=self.device)

    def noise(self, shape: Sequence[int], seed: int) -> torch.Tensor:
        """Standard-normal starting noise, float64, on the check's device."""
        gen = torch.Generator().manual_seed(seed + 1000 * self.settings.seed)
        return torch.randn(*shape, generator=gen, dtype=F64).to(self.device)


def _plan_is_noisy(scheduler: Scheduler) -> bool:
    return any(scheduler._require_plan().stochastic_calls)


def _finite(x: torch.Tensor) -> bool:
    """Every element finite (bfloat16/half compared in float32). A NaN compares False with
    everything, so each check tests this explicitly before comparing numbers."""
    return bool(torch.isfinite(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).all())


def _nonfinite_plan_fields(scheduler: Scheduler) -> list[str]:
    """Plan tables holding NaN/Inf (Plan itself validates the update rows, where ``lim`` may be inf)."""
    plan = scheduler._require_plan()
    fields = ("timesteps", "input_scale", "model_alpha", "model_sigma")
    bad = [f for f in fields if not _finite(torch.as_tensor(getattr(plan, f)).double())]
    if not math.isfinite(float(plan.init_noise_sigma)):
        bad.append("init_noise_sigma")
    return bad


def _check_protocol(ctx: _Context) -> tuple[bool, str]:
    problems = _metadata_problems(ctx.cls, ctx.registry_name)
    s = ctx.make()
    problems += _misuse_problems(ctx, s)
    n = 6
    s.set_timesteps(n, device=ctx.device)
    calls = len(s._require_plan().timesteps)
    nfe = getattr(s, "nfe_per_step", ctx.cls.nfe_per_step)
    problems += _planned_surface_problems(ctx, s, n, calls, nfe)
    problems += _first_steps_problems(ctx, s, calls)
    if problems:
        return False, "; ".join(problems)
    cls = ctx.cls
    return (
        True,
        f"metadata ok ({cls.family}, order {cls.order}, {nfe} NFE/step); {calls} calls for {n} steps; misuse raises",
    )


_PROTOCOL_METHODS = (
    "set_timesteps",
    "step",
    "step_functional",
    "scale_model_input",
    "add_noise",
    "init_state",
    "save_config",
    "from_config",
    "from_pretrained",
    "set_begin_index",
)


def _metadata_problems(cls: type[Scheduler], registry_name: str | None) -> list[str]:
    """The class metadata (name, family, order, NFE, stochastic, prediction types) and the methods exist."""
    problems: list[str] = []
    if not isinstance(cls.name, str) or not cls.name:
        problems.append("class attribute `name` must be a non-empty str")
    if registry_name is not None and cls.name != registry_name:
        problems.append(f"registered as {registry_name!r} but `name` is {cls.name!r}")
    if cls.family not in FAMILIES:
        problems.append(f"`family` must be one of {FAMILIES}, got {cls.family!r}")
    for attr in ("order", "nfe_per_step"):
        value = getattr(cls, attr)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"`{attr}` must be an int >= 1, got {value!r}")
    if not isinstance(cls.stochastic, bool):
        problems.append(f"`stochastic` must be a bool, got {cls.stochastic!r}")
    types = tuple(cls.prediction_types)
    if not types or not set(types) <= set(parameterization.PREDICTION_TYPES):
        problems.append(
            f"`prediction_types` must be a non-empty subset of {parameterization.PREDICTION_TYPES}, got {types}"
        )
    try:
        meta = cls.metadata()
        json.dumps(meta)
        missing = {"name", "family", "order", "nfe_per_step", "stochastic", "prediction_types"} - set(meta)
        if missing:
            problems.append(f"metadata() lacks {sorted(missing)}")
    except Exception as exc:
        problems.append(f"metadata() is not JSON-serializable: {exc}")
    problems += [f"missing method {m}()" for m in _PROTOCOL_METHODS if not callable(getattr(cls, m, None))]
    return problems


def _misuse_problems(ctx: _Context, s: Scheduler) -> list[str]:
    """A fresh scheduler ``s``: its default prediction type is declared, and misuse raises a clear error."""
    problems: list[str] = []
    types = tuple(ctx.cls.prediction_types)
    if s.prediction_type not in types:
        problems.append(f"default prediction_type {s.prediction_type!r} is not in prediction_types {types}")
    try:
        s.step(torch.zeros(1, 2, device=ctx.device), 0, torch.zeros(1, 2, device=ctx.device))
        problems.append("step() before set_timesteps() did not raise")
    except (RuntimeError, ValueError):
        pass
    try:
        s.set_timesteps(0)
        problems.append("set_timesteps(0) did not raise")
    except (ValueError, TypeError):
        pass
    try:
        ctx.cls.from_config({**ctx.config, "no_such_option_xyz": 1})
        problems.append("from_config with an unknown option did not raise")
    except TypeError:
        pass
    return problems


def _planned_surface_problems(ctx: _Context, s: Scheduler, n: int, calls: int, nfe: int) -> list[str]:
    """After ``set_timesteps(n)``: timesteps, init_noise_sigma, step_index and the plan's tables are sound."""
    problems: list[str] = []
    ts = s.timesteps
    if not isinstance(ts, torch.Tensor) or ts.dim() != 1 or len(ts) != calls:
        problems.append(f"timesteps must be a 1-D tensor with one entry per model call ({calls})")
    elif ts.device.type != ctx.device.type:
        problems.append(f"set_timesteps(device={ctx.device}) left timesteps on {ts.device}")
    if not 1 <= calls <= n * nfe:
        problems.append(f"{n} steps gave {calls} model calls; expected between 1 and steps * nfe_per_step = {n * nfe}")
    init = s.init_noise_sigma
    if not isinstance(init, float) or not math.isfinite(init) or init <= 0:
        problems.append(f"init_noise_sigma must be a positive finite float, got {init!r}")
    if s.step_index is not None:
        problems.append(f"step_index must be None before the first step, got {s.step_index}")
    bad_fields = _nonfinite_plan_fields(s)
    if bad_fields:
        problems.append(f"non-finite values in the plan for {n} steps: {', '.join(bad_fields)}")
    return problems


def _first_steps_problems(ctx: _Context, s: Scheduler, calls: int) -> list[str]:
    """The first one or two steps of a planned ``s``: scale_model_input, step (object and tuple forms),
    unknown keywords, step_index, add_noise and init_state."""
    problems: list[str] = []
    plan = s._require_plan()
    ts = s.timesteps
    oracle = GaussianOracle.for_shape([3])
    x = ctx.noise([2, 3], 1).float() * s.init_noise_sigma
    t = ts[0]
    x_in = s.scale_model_input(x, t)
    if x_in.shape != x.shape:
        problems.append(f"scale_model_input changed the shape {tuple(x.shape)} -> {tuple(x_in.shape)}")
    elif not _finite(x_in) and _finite(x):
        problems.append("scale_model_input(x, t) returned non-finite values for a finite x")
    elif not torch.allclose(x_in, x * float(plan.input_scale[0]), rtol=1e-6, atol=0):
        problems.append("scale_model_input(x, t) differs from plan.input_scale * x")
    out = oracle.model_output(s.prediction_type, x_in, float(plan.model_alpha[0]), float(plan.model_sigma[0]))
    try:
        s.step(out, t, x, no_such_argument_xyz=1)
        problems.append("step() with an unknown keyword did not raise TypeError")
    except TypeError:
        pass
    result = s.step(out, t, x, seeds=ctx.seeds(2, 1), backend=ctx.settings.backend)
    if not isinstance(result, StepOutput) or not isinstance(result.prev_sample, torch.Tensor):
        problems.append(f"step() must return StepOutput(prev_sample, ...), got {type(result).__name__}")
    elif not _finite(result.prev_sample):
        problems.append("step() given the exact model's output returned a non-finite prev_sample")
    if s.step_index != 1:
        problems.append(f"step_index after one step must be 1, got {s.step_index}")
    tup = (
        s.step(out, ts[1], result.prev_sample, seeds=ctx.seeds(2, 1), return_dict=False, backend=ctx.settings.backend)
        if calls > 1
        else (x,)
    )
    if not isinstance(tup, tuple) or not isinstance(tup[0], torch.Tensor):
        problems.append("step(..., return_dict=False) must return a tuple whose first item is the sample")
    noisy = s.add_noise(torch.zeros(2, 3, device=ctx.device), torch.ones(2, 3, device=ctx.device), ts[:1].expand(2))
    if noisy.shape != (2, 3) or not bool(torch.isfinite(noisy).all()):
        problems.append("add_noise(x0, noise, timesteps) must return a finite tensor of x0's shape")
    state = s.init_state()
    if not isinstance(state, SamplerState):
        problems.append(f"init_state() must return a SamplerState, got {type(state).__name__}")
    return problems


def _check_roundtrip(ctx: _Context) -> tuple[bool, str]:
    s = ctx.make()
    with tempfile.TemporaryDirectory(prefix="samplers-check-") as folder:
        path = s.save_config(folder)
        saved = json.loads(open(path).read())
        loaded = ctx.cls.from_pretrained(folder)
    problems = []
    if dict(loaded.config) != dict(s.config):
        diff = sorted(k for k in set(loaded.config) | set(s.config) if loaded.config.get(k) != s.config.get(k))
        problems.append(f"from_pretrained(save_config(...)) changed option(s) {diff}")
    if saved.get("_samplers_name") not in (None, ctx.cls.name):
        problems.append(f"saved _samplers_name {saved.get('_samplers_name')!r} is not {ctx.cls.name!r}")
    again = ctx.cls.from_config(s.config)
    if dict(again.config) != dict(s.config):
        problems.append("from_config(scheduler.config) changed the config")
    for n in (3, 10):
        s.set_timesteps(n)
        loaded.set_timesteps(n)
        again.set_timesteps(n)
        bad_fields = _nonfinite_plan_fields(s)
        if bad_fields:  # NaN != NaN: the comparisons below would blame the round trip
            problems.append(f"non-finite values in the plan for {n} steps: {', '.join(bad_fields)}")
            continue
        plan = s._require_plan()
        for label, other in (("from_pretrained", loaded), ("from_config", again)):
            copy = other._require_plan()
            same = (
                torch.equal(plan.rows, copy.rows)
                and torch.equal(plan.timesteps, copy.timesteps)
                and plan.init_noise_sigma == copy.init_noise_sigma
            )
            if not same:
                problems.append(f"the {label} copy builds a different plan for {n} steps")
    if problems:
        return False, "; ".join(problems)
    return True, f"{len(s.config)} options survive save_config/from_pretrained and from_config; identical plans"


def _check_shapes(ctx: _Context) -> tuple[bool, str]:
    problems: list[str] = []
    shapes = [(3, 5), (2, 3, 4, 4)]
    dtypes = [torch.float32, torch.float64, torch.bfloat16]
    for shape in shapes:
        oracle = GaussianOracle.for_shape(shape[1:])
        noise = ctx.noise(shape, 7)
        seeds = ctx.seeds(shape[0], 11)
        finals: dict[torch.dtype, torch.Tensor] = {}
        for dtype in dtypes:
            finals[dtype] = _shapes_run(ctx, oracle, noise, seeds, dtype, problems).to(F64)
        problems += _dtype_agreement_problems(ctx, shape, finals)
    devices = "this device"
    if torch.cuda.is_available() and ctx.device.type == "cpu":
        devices = "CPU and CUDA"
        problems += _cpu_cuda_problems(ctx, shapes[0])
    if problems:
        return False, "; ".join(dict.fromkeys(problems))
    return (
        True,
        f"{len(shapes)} shapes x float32/float64/bfloat16 on {devices}: "
        "shapes, dtypes, finite, dtypes agree, inputs untouched",
    )


def _shapes_run(
    ctx: _Context,
    oracle: GaussianOracle,
    noise: torch.Tensor,
    seeds: torch.Tensor,
    dtype: torch.dtype,
    problems: list[str],
) -> torch.Tensor:
    """One oracle run from ``noise`` [B, ...] in ``dtype``, checking every step's output shape, dtype and device
    and that step() leaves its inputs alone; appends what fails to ``problems`` and returns the final sample."""
    shape = tuple(noise.shape)
    s = ctx.make()
    s.set_timesteps(ctx.settings.shape_steps, device=ctx.device)
    plan = s._require_plan()
    x = (noise * plan.init_noise_sigma).to(dtype)
    for i, t in enumerate(s.timesteps):
        x_in = s.scale_model_input(x, t)
        out = oracle.model_output(s.prediction_type, x_in, float(plan.model_alpha[i]), float(plan.model_sigma[i]))
        before = (x.clone(), out.clone())
        res = s.step(out, t, x, seeds=seeds, backend=ctx.settings.backend)
        if not (torch.equal(before[0], x) and torch.equal(before[1], out)):
            problems.append(f"step() modified its inputs in place ({dtype}, {shape})")
        y, x0 = res.prev_sample, res.pred_original_sample
        if y.shape != x.shape or y.dtype != dtype or y.device != x.device:
            problems.append(
                f"prev_sample is {tuple(y.shape)} {y.dtype} on {y.device}; "
                f"sample was {tuple(x.shape)} {dtype} on {x.device}"
            )
            break
        if x0 is not None and (x0.shape != x.shape or x0.dtype != dtype):
            problems.append(
                f"pred_original_sample is {tuple(x0.shape)} {x0.dtype}; sample was {tuple(x.shape)} {dtype}"
            )
            break
        x = y
    if not _finite(x):
        problems.append(f"non-finite output for {shape} {dtype}")
    return x


def _dtype_agreement_problems(
    ctx: _Context, shape: tuple[int, ...], finals: dict[torch.dtype, torch.Tensor]
) -> list[str]:
    """float64 and bfloat16 final samples (float64 copies in ``finals``) against the float32 one."""
    ref = finals[torch.float32]
    if not _finite(ref):
        return []  # reported by the run; comparisons with NaN/Inf mean nothing
    problems = []
    scale = max(1.0, float(ref.abs().max()))
    # Every tensor a call reads from an earlier one (multistep history) is stored in the sample's dtype and
    # carries that dtype's rounding into the update: the bfloat16 allowance grows with the history depth.
    depth = max((len(u) for u in ctx.make_planned(ctx.settings.shape_steps)._require_plan().use), default=0)
    for dtype, tol in ((torch.float64, 1e-3), (torch.bfloat16, 0.1 * max(1, depth))):
        err = float((finals[dtype] - ref).abs().max())
        if not err <= tol * scale:
            problems.append(f"{dtype} differs from float32 by {err:.3g} (allowed {tol * scale:.3g}) for {shape}")
    return problems


def _cpu_cuda_problems(ctx: _Context, shape: tuple[int, ...]) -> list[str]:
    """The same seeded float32 run on the CPU and on CUDA agrees to 1e-3 (relative to the sample's scale)."""
    from samplers.ops import batch_seeds

    oracle = GaussianOracle.for_shape(shape[1:])
    out_dev = {}
    for dev in ("cpu", "cuda"):
        noise = ctx.noise(shape, 7).to(dev).float()
        seeds = batch_seeds(11, shape[0], device=dev)
        x, _ = run_oracle(
            ctx.make(), oracle, noise, ctx.settings.shape_steps, seeds=seeds, backend=ctx.settings.backend, device=dev
        )
        out_dev[dev] = x.to("cpu", F64)
    problems = []
    if not (_finite(out_dev["cpu"]) and _finite(out_dev["cuda"])):
        problems.append("non-finite output on CPU or CUDA")
    err = float((out_dev["cpu"] - out_dev["cuda"]).abs().max())
    if not err <= 1e-3 * max(1.0, float(out_dev["cpu"].abs().max())):
        problems.append(f"CPU and CUDA results differ by {err:.3g}")
    return problems


def _check_determinism(ctx: _Context) -> tuple[bool, str]:
    st = ctx.settings
    shape = (6, 3)
    oracle = GaussianOracle.for_shape(shape[1:])
    noise = ctx.noise(shape, 3).float()
    steps = 8

    def run(**kw: Any) -> torch.Tensor:
        return run_oracle(ctx.make(), oracle, noise, steps, backend=st.backend, **kw)[0]

    s = ctx.make()
    s.set_timesteps(steps)
    noisy = _plan_is_noisy(s)
    stochastic_attr = bool(getattr(s, "stochastic", ctx.cls.stochastic))
    problems = []
    g = lambda seed: torch.Generator(device="cpu").manual_seed(seed)  # noqa: E731
    a, b, c = run(generator=g(1)), run(generator=g(1)), run(generator=g(2))
    sa, sb, sc = (
        run(seeds=ctx.seeds(shape[0], 5)),
        run(seeds=ctx.seeds(shape[0], 5)),
        run(seeds=ctx.seeds(shape[0], 6)),
    )
    if not all(_finite(v) for v in (a, b, c, sa, sb, sc)):
        return (
            False,
            "non-finite output from the exact model's chain; NaN never equals itself, so no seed test means anything",
        )
    if not torch.equal(a, b):
        problems.append("the same generator seed gave different outputs")
    if not torch.equal(sa, sb):
        problems.append("the same per-sample seeds gave different outputs")
    differs = not torch.equal(a, c) or not torch.equal(sa, sc)
    if noisy and not differs:
        problems.append("the plan draws noise but different seeds gave identical outputs")
    if not noisy and differs:
        problems.append("the plan draws no noise but the output depends on the seed")
    if differs and not stochastic_attr:
        problems.append("the output depends on the seed but the scheduler says stochastic=False")
    # stateless form: two runs interleaved through step_functional equal the runs made one at a time
    s = ctx.make()
    s.set_timesteps(steps, device=ctx.device)
    plan = s._require_plan()
    seeds1, seeds2 = ctx.seeds(shape[0], 5), ctx.seeds(shape[0], 6)
    x1, x2 = oracle_start(plan, oracle, noise), oracle_start(plan, oracle, noise.flip(0))
    st1, st2 = s.init_state(), s.init_state()
    for i, t in enumerate(s.timesteps):
        # the functional form has no object state, so the model input is scaled from the plan directly
        outs = [
            oracle.model_output(
                s.prediction_type,
                x * float(plan.input_scale[i]),
                float(plan.model_alpha[i]),
                float(plan.model_sigma[i]),
            )
            for x in (x1, x2)
        ]
        r1, st1 = s.step_functional(st1, outs[0], t, x1, seeds=seeds1, backend=st.backend)
        r2, st2 = s.step_functional(st2, outs[1], t, x2, seeds=seeds2, backend=st.backend)
        x1, x2 = r1.prev_sample, r2.prev_sample
    alone2 = run_oracle(ctx.make(), oracle, noise.flip(0), steps, seeds=seeds2, backend=st.backend)[0]
    if not (torch.equal(x1, sa) and torch.equal(x2, alone2)):
        problems.append("interleaved step_functional runs differ from the same runs made one at a time")
    if problems:
        return False, "; ".join(problems)
    kind = "stochastic: different seeds differ" if noisy else "deterministic: seed-independent"
    return True, f"same seed -> identical (generator and per-sample seeds); {kind}; step_functional is stateless"


def _stochastic_run(ctx: _Context, steps: int, seed: int) -> tuple[torch.Tensor, GaussianOracle]:
    st = ctx.settings
    shape = (st.stochastic_batch, st.stochastic_width)
    oracle = GaussianOracle.for_shape(shape[1:])
    x, _ = run_oracle(
        ctx.make(),
        oracle,
        ctx.noise(shape, seed).float(),
        steps,
        seeds=ctx.seeds(shape[0], seed + 1),
        backend=st.backend,
    )
    return x.cpu(), oracle


def _check_marginals(ctx: _Context) -> tuple[bool, str, bool]:
    st = ctx.settings
    s = ctx.make()
    if ctx.cls.kind == "consistency":  # a consistency sampler reaches the data only with a consistency model
        return True, "consistency sampler: the oracle (a denoiser) is not a consistency model; see its own tests", True
    s.set_timesteps(max(st.marginal_steps))
    if not _plan_is_noisy(s):
        return True, "deterministic plan: marginals are covered by the ODE accuracy check", True
    n = st.stochastic_batch * st.stochastic_width
    se = {"mean": 1 / math.sqrt(n), "variance": math.sqrt(2 / (n - 1))}
    errors: dict[int, dict[str, float]] = {}
    for steps in st.marginal_steps:
        x, oracle = _stochastic_run(ctx, steps, 21)
        u = oracle.standardize(x)
        errors[steps] = {"mean": abs(float(u.mean())), "variance": abs(float(u.var()) - 1)}
    lo, hi = st.marginal_steps
    table = "; ".join(
        f"{k} steps: |mean err| {errors[k]['mean']:.4f}, |var err| {errors[k]['variance']:.4f}" for k in (lo, hi)
    )
    if not all(math.isfinite(v) for k in errors for v in errors[k].values()):
        # max(0.0, nan) is 0.0: without this a diverged run would read as "no excess"
        return False, f"non-finite sample moments: {table}", False
    excess = {k: {m: max(0.0, errors[k][m] - st.z * se[m]) for m in se} for k in errors}
    noise = f"{n} standardized coordinates, {st.z:g} SE = {st.z * se['mean']:.4f} / {st.z * se['variance']:.4f}"
    if all(v == 0 for v in excess[hi].values()):
        return True, f"moments match the data at {hi} steps ({table}; {noise})", False
    if all(excess[hi][m] <= st.bias_shrink * excess[lo][m] for m in se):
        worst = max(excess[hi][m] / excess[lo][m] for m in se if excess[lo][m] > 0)
        return (
            True,
            (
                f"moment bias beyond sampling noise shrinks x{worst:.2f} from {lo} to {hi} steps "
                f"(as the exact-mean ancestral step's variance deficit does); {table}; {noise}"
            ),
            False,
        )
    return False, f"moments do not converge to the data's: {table}; {noise}", False


def _check_accuracy(ctx: _Context) -> tuple[bool, str]:
    st = ctx.settings
    s = ctx.make()
    s.set_timesteps(max(st.accuracy_steps))
    noisy = _plan_is_noisy(s)
    errors = []
    if noisy:
        steps_list = st.stochastic_accuracy_steps
        for steps in steps_list:
            x, oracle = _stochastic_run(ctx, steps, 31)
            errors.append(oracle.pooled_kl(x))
        floor = 8.0 / (st.stochastic_batch * st.stochastic_width)  # a fit to n exact samples has KL about 1/n
        metric = "KL(fit || data) of the standardized samples"
    else:
        steps_list = st.accuracy_steps
        oracle = GaussianOracle.for_shape([st.dim])
        noise = ctx.noise([st.accuracy_samples, st.dim], 31).float()
        for steps in steps_list:
            x, exact = run_oracle(ctx.make(), oracle, noise, steps, backend=st.backend)
            errors.append(float(((x.to(F64) - exact) ** 2).sum(-1).mean().sqrt()))
        floor = 1e-4 * float(oracle.std.max())  # float32 rounding of O(1) samples over tens of steps
        metric = "RMS error to the exact ODE solution"
    first, last = errors[0], errors[-1]
    table = ", ".join(f"{k} steps: {e:.3g}" for k, e in zip(steps_list, errors, strict=True))
    if not all(math.isfinite(e) for e in errors):
        return False, f"{metric}: {table} (non-finite)"
    if first <= floor:
        return last <= max(
            floor, 2 * first
        ), f"{metric}: {table}; already at the floor {floor:.2g} with {steps_list[0]} steps"
    order = ""
    if not noisy and last > 0:
        slope = math.log(first / last) / math.log(steps_list[-1] / steps_list[0])
        order = f"; empirical order {slope:.2f}"
    ok = last <= st.improvement * first or last <= floor
    return ok, f"{metric}: {table}{order}" + (
        "" if ok else f" (needs <= {st.improvement:g}x the {steps_list[0]}-step error)"
    )


def _check_no_sync(ctx: _Context) -> tuple[bool, str, bool]:
    if not torch.cuda.is_available():
        return True, "no CUDA device", True
    st = ctx.settings
    device = ctx.device if ctx.device.type == "cuda" else torch.device("cuda")
    s = ctx.make()
    s.set_timesteps(8, device=device)
    plan = s._require_plan()
    shape = (4, 3, 8, 8)
    oracle = GaussianOracle.for_shape(shape[1:])
    from samplers.ops import batch_seeds

    seeds = batch_seeds(3, shape[0], device=device)
    noise = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(device)
    times = s.timesteps  # on the device

    def loop(check: bool) -> torch.Tensor:
        state = s.init_state()
        x = noise * plan.init_noise_sigma
        for i in range(len(plan.timesteps)):
            t = times[i]  # a device scalar, as samplers.sample passes it
            out = oracle.model_output(
                s.prediction_type,
                x * float(plan.input_scale[i]),
                float(plan.model_alpha[i]),
                float(plan.model_sigma[i]),
            )
            torch.cuda.synchronize()
            previous = torch.cuda.get_sync_debug_mode()
            if check:
                torch.cuda.set_sync_debug_mode("error")
            try:
                result, state = s.step_functional(state, out, t, x, seeds=seeds, backend=st.backend)
            finally:
                torch.cuda.set_sync_debug_mode(previous)
            x = result.prev_sample
        return x

    loop(check=False)  # warm-up: device caches (coefficient rows, keys) are filled once per plan
    try:
        x = loop(check=True)
    except RuntimeError as exc:
        return False, f"step_functional() synchronized with the host: {str(exc).splitlines()[0]}", False
    if not _finite(x):
        return False, "non-finite output from the exact model's chain", False
    return True, f"{len(plan.timesteps)} step_functional() calls on {device} under sync debug mode 'error'", False


def private_samplers_names(source: str) -> list[str]:
    """Private samplers names a module's source reaches for: ``from samplers... import _x``, a module path
    with a ``_part`` (``samplers.ops._build``), or an attribute ``._x`` off a name bound to samplers."""
    import ast

    found: list[str] = []
    bound: set[str] = set()  # local names that refer to samplers modules or objects
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "samplers":
            module = node.module or ""
            private_path = [p for p in module.split(".") if p.startswith("_")]
            for alias in node.names:
                if private_path or alias.name.startswith("_"):
                    found.append(f"from {module} import {alias.name} (line {node.lineno})")
                bound.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "samplers":
                    if any(p.startswith("_") for p in alias.name.split(".")):
                        found.append(f"import {alias.name} (line {node.lineno})")
                    bound.add((alias.asname or alias.name).split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                found.append(f"{ast.unparse(node)} (line {node.lineno})")
    return found


def _check_public_api(ctx: _Context) -> tuple[bool, str, bool]:
    import importlib
    import pkgutil

    top = ctx.cls.__module__.split(".")[0]
    if top == "samplers":
        return True, "a built-in scheduler (core may use its own private names)", True
    try:
        package = importlib.import_module(top)
    except ImportError as exc:
        return True, f"the defining module {top!r} is not importable by name here ({exc})", True
    modules = [package]
    for info in pkgutil.walk_packages(getattr(package, "__path__", []), prefix=f"{top}."):
        try:
            modules.append(importlib.import_module(info.name))
        except Exception:  # an optional module that does not import here is not ours to judge
            continue
    problems = []
    for module in modules:
        path = getattr(module, "__file__", None)
        if path is None or not path.endswith(".py"):
            continue
        with open(path, encoding="utf-8") as handle:
            problems += [f"{module.__name__}: {p}" for p in private_samplers_names(handle.read())]
    if problems:
        return False, f"uses private samplers names: {'; '.join(problems[:4])}", False
    return True, f"{len(modules)} module(s) of {top!r} use samplers' public API only", False


_CHECK_FUNCS: dict[str, Callable[[_Context], tuple]] = {
    "protocol": _check_protocol,
    "config_roundtrip": _check_roundtrip,
    "shapes_dtypes": _check_shapes,
    "determinism": _check_determinism,
    "marginals": _check_marginals,
    "accuracy": _check_accuracy,
    "no_device_sync": _check_no_sync,
    "public_api": _check_public_api,
}


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def _resolve(name_or_cls: str | type[Scheduler]) -> tuple[type[Scheduler], str | None]:
    if isinstance(name_or_cls, str):
        from samplers.registry import registry

        return registry().scheduler_class(name_or_cls), name_or_cls
    if isinstance(name_or_cls, type) and issubclass(name_or_cls, Scheduler):
        return name_or_cls, None
    raise TypeError(f"name_or_cls must be a registered scheduler name or a Scheduler subclass, got {name_or_cls!r}")


def check_scheduler(
    name_or_cls: str | type[Scheduler],
    device: str | torch.device = "cpu",
    *,
    checks: Iterable[str] | None = None,
    settings: KitSettings | None = None,
    **config: Any,
) -> list[CheckResult]:
    """Run the conformance checks on a scheduler (by registry name or class), configured with ``config``.

    Args:
        name_or_cls: a name from ``samplers.available()`` or a :class:`samplers.protocol.Scheduler` subclass.
        device: where the runs happen (``"cpu"``, ``"cuda"``...); ``no_device_sync`` uses CUDA whenever present.
        checks: a subset of :data:`CHECKS` (default all).
        settings: run sizes (:class:`KitSettings`; ``KitSettings.quick()`` for test suites).
        **config: scheduler options, as for ``samplers.get(name, **config)``.
    Returns:
        one :class:`CheckResult` per check, in :data:`CHECKS` order.
    """
    cls, registry_name = _resolve(name_or_cls)
    selected = list(CHECKS) if checks is None else list(checks)
    unknown = [c for c in selected if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; expected some of {CHECKS}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available")
    cls.from_config(config)  # bad options fail here, before any check, with the scheduler's own message
    ctx = _Context(cls, registry_name, dict(config), dev, settings or KitSettings())
    threads, limit = ctx.settings.cpu_threads, 4 * (os.cpu_count() or 1)
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= limit
    ):
        # libgomp crashes on absurd team sizes (100000 segfaults) instead of refusing them
        raise ValueError(
            f"settings.cpu_threads must be None or an int in [0, {limit}] (4x the cores), got {threads!r}"
        )
    threads = torch.get_num_threads()
    if ctx.settings.cpu_threads:
        torch.set_num_threads(ctx.settings.cpu_threads)
    try:
        return [_run_check(ctx, name) for name in selected]
    finally:
        torch.set_num_threads(threads)


def _run_check(ctx: _Context, name: str) -> CheckResult:
    start = time.perf_counter()
    try:
        outcome = _CHECK_FUNCS[name](ctx)
        passed, detail = outcome[0], outcome[1]
        skipped = len(outcome) > 2 and bool(outcome[2])
    except Exception as exc:  # a crash is a failure of that property, reported where it happened
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        passed, skipped = False, False
        detail = f"raised {type(exc).__name__}: {exc} (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})"
    return CheckResult(name, passed, detail, skipped, time.perf_counter() - start)


def format_report(results: Sequence[CheckResult], title: str = "") -> str:
    """A plain-text table of results (what :func:`assert_conforms` raises with)."""
    width = max(len(r.name) for r in results) if results else 0
    lines = [title] if title else []
    for r in results:
        lines.append(f"  {r.status:4}  {r.name:<{width}}  {r.seconds:6.2f}s  {r.detail}")
    return "\n".join(lines)


def assert_conforms(
    name_or_cls: str | type[Scheduler],
    device: str | torch.device = "cpu",
    *,
    checks: Iterable[str] | None = None,
    settings: KitSettings | None = None,
    **config: Any,
) -> list[CheckResult]:
    """:func:`check_scheduler`, raising :class:`ConformanceError` (an ``AssertionError``) listing every
    property with its result when any fails. Returns the results when all pass."""
    results = check_scheduler(name_or_cls, device, checks=checks, settings=settings, **config)
    failed = [r for r in results if not r.passed]
    if failed:
        label = name_or_cls if isinstance(name_or_cls, str) else name_or_cls.__name__
        title = (
            f"{label} fails {len(failed)} of {len(results)} conformance checks ({', '.join(r.name for r in failed)}):"
        )
        raise ConformanceError(format_report(results, title), results)
    return results


# --------------------------------------------------------------------------------------------
# The `samplers check` command (registered by samplers.cli)
# --------------------------------------------------------------------------------------------


def _parse_options(items: Sequence[str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--option {item!r} must look like KEY=VALUE (VALUE in JSON, or a bare string)")
        try:
            config[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            config[key.strip()] = value
    return config


def check(
    name: str = typer.Argument(..., help="Scheduler name, as `samplers list` shows it."),
    device: str = typer.Option("cpu", "--device", help="Device to run on: cpu, cuda, cuda:1, ..."),
    option: list[str] | None = typer.Option(
        None, "--option", "-o", help="Scheduler option KEY=VALUE (VALUE parsed as JSON); repeatable."
    ),
    only: str = typer.Option("", "--only", help="Comma-separated subset of: " + ", ".join(CHECKS) + "."),
    quick: bool = typer.Option(False, "--quick", help="Smaller runs (what test suites use)."),
    backend: str = typer.Option("auto", "--backend", help="Update op backend: auto, fused or torch."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Run the conformance kit on one scheduler: a pass/fail line per property; exit 1 if any fails."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from samplers.registry import registry

    def fail(message: str) -> typer.Exit:
        typer.echo(f"error: {message}", err=True)  # one plain line, never wrapped
        return typer.Exit(2)

    reg = registry()
    if name not in reg.available():
        hint = did_you_mean(name, reg.available())
        raise fail(f"unknown scheduler {name!r}{hint} (`samplers list` shows all {len(reg.available())})")
    if not is_backend(backend):
        raise fail(f"--backend must be auto, fused or torch, got {backend!r}")
    selected = [c.strip() for c in only.split(",") if c.strip()] or None
    try:
        config = _parse_options(option or [])
        base = KitSettings.quick() if quick else KitSettings()
        settings = dataclasses.replace(base, backend=backend)
        results = check_scheduler(name, device, checks=selected, settings=settings, **config)
    except (ValueError, TypeError) as exc:
        raise fail(str(exc)) from None
    entry = reg.entries[name]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "scheduler": name,
                    "source": str(entry.source),
                    "device": device,
                    "config": config,
                    "passed": all(r.passed for r in results),
                    "results": [dict(dataclasses.asdict(r), status=r.status) for r in results],
                },
                indent=2,
            )
        )
    else:
        table = Table(
            title=escape(f"samplers check {name}  [{entry.source.distribution} {entry.source.version}, {device}]")
        )
        table.add_column("property", no_wrap=True)
        table.add_column("result", no_wrap=True)
        table.add_column("time", justify="right", no_wrap=True)
        table.add_column("detail")
        colors = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow"}
        for r in results:
            table.add_row(r.name, f"[{colors[r.status]}]{r.status}[/]", f"{r.seconds:.2f}s", escape(r.detail))
        out = Console(width=None if sys.stdout.isatty() else 140)  # piped: no terminal width to read
        out.print(table)
        failed = sum(not r.passed for r in results)
        out.print(
            f"[bold red]{failed} failed[/]" if failed else f"[green]all {len(results)} checks passed[/]",
            highlight=False,
        )
    if not all(r.passed for r in results):
        raise typer.Exit(1)
