"""The scheduler protocol: diffusers-compatible names over a plan of fused-update rows.

A scheduler declares, for the levels a run visits (:mod:`samplers.levels`), the list of its model
calls (:class:`samplers.plan.Call`); ``set_timesteps`` builds the :class:`samplers.plan.Plan` from
that list once, on the host in float64, and swaps it in only when every check has passed.
``step()`` is then a table lookup and one fused op (or its PyTorch reference): no per-step host
math, no host-device sync, and the same rows serve per-sample timesteps (gathered on the device)
and CUDA-graph capture. ``docs/architecture.md`` follows one step from ``set_timesteps`` to the kernel.

Typical loop (a diffusers pipeline does exactly this)::

    scheduler.set_timesteps(50, device="cuda")
    x = torch.randn(shape, device="cuda") * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x).prev_sample

The functional form ``step_functional(state, ...) -> (StepOutput, state)`` keeps no state on the
object, so one configured scheduler (with its plan) can serve concurrent requests.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, overload

import torch

from samplers import config as cfg
from samplers import levels as lv
from samplers import ops, parameterization, schedules
from samplers.config import CONFIG_NAME, SchedulerConfig
from samplers.ops.reference import COEFF
from samplers.plan import ESTIMATE, SAMPLE, Call, Plan, build_plan
from samplers.schedules import DiscreteVPSchedule, NoiseSchedule

# Sampler kinds shown by `samplers list`, in display order.
KINDS: tuple[str, ...] = ("ode-single-step", "ode-multistep", "sde", "consistency", "langevin")


class StepOutput:
    """Result of one ``step()``: ``prev_sample`` [B, ...] and ``pred_original_sample`` (x0_hat) [B, ...].

    Samplers whose calls estimate the noise rather than x0 give ``pred_original_sample`` on first
    access (one small op then; none when nobody reads it).
    """

    def __init__(
        self,
        prev_sample: torch.Tensor,
        pred_original_sample: torch.Tensor | None = None,
        x0_from: Callable[[], torch.Tensor] | None = None,
    ) -> None:
        self.prev_sample = prev_sample
        self._x0 = pred_original_sample
        self._x0_from = x0_from

    @property
    def pred_original_sample(self) -> torch.Tensor | None:
        if self._x0 is None and self._x0_from is not None:
            self._x0, self._x0_from = self._x0_from(), None
        return self._x0

    @pred_original_sample.setter
    def pred_original_sample(self, value: torch.Tensor | None) -> None:
        self._x0, self._x0_from = value, None

    def __getitem__(self, index: int) -> torch.Tensor | None:  # diffusers' BaseOutput allows out[0]
        return self.to_tuple()[index]

    def __iter__(self) -> Iterator[torch.Tensor | None]:
        return iter(self.to_tuple())

    def to_tuple(self) -> tuple:
        x0 = self.pred_original_sample
        return (self.prev_sample,) if x0 is None else (self.prev_sample, x0)

    def __repr__(self) -> str:
        return f"StepOutput(prev_sample={tuple(self.prev_sample.shape)}, pred_original_sample=...)"


@dataclass
class SamplerState:
    """Everything that changes during a sampling run (the functional API passes it in and out)."""

    step_index: int = 0
    kept: dict[str, torch.Tensor] = field(default_factory=dict)
    seeds: torch.Tensor | None = None


class Scheduler:
    """Base of every scheduler (built-in or plugin).

    A subclass gives class metadata, a diffusers-compatible ``__init__`` whose body only validates
    (the arguments become ``self.config`` before it runs), and :meth:`plan_calls`. Metadata read by
    the registry, ``samplers list`` and the benchmark: ``name``, ``family`` ("vp", "ve", "flow" or
    "any": the schedules it runs on), ``kind`` (see :data:`KINDS`), ``order``, ``nfe_per_step``,
    ``stochastic`` (the sampler *can* draw noise; :attr:`is_stochastic` says whether this
    configuration does), ``prediction_types`` and ``paper``.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = "any"
    kind: ClassVar[str] = "ode-single-step"
    # order and nfe_per_step: the class's value, which an instance may refine for its config (LMS's solver_order,
    # PNDM's skip_prk_steps, Langevin's steps_per_level), so they are not ClassVars.
    order: int = 1
    nfe_per_step: int = 1
    stochastic: ClassVar[bool] = False
    # The config under which the scheduler draws noise when that depends on it (e.g. "eta > 0").
    stochastic_when: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    prediction_types: ClassVar[tuple[str, ...]] = parameterization.PREDICTION_TYPES
    uses_mu: ClassVar[bool] = False  # whether set_timesteps(mu=...) means something (flow dynamic shifting)
    # Default timestep_spacing on a discrete table when the config gives none.
    default_spacing: ClassVar[str] = "leading"
    config_name: ClassVar[str] = CONFIG_NAME
    _compatibles: ClassVar[list] = []  # diffusers pipelines read this

    config: SchedulerConfig

    # ---- construction and config --------------------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Bind the config once: a subclass ``__init__``'s arguments (defaults applied) become
        ``self.config`` and are checked by name before its body (which only validates) runs."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def bound_init(self: Scheduler, *args: Any, **options: Any) -> None:
            if "config" not in self.__dict__:  # the outermost __init__ of this construction
                values = cfg.bind_config(cls.__name__, init, args, dict(options))
                self._setup(values)
                own = {k: v for k, v in values.items() if k not in cfg.COMMON_OPTIONS or k in options}
                init(self, **{k: v for k, v in own.items() if k in _parameters(init)})
            else:
                init(self, *args, **options)

        cls.__init__ = bound_init  # type: ignore[method-assign]  # the wrapper is the point: it binds the config

    def __init__(self, **config: Any) -> None:
        if "config" not in self.__dict__:
            self._setup({**cfg.COMMON_OPTIONS, **config})

    def _setup(self, values: Mapping[str, Any]) -> None:
        cfg.check_config(type(self).__name__, self._signature_defaults(), values)
        self.config = SchedulerConfig({k: cfg.config_value(v) for k, v in values.items()})
        canonical = parameterization.canonical_prediction_type(values.get("prediction_type", "epsilon"))
        if canonical not in self.prediction_types:
            raise ValueError(
                f"{type(self).__name__} does not take prediction_type={values.get('prediction_type')!r}; "
                f"it takes {self.prediction_types}"
            )
        self.prediction_type = canonical
        self.schedule: NoiseSchedule = self._make_schedule()
        self.plan: Plan | None = None
        self._plan_key: tuple | None = None  # the set_timesteps arguments the plan was built for
        self.num_inference_steps: int | None = None
        self._begin_index: int | None = None
        self._state = SamplerState()
        self._started = False
        self._device = torch.device("cpu")
        self._device_cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def _signature_defaults(cls) -> dict[str, Any]:
        return cfg.signature_defaults(cls.__init__)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, **changes: Any) -> Scheduler:
        """New scheduler from a config dict (unknown keys are an error unless they start with '_')."""
        merged = {k: v for k, v in dict(config or {}).items() if not k.startswith("_")}
        merged.update(changes)
        unknown = sorted(set(merged) - set(cls._signature_defaults()))
        if unknown:
            raise TypeError(
                f"{cls.__name__} has no config option(s) {unknown}; it takes {sorted(cls._signature_defaults())}"
            )
        return cls(**merged)

    def save_config(self, save_directory: str | os.PathLike, **_: Any) -> Path:
        """Write ``scheduler_config.json`` (with ``_class_name`` and registry name) into a folder."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.config_name
        payload = {"_class_name": type(self).__name__, "_samplers_name": self.name, **dict(self.config)}
        path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load_config(cls, path: str | os.PathLike, subfolder: str | None = None) -> dict[str, Any]:
        folder = Path(path) / subfolder if subfolder else Path(path)
        file = folder if folder.is_file() else folder / cls.config_name
        if not file.is_file():
            raise FileNotFoundError(f"no {cls.config_name} in {folder}")
        return json.loads(file.read_text())

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **changes: Any
    ) -> Scheduler:
        """Load from a local folder holding ``scheduler_config.json`` (no downloads)."""
        return cls.from_config(cls.load_config(pretrained_model_name_or_path, subfolder), **changes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config.items())})"

    # ---- the schedule -----------------------------------------------------------------------

    def _make_schedule(self) -> NoiseSchedule:
        """The training schedule from config (discrete VP by default; ``schedule=`` picks a continuous one)."""
        c = self.config
        name = c.get("schedule", "discrete")
        if name in (None, "discrete"):
            return DiscreteVPSchedule.from_config(
                beta_schedule=c.get("beta_schedule", "linear"),
                num_train_timesteps=c.get("num_train_timesteps", 1000),
                beta_start=c.get("beta_start", 0.0001),
                beta_end=c.get("beta_end", 0.02),
                trained_betas=c.get("trained_betas"),
                rescale_betas_zero_snr=c.get("rescale_betas_zero_snr", False),
            )
        return schedules.get_schedule(name, **dict(c.get("schedule_kwargs") or {}))

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """``abar_t`` per training timestep (discrete VP schedules only)."""
        if not isinstance(self.schedule, DiscreteVPSchedule):
            raise AttributeError(f"{type(self).__name__} on a {type(self.schedule).__name__} has no alphas_cumprod")
        return self.schedule.alphas_cumprod

    @property
    def betas(self) -> torch.Tensor:
        if not isinstance(self.schedule, DiscreteVPSchedule):
            raise AttributeError(f"{type(self).__name__} on a {type(self.schedule).__name__} has no betas")
        return self.schedule.betas

    # ---- set_timesteps ----------------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[float] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        mu: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Choose the sampling grid: a step count, or custom ``timesteps`` or ``sigmas`` (descending).

        ``mu`` is the dynamic time shift of flow schedulers. Resets the run state. The new plan is
        built aside and swapped in only when it is complete: on an error the scheduler keeps its
        previous plan and run untouched.
        """
        if kwargs:
            raise TypeError(f"set_timesteps got unexpected argument(s) {sorted(kwargs)}")
        if timesteps is not None and sigmas is not None:
            raise ValueError("give either timesteps or sigmas, not both")
        if num_inference_steps is None and timesteps is None and sigmas is None:
            num_inference_steps = self.default_num_inference_steps()
        if num_inference_steps is not None:
            lv.check_steps(num_inference_steps)
        grid_t = None if timesteps is None else lv.custom_grid(timesteps, "timesteps")
        grid_sigma = None if sigmas is None else lv.custom_grid(sigmas, "sigmas")
        custom = grid_t if grid_t is not None else grid_sigma
        if custom is not None and num_inference_steps is not None:
            count = len(lv.levels_from_sigmas(self.schedule, custom)) if grid_sigma is not None else len(custom)
            if num_inference_steps != count:
                raise ValueError(
                    f"num_inference_steps={num_inference_steps} disagrees with the {count} custom "
                    f"{'timesteps' if grid_t is not None else 'sigmas'}; give one or the other"
                )
        if mu is not None:
            if not self.uses_mu:
                raise ValueError(
                    f"mu (the dynamic time shift) only applies to flow schedulers; "
                    f"{type(self).__name__} does not use it"
                )
            if not math.isfinite(float(mu)):
                raise ValueError(f"mu must be a finite number, got {mu!r}")
        target = torch.device(device) if device is not None else torch.device("cpu")
        key = (num_inference_steps, _grid_key(grid_t), _grid_key(grid_sigma), mu)
        if self.plan is not None and key == self._plan_key:
            # the same grid again: keep the plan (a compiled loop guarded on it stays valid), reset the run
            self._reset_run(target)
            return
        levels = self.run_levels(num_inference_steps, grid_t, grid_sigma, mu)
        try:
            plan = self.make_plan(levels, mu)
        except ValueError as exc:
            if "non-finite update coefficient" not in str(exc):
                raise
            raise ValueError(f"prediction_type={self.prediction_type!r} cannot be used on this grid: {exc}") from exc
        # Everything above may raise; nothing below does: the swap is all or nothing.
        self.plan = plan
        self._plan_key = key
        self.num_inference_steps = num_inference_steps if num_inference_steps is not None else len(levels)
        self._device_cache = {}
        self._reset_run(target)

    def _reset_run(self, device: torch.device) -> None:
        self._begin_index = None
        self._state = SamplerState()
        self._started = False
        self._device = device
        self._fill_device_cache(device)

    def _fill_device_cache(self, device: torch.device) -> None:
        """Put the tables a step reads on ``device`` now, eagerly: a compiled loop then finds them (no host work
        or data-dependent branch while tracing), and the first step does no copy."""
        plan = self._require_plan()
        self._device_cache[("timesteps", device)] = self._timesteps_for_model(plan).to(device)
        self._rows_on(device)
        self._on_device(("plan_t", device), lambda: plan.timesteps.to(torch.float64).to(device))
        self._on_device(("in_scale", device), lambda: plan.input_scale.to(device))

    def default_num_inference_steps(self) -> int:
        """Step count of ``set_timesteps()`` with no grid (diffusers requires one; DDPM uses the table)."""
        raise ValueError("set_timesteps needs num_inference_steps, timesteps or sigmas")

    def run_levels(
        self, n: int | None, timesteps: torch.Tensor | None, sigmas: torch.Tensor | None, mu: float | None
    ) -> lv.Levels:
        """The levels of the run's calls: custom ``sigmas`` / ``timesteps``, the configured named spacing
        (``sigma_schedule``, or diffusers' ``use_*_sigmas`` flags), else :meth:`default_levels`."""
        schedule = self.schedule
        if sigmas is not None:
            return self._tagged(lv.levels_at_levels(schedule, lv.levels_from_sigmas(schedule, sigmas)), "sigmas")
        if timesteps is not None:
            schedule.check_times(timesteps, "custom timesteps")
            return self._tagged(self.levels_at_times(timesteps), "timesteps")
        assert n is not None
        named = self.named_spacing()
        if named is not None:
            name, params = named
            levels = lv.named_grid(name, n, schedule, self.named_level_span(n), sampler=self.name or None, **params)
            return self._tagged(levels, "named")
        return self._tagged(self.default_levels(n, mu), "spacing")

    def _tagged(self, levels: lv.Levels, source: str) -> lv.Levels:
        return dataclasses.replace(levels, source=source)  # how the grid was chosen (stride rules need it)

    def named_spacing(self) -> tuple[str, dict[str, Any]] | None:
        """``(grid name, params)`` from config ``sigma_schedule`` or diffusers' flags, or None for the default."""
        name = self.config.get("sigma_schedule")
        params = dict(self.config.get("sigma_schedule_kwargs") or {})
        if name is not None:
            return name, params
        from samplers import grids

        flagged, params = grids.from_diffusers_flags(self.config)
        if flagged is None or grids.GRIDS[flagged].space == "flow":
            return None  # flow shifts are the flow schedulers' own default spacing
        params = {k: v for k, v in params.items() if k not in ("sigma_min", "sigma_max")}  # in named_level_span
        if "rho" in grids.GRIDS[flagged].params and self.config.get("rho") is not None:
            params["rho"] = float(self.config["rho"])
        return flagged, params

    def named_level_span(self, n: int) -> tuple[float, float]:
        """``(sigma_min, sigma_max)`` a named spacing spans: config values over the schedule's range."""
        return lv.level_range(self.schedule, self.config)

    def default_levels(self, n: int, mu: float | None) -> lv.Levels:
        """The scheduler's own spacing: ``timestep_spacing`` on a discrete table, the schedule's default times else."""
        return self.levels_at_times(lv.spaced_times(self.schedule, self.config, n, self.default_spacing))

    def levels_at_times(self, t: torch.Tensor) -> lv.Levels:
        """Levels of calls at model times (sigma-space samplers interpolate the discrete table their way)."""
        return lv.levels_at_times(self.schedule, t)

    def make_plan(self, levels: lv.Levels, mu: float | None = None) -> Plan:
        """The plan of a run over ``levels``: :meth:`plan_calls` built by :func:`samplers.plan.build_plan`."""
        return build_plan(
            self.plan_calls(levels),
            self.prediction_type,
            init_noise_sigma=self.initial_sigma(levels),
            brownian=self.config.get("noise") == "brownian",
            sigmas=self.run_sigmas(levels),
        )

    def plan_calls(self, levels: lv.Levels) -> list[Call]:
        """The sampler's calls for a run over ``levels`` (the one method a sampler must write)."""
        raise NotImplementedError(f"{type(self).__name__} must implement plan_calls(levels)")

    def initial_sigma(self, levels: lv.Levels) -> float:
        """Std of the initial sample ``x_T``: ``sqrt(alpha^2 + sigma^2)`` at the first call (data of unit scale)."""
        return float((levels.alpha[0] ** 2 + levels.sigma[0] ** 2).sqrt())

    def run_sigmas(self, levels: lv.Levels) -> torch.Tensor:
        """diffusers' ``scheduler.sigmas``: the sigma-space levels of the run and a final 0 (float32)."""
        return torch.cat([levels.level, torch.zeros(1, dtype=torch.float64)]).to(torch.float32)

    def _require_plan(self) -> Plan:
        if self.plan is None:
            raise RuntimeError(f"call {type(self).__name__}.set_timesteps(...) before stepping")
        return self.plan

    @property
    def timesteps(self) -> torch.Tensor:
        plan = self._require_plan()
        return self._on_device(("timesteps", self._device), lambda: self._timesteps_for_model(plan).to(self._device))

    def _timesteps_for_model(self, plan: Plan) -> torch.Tensor:
        """Integer timesteps when they are whole numbers on a discrete schedule (as diffusers gives)."""
        t = plan.timesteps
        if isinstance(self.schedule, DiscreteVPSchedule) and bool((t == t.round()).all()):
            return t.round().to(torch.int64)
        return t.to(torch.float32)

    @property
    def sigmas(self) -> torch.Tensor:
        plan = self._require_plan()
        if plan.sigmas is None:
            raise AttributeError(f"{type(self).__name__} has no sigmas")
        return plan.sigmas

    @property
    def init_noise_sigma(self) -> float:
        return self._require_plan().init_noise_sigma

    @property
    def is_stochastic(self) -> bool:
        """Whether this configuration draws noise (the plan's, or a default-length run's before set_timesteps)."""
        if self.plan is not None:
            return self.plan.stochastic
        probe = type(self).from_config(self.config)
        probe.set_timesteps(timesteps=None, sigmas=None, num_inference_steps=self._probe_steps())
        return probe._require_plan().stochastic

    def _probe_steps(self) -> int:
        try:
            return self.default_num_inference_steps()
        except ValueError:
            return 10

    @property
    def step_index(self) -> int | None:
        """Index of the next call in the plan, or None before the first step (as in diffusers)."""
        return self._state.step_index if self._started else None

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the run at this call (img2img pipelines skip the first calls)."""
        plan = self._require_plan()
        if not isinstance(begin_index, int) or not 0 <= begin_index < len(plan.timesteps):
            raise ValueError(f"begin_index must be an int in [0, {len(plan.timesteps)}), got {begin_index!r}")
        if plan.use[begin_index]:
            raise ValueError(
                f"call {begin_index} continues a step (it needs {plan.use[begin_index]} from earlier calls); "
                "begin at the first call of a step"
            )
        self._begin_index = begin_index
        self._state = SamplerState(step_index=begin_index)
        self._started = True

    def __len__(self) -> int:
        return int(self.config.get("num_train_timesteps", 1000))

    # ---- device caches ----------------------------------------------------------------------

    def _on_device(self, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        value = self._device_cache.get(key)
        if value is None:
            value = make()
            self._device_cache[key] = value
        return value

    def _rows_on(self, device: torch.device) -> torch.Tensor:
        plan = self._require_plan()
        return self._on_device(("rows", device), lambda: plan.rows.to(torch.float32).to(device))

    # ---- which call a step is ---------------------------------------------------------------

    def index_for_timestep(self, timestep: Any, start: int | None = None) -> int:
        """Host lookup of a scalar timestep in the plan (first call at or after ``start`` / the begin index)."""
        plan = self._require_plan()
        value = _host_float(timestep, "timestep")
        hits = (plan.timesteps - value).abs() <= 1e-4 * max(1.0, abs(value))
        first = self._begin_index or 0 if start is None else start
        candidates = [i for i in hits.nonzero().flatten().tolist() if i >= first]
        if not candidates:
            raise ValueError(
                f"timestep {value:g} is not in this scheduler's timesteps "
                f"(first {plan.timesteps[:4].tolist()}..., {len(plan.timesteps)} in all)"
            )
        return candidates[0]

    def _resolve_call(self, state: SamplerState, timestep: Any) -> int:
        """The plan index of a scalar-timestep step.

        Memoryless plans (no call uses an earlier one's tensors, timesteps unique) resolve the call
        from a host timestep, so steps may repeat, skip or go back as with diffusers' DDPM/DDIM. Other
        plans step in order: the state's counter, checked against a host timestep.
        """
        plan = self._require_plan()
        compiling = torch.compiler.is_compiling()
        on_host = not compiling and (not isinstance(timestep, torch.Tensor) or timestep.device.type == "cpu")
        if on_host and plan.memoryless:
            return self.index_for_timestep(timestep, start=0)
        index = state.step_index
        if index >= len(plan.timesteps):
            raise IndexError(
                f"step() called {index + 1} times but the plan has {len(plan.timesteps)} calls; "
                "call set_timesteps again (or set_begin_index) to start a new run"
            )
        if compiling:  # no host read while tracing: the check runs where the timestep lives
            self._assert_timestep(timestep, index)
        elif on_host:
            expected = plan.times[index]
            value = _host_float(timestep, "timestep")
            if abs(value - expected) > 1e-4 * max(1.0, abs(expected)):
                if index == (self._begin_index or 0) and not state.kept:
                    return self.index_for_timestep(value)  # a pipeline may start mid-schedule
                raise ValueError(
                    f"timestep {value:g} is not the next one in the schedule: expected {expected:g} at step_index "
                    f"{index}. {type(self).__name__} carries state from call to call (history or repeated levels), "
                    "so its calls must come in order; call set_timesteps (or set_begin_index) to start over"
                )
        return index

    def _assert_timestep(self, timestep: Any, index: int) -> None:
        """While compiling: the timestep must be the plan's call ``index``, checked where it lives (a device
        assert on CUDA, raised at the next sync; raised at once on the CPU). Only tensor ops: no host floats."""
        if not isinstance(timestep, torch.Tensor):
            timestep = torch.tensor(timestep, dtype=torch.float64)
        plan = self._require_plan()
        times = self._on_device(("plan_t", timestep.device), lambda: plan.timesteps.to(timestep.device))
        expected = times[index]
        ok = ((timestep.to(torch.float64) - expected).abs() <= 1e-4 * expected.abs().clamp(min=1.0)).all()
        torch._assert_async(ok, "timestep is not the next one in the schedule (checked on the device)")

    def _per_sample_indices(self, timestep: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Device lookup of per-sample timesteps [B] -> plan indices [B] (no sync; exact match checked)."""
        plan = self._require_plan()
        if not plan.memoryless:
            raise ValueError(
                f"{type(self).__name__} carries state from call to call (history or repeated levels) and cannot "
                "take per-sample timesteps"
            )
        if timestep.shape != (sample.shape[0],):
            raise ValueError(
                f"per-sample timestep must have shape [batch={sample.shape[0]}], got {tuple(timestep.shape)}"
            )
        device = sample.device
        times = self._on_device(("plan_t", device), lambda: plan.timesteps.to(torch.float64).to(device))
        gap = (timestep.to(device=device, dtype=torch.float64)[:, None] - times[None, :]).abs()
        best, indices = gap.min(dim=1)
        tolerance = 1e-4 * times.abs().clamp(min=1.0)[indices]
        if timestep.device.type == "cpu" and not torch.compiler.is_compiling():
            off = ~(best <= tolerance)  # NaN is off the plan too
            if bool(off.any()):
                i = int(off.nonzero()[0])
                raise ValueError(
                    f"per-sample timestep[{i}]={float(timestep[i]):g} is not in this scheduler's timesteps "
                    f"(first {plan.timesteps[:4].tolist()}..., {len(plan.timesteps)} in all)"
                )
        else:  # checked on the device, reported at the next sync: no host round trip inside step()
            torch._assert_async((best <= tolerance).all(), "per-sample timestep not in the scheduler's timesteps")
        return indices

    # ---- model-input scaling and noising ----------------------------------------------------

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The model sees ``input_scale * sample`` (1 for model-space samplers, alpha for sigma-space ones)."""
        plan = self._require_plan()
        if plan.unit_scale:
            return sample
        if _is_per_sample(timestep):
            scale = self._on_device(("in_scale", sample.device), lambda: plan.input_scale.to(sample.device))
            s = scale[self._per_sample_indices(timestep, sample)].to(sample.dtype)
            return sample * s.view(-1, *([1] * (sample.dim() - 1)))
        if torch.compiler.is_compiling() and timestep is not None and plan.memoryless:
            scale = self._on_device(("in_scale", sample.device), lambda: plan.input_scale.to(sample.device))
            t = torch.as_tensor(timestep, device=sample.device).reshape(1).expand(sample.shape[0])
            s = scale[self._per_sample_indices(t, sample)].to(sample.dtype)
            return sample * s.view(-1, *([1] * (sample.dim() - 1)))
        index = self._state.step_index
        host = not isinstance(timestep, torch.Tensor) or timestep.device.type == "cpu"
        if timestep is not None and host and not torch.compiler.is_compiling():
            index = self._resolve_call(self._state, timestep)
        return sample * plan.scales[min(index, len(plan.scales) - 1)]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """Forward-noise ``x0`` to ``timesteps`` in this scheduler's working space (shape [B, ...])."""
        if original_samples.shape != noise.shape:
            raise ValueError(
                f"noise shape {tuple(noise.shape)} must equal original_samples shape {tuple(original_samples.shape)}"
            )
        t = torch.as_tensor(timesteps, device=original_samples.device)
        if t.numel() == 1:  # one timestep for the batch (pipelines pass [1] too)
            t = t.reshape(()).expand(original_samples.shape[0])
        if t.shape != (original_samples.shape[0],):
            raise ValueError(
                f"timesteps must be a scalar or [batch={original_samples.shape[0]}], got {tuple(t.shape)}"
            )
        alpha, sigma = self.working_alpha_sigma(t)
        view = (-1,) + (1,) * (original_samples.dim() - 1)
        alpha = alpha.to(original_samples.dtype).view(view)
        sigma = sigma.to(original_samples.dtype).view(view)
        return schedules.q_sample(original_samples, noise, alpha, sigma)

    def working_alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, sigma)`` at model times ``t`` in the space this scheduler's samples live in."""
        table = self.schedule
        if isinstance(table, DiscreteVPSchedule) and not t.is_floating_point():
            abar = self._on_device(("abar", t.device), lambda: table.alphas_cumprod.to(t.device))[t]
            return abar.sqrt(), (1 - abar).sqrt()
        host = t.detach().cpu().to(torch.float64)
        self.schedule.check_times(host, "add_noise timesteps")
        alpha, sigma = self.schedule.alpha_sigma(host)
        return alpha.to(t.device), sigma.to(t.device)

    # ---- stepping ---------------------------------------------------------------------------

    def init_state(self) -> SamplerState:
        """A fresh run state (at the begin index if one was set)."""
        return SamplerState(step_index=self._begin_index or 0)

    # The overloads tell a type checker what a call returns: StepOutput unless return_dict=False is given.
    @overload
    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: Literal[True] = True,
        *,
        noise: torch.Tensor | None = None,
        variance_noise: torch.Tensor | None = None,
        seeds: torch.Tensor | None = None,
        uncond: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        backend: ops.update.Backend = "auto",
        check_finite: bool = False,
        **kwargs: Any,
    ) -> StepOutput: ...

    @overload
    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        return_dict: Literal[False],
        noise: torch.Tensor | None = None,
        variance_noise: torch.Tensor | None = None,
        seeds: torch.Tensor | None = None,
        uncond: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        backend: ops.update.Backend = "auto",
        check_finite: bool = False,
        **kwargs: Any,
    ) -> tuple: ...

    @overload
    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        *,
        noise: torch.Tensor | None = None,
        variance_noise: torch.Tensor | None = None,
        seeds: torch.Tensor | None = None,
        uncond: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        backend: ops.update.Backend = "auto",
        check_finite: bool = False,
        **kwargs: Any,
    ) -> StepOutput | tuple: ...

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        *,
        noise: torch.Tensor | None = None,
        variance_noise: torch.Tensor | None = None,
        seeds: torch.Tensor | None = None,
        uncond: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        backend: ops.update.Backend = "auto",
        check_finite: bool = False,
        **kwargs: Any,
    ) -> StepOutput | tuple:
        """One sampler update from ``sample`` at ``timestep`` toward the next call's time.

        Args:
            model_output: [B, ...] network output for ``scale_model_input(sample, timestep)``
                (the conditional branch when ``uncond`` is given).
            timestep: the current timestep (scalar), or a [B] tensor of per-sample timesteps.
            sample: [B, ...] current sample.
            generator: a stochastic run draws one 64-bit seed from it at its first noisy step;
                the noise is then Philox(seed per sample, call index) on any device.
            noise / variance_noise: explicit noise [B, ...] (reproduces other libraries).
            seeds: per-sample int64 Philox keys [B] (``samplers.ops.batch_seeds``); no host work.
            uncond, guidance_scale: classifier-free guidance fused into the update.
            backend: "auto", "fused" or "torch" (see ``samplers.ops.sampler_update``).
            check_finite: raise if model_output holds NaN/Inf (costs a device sync).
        Returns:
            StepOutput(prev_sample, pred_original_sample), or a tuple if ``return_dict`` is False.
        """
        output, self._state = self.step_functional(
            self._state,
            model_output,
            timestep,
            sample,
            generator=generator,
            noise=noise if noise is not None else variance_noise,
            seeds=seeds,
            uncond=uncond,
            guidance_scale=guidance_scale,
            backend=backend,
            check_finite=check_finite,
            **kwargs,
        )
        self._started = True
        return output if return_dict else output.to_tuple()

    def _step_overrides(self, **kwargs: Any) -> dict[str, Any]:
        """Per-call options a subclass accepts in ``step()`` (e.g. DDIM's ``eta``); unknown ones are errors."""
        if kwargs:
            raise TypeError(f"{type(self).__name__}.step() got unexpected argument(s) {sorted(kwargs)}")
        return {}

    def _row_for_call(self, index: int, overrides: dict[str, Any]) -> torch.Tensor | None:
        """A replacement float64 row for per-call overrides, or None to use the plan's row."""
        return None

    def step_functional(
        self,
        state: SamplerState,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        seeds: torch.Tensor | None = None,
        uncond: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        backend: ops.update.Backend = "auto",
        check_finite: bool = False,
        **kwargs: Any,
    ) -> tuple[StepOutput, SamplerState]:
        """Stateless step: returns the output and the next state; ``state`` itself is not modified.

        Phases: check the inputs; find the call's row(s) (a plan lookup, or a per-sample gather);
        apply guidance; find the noise (explicit, or the run's seeds); gather the history; let the
        sampler adjust data-dependent coefficients; run the fused op; keep what later calls need.
        """
        plan = self._require_plan()
        overrides = self._step_overrides(**kwargs)
        model_output = self._prepare_model_output(model_output, sample)
        self._check_step_inputs(model_output, sample, uncond, noise, check_finite)
        index, indices, coeffs, stochastic = self._call_rows(state, timestep, sample, overrides)
        coeffs = _with_guidance(coeffs, uncond, guidance_scale)
        run_seeds = state.seeds
        if stochastic and noise is None:
            run_seeds, state = self.resolve_seeds(state, seeds, generator, sample)
        kept = dict(state.kept)
        history = self._history(plan, index, kept)
        coeffs = self._adjust_coeffs(coeffs, sample, model_output, uncond, index, state, noise)
        prev, estimate = ops.sampler_update(
            sample,
            model_output,
            coeffs,
            uncond=uncond,
            noise=noise if stochastic else None,
            seeds=run_seeds if (stochastic and noise is None) else None,
            history=history,
            brownian=self.config.get("noise") == "brownian",
            backend=backend,
        )
        output = self._output(plan, index, sample, prev, estimate, model_output, uncond, coeffs)
        if index is None:  # per-sample calls are memoryless: the state does not move
            return output, state
        if index < 0:  # a memoryless call found on the device (compiled): count it, keep nothing
            return output, SamplerState(step_index=state.step_index + 1, kept=kept, seeds=run_seeds)
        for name in plan.drop[index]:
            kept.pop(name, None)
        for name, what in plan.keep[index]:
            kept[name] = sample if what == SAMPLE else estimate
        next_state = SamplerState(step_index=index + 1, kept=kept, seeds=run_seeds)
        return output, next_state

    def _check_step_inputs(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        uncond: torch.Tensor | None,
        noise: torch.Tensor | None,
        check_finite: bool,
    ) -> None:
        if not isinstance(sample, torch.Tensor):
            raise TypeError(f"sample must be a torch.Tensor, got {type(sample).__name__}")
        if uncond is not None and uncond.shape != model_output.shape:
            raise ValueError(f"uncond has shape {tuple(uncond.shape)}; model_output has {tuple(model_output.shape)}")
        if check_finite:
            for label, t in (("model_output", model_output), ("uncond", uncond), ("noise", noise)):
                if t is None:
                    continue
                if torch.compiler.is_compiling():  # no host read while tracing: checked where t lives
                    torch._assert_async(torch.isfinite(t).all(), f"{label} contains NaN or Inf (check_finite=True)")
                elif not bool(torch.isfinite(t).all()):
                    raise FloatingPointError(f"{label} contains NaN or Inf (check_finite=True)")

    def _call_rows(
        self, state: SamplerState, timestep: Any, sample: torch.Tensor, overrides: dict[str, Any]
    ) -> tuple[int | None, torch.Tensor | None, torch.Tensor, bool]:
        """``(index, per-sample indices, coeffs [1 or B, NUM_COEFFS] float32, whether noise is drawn)``."""
        plan = self._require_plan()
        rows_dev = self._rows_on(sample.device)
        if _is_per_sample(timestep):
            indices = self._per_sample_indices(timestep, sample)
            return None, indices, rows_dev[indices], plan.stochastic
        gather = plan.memoryless and _no_overrides(overrides) and not any(plan.x0_from_estimate)
        if torch.compiler.is_compiling() and gather:
            # a function of t, as in eager mode, without reading t on the host: gather the row on the device
            t = torch.as_tensor(timestep, device=sample.device).reshape(1)
            indices = self._per_sample_indices(t, sample[:1])
            return -1, indices, rows_dev[indices], plan.stochastic
        index = self._resolve_call(state, timestep)
        row = self._row_for_call(index, overrides)
        if row is None:
            return index, None, rows_dev[index : index + 1], plan.stochastic_calls[index]
        coeffs = row.to(torch.float32).view(1, -1).to(sample.device)
        return index, None, coeffs, bool(row[COEFF["c"]] != 0)

    def _history(self, plan: Plan, index: int | None, kept: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        if index is None or index < 0:
            return []
        missing = [name for name in plan.use[index] if name not in kept]
        if missing:
            raise RuntimeError(
                f"call {index} needs {list(plan.use[index])} from earlier calls of this run (missing {missing}); "
                "step through the calls in order from the start of a step"
            )
        return [kept[name] for name in plan.use[index]]

    def _output(
        self,
        plan: Plan,
        index: int | None,
        sample: torch.Tensor,
        prev: torch.Tensor,
        estimate: torch.Tensor,
        model_output: torch.Tensor,
        uncond: torch.Tensor | None,
        coeffs: torch.Tensor,
    ) -> StepOutput:
        convert = plan.x0_from_estimate[index] if index is not None and index >= 0 else None
        if convert is None:
            return StepOutput(prev, estimate)
        p, q = convert

        def x0() -> torch.Tensor:  # x0_hat = p x + q out, with the guided output (computed only if read)
            out = model_output.float()
            if uncond is not None:
                out = uncond.float() + coeffs[:, COEFF["w"]].view(-1, *[1] * (out.dim() - 1)) * (out - uncond.float())
            return (p * sample.float() + q * out).to(sample.dtype)

        return StepOutput(prev, x0_from=x0)

    def resolve_seeds(
        self, state: SamplerState, seeds: torch.Tensor | None, generator: torch.Generator | None, sample: torch.Tensor
    ) -> tuple[torch.Tensor, SamplerState]:
        """Per-sample Philox keys [B] for this run: explicit ``seeds``, the run's, or one draw from ``generator``."""
        if seeds is not None:
            if not isinstance(seeds, torch.Tensor) or seeds.dtype != torch.int64 or seeds.shape != (sample.shape[0],):
                got = (
                    f"{seeds.dtype} {tuple(seeds.shape)}" if isinstance(seeds, torch.Tensor) else type(seeds).__name__
                )
                raise ValueError(f"seeds must be an int64 tensor of shape [{sample.shape[0]}], got {got}")
            return seeds.to(sample.device), state
        if state.seeds is not None and state.seeds.shape[0] == sample.shape[0] and state.seeds.device == sample.device:
            return state.seeds, state
        base = ops.seed_from_generator(generator)
        run_seeds = ops.batch_seeds(base, sample.shape[0], device=sample.device)
        return run_seeds, dataclasses.replace(state, seeds=run_seeds)

    def _prepare_model_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Hook for outputs with extra channels (DDPM's learned variance)."""
        if not isinstance(model_output, torch.Tensor):
            raise TypeError(f"model_output must be a torch.Tensor, got {type(model_output).__name__}")
        return model_output

    def _adjust_coeffs(
        self,
        coeffs: torch.Tensor,
        sample: torch.Tensor,
        model_output: torch.Tensor,
        uncond: torch.Tensor | None,
        index: int | None,
        state: SamplerState,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hook for data-dependent coefficients (dynamic thresholding, Langevin step sizes).

        ``coeffs`` already carry the guidance weight in column ``w``; ``noise`` is the explicit noise of
        the call when there is one.
        """
        return coeffs

    # ---- metadata ---------------------------------------------------------------------------

    @classmethod
    def metadata(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "family": cls.family,
            "kind": cls.kind,
            "order": cls.order,
            "nfe_per_step": cls.nfe_per_step,
            "stochastic": cls.stochastic,
            "stochastic_when": cls.stochastic_when,
            "paper": cls.paper,
            "prediction_types": list(cls.prediction_types),
        }


def _parameters(init: Any) -> set[str]:
    import inspect

    return set(inspect.signature(init).parameters) - {"self"}


def _is_per_sample(timestep: Any) -> bool:
    """A [B] tensor with B > 1 is one timestep per sample; a [B, 1] tensor is refused with a hint."""
    if not isinstance(timestep, torch.Tensor):
        return False
    if timestep.dim() > 1:
        raise ValueError(
            f"timestep must be a scalar or a [batch] tensor, got shape {tuple(timestep.shape)}; flatten it first"
        )
    return timestep.dim() == 1 and timestep.numel() > 1


def _host_float(timestep: Any, what: str) -> float:
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() != 1:
            raise ValueError(f"{what} must be a single value here, got shape {tuple(timestep.shape)}")
        value = float(timestep.reshape(()).item())
    else:
        try:
            value = float(timestep)
        except (TypeError, ValueError):
            raise TypeError(f"{what} must be a number or a tensor, got {type(timestep).__name__}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return value


def _grid_key(grid: torch.Tensor | None) -> tuple[float, ...] | None:
    return None if grid is None else tuple(grid.tolist())


def _no_overrides(overrides: Mapping[str, Any]) -> bool:
    return all(v is None for v in overrides.values())


def _with_guidance(coeffs: torch.Tensor, uncond: torch.Tensor | None, guidance_scale: float | None) -> torch.Tensor:
    """Rows with the guidance weight ``w`` set (needs ``uncond``; a scale without it is an error)."""
    if guidance_scale is None:
        return coeffs
    if uncond is None:
        raise ValueError("guidance_scale needs uncond (the unconditional model output)")
    if isinstance(guidance_scale, bool) or not math.isfinite(float(guidance_scale)):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
    coeffs = coeffs.clone()
    coeffs[:, COEFF["w"]] = float(guidance_scale)
    return coeffs


__all__ = ["ESTIMATE", "KINDS", "SAMPLE", "SamplerState", "Scheduler", "StepOutput"]
