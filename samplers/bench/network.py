"""``samplers bench --model SPEC [--data PATH]``: any trained network as a benchmark problem.

A network of any prediction type, trained on any schedule this package can express, becomes an
x0-denoiser ``D(x; alpha, sigma)`` (:class:`NetworkProblem`), the same kind of problem as
``digits``: every sampler in the table calls it at its own noise levels, and the error of a
deterministic sampler is measured against a high-accuracy float64 solve of the network's own
probability-flow ODE from the same initial noise (:mod:`samplers.bench.reference`, with its
Richardson + truncation error estimate, tightened to 20x below the best row by the runner).

**SPEC** is one of:

(a) a local diffusers model folder: ``config.json`` naming a diffusers model class
    (``UNet2DModel``, or a transformer diffusers can load) and a ``scheduler_config.json`` (at the
    folder root or in ``scheduler/``) that gives the training schedule (``beta_schedule`` /
    ``trained_betas`` / ``num_train_timesteps``, or a flow-matching class) and ``prediction_type``.
    A pipeline folder (``model_index.json`` with ``unet/`` or ``transformer/`` and ``scheduler/``)
    works too. The config is mapped by :func:`samplers.integrations.diffusers.from_diffusers`.
(b) ``module:factory``: an importable zero-argument callable returning a :class:`LoadedModel` (or any
    object, or mapping, with the same four fields: ``model``, ``prediction_type``, ``schedule``,
    ``sample_shape``). See :class:`LoadedModel` for what each must be.
(c) a TorchScript file (``torch.jit.save``; any suffix but ``.pt2``) or a ``torch.export`` file
    (``torch.export.save``, suffix ``.pt2``), with a side-car JSON next to it, ``FILE.json`` (e.g.
    ``net.pt.json``) or, failing that, the file name with its suffix replaced (``net.json``)::

        {"prediction_type": "epsilon", "sample_shape": [1, 8, 8],
         "schedule": {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "num_train_timesteps": 1000}}

    ``schedule`` takes what :class:`LoadedModel` takes that JSON can hold: a diffusers scheduler config
    or a preset name.

**The network call.** ``model(x, t)`` with ``x`` [B, *sample_shape] and ``t`` [B] the model time in
the schedule's own units (diffusers: timestep 0 .. T-1, fractional between training timesteps;
flow matching: ``1000 sigma``), both in the network's dtype; it returns [B, *sample_shape] of its
prediction type (a diffusers output object's ``.sample``, or a tuple's first item, is taken; an output
with twice the input channels, a learned-variance model, keeps its first half).

**Levels.** The denoiser maps a level ``s = sigma / alpha`` to the model time ``t(s)`` of the model's
own schedule (for a discrete schedule the training timestep at a training level, and between them a
natural cubic spline in log-sigma, :class:`SplineTime`, smooth where the usual piecewise-linear map
has kinks that would slow the reference solver), feeds the network ``x`` rescaled to the schedule
family's coordinates of that level (at a training timestep, exactly its training (alpha_t, sigma_t)),
and converts the output to x0 with :func:`samplers.parameterization.to_x0_eps`. Below the least noisy
timestep (the reference ODE solve goes on to ``s = 1e-5``) a discrete schedule's ``t`` continues along
the spline's tangent (``t < 0``, smooth); above the noisiest (up to ``alpha = 0``) ``t`` stays there.

**Precision.** The network runs in float64 when it accepts that (its parameters are converted, and
a probe call must succeed); otherwise in its own dtype, and the reference's error estimate then
includes that rounding (it is measured, not assumed: the Richardson difference of two solves sees
it). diffusers' UNets embed the timestep in float32 whatever their dtype.

**Data** (``--data``): a ``.npy`` / ``.pt`` tensor ``[N, *sample_shape]`` in model space (the values
the network was trained on, e.g. [-1, 1] for diffusers image models), or a folder of PNG / JPG images
(read with Pillow; 8-bit values mapped to [-1, 1]; 1 channel = grey, 3 = RGB, 4 = RGBA). The even
rows are the reference set the distribution metrics (SW, MMD in pixel space) compare with, the odd
rows the held-out half that gives their noise floor.

Every failure (no schedule, an import path that does not resolve, a factory that returns no model,
a network whose output has the wrong shape, data of another shape) raises :class:`ModelInputError`
before any sampling: the network is probed once on a two-sample batch when it is loaded.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from samplers.schedules import DiscreteVPSchedule, NoiseSchedule, RectifiedFlowSchedule

F64 = torch.float64

# What a --model run uses unless told (a real network costs far more per call than an oracle).
MODEL_DEFAULTS: dict[str, Any] = {
    "schedulers": ("ddim", "euler", "dpmpp_2m"),
    "steps": (5, 10, 20),
    "samples": 64,
    "ode_samples": 8,
    "schedule": "model",
}
MODEL_SCHEDULE = "model"  # --schedule value: the network's own training schedule (the --model default)
REFERENCE_TOL = 1e-3  # the first reference solves (loose: the runner tightens them to 20x below the best row)
# RK4 steps per unit of log tan(phi / 2) in a reference's first solve (reference.py's default is 8): a network
# call costs ~1e4 times an oracle's, and the doubling goes on from wherever this starts until the tolerance holds.
REFERENCE_STEPS_PER_UNIT = 2
# No reference solve takes more RK4 steps than this (then it reports converged: false and its estimate, and the
# table warns when that is not 10x below the best row): a network's float32 time embedding or a discrete
# schedule's interpolation limit how far doubling helps, and each doubling costs twice the calls before it.
REFERENCE_MAX_STEPS = 1024
PROBE_BATCH = 2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DATA_SUFFIXES = (".npy", ".pt", ".pth")
EXPORT_SUFFIX = ".pt2"
# The training-schedule keys of a samplers scheduler config, handed on to every benched scheduler.
_SCHEDULE_KEYS = ("schedule", "num_train_timesteps", "beta_schedule", "beta_start", "beta_end")
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class ModelInputError(ValueError):
    """A ``--model`` / ``--data`` input that cannot be benchmarked; the message names the input and the fix."""


class _CallFailed(ModelInputError):
    """The probe call itself raised (in float64 that may be the dtype: the native dtype is tried next)."""


@dataclass
class LoadedModel:
    """What a ``module:factory`` returns (the public contract of ``--model module:factory``).

    Attributes:
        model: ``model(x, t) -> output``: ``x`` [B, *sample_shape], ``t`` [B] model time in the
            schedule's units (see the module docstring), output [B, *sample_shape] of ``prediction_type``.
            An ``nn.Module`` is converted to float64 when it runs in it; any other callable is tried
            with float64 input first, then float32.
        prediction_type: ``epsilon``, ``sample``, ``v_prediction``, ``flow`` or ``score`` (aliases as in
            :func:`samplers.parameterization.canonical_prediction_type`).
        schedule: the training schedule: a diffusers scheduler config mapping (with ``_class_name``,
            as ``scheduler.config`` or ``scheduler_config.json`` has it), a diffusers scheduler, a
            samplers :class:`~samplers.schedules.DiscreteVPSchedule` or
            :class:`~samplers.schedules.RectifiedFlowSchedule`, or a preset name: ``linear``,
            ``scaled_linear``, ``cosine`` (1000 discrete timesteps) or ``flow`` (rectified flow, ``t = 1000 sigma``).
        sample_shape: one sample's shape, e.g. ``(3, 32, 32)``.
        name: a label for the records (default: the spec).
        info: JSON-able extra description (parameter count, ...).
    """

    model: Callable[..., Any]
    prediction_type: str
    schedule: Any
    sample_shape: tuple[int, ...]
    name: str = ""
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The training schedule
# --------------------------------------------------------------------------------------------


@dataclass
class ModelSchedule:
    """A model's training schedule, resolved: the network's time axis and what the benched samplers get.

    Attributes:
        schedule: maps the network's time to (alpha, sigma); ``time_at_level`` inverts it.
        preset: scheduler config keys that put a sampler on the same schedule (what ``--schedule``
            presets are for the oracle problems).
        label: a short description for the table.
        prediction_type: the prediction type the schedule's config names, if any.
    """

    schedule: NoiseSchedule
    preset: dict[str, Any]
    label: str
    prediction_type: str | None = None


_PRESET_CONFIGS: dict[str, dict[str, Any]] = {
    "linear": {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    "scaled_linear": {
        "_class_name": "DDPMScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
    },
    "cosine": {"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2"},
    "flow": {"_class_name": "FlowMatchEulerDiscreteScheduler"},
}
# What a diffusers config keeps of its training schedule when its class (or an option) has no mapping.
_TRAINING_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "rescale_betas_zero_snr",
    "prediction_type",
)


def _from_diffusers_config(config: Mapping[str, Any], where: str) -> ModelSchedule:
    """The schedule of a diffusers scheduler config, through the package's own config mapping."""
    from samplers.integrations.diffusers import UnsupportedConfigError, from_diffusers

    config = dict(config)
    name = str(config.get("_class_name") or "DDPMScheduler")
    try:
        sched = from_diffusers(config, class_name=name)
    except (UnsupportedConfigError, ValueError, TypeError):
        # Sampling options of a class we do not map (a solver order, say) do not change the training
        # schedule: read that alone, as the training scheduler (DDPM / flow matching) would.
        flow = "FlowMatch" in name
        keep = ("num_train_timesteps", "shift") if flow else _TRAINING_KEYS
        small = {k: config[k] for k in keep if k in config}
        try:
            sched = from_diffusers(small, class_name="FlowMatchEulerDiscreteScheduler" if flow else "DDPMScheduler")
        except (UnsupportedConfigError, ValueError, TypeError) as exc:
            raise ModelInputError(f"{where}: cannot read the training schedule from {name} config: {exc}") from None
    c = dict(sched.config)
    schedule = sched.schedule
    if isinstance(schedule, DiscreteVPSchedule):
        preset = {k: c[k] for k in _SCHEDULE_KEYS if c.get(k) is not None}
        preset["schedule"] = "discrete"
        if c.get("trained_betas") is not None:
            preset["trained_betas"] = list(c["trained_betas"])
        if c.get("rescale_betas_zero_snr"):
            preset["rescale_betas_zero_snr"] = True
        what = "trained betas" if "trained_betas" in preset else c.get("beta_schedule")
        label = f"{what}, {schedule.num_train_timesteps} timesteps"
    elif isinstance(schedule, RectifiedFlowSchedule):
        preset = {"schedule": "flow"}
        if float(c.get("shift", 1.0) or 1.0) != 1.0:
            raise ModelInputError(
                f"{where}: a flow-matching schedule with shift={c.get('shift')} is a sampling choice the bench "
                "cannot hand to every sampler; give the config with shift=1.0 and pass the shift as -o shift=..."
            )
        label = "rectified flow"
    else:
        raise ModelInputError(f"{where}: {name} maps to a {type(schedule).__name__}, which --model does not take")
    pt = config.get("prediction_type")
    return ModelSchedule(schedule, preset, label, str(pt) if pt is not None else None)


def resolve_schedule(schedule: Any, where: str) -> ModelSchedule:
    """A :class:`ModelSchedule` from anything :attr:`LoadedModel.schedule` accepts (``where`` names the input)."""
    if isinstance(schedule, ModelSchedule):
        return schedule
    if isinstance(schedule, str):
        if schedule not in _PRESET_CONFIGS:
            raise ModelInputError(
                f"{where}: unknown schedule name {schedule!r}; expected one of {', '.join(_PRESET_CONFIGS)} "
                "or a diffusers scheduler config"
            )
        return _from_diffusers_config(_PRESET_CONFIGS[schedule], where)
    if isinstance(schedule, DiscreteVPSchedule):
        betas = schedule.betas.tolist()
        preset = {"schedule": "discrete", "trained_betas": betas, "num_train_timesteps": len(betas)}
        return ModelSchedule(schedule, preset, f"given betas, {len(betas)} timesteps")
    if isinstance(schedule, RectifiedFlowSchedule):
        return ModelSchedule(schedule, {"schedule": "flow"}, "rectified flow")
    if isinstance(schedule, Mapping):
        return _from_diffusers_config(schedule, where)
    config = getattr(schedule, "config", None)
    if isinstance(config, Mapping) and hasattr(schedule, "step"):  # a diffusers scheduler
        return _from_diffusers_config({**dict(config), "_class_name": type(schedule).__name__}, where)
    raise ModelInputError(
        f"{where}: schedule must be a diffusers scheduler config or scheduler, a DiscreteVPSchedule or "
        f"RectifiedFlowSchedule, or one of {', '.join(_PRESET_CONFIGS)}; got {type(schedule).__name__}"
    )


# --------------------------------------------------------------------------------------------
# Loading a SPEC
# --------------------------------------------------------------------------------------------


def _unwrap(out: Any) -> Any:
    """The tensor of a network's output: a diffusers output's ``.sample``, a tuple's first item, or itself."""
    if isinstance(out, torch.Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, Mapping) and isinstance(out.get("sample"), torch.Tensor):
        return out["sample"]
    return out


class _DiffusersCall:
    """``net(x, t)`` for a diffusers model: ``return_dict=False`` where it takes it, the tensor of the output."""

    def __init__(self, net: Any) -> None:
        import inspect

        self.net = net
        try:
            self.kwargs = {"return_dict": False} if "return_dict" in inspect.signature(net.forward).parameters else {}
        except (TypeError, ValueError):
            self.kwargs = {}

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> Any:
        return self.net(x, t, **self.kwargs)


def _find_scheduler_config(folder: Path) -> Path | None:
    for candidate in (folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            return candidate
    if folder.parent != folder:  # a pipeline's unet/ folder: the scheduler sits next to it
        sibling = folder.parent / "scheduler" / "scheduler_config.json"
        if (folder.parent / "model_index.json").is_file() and sibling.is_file():
            return sibling
    return None


def _read_json(path: Path, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelInputError(f"{where}: cannot read {str(path)!r} as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelInputError(f"{where}: {str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def _load_diffusers_folder(folder: Path, where: str) -> LoadedModel:
    model_dir = folder
    if not (folder / "config.json").is_file():
        sub = [folder / s for s in ("unet", "transformer") if (folder / s / "config.json").is_file()]
        if not sub:
            raise ModelInputError(
                f"{where}: {str(folder)!r} has no config.json (a diffusers model folder, as model.save_pretrained "
                "writes it) and no unet/ or transformer/ folder with one"
            )
        model_dir = sub[0]
    sched_path = _find_scheduler_config(model_dir if model_dir != folder else folder) or _find_scheduler_config(folder)
    if sched_path is None:
        raise ModelInputError(
            f"{where}: {str(folder)!r} has no scheduler_config.json (looked at its root and in scheduler/): the "
            "bench needs the training schedule (beta_schedule, num_train_timesteps) and prediction_type; save "
            "the training scheduler next to the model with scheduler.save_pretrained(FOLDER)"
        )
    model_config = _read_json(model_dir / "config.json", where)
    sched = resolve_schedule(_read_json(sched_path, where), f"{where} ({sched_path.name})")
    class_name = model_config.get("_class_name")
    import diffusers

    cls = getattr(diffusers, str(class_name), None) if class_name else None
    if cls is None or not isinstance(cls, type) or not issubclass(cls, diffusers.ModelMixin):
        raise ModelInputError(
            f"{where}: {str(model_dir / 'config.json')!r} names {class_name!r}, not a diffusers model class"
        )
    try:
        net = cls.from_pretrained(str(model_dir), local_files_only=True, low_cpu_mem_usage=False)
    except Exception as exc:  # diffusers raises many kinds for a broken folder
        raise ModelInputError(
            f"{where}: diffusers could not load {class_name} from {str(model_dir)!r}: {exc}"
        ) from None
    cfg = net.config
    size = cfg.get("sample_size")
    channels = cfg.get("in_channels")
    if size is None or channels is None:
        raise ModelInputError(
            f"{where}: {class_name}'s config has no sample_size / in_channels, so the sample shape is unknown"
        )
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size)
    pt = sched.prediction_type or "epsilon"
    params = sum(p.numel() for p in net.parameters())
    info = {"class": class_name, "folder": str(folder), "scheduler_config": str(sched_path), "params": params}
    return LoadedModel(net.eval(), pt, sched, (int(channels), *hw), str(class_name), info)


def _load_factory(spec: str, where: str) -> LoadedModel:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelInputError(f"{where}: cannot import module {module_name!r} ({exc})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelInputError(f"{where}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelInputError(f"{where}: {spec!r} is a {type(obj).__name__}, not a callable factory")
    try:
        made = obj()
    except Exception as exc:
        raise ModelInputError(f"{where}: the factory {spec!r} raised {type(exc).__name__}: {exc}") from None
    fields = ("model", "prediction_type", "schedule", "sample_shape")
    get: Callable[[str], Any] = made.get if isinstance(made, Mapping) else (lambda k: getattr(made, k, None))
    missing = [k for k in fields if get(k) is None]
    if missing:
        raise ModelInputError(
            f"{where}: the factory returned a {type(made).__name__} without {', '.join(missing)}; it must return "
            "a samplers.bench.network.LoadedModel (or an object or mapping with model, prediction_type, "
            "schedule and sample_shape)"
        )
    if not callable(get("model")):
        raise ModelInputError(f"{where}: the factory's model is a {type(get('model')).__name__}, not callable")
    shape = get("sample_shape")
    try:
        shape = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise ModelInputError(f"{where}: sample_shape must be a sequence of integers, got {shape!r}") from None
    return LoadedModel(
        get("model"),
        str(get("prediction_type")),
        get("schedule"),
        shape,
        str(get("name") or spec),
        dict(get("info") or {}),
    )


def _sidecar(path: Path, where: str) -> dict[str, Any]:
    for candidate in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if candidate.is_file() and candidate != path:
            return _read_json(candidate, where)
    raise ModelInputError(
        f"{where}: a TorchScript / torch.export file needs a side-car JSON with its prediction_type, sample_shape "
        f"and schedule, at {str(path.with_name(path.name + '.json'))!r} or {str(path.with_suffix('.json'))!r}"
    )


def _load_archive(path: Path, where: str) -> LoadedModel:
    meta = _sidecar(path, where)
    missing = [k for k in ("prediction_type", "sample_shape", "schedule") if k not in meta]
    if missing:
        raise ModelInputError(f"{where}: the side-car JSON has no {', '.join(missing)}")
    try:
        if path.suffix == EXPORT_SUFFIX:
            net = torch.export.load(str(path)).module()
            kind = "torch.export"
        else:
            net = torch.jit.load(str(path), map_location="cpu")
            kind = "TorchScript"
    except Exception as exc:
        what = "torch.export (.pt2)" if path.suffix == EXPORT_SUFFIX else "TorchScript"
        raise ModelInputError(f"{where}: cannot load {str(path)!r} as a {what} file: {exc}") from None
    try:
        shape = tuple(int(v) for v in meta["sample_shape"])
    except (TypeError, ValueError):
        raise ModelInputError(
            f"{where}: sample_shape must be a list of integers, got {meta['sample_shape']!r}"
        ) from None
    info = {"file": str(path), "format": kind}
    return LoadedModel(net, str(meta["prediction_type"]), meta["schedule"], shape, path.name, info)


def load_spec(spec: str) -> LoadedModel:
    """Load ``--model SPEC`` (a folder, a ``module:factory`` or a TorchScript / ``.pt2`` file); see the module doc."""
    where = f"--model {spec!r}"
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        return _load_diffusers_folder(path, where)
    if path.is_file():
        return _load_archive(path, where)
    if _FACTORY_RE.match(spec):
        return _load_factory(spec, where)
    raise ModelInputError(f"{where}: no such file or folder, and not an import path of the form module.path:factory")


# --------------------------------------------------------------------------------------------
# The network as a denoiser
# --------------------------------------------------------------------------------------------


class SplineTime:
    """The model time of a discrete schedule at any level: a natural cubic spline of ``t`` in ``log sigma``.

    Exact at the training timesteps (the knots) and twice continuously differentiable between them. The
    usual map (diffusers', k-diffusion's: linear in log-sigma per interval) has a kink at every timestep,
    which near ``t = 0`` of a linear-beta schedule is large enough to hold the fourth-order reference
    solver to second order. (The spline's third derivative still jumps at the knots, so the reference
    settles near order 3; its error estimate uses the observed order, :mod:`samplers.bench.reference`.)

    Args:
        schedule: a :class:`~samplers.schedules.DiscreteVPSchedule` with at least 3 timesteps.
    """

    def __init__(self, schedule: DiscreteVPSchedule) -> None:
        x = schedule.sigmas.log()  # knots: log sigma_i, increasing in i
        y = torch.arange(len(x), dtype=F64)
        h = x[1:] - x[:-1]
        n = len(x)
        # natural spline: second derivatives m (m_0 = m_{n-1} = 0) from the tridiagonal system
        a = torch.zeros(n - 2, n - 2, dtype=F64)
        idx = torch.arange(n - 2)
        a[idx, idx] = 2 * (h[:-1] + h[1:])
        a[idx[1:], idx[:-1]] = h[1:-1]
        a[idx[:-1], idx[1:]] = h[1:-1]
        slope = (y[1:] - y[:-1]) / h
        rhs = 6 * (slope[1:] - slope[:-1])
        m = torch.zeros(n, dtype=F64)
        m[1:-1] = torch.linalg.solve(a, rhs)
        self.x, self.y, self.h, self.m = x, y, h, m

    def __call__(self, level: torch.Tensor) -> torch.Tensor:
        """Model time [N] float64 at VE levels [N]: clamped above the noisiest timestep, and below the least
        noisy one continued along the spline's tangent (negative times; twice differentiable, as the natural
        spline's second derivative is 0 at its end)."""
        raw = torch.as_tensor(level, dtype=F64).clamp(min=1e-300).log()
        u = raw.clamp(float(self.x[0]), float(self.x[-1]))
        i = (torch.searchsorted(self.x, u) - 1).clamp(0, len(self.x) - 2)
        h = self.h[i]
        a, b = (self.x[i + 1] - u) / h, (u - self.x[i]) / h
        cubic = ((a**3 - a) * self.m[i] + (b**3 - b) * self.m[i + 1]) * h * h / 6
        t = a * self.y[i] + b * self.y[i + 1] + cubic
        slope0 = (self.y[1] - self.y[0]) / self.h[0] - self.h[0] * self.m[1] / 6
        return torch.where(raw < self.x[0], self.y[0] + slope0 * (raw - self.x[0]), t)


def _module_dtype(net: Any) -> torch.dtype | None:
    params = getattr(net, "parameters", None)
    if params is None:
        return None
    for p in params():
        if p.is_floating_point():
            return p.dtype
    return None


class NetworkDenoiser:
    """``D(x; alpha, sigma)``: a network of any prediction type as an x0-denoiser at any level (see the module doc).

    Args:
        call: ``call(x [B, *sample_shape], t [B]) -> output`` in ``dtype``.
        prediction_type: canonical prediction type of the output.
        schedule: the network's training schedule (model time <-> level).
        sample_shape: one sample's shape.
        dtype: what the network computes in (inputs are cast to it, outputs read back in float64).
        batch: at most this many samples per network call (memory).
    """

    def __init__(
        self,
        call: Callable[..., Any],
        prediction_type: str,
        schedule: NoiseSchedule,
        sample_shape: tuple[int, ...],
        dtype: torch.dtype,
        batch: int = 256,
    ) -> None:
        self.call = call
        self.prediction_type = prediction_type
        self.schedule = schedule
        self.sample_shape = tuple(sample_shape)
        self.dtype = dtype
        self.batch = int(batch)
        lo, hi = schedule.time_domain()
        self.t_lo, self.t_hi = float(lo), float(hi)
        a, s = schedule.alpha_sigma(torch.tensor([self.t_lo, self.t_hi], dtype=F64))
        self.level_lo = float(s[0] / a[0]) if float(a[0]) > 0 else math.inf
        self.level_hi = float(s[1] / a[1]) if float(a[1]) > 0 else math.inf
        self.calls = 0
        smooth = isinstance(schedule, DiscreteVPSchedule) and schedule.num_train_timesteps >= 3
        self.time_at_level: Callable[[torch.Tensor], torch.Tensor]
        if isinstance(schedule, DiscreteVPSchedule) and smooth:
            self.time_at_level = SplineTime(schedule)
        else:
            self.time_at_level = schedule.time_at_level
        self.extrapolates = smooth  # below the least noisy timestep t goes on (linearly in log sigma, t < 0)

    def net(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The raw network on ``x`` [B, *sample_shape] at model times ``t`` [B]: its output [B, *sample_shape]."""
        out = _unwrap(self.call(x.to(self.dtype), t.to(device=x.device, dtype=self.dtype)))
        if not isinstance(out, torch.Tensor):
            raise ModelInputError(f"the model returned a {type(out).__name__}, expected a tensor")
        c = self.sample_shape[0] if self.sample_shape else 0
        if (
            out.dim() == x.dim()
            and out.shape[1:] != x.shape[1:]
            and out.shape[1] == 2 * c
            and out.shape[2:] == x.shape[2:]
        ):
            out = out[:, :c]  # learned variance: the first half is the prediction
        if out.shape != x.shape:
            raise ModelInputError(
                f"the model returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)}; it must return "
                f"one output of the sample's shape {self.sample_shape} per sample"
            )
        return out

    def __call__(self, x: torch.Tensor, alpha: Any, sigma: Any) -> torch.Tensor:
        """x0 [B, dim] float64 for flat model-space ``x`` [B, dim] at (alpha, sigma): floats or [B] / [B, 1]."""
        from samplers.parameterization import to_x0_eps

        b = x.shape[0]
        x = x.to(F64)
        a = torch.as_tensor(alpha, dtype=F64, device=x.device).reshape(-1).expand(b)
        s = torch.as_tensor(sigma, dtype=F64, device=x.device).reshape(-1).expand(b)
        level = torch.where(a > 0, s / a.clamp(min=1e-300), torch.full_like(s, math.inf))
        finite = torch.isfinite(level)
        inside = torch.where(finite, level.clamp(max=self.level_hi), torch.ones_like(level))
        t = torch.where(finite, self.time_at_level(inside.cpu()).to(x), torch.full_like(level, self.t_hi))
        t = t.clamp(max=self.t_hi) if self.extrapolates else t.clamp(self.t_lo, self.t_hi)
        # the network's own coordinates of the sample's level (exactly its training (alpha_t, sigma_t) at a
        # training timestep); alpha = 0 is (0, 1) in every family
        at, st = self.schedule.alpha_sigma_at_level(torch.where(finite, level, torch.ones_like(level)).cpu())
        at = torch.where(finite, at.to(x), torch.zeros_like(level))
        st = torch.where(finite, st.to(x), torch.ones_like(level))
        k = torch.hypot(at, st) / torch.hypot(a, s)  # the same point in those coordinates
        col = (-1,) + (1,) * (x.dim() - 1)
        x_net = x * k.reshape(col)
        outs = []
        for i in range(0, b, self.batch):
            xi = x_net[i : i + self.batch].reshape(-1, *self.sample_shape)
            outs.append(self.net(xi, t[i : i + self.batch]).to(F64).reshape(xi.shape[0], -1))
        self.calls += 1
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        return to_x0_eps(self.prediction_type, out, x_net, at.reshape(col), st.reshape(col))[0]


def _probe(den: NetworkDenoiser, where: str) -> None:
    """One call on a tiny batch at a middle level: raises :class:`ModelInputError` if the network fails or
    answers with the wrong shape or non-finite values."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(PROBE_BATCH, math.prod(den.sample_shape), generator=gen, dtype=F64)
    try:
        with torch.inference_mode():
            x0 = den(x, 0.6, 0.8)
    except ModelInputError as exc:
        raise ModelInputError(f"{where}: {exc}") from None
    except Exception as exc:
        raise _CallFailed(
            f"{where}: calling the model on a {[PROBE_BATCH, *den.sample_shape]} batch failed: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not bool(torch.isfinite(x0).all()):
        raise ModelInputError(f"{where}: the model returned non-finite values on a probe batch")


def make_denoiser(loaded: LoadedModel, where: str) -> tuple[NetworkDenoiser, ModelSchedule]:
    """The probed :class:`NetworkDenoiser` of a loaded model (float64 where the network runs in it)."""
    from samplers.parameterization import canonical_prediction_type

    try:
        pt = canonical_prediction_type(loaded.prediction_type)
    except ValueError as exc:
        raise ModelInputError(f"{where}: {exc}") from None
    shape = tuple(loaded.sample_shape)
    if not shape or any(v < 1 for v in shape):
        raise ModelInputError(f"{where}: sample_shape must be positive integers, got {shape}")
    sched = resolve_schedule(loaded.schedule, where)
    net = loaded.model
    native = _module_dtype(net)
    if isinstance(net, torch.nn.Module):
        try:
            net.eval()
        except NotImplementedError:  # a torch.export module has no train/eval switch (it was exported as it ran)
            pass
        for p in net.parameters():
            p.requires_grad_(False)
    call = net
    if isinstance(net, torch.nn.Module) and hasattr(net, "forward") and "return_dict" in _params(net):
        call = _DiffusersCall(net)
    try_f64 = native in (None, torch.float32, F64)
    if try_f64:
        if isinstance(net, torch.nn.Module):
            net.to(F64)
        den = NetworkDenoiser(call, pt, sched.schedule, shape, F64)
        try:
            _probe(den, where)
            return den, sched
        except _CallFailed:
            pass  # e.g. a traced graph with float32 constants: run it as it was built
        if isinstance(net, torch.nn.Module):
            net.to(native or torch.float32)
    den = NetworkDenoiser(call, pt, sched.schedule, shape, native or torch.float32)
    _probe(den, where)
    return den, sched


def _params(net: Any) -> tuple[str, ...]:
    import inspect

    try:
        return tuple(inspect.signature(net.forward).parameters)
    except (TypeError, ValueError, AttributeError):
        return ()


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _load_images(folder: Path, shape: tuple[int, ...], where: str) -> torch.Tensor:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ModelInputError(f"{where}: {str(folder)!r} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    if len(shape) != 3 or shape[0] not in (1, 3, 4):
        raise ModelInputError(
            f"{where}: an image folder needs a model whose samples are images [C, H, W] with C = 1, 3 or 4; "
            f"this model's are {shape}"
        )
    try:
        from PIL import Image
    except ImportError:
        raise ModelInputError(f"{where}: reading images needs Pillow (pip install 'samplers[bench]')") from None
    import numpy as np

    mode = {1: "L", 3: "RGB", 4: "RGBA"}[shape[0]]
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert(mode), dtype=np.float64)
        except OSError as exc:
            raise ModelInputError(f"{where}: cannot read image {str(f)!r}: {exc}") from None
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if arr.shape != shape:
            raise ModelInputError(
                f"{where}: image {f.name!r} is {arr.shape[2]}x{arr.shape[1]} ({arr.shape[0]} channel(s)); the "
                f"model's samples are {shape[2]}x{shape[1]} with {shape[0]} channel(s)"
            )
        out.append(torch.from_numpy(arr.copy()))
    return torch.stack(out) / 127.5 - 1.0


def load_data(path: str | os.PathLike, sample_shape: tuple[int, ...]) -> torch.Tensor:
    """``--data``: the data set [N, *sample_shape] float64 in model space (see the module doc for the formats)."""
    where = f"--data {str(path)!r}"
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.is_dir():
        data = _load_images(p, tuple(sample_shape), where)
    elif not p.is_file():
        raise ModelInputError(f"{where}: no such file or folder")
    elif p.suffix.lower() == ".npy":
        import numpy as np

        try:
            data = torch.from_numpy(np.load(p, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise ModelInputError(f"{where}: cannot read it as a .npy array: {exc}") from None
    elif p.suffix.lower() in (".pt", ".pth"):
        try:
            blob = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelInputError(f"{where}: cannot read it with torch.load: {exc}") from None
        if isinstance(blob, Mapping):
            tensors = [v for v in blob.values() if isinstance(v, torch.Tensor)]
            if len(tensors) != 1:
                raise ModelInputError(f"{where}: a .pt dict must hold exactly one tensor, it holds {len(tensors)}")
            blob = tensors[0]
        if not isinstance(blob, torch.Tensor):
            raise ModelInputError(f"{where}: expected a tensor, the file holds a {type(blob).__name__}")
        data = blob
    else:
        raise ModelInputError(f"{where}: expected a .npy / .pt file or a folder of images, got {p.suffix!r}")
    if data.is_complex() or data.dtype == torch.bool:
        raise ModelInputError(f"{where}: expected real numbers, got {data.dtype}")
    if tuple(data.shape[1:]) != tuple(sample_shape) or data.dim() != len(sample_shape) + 1:
        raise ModelInputError(
            f"{where}: the data are {list(data.shape)}, the model's samples {list(sample_shape)}: expected "
            f"[N, {', '.join(map(str, sample_shape))}]"
        )
    if data.shape[0] < 4:
        raise ModelInputError(
            f"{where}: at least 4 samples are needed (half of them are held out), got {data.shape[0]}"
        )
    data = data.to(F64)
    if not bool(torch.isfinite(data).all()):
        raise ModelInputError(f"{where}: the data hold NaN or infinite values")
    return data


# --------------------------------------------------------------------------------------------
# The problem
# --------------------------------------------------------------------------------------------


class NetworkProblem:
    """``--model``: a trained network as a benchmark problem (the digits machinery for any model).

    Samples are flat ``[B, dim]`` (``dim = prod(sample_shape)``) float64 in model space. There is no
    exact oracle: a sampler's ODE error is measured against :meth:`ode_reference`. With ``data``
    (:func:`load_data`), :meth:`reference_data` (even rows) and :meth:`heldout_data` (odd rows, the noise
    floor) give the distribution metrics.
    """

    def __init__(
        self,
        spec: str,
        loaded: LoadedModel,
        denoiser: NetworkDenoiser,
        schedule: ModelSchedule,
        data: torch.Tensor | None = None,
        data_path: str | None = None,
        reference_tol: float = REFERENCE_TOL,
    ) -> None:
        self.name = "model"
        self.spec = spec
        self.loaded = loaded
        self.denoiser = denoiser
        self.model_schedule = schedule
        self.sample_shape = denoiser.sample_shape
        self.dim = math.prod(self.sample_shape)
        self.reference_tol = float(reference_tol)
        self.has_data = data is not None
        self.data_path = data_path
        if data is not None:
            flat = data.reshape(data.shape[0], -1)
            self.train, self.heldout = flat[0::2].contiguous(), flat[1::2].contiguous()
        if len(self.sample_shape) == 3 and self.sample_shape[0] == 1:
            self.image_shape = self.sample_shape[1:]  # grey images: the --plot sample grid

    @property
    def scheduler_preset(self) -> dict[str, Any]:
        """Scheduler config keys that put every benched sampler on the model's training schedule."""
        return dict(self.model_schedule.preset)

    @property
    def default_metrics(self) -> tuple[str, ...]:
        return ("sw", "mmd", "ode_error") if self.has_data else ("ode_error",)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "model": self.loaded.name,
            "dim": self.dim,
            "sample_shape": list(self.sample_shape),
            "layout": f"{self.loaded.name}, sample {'x'.join(map(str, self.sample_shape))}",
            "prediction_type": self.denoiser.prediction_type,
            "training_schedule": self.model_schedule.label,
            "network_dtype": str(self.denoiser.dtype).replace("torch.", ""),
            **self.loaded.info,
        }
        if self.has_data:
            out.update(
                data=self.data_path,
                train_samples=int(self.train.shape[0]),
                heldout_samples=int(self.heldout.shape[0]),
                split_rule="reference: even rows; held out (noise floor): odd rows",
            )
        if hasattr(self, "image_shape"):
            out["image_shape"] = list(self.image_shape)
        return out

    # ---- the denoiser (OracleModel calls denoise) ------------------------------------------

    def denoise(self, x: torch.Tensor, alpha: Any, sigma: Any) -> torch.Tensor:
        """x0 estimate [B, dim] (float64) for model-space ``x`` [B, dim] at (alpha, sigma)."""
        with torch.inference_mode():
            return self.denoiser(x, alpha, sigma)

    def ode_reference(
        self, x_t: torch.Tensor, alpha_t: float, sigma_t: float, tol: float | None = None, resume: Any = None
    ) -> Any:
        """:class:`~samplers.bench.reference.ReferenceSolution` of the network's PF-ODE from ``x_t`` [B, dim] to
        ``sigma = 0``, to ``tol`` (default ``reference_tol``); ``resume`` continues an earlier, looser solve."""
        from samplers.bench.reference import solve_reference

        tol = self.reference_tol if tol is None else tol
        return solve_reference(
            self.denoise,
            x_t.to(F64),
            float(alpha_t),
            float(sigma_t),
            tol=tol,
            steps_per_unit=REFERENCE_STEPS_PER_UNIT,
            max_steps=REFERENCE_MAX_STEPS,
            resume=resume,
        )

    def ode_solution(self, x_t: torch.Tensor, alpha_t: float, sigma_t: float, **_: Any) -> torch.Tensor:
        """The endpoint of :meth:`ode_reference` [B, dim] float64."""
        return self.ode_reference(x_t, alpha_t, sigma_t).x0

    # ---- data (with --data) ----------------------------------------------------------------

    def reference_data(self) -> torch.Tensor:
        """The reference half [ceil(N / 2), dim] float64 (even rows of ``--data``)."""
        return self.train

    def heldout_data(self) -> torch.Tensor:
        """The held-out half [floor(N / 2), dim] float64 (odd rows): the noise floor."""
        return self.heldout

    def mean(self) -> torch.Tensor:
        return self.train.mean(0)

    def covariance(self) -> torch.Tensor:
        c = self.train - self.train.mean(0)
        return (c.T @ c) / max(1, self.train.shape[0] - 1)


_CACHE: OrderedDict[tuple[Any, ...], NetworkProblem] = OrderedDict()
_CACHE_SIZE = 2


def _stamp(spec: str | None) -> Any:
    """What changes when a path's content does (so a rewritten folder or file is loaded again)."""
    if spec is None:
        return None
    p = Path(os.path.expanduser(spec))
    if not p.exists():
        return spec
    files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
    return tuple((str(q), q.stat().st_mtime_ns, q.stat().st_size) for q in files[:1000])


def load_model_problem(spec: str, data: str | None = None) -> NetworkProblem:
    """``--model SPEC [--data PATH]`` as a :class:`NetworkProblem`: loaded, probed and its data checked.

    Raises :class:`ModelInputError` for any bad input, before any sampling. The last two problems are
    cached (the CLI validates a configuration and then runs it: the network is loaded once).
    """
    key = (spec, data, _stamp(spec), _stamp(data))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    where = f"--model {spec!r}"
    loaded = load_spec(spec)
    den, sched = make_denoiser(loaded, where)
    tensor = load_data(data, den.sample_shape) if data is not None else None
    problem = NetworkProblem(spec, loaded, den, sched, tensor, data)
    _CACHE[key] = problem
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return problem
