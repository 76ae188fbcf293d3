"""The scheduler protocol: diffusers-compatible names over a table of per-step coefficients.

A scheduler's whole job at ``set_timesteps`` is to compute, once and on the host in float64,
a :class:`Plan`: the model times, and for every model evaluation one row of the fused update's
coefficients (``samplers.ops.reference.COEFF_NAMES``). ``step()`` is then a table lookup and one
fused op (or its PyTorch reference): no per-step host math, no host-device sync, and the same
rows serve per-sample timesteps (gathered on the device) and CUDA-graph capture.

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

import copy
import dataclasses
import functools
import inspect
import json
import math
import numbers
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from samplers import ops, parameterization, schedules
from samplers.ops.reference import COEFF, NUM_COEFFS
from samplers.schedules import DiscreteVPSchedule, NoiseSchedule

CONFIG_NAME = "scheduler_config.json"
_GOLDEN_INT64 = 0x9E3779B97F4A7C15 - (1 << 64)  # 2^64 / golden ratio, as a signed int64


class SchedulerConfig(dict):
    """A read-only dict with attribute access (like diffusers' ``FrozenDict``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"scheduler config has no option {name!r}") from None

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("scheduler config is read-only; build a new scheduler with from_config(config, **changes)")

    __setitem__ = __delitem__ = update = pop = setdefault = clear = popitem = _readonly  # type: ignore[assignment]

    def __deepcopy__(self, memo: dict) -> SchedulerConfig:
        return SchedulerConfig(copy.deepcopy(dict(self), memo))

    def __reduce__(self) -> Any:
        return (SchedulerConfig, (dict(self),))


@dataclass
class StepOutput:
    """Result of one ``step()``: ``prev_sample`` [B, ...] and ``pred_original_sample`` (x0_hat) [B, ...]."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def __getitem__(self, index: int) -> torch.Tensor | None:  # diffusers' BaseOutput allows out[0]
        return self.to_tuple()[index]

    def __iter__(self) -> Iterator[torch.Tensor | None]:
        return iter(self.to_tuple())

    def to_tuple(self) -> tuple:
        return (
            (self.prev_sample,) if self.pred_original_sample is None else (self.prev_sample, self.pred_original_sample)
        )


@dataclass
class Plan:
    """What ``set_timesteps`` computes: one entry per model evaluation ("call").

    Attributes:
        timesteps: [N] model times fed to the model, in call order.
        rows: [N, NUM_COEFFS] float64 update coefficients per call.
        input_scale: [N] float64, the model sees ``input_scale * sample``.
        model_alpha, model_sigma: [N] float64, the schedule at each call in the model's space.
        store: per call, names of tensors to keep for later calls ("sample", "x0").
        use: per call, names of kept tensors fed as history0/history1.
        init_noise_sigma: std of the initial sample.
    """

    timesteps: torch.Tensor
    rows: torch.Tensor
    input_scale: torch.Tensor
    model_alpha: torch.Tensor
    model_sigma: torch.Tensor
    store: list[tuple[str, ...]] = field(default_factory=list)
    use: list[tuple[str, ...]] = field(default_factory=list)
    init_noise_sigma: float = 1.0

    def __post_init__(self) -> None:
        n = len(self.timesteps)
        if self.rows.shape != (n, NUM_COEFFS):
            raise ValueError(f"plan rows must be [{n}, {NUM_COEFFS}], got {tuple(self.rows.shape)}")
        bad = ~torch.isfinite(self.rows[:, [COEFF[k] for k in ("p", "q", "a", "b", "e", "c", "h0", "h1", "w", "div")]])
        if bool(bad.any()):
            call = int(bad.any(dim=1).nonzero()[0])
            raise ValueError(
                f"non-finite update coefficient at call {call} (timestep {float(self.timesteps[call])}): "
                f"{dict(zip(COEFF, self.rows[call].tolist(), strict=True))}; the schedule reaches alpha=0 or "
                "sigma=0 where this prediction type cannot be inverted"
            )
        self.store = self.store or [()] * n
        self.use = self.use or [()] * n
        self.stochastic_calls = [bool(r != 0) for r in self.rows[:, COEFF["c"]]]


@dataclass
class SamplerState:
    """Everything that changes during a sampling run (the functional API passes it in and out)."""

    step_index: int = 0
    kept: dict[str, torch.Tensor] = field(default_factory=dict)
    seeds: torch.Tensor | None = None


def coefficient_rows(n: int, **columns: Any) -> torch.Tensor:
    """[n, NUM_COEFFS] float64 rows; unnamed columns get identity defaults (x0 unclamped, w = 1)."""
    rows = torch.zeros(n, NUM_COEFFS, dtype=torch.float64)
    rows[:, COEFF["lim"]] = math.inf
    rows[:, COEFF["div"]] = 1.0
    rows[:, COEFF["w"]] = 1.0
    for name, value in columns.items():
        rows[:, COEFF[name]] = torch.as_tensor(value, dtype=torch.float64)
    return rows


def eps_form_rows(
    p: torch.Tensor,
    q: torch.Tensor,
    alpha_t: torch.Tensor,
    sigma_t: torch.Tensor,
    coef_x0: torch.Tensor,
    coef_eps: torch.Tensor,
    coef_noise: torch.Tensor | float = 0.0,
    eps_from_raw_output: bool = False,
    clip: float | None = None,
) -> torch.Tensor:
    """Rows for ``prev = coef_x0 * x0 + coef_eps * eps + coef_noise * z`` in the working space.

    ``eps = (x - alpha_t x0) / sigma_t`` is taken from the (clipped) x0, or, with
    ``eps_from_raw_output``, from the unclipped ``p x + q out`` (diffusers' default when clipping
    without ``use_clipped_model_output``); both are affine in ``(x, x0, out)``.
    """
    n = len(p)
    x0_raw_into_x0 = 0.0 if eps_from_raw_output else 1.0
    return coefficient_rows(
        n,
        p=p,
        q=q,
        lim=math.inf if clip is None else clip,
        a=coef_eps * (1 - (1 - x0_raw_into_x0) * alpha_t * p) / sigma_t,
        b=coef_x0 - x0_raw_into_x0 * coef_eps * alpha_t / sigma_t,
        e=-(1 - x0_raw_into_x0) * coef_eps * alpha_t * q / sigma_t,
        c=coef_noise,
    )


def _config_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


# Options every scheduler may take, with the values they accept whatever schedule is configured
# (so a typo is caught even where the option is unused, e.g. beta_schedule on a continuous schedule).
_CHOICES: dict[str, tuple[str, ...]] = {
    "beta_schedule": schedules.BETA_SCHEDULES,
    "timestep_spacing": schedules.TIMESTEP_SPACINGS,
}
_POSITIVE = ("clip_sample_range", "sample_max_value", "num_train_timesteps")


def _check_config(cls: type, config: Mapping[str, Any]) -> None:
    """Types against the ``__init__`` defaults, choices and ranges: errors name the option."""
    defaults = cls._signature_defaults()
    for key, value in config.items():
        default = defaults.get(key, inspect.Parameter.empty)
        if value is None or default is None or default is inspect.Parameter.empty:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, (bool, np.bool_))
        elif isinstance(default, int):
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            raise TypeError(
                f"{cls.__name__}: {key} must be {type(default).__name__} (default {default!r}), "
                f"got {type(value).__name__} {value!r}"
            )
    for key, choices in _CHOICES.items():
        if key in config and config[key] is not None and config[key] not in choices:
            raise schedules._unknown(key, config[key], choices)
    for key in _POSITIVE:
        value = config.get(key)
        if isinstance(value, (int, float)) and not value > 0:
            raise ValueError(f"{cls.__name__}: {key} must be > 0, got {value!r}")
    ratio = config.get("dynamic_thresholding_ratio")
    if isinstance(ratio, (int, float)) and not 0 < ratio <= 1:
        raise ValueError(f"{cls.__name__}: dynamic_thresholding_ratio must be in (0, 1], got {ratio!r}")


class Scheduler:
    """Base class of every scheduler (built-in or plugin). Subclasses implement :meth:`_make_plan`.

    Class metadata read by the registry, ``samplers list`` and the benchmark:
    ``name``, ``family`` ("vp", "ve", "flow" or "any": the schedules it runs on), ``order``,
    ``nfe_per_step``, ``stochastic``, ``prediction_types``.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = "any"
    order: ClassVar[int] = 1
    nfe_per_step: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    # The config under which the scheduler draws noise when that depends on it (e.g. "eta > 0"); empty
    # when ``stochastic`` says it all. Shown by ``samplers list``.
    stochastic_when: ClassVar[str] = ""
    prediction_types: ClassVar[tuple[str, ...]] = parameterization.PREDICTION_TYPES
    supports_per_sample_timesteps: ClassVar[bool] = True
    uses_mu: ClassVar[bool] = False  # whether set_timesteps(mu=...) means something (flow dynamic shifting)
    config_name: ClassVar[str] = CONFIG_NAME
    _compatibles: ClassVar[list] = []  # diffusers pipelines read this

    # ---- construction and config --------------------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Check option types/choices before a subclass __init__ runs its own checks (which may compare
        # a str with a float): the error then names the option. wraps() keeps the signature visible.
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def checked_init(self: Scheduler, *args: Any, **config: Any) -> None:
            if type(self) is cls:
                _check_config(cls, config)
            init(self, *args, **config)

        cls.__init__ = checked_init  # type: ignore[method-assign]

    def __init__(self, **config: Any) -> None:
        _check_config(type(self), config)
        self.config = SchedulerConfig({k: _config_value(v) for k, v in config.items()})
        prediction_type = config.get("prediction_type", "epsilon")
        canonical = parameterization.canonical_prediction_type(prediction_type)
        if canonical not in self.prediction_types:
            raise ValueError(
                f"{type(self).__name__} does not take prediction_type={prediction_type!r}; "
                f"it takes {self.prediction_types}"
            )
        self.prediction_type = canonical
        self.schedule: NoiseSchedule = self._make_schedule()
        self.plan: Plan | None = None
        self.num_inference_steps: int | None = None
        self._begin_index: int | None = None
        self._state = SamplerState()
        self._started = False
        self._device = torch.device("cpu")
        self._device_cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def _signature_defaults(cls) -> dict[str, Any]:
        params = inspect.signature(cls.__init__).parameters
        kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return {k: p.default for k, p in params.items() if k != "self" and p.kind in kinds}

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, **changes: Any) -> Scheduler:
        """New scheduler from a config dict (unknown keys are an error unless they start with '_')."""
        merged = {k: v for k, v in dict(config or {}).items() if not k.startswith("_")}
        merged.update(changes)
        known = cls._signature_defaults()
        unknown = sorted(set(merged) - set(known))
        if unknown:
            raise TypeError(f"{cls.__name__} has no config option(s) {unknown}; it takes {sorted(known)}")
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

        ``mu`` is the dynamic time shift of flow schedulers. Resets the run state.
        """
        given = sum(v is not None for v in (num_inference_steps, timesteps, sigmas))
        if given == 0:
            raise ValueError("set_timesteps needs num_inference_steps, timesteps or sigmas")
        if timesteps is not None and sigmas is not None:
            raise ValueError("give either timesteps or sigmas, not both")
        if num_inference_steps is not None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
        if kwargs:
            raise TypeError(f"set_timesteps got unexpected argument(s) {sorted(kwargs)}")
        grid_t = None if timesteps is None else torch.as_tensor(timesteps, dtype=torch.float64).flatten().cpu()
        grid_sigma = None if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
        for label, grid in (("timesteps", grid_t), ("sigmas", grid_sigma)):
            if grid is None:
                continue
            if not bool(torch.isfinite(grid).all()):
                raise ValueError(f"custom {label} must be finite, got {grid.tolist()}")
            if len(grid) == 0 or bool((grid[1:] > grid[:-1]).any()):
                raise ValueError(f"custom {label} must be a non-empty descending sequence")
            if num_inference_steps is not None and num_inference_steps != len(grid):
                raise ValueError(
                    f"num_inference_steps={num_inference_steps} disagrees with the {len(grid)} custom {label}; "
                    "give one or the other"
                )
        if mu is not None and not self.uses_mu:
            raise ValueError(
                f"mu (the dynamic time shift) only applies to flow schedulers; {type(self).__name__} does not use it"
            )
        try:
            plan = self._make_plan(num_inference_steps, grid_t, grid_sigma, mu)
        except ValueError as exc:
            if "non-finite update coefficient" not in str(exc):
                raise
            raise ValueError(f"prediction_type={self.prediction_type!r} cannot be used on this grid: {exc}") from exc
        self.plan = plan
        self.num_inference_steps = (
            num_inference_steps
            if num_inference_steps is not None
            else len(grid_t if grid_t is not None else grid_sigma)
        )
        self._device_cache = {}
        self._begin_index = None
        self._state = SamplerState()
        self._started = False
        self._device = torch.device(device) if device is not None else torch.device("cpu")

    def _make_plan(
        self,
        num_inference_steps: int | None,
        timesteps: torch.Tensor | None,
        sigmas: torch.Tensor | None,
        mu: float | None,
    ) -> Plan:
        raise NotImplementedError

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
    def init_noise_sigma(self) -> float:
        return self._require_plan().init_noise_sigma

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
        if not 0 <= begin_index < len(plan.timesteps):
            raise ValueError(f"begin_index must be in [0, {len(plan.timesteps)}), got {begin_index}")
        self._begin_index = begin_index
        self._state = SamplerState(step_index=begin_index)
        self._started = True

    def __len__(self) -> int:
        return int(self.config.get("num_train_timesteps", 1000))

    # ---- device caches ----------------------------------------------------------------------

    def _on_device(self, key: tuple, make: Any) -> torch.Tensor:
        value = self._device_cache.get(key)
        if value is None:
            value = make()
            self._device_cache[key] = value
        return value

    def _rows_on(self, device: torch.device) -> torch.Tensor:
        plan = self._require_plan()
        return self._on_device(("rows", device), lambda: plan.rows.to(torch.float32).to(device))

    # ---- index lookup -----------------------------------------------------------------------

    def index_for_timestep(self, timestep: Any) -> int:
        """Host lookup of a scalar timestep in the plan (first call at or after the begin index)."""
        plan = self._require_plan()
        value = float(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        hits = (plan.timesteps - value).abs() <= 1e-6 * max(1.0, abs(value))
        start = self._begin_index or 0
        candidates = [i for i in hits.nonzero().flatten().tolist() if i >= start]
        if not candidates:
            raise ValueError(
                f"timestep {value:g} is not in this scheduler's timesteps "
                f"(first {plan.timesteps[:4].tolist()}..., {len(plan.timesteps)} in all)"
            )
        return candidates[0]

    def _resolve_call(self, state: SamplerState, timestep: Any) -> int:
        """The plan index for this step: the state's counter, checked against a host timestep."""
        plan = self._require_plan()
        index = state.step_index
        if index >= len(plan.timesteps):
            raise IndexError(
                f"step() called {index + 1} times but the plan has {len(plan.timesteps)} calls; "
                "call set_timesteps again to start a new run"
            )
        on_host = not isinstance(timestep, torch.Tensor) or timestep.device.type == "cpu"
        if on_host:
            expected = float(plan.timesteps[index])
            value = float(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
            if abs(value - expected) > 1e-4 * max(1.0, abs(expected)):
                if index == (self._begin_index or 0) and not state.kept:
                    return self.index_for_timestep(value)  # a pipeline may start mid-schedule
                raise ValueError(
                    f"timestep {value:g} is not the next one in the schedule: expected {expected:g} "
                    f"at step_index {index}"
                )
        return index

    def _per_sample_indices(self, timestep: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Device lookup of per-sample timesteps [B] -> plan indices [B] (no sync; exact match assumed)."""
        plan = self._require_plan()
        if not self.supports_per_sample_timesteps:
            raise ValueError(f"{type(self).__name__} keeps per-run history and cannot take per-sample timesteps")
        if timestep.shape != (sample.shape[0],):
            raise ValueError(
                f"per-sample timestep must have shape [batch={sample.shape[0]}], got {tuple(timestep.shape)}"
            )
        device = sample.device
        times = self._on_device(("plan_t", device), lambda: plan.timesteps.to(torch.float64).to(device))
        gap = (timestep.to(device=device, dtype=torch.float64)[:, None] - times[None, :]).abs()
        best, indices = gap.min(dim=1)
        tolerance = 1e-4 * times.abs().clamp(min=1.0)[indices]
        if timestep.device.type == "cpu":
            off = (best > tolerance).nonzero()  # host tensors: checking costs no device sync
            if len(off):
                i = int(off[0])
                raise ValueError(
                    f"per-sample timestep[{i}]={float(timestep[i]):g} is not in this scheduler's timesteps "
                    f"(first {plan.timesteps[:4].tolist()}..., {len(plan.timesteps)} in all)"
                )
        else:  # checked on the device, reported at the next sync: no host round trip inside step()
            torch._assert_async((best <= tolerance).all(), "per-sample timestep not in the scheduler's timesteps")
        return indices

    # ---- model-input scaling and noising ----------------------------------------------------

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The model sees ``input_scale * sample`` (1 for VP-space samplers, alpha for sigma-space ones)."""
        plan = self._require_plan()
        if bool((plan.input_scale == 1).all()):
            return sample
        if isinstance(timestep, torch.Tensor) and timestep.dim() == 1 and timestep.numel() == sample.shape[0] > 1:
            scale = self._on_device(("in_scale", sample.device), lambda: plan.input_scale.to(sample.device))
            s = scale[self._per_sample_indices(timestep, sample)].to(sample.dtype)
            return sample * s.view(-1, *([1] * (sample.dim() - 1)))
        index = self._state.step_index
        if timestep is not None and (not isinstance(timestep, torch.Tensor) or timestep.device.type == "cpu"):
            index = self._resolve_call(self._state, timestep)
        return sample * float(plan.input_scale[min(index, len(plan.timesteps) - 1)])

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward-noise ``x0`` to ``timesteps`` in this scheduler's working space (shape [B, ...])."""
        if original_samples.shape != noise.shape:
            raise ValueError(
                f"noise shape {tuple(noise.shape)} must equal original_samples shape {tuple(original_samples.shape)}"
            )
        t = torch.as_tensor(timesteps, device=original_samples.device)
        if t.dim() == 0:
            t = t.expand(original_samples.shape[0])
        alpha, sigma = self.working_alpha_sigma(t)
        view = (-1,) + (1,) * (original_samples.dim() - 1)
        alpha = alpha.to(original_samples.dtype).view(view)
        sigma = sigma.to(original_samples.dtype).view(view)
        return schedules.q_sample(original_samples, noise, alpha, sigma)

    def working_alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, sigma)`` at model times ``t`` in the space this scheduler's samples live in."""
        if isinstance(self.schedule, DiscreteVPSchedule) and not t.is_floating_point():
            abar = self._on_device(("abar", t.device), lambda: self.schedule.alphas_cumprod.to(t.device))[t]
            return abar.sqrt(), (1 - abar).sqrt()
        alpha, sigma = self.schedule.alpha_sigma(t.cpu())
        return alpha.to(t.device), sigma.to(t.device)

    # ---- stepping ---------------------------------------------------------------------------

    def init_state(self) -> SamplerState:
        """A fresh run state (at the begin index if one was set)."""
        return SamplerState(step_index=self._begin_index or 0)

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
        """Stateless step: returns the output and the next state; ``state`` itself is not modified."""
        plan = self._require_plan()
        overrides = self._step_overrides(**kwargs)
        model_output = self._prepare_model_output(model_output, sample)
        if uncond is not None and uncond.shape != model_output.shape:
            raise ValueError(f"uncond has shape {tuple(uncond.shape)}; model_output has {tuple(model_output.shape)}")
        if check_finite:
            for label, t in (("model_output", model_output), ("uncond", uncond)):
                if t is not None and not bool(torch.isfinite(t).all()):
                    raise FloatingPointError(f"{label} contains NaN or Inf (check_finite=True)")

        per_sample = isinstance(timestep, torch.Tensor) and timestep.dim() == 1 and timestep.numel() > 1
        rows_dev = self._rows_on(sample.device)
        if per_sample:
            indices = self._per_sample_indices(timestep, sample)
            coeffs = rows_dev[indices]
            index, row = None, None
        else:
            index = self._resolve_call(state, timestep)
            row = self._row_for_call(index, overrides)
            coeffs = (
                rows_dev[index : index + 1] if row is None else row.to(torch.float32).view(1, -1).to(sample.device)
            )
        if guidance_scale is not None:
            if uncond is None:
                raise ValueError("guidance_scale needs uncond (the unconditional model output)")
            if not math.isfinite(float(guidance_scale)):
                raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
            coeffs = coeffs.clone()
            coeffs[:, COEFF["w"]] = float(guidance_scale)

        if per_sample:
            stochastic = True
        elif row is not None:
            stochastic = bool(row[COEFF["c"]] != 0)
        else:
            stochastic = plan.stochastic_calls[index]  # type: ignore[index]
        run_seeds = state.seeds
        stream = 0 if index is None else index
        if stochastic and noise is None:
            run_seeds, state = self.resolve_seeds(state, seeds, generator, sample)
            if index is None:
                # per-sample calls: fold each sample's call index into its key (int64 arithmetic wraps)
                run_seeds = run_seeds + indices * _GOLDEN_INT64
        kept = dict(state.kept)
        history = [kept.get(name) for name in (plan.use[index] if index is not None else ())]
        if index is not None and any(h is None for h in history):
            raise RuntimeError(
                f"call {index} needs {plan.use[index]} from an earlier call of this run; "
                "step through the calls in order"
            )
        coeffs = self._adjust_coeffs(coeffs, sample, model_output, uncond, index, state)
        prev, x0 = ops.sampler_update(
            sample,
            model_output,
            coeffs,
            uncond=uncond,
            noise=noise if stochastic else None,
            seeds=run_seeds if (stochastic and noise is None) else None,
            noise_stream=stream,
            history0=history[0] if len(history) > 0 else None,
            history1=history[1] if len(history) > 1 else None,
            backend=backend,
        )
        if index is not None:
            for name in plan.store[index]:
                kept[name] = {"sample": sample, "x0": x0}[name]
            for name in plan.use[index]:
                if name not in plan.store[index]:
                    kept.pop(name, None)
        next_state = SamplerState(
            # index + 1, not step_index + 1: a run that starts mid-schedule resolved index from the timestep
            step_index=index + 1 if index is not None else state.step_index,
            kept=kept,
            seeds=run_seeds if index is not None else state.seeds,
        )
        return StepOutput(prev, x0), next_state

    def resolve_seeds(
        self, state: SamplerState, seeds: torch.Tensor | None, generator: torch.Generator | None, sample: torch.Tensor
    ) -> tuple[torch.Tensor, SamplerState]:
        """Per-sample Philox keys [B] for this run: explicit ``seeds``, the run's, or one draw from ``generator``."""
        if seeds is not None:
            if seeds.dtype != torch.int64 or seeds.shape != (sample.shape[0],):
                raise ValueError(
                    f"seeds must be int64 of shape [{sample.shape[0]}], got {seeds.dtype} {tuple(seeds.shape)}"
                )
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
    ) -> torch.Tensor:
        """Hook for data-dependent coefficients (dynamic thresholding, Langevin step sizes)."""
        return coeffs

    # ---- metadata ---------------------------------------------------------------------------

    @classmethod
    def metadata(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "family": cls.family,
            "order": cls.order,
            "nfe_per_step": cls.nfe_per_step,
            "stochastic": cls.stochastic,
            "stochastic_when": cls.stochastic_when,
            "prediction_types": list(cls.prediction_types),
        }


def model_space_x0_coefficients(
    prediction_type: str, model_alpha: torch.Tensor, model_sigma: torch.Tensor, input_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, q)`` for ``x0 = p * sample + q * out`` when the model saw ``input_scale * sample``."""
    p, q = parameterization.x0_coefficients(prediction_type, model_alpha, model_sigma)
    return torch.as_tensor(p, dtype=torch.float64) * input_scale, torch.as_tensor(
        q, dtype=torch.float64
    ) + 0 * input_scale


def init_args(local_vars: dict[str, Any]) -> dict[str, Any]:
    """A subclass ``__init__``'s arguments, for ``super().__init__(**init_args(locals()))``."""
    return {k: v for k, v in local_vars.items() if k not in ("self", "__class__")}


def dynamic_threshold_coeffs(
    coeffs: torch.Tensor,
    sample: torch.Tensor,
    model_output: torch.Tensor,
    uncond: torch.Tensor | None,
    ratio: float,
    max_value: float,
) -> torch.Tensor:
    """Per-sample rows that clamp x0 to ``[-s, s]`` and divide by ``s`` (Imagen's dynamic thresholding).

    ``s = clamp(quantile(|x0|, ratio), 1, max_value)`` per sample (Saharia et al. 2022, sec. 2.3); x0 is
    computed once here on the device (a reduction the single-pass update cannot do), no host sync.
    """
    batch = sample.shape[0]
    view = (-1,) + (1,) * (sample.dim() - 1)

    def col(name: str) -> torch.Tensor:
        return coeffs[:, COEFF[name]].view(view)

    out = model_output.float()
    if uncond is not None:
        out = uncond.float() + col("w") * (out - uncond.float())
    x0 = col("p") * sample.float() + col("q") * out
    s = torch.quantile(x0.abs().reshape(batch, -1), ratio, dim=1).clamp(1.0, max_value)
    rows = coeffs.expand(batch, -1).clone()
    rows[:, COEFF["lim"]] = s
    rows[:, COEFF["div"]] = s
    return rows
