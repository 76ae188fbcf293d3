"""Foreign samplers in the bench: diffusers scheduler classes and k-diffusion-style sampler functions.

``samplers bench -s`` takes, next to registry names, a *spec* ``PREFIX:NAME[:key=value,...]``:

* ``diffusers:DPMSolverMultistepScheduler`` -- a scheduler class of diffusers, by name;
* ``k-diffusion:sample_dpmpp_2m`` -- a sampler function of ``k_diffusion.sampling``;
* ``some.module:Name`` -- any ``diffusers.SchedulerMixin`` subclass, or any k-diffusion-style function
  ``fn(model, x, sigmas, extra_args=None, callback=None, disable=None, ...)``, importable from any
  installed distribution (``Outer.Inner`` attribute paths work).

Options: ``-o key=value`` reaches every scheduler that accepts ``key`` (for a class: its ``__init__``
or its ``step`` keywords, e.g. diffusers DDIM's ``eta``; for a function: its keywords), as for our
own schedulers. Options after a second ``:`` belong to that spec only and win over ``-o``
(``diffusers:DPMSolverMultistepScheduler:use_karras_sigmas=true``); they are part of the row's label.

**The model is the problem's oracle**, trained (as it were) with the bench's schedule
(``BenchConfig.schedule``).

* A diffusers class gets that schedule as ``beta_schedule`` / ``beta_start`` / ``beta_end`` /
  ``num_train_timesteps`` (the discrete presets ``linear``, ``scaled_linear``, ``cosine``; ``default``
  keeps the class's own betas) and the oracle's prediction type. Classes that take no beta schedule
  (EDM-preconditioned ones) and continuous schedules (``edm``, ``ve``, ``vp_*``) are refused;
  flow-matching classes (a ``shift`` and no ``beta_schedule``) keep their rectified-flow schedule, as
  our family-tied schedulers do. The loop is diffusers' own (``set_timesteps``, ``scale_model_input``,
  model, ``step`` with a seeded ``generator``); the oracle is evaluated at the noise level *of the
  timestep the model is given* (an integer timestep exactly, a fractional one by linear interpolation
  of log-sigma, the schedule's continuous extension; flow: ``sigma = t / num_train_timesteps``). A
  scheduler that believes in another level than its timestep's (diffusers' Euler interpolates sigma
  linearly between training timesteps; DPM-Solver with Karras sigmas rounds its timesteps) is scored
  with that disagreement, as a real network fed that timestep would be.
* A k-diffusion function gets the denoiser ``D(x, sigma)`` of the oracle in sigma space
  (``x = x_vp / alpha``, ``sigma = sigma_vp / alpha``), ``x = noise * sigmas[0]`` and, by default, the
  model's own discrete sigmas: for a discrete schedule ``k_diffusion.external.DiscreteSchedule(...)
  .get_sigmas(n)``, what k-diffusion users get from ``CompVisDenoiser.get_sigmas`` (n levels evenly in
  the training timestep, log-sigma interpolated, then 0). ``use_karras_sigmas=true`` /
  ``use_exponential_sigmas=true`` (with ``rho``) select ``get_sigmas_karras`` / ``get_sigmas_exponential``
  between the model's smallest and largest sigma, as the same options do for diffusers and our
  schedulers. ``--schedule edm`` and ``ve`` use the Karras grid over their sigma range. Its random
  stream is torch's global generator, seeded per row (and restored afterwards).

**NFE** is counted at the model (:class:`CountingModel`), never read from the sampler. Whether a row
is stochastic is measured, not declared: a two-sample probe run twice with different seeds, once per
sampler at the step count of its first run (the warm-up's).
The ODE reference needs the start of the sampler's ODE: the first call the counting model sees
gives its input (a multiple of the initial noise) and its noise level.

**Errors.** A spec that does not resolve (no such module or package on its path, a missing name), whose
object is neither a scheduler class nor a k-diffusion-style function, an unknown library prefix, or an
option no sampler takes: :class:`~samplers.bench.runner.BenchInputError` in ``prepare``, before any
sampling. A module that exists but raises while importing (its own code, or a dependency it lacks), a
class that fails to construct, or a sampler that raises while sampling is that sampler's rows' error
(:class:`ForeignRunError`, recorded in ``BenchRow.error``); the other rows run.

**Networks.** With ``--model`` (``--schedule model``) both adapters get the network's training schedule
(trained betas included where a class takes them); the network answers as a denoiser at any level.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from samplers.bench.problems import OracleModel
from samplers.bench.runner import (
    BENCH_SCHEDULER_DEFAULTS,
    SCHEDULE_PRESETS,
    BenchConfig,
    BenchInputError,
    BenchRow,
    ProgressSink,
    ResolvedScheduler,
    SampleRun,
    _PeakMemory,
)
from samplers.schedules import DiscreteVPSchedule, NoiseSchedule, get_schedule

F64 = torch.float64

# prefix -> (module to import, distribution whose version labels the rows)
LIBRARIES: dict[str, tuple[str, str]] = {
    "diffusers": ("diffusers", "diffusers"),
    "k-diffusion": ("k_diffusion.sampling", "k-diffusion"),
    "k_diffusion": ("k_diffusion.sampling", "k-diffusion"),
}
K_SIGNATURE = "fn(model, x, sigmas, extra_args=None, callback=None, disable=None, ...)"
# k-diffusion parameters the adapter fills itself (not options)
K_RESERVED = ("model", "x", "sigmas", "extra_args", "callback", "disable")
# step() parameters the diffusers loop fills itself
STEP_RESERVED = ("self", "model_output", "timestep", "sample", "generator", "return_dict", "variance_noise")
# adapter options of a k-diffusion row: the grid (same names and meaning as diffusers' and ours)
K_GRID_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "rho")
DISCRETE_KEYS = ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps")
MODEL_BETA_KEYS = ("trained_betas", "rescale_betas_zero_snr")  # a --model network's schedule may carry these
# the bench's canonical prediction types -> diffusers' names (score has none)
DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "sample": "sample", "v_prediction": "v_prediction", "flow": "flow"}
PROBE_SAMPLES = 2


class ForeignRunError(RuntimeError):
    """A foreign sampler failed at run time (construction, ``set_timesteps``, a step): that row's error."""


def is_foreign_spec(name: str) -> bool:
    """Whether a ``-s`` item is a foreign spec (``prefix:Name``) rather than a registry name."""
    if ":" not in name:
        return False
    from samplers.registry import registry

    return name not in registry().entries  # a plugin is free to register a name with a colon


def split_scheduler_list(text: str) -> tuple[str, ...]:
    """Split ``-s`` on commas, keeping a spec's own options together.

    ``"ddim,diffusers:DPMSolverMultistepScheduler:solver_order=3,use_karras_sigmas=true,euler"`` gives
    ``("ddim", "diffusers:DPMSolverMultistepScheduler:solver_order=3,use_karras_sigmas=true", "euler")``:
    an item ``key=value`` with no colon continues the spec before it when that spec has options.
    """
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if out and "=" in part and ":" not in part and out[-1].count(":") >= 2:
            out[-1] = f"{out[-1]},{part}"
        else:
            out.append(part)
    if not out:
        raise BenchInputError(f"--scheduler: expected a comma-separated list, got {text!r}")
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Resolution (before any sampling)
# --------------------------------------------------------------------------------------------


@dataclass
class ForeignScheduler(ResolvedScheduler):
    """A resolved foreign spec: what the runner treats like a resolved registry scheduler.

    ``name`` is the row label (``"diffusers 0.42.1: DDIMScheduler"``); ``cls`` the class or function;
    ``config`` the keywords it is built / called with; ``step_options`` the keywords of a class's
    ``step``; ``grid`` a k-diffusion row's grid options; ``schedule`` the model's schedule (None: the
    class's own betas, read from the instance).
    """

    spec: str = ""
    kind: str = "diffusers"  # "diffusers" or "k-diffusion"
    library: str = ""
    version: str = ""
    accepted: frozenset[str] = frozenset()
    step_options: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, Any] = field(default_factory=dict)
    schedule: NoiseSchedule | None = None
    family: str = "vp"  # "vp" (discrete betas) or "flow"
    check_betas: bool = True  # compare the instance's alphas_cumprod with the model's schedule
    import_error: str | None = None  # the module raised while importing: every row's error
    _probe: dict[int, bool] = field(default_factory=dict, repr=False)

    def build(self) -> ForeignRun:
        """A fresh run object for one row (nothing is constructed until it runs)."""
        return ForeignRun(self)

    def info(self) -> dict[str, Any]:
        """Provenance for the JSON's ``schedulers`` section."""
        target = self.cls
        config: dict[str, Any] = dict(self.config)
        if self.kind == "diffusers":
            try:  # the full config diffusers fills in (defaults included), when the class constructs
                config = dict(target(**self.config).config)
            except Exception:  # a class that fails to construct reports it in its rows
                pass
            config.update({f"step.{k}": v for k, v in self.step_options.items()})
        else:
            config.update(self.grid)
        return {
            "class": f"{target.__module__}.{target.__qualname__}",
            "source": f"{self.library} {self.version}",
            "foreign": {"spec": self.spec, "adapter": self.kind, "library": self.library, "version": self.version},
            "family": self.family,
            "order": getattr(target, "order", None),
            "nfe_per_step": None,  # counted at the model per row (BenchRow.nfe)
            "schedule": self.schedule_label,
            "config": config,
        }


def _distribution(module: str) -> tuple[str, str]:
    """(distribution, version) that ships the top-level package of ``module``; ("module", "local") if none."""
    top = module.split(".")[0]
    dists = _packages_distributions().get(top, [])
    for dist in dists:
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return top, "local"


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def _parse_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    from samplers.bench.problems import _parse_value

    module, _, rest = spec.partition(":")
    attr, _, opts = rest.partition(":")
    module, attr = module.strip(), attr.strip()
    if not module or not attr:
        raise BenchInputError(
            f"--scheduler {spec!r}: expected PREFIX:NAME, e.g. diffusers:DPMSolverMultistepScheduler, "
            "k-diffusion:sample_dpmpp_2m or some.module:SomeScheduler"
        )
    options: dict[str, Any] = {}
    for item in (p.strip() for p in opts.split(",") if p.strip()):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise BenchInputError(f"--scheduler {spec!r}: option {item!r} is not KEY=VALUE")
        options[key.strip()] = None if value.strip().lower() == "none" else _parse_value(value.strip())
    return module, attr, options


class ImportFailure(Exception):
    """A foreign spec's module exists but raises while importing: the rows' error, not bad input."""


def _names_the_path(missing: str | None, mod_name: str) -> bool:
    """Whether a ModuleNotFoundError's missing name is ``mod_name`` or a package on its path (it does not resolve)."""
    if missing is None:
        return True
    parts = mod_name.split(".")
    return missing in {".".join(parts[: i + 1]) for i in range(len(parts))}


def _import(spec: str, module: str, attr: str) -> tuple[Any, str, str]:
    """The object ``module:attr`` names, with its (distribution, version); BenchInputError if it does not resolve."""
    if module in LIBRARIES:
        mod_name, dist = LIBRARIES[module]
    else:
        mod_name, dist = module, ""
    try:
        mod = _import_module(mod_name)
    except ModuleNotFoundError as exc:
        if not _names_the_path(exc.name, mod_name):  # the module exists; a dependency of it is missing
            raise ImportFailure(f"importing module {mod_name!r} failed: ModuleNotFoundError: {exc}") from exc
        if module not in LIBRARIES and "." not in module and exc.name == module:
            known = ", ".join(f"{k}:" for k in LIBRARIES if k != "k_diffusion")
            raise BenchInputError(
                f"--scheduler {spec!r}: unknown library prefix {module!r} (known: {known}) and no importable "
                f"module {module!r}; expected LIBRARY:NAME or an installed module path module.sub:Name"
            ) from None
        raise BenchInputError(f"--scheduler {spec!r}: cannot import module {mod_name!r}: {exc}") from None
    except Exception as exc:  # the module exists and fails while importing: its rows' error (the run goes on)
        raise ImportFailure(f"importing module {mod_name!r} failed: {type(exc).__name__}: {exc}") from exc
    obj: Any = mod
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(mod) if not n.startswith("_")]
            from samplers.bench.runner import _close

            raise BenchInputError(
                f"--scheduler {spec!r}: module {mod_name!r} has no attribute {attr!r}{_close(attr, names)}"
            ) from None
        except Exception as exc:  # diffusers' lazy modules import on attribute access
            raise ImportFailure(f"importing {mod_name}.{attr} failed: {type(exc).__name__}: {exc}") from exc
    if dist:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = getattr(mod, "__version__", "?")
    else:
        owner = getattr(obj, "__module__", None) or mod_name
        dist, version = _distribution(owner)
    return obj, dist, version


# k-diffusion's package __init__ imports its training and image code (PIL, torchvision, safetensors,
# scikit-image); its samplers need none of it. Installed without those (pip install --no-deps), the
# sampling module is loaded on its own, with stand-ins for the image-only modules during that import.
K_PACKAGE_ALIAS = "_samplers_k_diffusion"
_K_IMAGE_ONLY = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "safetensors",
    "PIL",
    "PIL.Image",
)


def _import_module(name: str) -> Any:
    """``importlib.import_module``, with k-diffusion's samplers loadable without its image dependencies."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if not name.startswith("k_diffusion.") or exc.name in (None, "k_diffusion") or exc.name == name:
            raise
        return _k_diffusion_submodule(name.split(".", 1)[1], exc)


def import_k_diffusion(sub: str) -> Any:
    """k-diffusion's submodule ``sub`` (``"sampling"``, ``"external"``, ...), unmodified, as the bench loads it:
    the installed package when it imports, else its files under a private package name with stand-ins for the
    image-only imports it cannot find (a ``pip install --no-deps k-diffusion`` has no torchvision). Raises
    ImportError when k-diffusion (or a dependency its samplers need, such as torchsde) is not installed."""
    return _import_module(f"k_diffusion.{sub}")


def _k_diffusion_submodule(sub: str, original: ImportError) -> Any:
    import importlib.util
    import sys
    import types

    if f"{K_PACKAGE_ALIAS}.{sub}" in sys.modules:
        return sys.modules[f"{K_PACKAGE_ALIAS}.{sub}"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise original
    package = sys.modules.get(K_PACKAGE_ALIAS)
    if package is None:
        package = types.ModuleType(K_PACKAGE_ALIAS)
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules[K_PACKAGE_ALIAS] = package
    missing = [n for n in _K_IMAGE_ONLY if n not in sys.modules and importlib.util.find_spec(n.split(".")[0]) is None]
    stubs = {n: types.ModuleType(n) for n in missing}
    for name, module in stubs.items():  # link submodules so "from a.b import c" resolves
        parent, _, child = name.rpartition(".")
        if parent in stubs:
            setattr(stubs[parent], child, module)
    sys.modules.update(stubs)
    try:
        return importlib.import_module(f"{K_PACKAGE_ALIAS}.{sub}")
    finally:
        for name in stubs:  # nothing else may mistake a stand-in for the real package
            sys.modules.pop(name, None)


def _is_scheduler_class(obj: Any) -> bool:
    try:
        from diffusers import SchedulerMixin
    except ImportError:  # pragma: no cover -- diffusers is a dependency of the bench's foreign path
        return False
    return isinstance(obj, type) and issubclass(obj, SchedulerMixin)


def _k_signature(obj: Any) -> inspect.Signature | None:
    """The signature of a k-diffusion-style sampler function, or None if ``obj`` is not one."""
    if isinstance(obj, type) or not callable(obj):
        return None
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 3 or positional[2].name != "sigmas":
        return None
    has_var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    if "extra_args" not in sig.parameters and not has_var_kw:
        return None
    return sig


def _keywords(sig: inspect.Signature, reserved: tuple[str, ...]) -> set[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n for n, p in sig.parameters.items() if p.kind in kinds and n not in reserved}


def _init_keywords(cls: type) -> set[str]:
    """Constructor keywords of ``cls``, through subclasses whose ``__init__(*args, **kwargs)`` forwards to a base."""
    out: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        sig = inspect.signature(vars(klass)["__init__"])
        out |= _keywords(sig, ("self",))
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return out


def _init_default(cls: type, name: str, fallback: Any) -> Any:
    """The default of constructor keyword ``name`` (through forwarding subclasses), else ``fallback``."""
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None or klass is object:
            continue
        param = inspect.signature(init).parameters.get(name)
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
    return fallback


def _label(dist: str, version: str, attr: str, options: dict[str, Any]) -> str:
    opts = ", ".join(f"{k}={v!r}" for k, v in options.items())
    return f"{dist} {version}: {attr}" + (f"({opts})" if opts else "")


def resolve_foreign(spec: str, config: BenchConfig, problem: Any = None) -> ForeignScheduler:
    """Resolve a foreign ``-s`` spec for this benchmark (raises BenchInputError; imports, constructs nothing else).

    ``problem``: the benchmark's problem; a ``--model`` network's (``--schedule model``) gives the schedule.
    """
    module, attr, own = _parse_spec(spec)
    try:
        obj, dist, version = _import(spec, module, attr)
    except ImportFailure as exc:
        return _unimportable(spec, module, attr, own, str(exc))
    label = _label(dist, version, attr, own)
    if module in ("k-diffusion", "k_diffusion") and _k_signature(obj) is None:
        raise BenchInputError(
            f"--scheduler {spec!r}: {attr} is not a k-diffusion sampler taking a sigma grid (expected {K_SIGNATURE})"
        )
    if _is_scheduler_class(obj):
        if module in ("k-diffusion", "k_diffusion"):
            raise BenchInputError(f"--scheduler {spec!r}: k-diffusion: names a sampler function, not a class")
        return _resolve_diffusers(spec, obj, label, dist, version, own, config, problem)
    if module == "diffusers":
        raise BenchInputError(
            f"--scheduler {spec!r}: diffusers.{attr} is not a scheduler class (expected a subclass of "
            "diffusers.SchedulerMixin, e.g. DPMSolverMultistepScheduler)"
        )
    sig = _k_signature(obj)
    if sig is None:
        raise BenchInputError(
            f"--scheduler {spec!r}: {module}.{attr} is neither a diffusers scheduler class (a subclass of "
            f"diffusers.SchedulerMixin) nor a k-diffusion-style sampler function {K_SIGNATURE}"
        )
    return _resolve_k(spec, obj, sig, label, dist, version, own, config, problem)


def _unimportable(spec: str, module: str, attr: str, own: dict[str, Any], message: str) -> ForeignScheduler:
    """A spec whose module raises while importing: every row of it reports ``message`` (the run goes on)."""
    mod_name, dist = LIBRARIES.get(module, (module, module.split(".")[0]))

    def unimportable(*_: Any, **__: Any) -> None:
        raise ForeignRunError(message)

    unimportable.__qualname__ = attr
    unimportable.__module__ = mod_name
    return ForeignScheduler(
        name=_label(dist, "?", attr, own),
        cls=cast(Any, unimportable),
        config={},
        schedule_label="unknown",
        prediction_type="sample",
        spec=spec,
        kind="unimportable",
        library=dist,
        version="?",
        import_error=message,
    )


def _prediction_type(spec: str, config: BenchConfig, supported: tuple[str, ...] | None) -> str | None:
    """The oracle's canonical prediction type asked by ``--prediction-type`` (None: the sampler's own)."""
    if config.prediction_type is None:
        return None
    from samplers.parameterization import canonical_prediction_type

    try:
        pt = canonical_prediction_type(config.prediction_type)
    except ValueError as exc:
        raise BenchInputError(str(exc)) from None
    if supported is not None and pt not in supported:
        raise BenchInputError(
            f"scheduler {spec!r} does not take prediction type {pt!r}; it takes {', '.join(supported)}"
        )
    return pt


def _model_schedule(config: BenchConfig, problem: Any) -> tuple[dict[str, Any], NoiseSchedule | None, str]:
    """(preset, schedule, label) of the model: ``--schedule`` preset for an oracle problem, or a ``--model``
    network's training schedule (``--schedule model``, its preset then carries trained betas where it has them).
    """
    from samplers.bench.network import MODEL_SCHEDULE

    if config.schedule != MODEL_SCHEDULE:
        return SCHEDULE_PRESETS[config.schedule], None, config.schedule
    model_schedule = problem.model_schedule
    return dict(model_schedule.preset), model_schedule.schedule, f"model: {model_schedule.label}"


def _resolve_diffusers(
    spec: str,
    cls: Any,
    label: str,
    dist: str,
    version: str,
    own: dict[str, Any],
    config: BenchConfig,
    problem: Any = None,
) -> ForeignScheduler:
    init = _init_keywords(cls)
    step = _keywords(inspect.signature(cls.step), STEP_RESERVED) - init
    accepted = init | step
    bad = sorted(set(own) - accepted)
    if bad:
        raise BenchInputError(
            f"--scheduler {spec!r}: {cls.__name__} takes no option {', '.join(map(repr, bad))} "
            f"(its options: {', '.join(sorted(accepted))})"
        )
    family, schedule, schedule_label, check, keys = _diffusers_schedule(spec, cls, init, config, problem)
    kwargs: dict[str, Any] = {k: v for k, v in BENCH_SCHEDULER_DEFAULTS.items() if k in init}
    kwargs.update(keys)
    pt = _prediction_type(
        spec, config, ("epsilon", "sample", "v_prediction", "flow") if "prediction_type" in init else None
    )
    if pt is not None and "prediction_type" in init:
        kwargs["prediction_type"] = DIFFUSERS_PREDICTION[pt]
    options = {**{k: v for k, v in config.options.items() if k in accepted}, **own}
    kwargs.update({k: v for k, v in options.items() if k in init})
    step_options = {k: v for k, v in options.items() if k in step}
    return ForeignScheduler(
        name=label,
        cls=cls,
        config=kwargs,
        schedule_label=schedule_label,
        prediction_type=_diffusers_prediction(spec, cls, family, pt, kwargs),
        spec=spec,
        kind="diffusers",
        library=dist,
        version=version,
        accepted=frozenset(accepted),
        step_options=step_options,
        schedule=schedule,
        family=family,
        check_betas=check,
    )


def _diffusers_schedule(
    spec: str, cls: Any, init: set[str], config: BenchConfig, problem: Any
) -> tuple[str, NoiseSchedule | None, str, bool, dict[str, Any]]:
    """How a diffusers class gets the model's schedule: ``(family, schedule, label, check_betas, config keys)``.

    A beta-schedule class takes the model's discrete betas (or keeps its own with ``--schedule default``,
    read from the instance at run time); a flow-matching class keeps its own shift, like our flow_* schedulers.
    """
    preset, model_schedule, preset_label = _model_schedule(config, problem)
    if "beta_schedule" in init:
        if preset.get("schedule") == "discrete":
            keys = {k: preset[k] for k in (*DISCRETE_KEYS, *MODEL_BETA_KEYS) if k in preset}
            missing = sorted(set(keys) - init)
            if missing:
                raise BenchInputError(
                    f"--scheduler {spec!r}: {cls.__name__} takes no {', '.join(missing)}, which the model's "
                    f"schedule ({preset_label}) needs"
                )
            return "vp", model_schedule or DiscreteVPSchedule.from_config(**keys), preset_label, True, keys
        if not preset:  # --schedule default
            return "vp", None, "own default", False, {}
        raise BenchInputError(
            f"--scheduler {spec!r}: {cls.__name__} takes a discrete beta schedule, which cannot express the "
            f"model's schedule ({preset_label}); use --schedule linear, scaled_linear, cosine or default, or "
            "for a flow-matching model a flow-matching class"
        )
    if "shift" in init:
        return "flow", None, "own default", False, {}
    raise BenchInputError(
        f"--scheduler {spec!r}: {cls.__name__} takes neither a beta schedule nor a flow shift, so the bench "
        "cannot give it the model's schedule (e.g. EDM-preconditioned classes, IPNDM with its own levels)"
    )


def _diffusers_prediction(spec: str, cls: Any, family: str, pt: str | None, kwargs: dict[str, Any]) -> str:
    """The canonical prediction type a diffusers class runs with (``pt``: the one ``--prediction-type`` asked)."""
    if family == "flow":
        if pt not in (None, "flow"):
            raise BenchInputError(f"scheduler {spec!r} is a flow-matching class: it takes prediction type 'flow' only")
        return "flow"
    raw = kwargs.get("prediction_type", _init_default(cls, "prediction_type", "epsilon"))
    from samplers.parameterization import canonical_prediction_type

    try:
        return canonical_prediction_type(str(raw))
    except ValueError as exc:
        raise BenchInputError(f"--scheduler {spec!r}: {exc}") from None


def _resolve_k(
    spec: str,
    fn: Callable[..., Any],
    sig: inspect.Signature,
    label: str,
    dist: str,
    version: str,
    own: dict[str, Any],
    config: BenchConfig,
    problem: Any = None,
) -> ForeignScheduler:
    keywords = _keywords(sig, K_RESERVED)
    accepted = keywords | set(K_GRID_OPTIONS)
    bad = sorted(set(own) - accepted)
    if bad:
        raise BenchInputError(
            f"--scheduler {spec!r}: {fn.__name__} takes no option {', '.join(map(repr, bad))} "
            f"(its options: {', '.join(sorted(accepted))})"
        )
    _prediction_type(spec, config, ("sample",))  # a denoiser D(x, sigma) is an x0 prediction
    preset, model_schedule, preset_label = _model_schedule(config, problem)
    kind = preset.get("schedule", "discrete")
    if kind == "discrete":
        keys = {k: preset[k] for k in (*DISCRETE_KEYS, *MODEL_BETA_KEYS) if k in preset}
        # "default": DDPM's linear betas
        schedule: NoiseSchedule = model_schedule or DiscreteVPSchedule.from_config(**keys)
        schedule_label = preset_label if preset else "linear (DDPM default)"
    elif kind in ("edm", "ve"):
        schedule, schedule_label = get_schedule(kind), config.schedule
    else:
        raise BenchInputError(
            f"--scheduler {spec!r}: a k-diffusion sampler needs a sigma grid of the model; the bench gives one "
            f"for --schedule linear, scaled_linear, cosine, default, edm and ve and for a --model network with "
            f"discrete betas, not {preset_label!r}"
        )
    options = {**{k: v for k, v in config.options.items() if k in accepted}, **own}
    return ForeignScheduler(
        name=label,
        cls=cast(Any, fn),  # the runner reads cls for its name and ``order``: a function serves
        config={k: v for k, v in options.items() if k in keywords},
        schedule_label=schedule_label,
        prediction_type="sample",
        spec=spec,
        kind="k-diffusion",
        library=dist,
        version=version,
        accepted=frozenset(accepted),
        grid={k: v for k, v in options.items() if k in K_GRID_OPTIONS},
        schedule=schedule,
        family="ve",
        check_betas=False,
    )


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


class CountingModel:
    """The oracle seen by a foreign sampler: counts calls, times them, remembers the first one.

    ``vp_call(x_in, alpha, sigma)`` evaluates the oracle at model-space input ``x_in`` [B, dim];
    ``calls`` is the NFE; ``model_s`` the time inside the oracle; ``first`` the first call's input
    and (alpha, sigma) (the start of the sampler's ODE).
    """

    def __init__(self, oracle: Any, progress: ProgressSink | None = None) -> None:
        self.oracle = oracle
        self.progress = progress
        self.calls = 0
        self.model_s = 0.0
        self.first: tuple[torch.Tensor, float, float] | None = None
        self._pending = 0

    def vp_call(self, x_in: torch.Tensor, alpha: Any, sigma: Any) -> torch.Tensor:
        if self.first is None:
            a = float(alpha) if not isinstance(alpha, torch.Tensor) or alpha.numel() == 1 else math.nan
            s = float(sigma) if not isinstance(sigma, torch.Tensor) or sigma.numel() == 1 else math.nan
            self.first = (x_in.detach().clone(), a, s)
        self.calls += 1
        t0 = time.perf_counter()
        out = self.oracle.at(x_in, alpha, sigma)
        self.model_s += time.perf_counter() - t0
        if self.progress is not None:
            self._pending += 1
            if self._pending == 64:
                self.progress.advanced(self._pending)
                self._pending = 0
        return out

    def flush(self) -> None:
        if self.progress is not None and self._pending:
            self.progress.advanced(self._pending)
            self._pending = 0


class _DiffusersModel:
    """``model(x_in, t)`` for a diffusers loop: the oracle at the noise level of timestep ``t``."""

    def __init__(self, counting: CountingModel, schedule: NoiseSchedule | None, flow_steps: float | None) -> None:
        self.counting = counting
        self.schedule = schedule
        self.flow_steps = flow_steps  # flow matching: t / num_train_timesteps is sigma
        self.levels: dict[float, tuple[float, float]] = {}

    def level(self, t: Any) -> tuple[float, float]:
        key = float(t)
        hit = self.levels.get(key)
        if hit is None:
            if self.flow_steps is not None:
                s = key / self.flow_steps
                hit = (1.0 - s, s)
            else:
                assert self.schedule is not None
                tt = torch.tensor(int(key)) if key.is_integer() else torch.tensor(key, dtype=F64)
                alpha, sigma = self.schedule.alpha_sigma(tt)
                hit = (float(alpha), float(sigma))
            self.levels[key] = hit
        return hit

    def __call__(self, x_in: torch.Tensor, t: Any) -> torch.Tensor:
        a, s = self.level(t)
        return self.counting.vp_call(x_in, a, s)


class _KDenoiser:
    """k-diffusion's ``model(x, sigma, **extra_args)``: the oracle's x0 estimate in sigma space (alpha = 1)."""

    def __init__(self, counting: CountingModel) -> None:
        self.counting = counting

    def __call__(self, x: torch.Tensor, sigma: Any, **_: Any) -> torch.Tensor:
        if isinstance(sigma, torch.Tensor) and sigma.numel() > 1:
            flat = sigma.reshape(-1)
            s: Any = float(flat[0]) if bool((flat == flat[0]).all()) else flat.to(F64)
        else:
            s = float(sigma)
        one = 1.0 if not isinstance(s, torch.Tensor) else torch.ones_like(s)
        return self.counting.vp_call(x, one, s)


def _seed_of(seeds: torch.Tensor) -> int:
    return int(seeds.reshape(-1)[0].item()) & (2**63 - 1) if seeds.numel() else 0


class ForeignRun:
    """One row's run of a foreign sampler (built fresh per row by :meth:`ForeignScheduler.build`)."""

    def __init__(self, spec: ForeignScheduler) -> None:
        self.spec = spec
        self.name = spec.name
        self._first_sigma = math.nan  # a k-diffusion run's sigmas[0]: its start is noise * sigmas[0]

    def set_timesteps(self, steps: int, device: Any = None) -> None:
        """Nothing to check before sampling: a foreign class's construction and grid are run-time (row) errors."""

    # the loops -----------------------------------------------------------------------------

    def _diffusers_loop(
        self,
        oracle_model: Any,
        noise: torch.Tensor,
        steps: int,
        seed: int,
        counting: CountingModel | None,
        network: bool,
    ) -> tuple[torch.Tensor, float]:
        """Build the class and run diffusers' loop; returns (samples, wall seconds from set_timesteps on)."""
        rs = self.spec
        try:
            sched = rs.cls(**rs.config)
        except Exception as exc:  # any failure of a foreign constructor is this row's error
            raise ForeignRunError(f"constructing {rs.cls.__name__}: {type(exc).__name__}: {exc}") from exc
        model: Any = oracle_model
        if not network:
            assert counting is not None
            schedule = rs.schedule
            flow_steps = None
            if rs.family == "flow":
                flow_steps = float(getattr(sched.config, "num_train_timesteps", 1000))
            elif schedule is None or rs.check_betas:
                abar = getattr(sched, "alphas_cumprod", None)
                if abar is None:
                    raise ForeignRunError(f"{rs.cls.__name__} has no alphas_cumprod: its noise schedule is unknown")
                abar = torch.as_tensor(abar).to(F64).cpu()
                if schedule is None:
                    schedule = DiscreteVPSchedule(alphas_cumprod=abar)
                else:
                    # attr-defined: NoiseSchedule declares no alphas_cumprod; a beta-schedule class checked
                    # here runs on the model's discrete schedule (DISCRETE_KEYS), which has one
                    ours = schedule.alphas_cumprod  # type: ignore[attr-defined]
                    if abar.shape != ours.shape or not torch.allclose(abar, ours, rtol=1e-5, atol=1e-7):
                        raise ForeignRunError(
                            f"{rs.cls.__name__}'s alphas_cumprod differ from the model's {rs.schedule_label!r} "
                            "schedule (it does not map the bench's beta schedule)"
                        )
            model = _DiffusersModel(counting, schedule, flow_steps)
        step_params = inspect.signature(sched.step).parameters
        gen = torch.Generator(device=noise.device).manual_seed(seed)
        step_kwargs = dict(rs.step_options)
        if "generator" in step_params:
            step_kwargs["generator"] = gen
        device = noise.device
        on_cuda = device.type == "cuda"
        if on_cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        try:
            sched.set_timesteps(steps, device=device)
            # flow-matching classes start from the noise itself and take the sample as it is
            x = noise * getattr(sched, "init_noise_sigma", 1.0)
            scale = getattr(sched, "scale_model_input", None)
            for t in sched.timesteps:
                x_in = scale(x, t) if scale is not None else x
                out = model(x_in, t)
                x = sched.step(out, t, x, **step_kwargs).prev_sample
        except ForeignRunError:
            raise
        except Exception as exc:  # any failure while sampling is this row's error
            raise ForeignRunError(f"{rs.cls.__name__}: {type(exc).__name__}: {exc}") from exc
        if on_cuda:
            torch.cuda.synchronize(device)
        return x, time.perf_counter() - t0

    def sigmas(self, steps: int, device: torch.device) -> torch.Tensor:
        """A k-diffusion row's grid: ``steps`` sigmas and a final 0 (module docstring)."""
        ks = _import_module("k_diffusion.sampling")

        rs = self.spec
        schedule = rs.schedule
        assert schedule is not None
        if isinstance(schedule, DiscreteVPSchedule):
            train = schedule.sigmas  # ascending in the training timestep
            s_min, s_max = float(train[0]), float(train[-1])
        else:
            # attr-defined: NoiseSchedule declares no sigma range; the continuous schedules a k-diffusion row
            # runs on (VE, EDM) have sigma_min / sigma_max
            s_min, s_max = (float(v) for v in (schedule.sigma_min, schedule.sigma_max))  # type: ignore[attr-defined]
        rho = float(rs.grid.get("rho", 7.0))
        if rs.grid.get("use_karras_sigmas") or not isinstance(schedule, DiscreteVPSchedule):
            return ks.get_sigmas_karras(steps, s_min, s_max, rho=rho, device=device)
        if rs.grid.get("use_exponential_sigmas"):
            return ks.get_sigmas_exponential(steps, s_min, s_max, device=device)
        external = _import_module("k_diffusion.external")
        return external.DiscreteSchedule(train.to(device), quantize=False).get_sigmas(steps)

    def _k_loop(
        self, counting: CountingModel, noise: torch.Tensor, steps: int, seed: int
    ) -> tuple[torch.Tensor, float]:
        rs = self.spec
        device = noise.device
        on_cuda = device.type == "cuda"
        params = inspect.signature(rs.cls).parameters
        kwargs: dict[str, Any] = dict(rs.config)
        if "extra_args" in params:
            kwargs["extra_args"] = {}
        if "disable" in params:
            kwargs["disable"] = True
        if on_cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        try:
            index = device.index if device.index is not None else torch.cuda.current_device() if on_cuda else 0
            with torch.random.fork_rng(devices=[index] if on_cuda else []):
                torch.manual_seed(seed)
                sigmas = self.sigmas(steps, device)
                self._first_sigma = float(sigmas[0])
                x = noise * self._first_sigma
                out = rs.cls(_KDenoiser(counting), x, sigmas, **kwargs)
        except Exception as exc:  # any failure while sampling is this row's error
            raise ForeignRunError(f"{rs.cls.__name__}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(out, torch.Tensor) or out.shape != noise.shape:
            raise ForeignRunError(
                f"{rs.cls.__name__} returned {type(out).__name__} "
                f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}, expected a tensor {tuple(noise.shape)}"
            )
        if on_cuda:
            torch.cuda.synchronize(device)
        return out, time.perf_counter() - t0

    def _once(
        self,
        problem: Any,
        noise: torch.Tensor,
        steps: int,
        seed: int,
        progress: ProgressSink | None,
        model: Any,
    ) -> tuple[torch.Tensor, float, CountingModel | None, Any]:
        rs = self.spec
        if rs.import_error is not None:
            raise ForeignRunError(rs.import_error)
        counting = None
        if model is None:
            counting = CountingModel(OracleModel(problem, None, rs.prediction_type), progress)
        elif rs.kind != "diffusers":
            raise ForeignRunError("a k-diffusion sampler needs the problem's oracle; it cannot drive a network yet")
        if rs.kind == "diffusers":
            x, wall = self._diffusers_loop(model, noise, steps, seed, counting, model is not None)
        else:
            assert counting is not None
            x, wall = self._k_loop(counting, noise, steps, seed)
        if counting is not None:
            counting.flush()
        return x, wall, counting, model

    def _stochastic(self, problem: Any, noise: torch.Tensor, steps: int, seed: int, model: Any) -> bool:
        """Whether the output depends on the random stream: a two-sample run twice with two seeds.

        Once per sampler, at the step count of its first run (the runner's warm-up, outside every timing).
        """
        cache = self.spec._probe
        if not cache:
            probe = noise[:PROBE_SAMPLES]
            first = self._once(problem, probe, steps, seed + 1, None, model)[0]
            second = self._once(problem, probe, steps, seed + 2, None, model)[0]
            cache[steps] = not torch.equal(first, second)
        return next(iter(cache.values()))

    def run(
        self,
        problem: Any,
        noise: torch.Tensor,
        seeds: torch.Tensor,
        steps: int,
        progress: ProgressSink | None = None,
        measure_memory: bool = True,
        model: Any = None,
    ) -> SampleRun:
        """Sample ``noise`` [n, d] with the foreign sampler into a :class:`SampleRun` (raises ForeignRunError)."""
        rs = self.spec
        seed = _seed_of(seeds)
        mem = _PeakMemory(noise.device) if measure_memory else None
        if mem is not None:
            mem.__enter__()
        if progress is not None:
            progress.row_started(f"{rs.name} x{steps}", steps)
        calls_before = int(getattr(model, "calls", 0))  # a network counts its own calls
        try:
            x, wall, counting, net = self._once(problem, noise, steps, seed, progress, model)
        finally:
            if progress is not None:
                progress.row_finished()
        peak = mem.peak() if mem is not None else 0
        nfe = counting.calls if counting is not None else int(getattr(net, "calls", 0)) - calls_before
        model_s = counting.model_s if counting is not None else 0.0
        try:
            stochastic = self._stochastic(problem, noise, steps, seed, model)
        except ForeignRunError:
            stochastic = True  # the probe's own failure: no ODE reference for this row
        start = (math.nan, 1.0, math.nan, math.nan)
        if counting is not None and counting.first is not None:
            x0, a0, s0 = counting.first
            start = (_gain(x0, noise, (1.0, self._first_sigma)), 1.0, a0, s0)
        return SampleRun(x, nfe, wall, model_s, peak, mem.kind if mem else "none", stochastic, start)


def _gain(x_first: torch.Tensor, noise: torch.Tensor, candidates: tuple[float, ...] = (1.0,)) -> float:
    """``g`` with ``x_first = g * noise``; NaN when the first input is no multiple of it.

    A candidate that reproduces ``x_first`` exactly in its dtype (how the loop built it) is taken as it is,
    so equal starts key one shared reference solve; otherwise least squares in float64.
    """
    for g in candidates:
        if math.isfinite(g) and torch.equal(x_first, noise * g):
            return float(g)
    x64, z64 = x_first.to(F64).reshape(-1), noise.to(F64).reshape(-1)
    zz = float(z64 @ z64)
    if zz == 0:
        return math.nan
    g = float(x64 @ z64) / zz
    resid = float((x64 - g * z64).norm())
    scale = float(x64.norm()) or 1.0
    tol = 1e-5 if x_first.dtype in (torch.float32, torch.float64) else 1e-2
    return g if resid <= tol * scale else math.nan


def error_row(rs: ResolvedScheduler, steps: int, exc: BaseException) -> BenchRow:
    """The row of a (scheduler, steps) pair whose foreign sampler failed: NaN numbers and the error."""
    nan = math.nan
    return BenchRow(
        scheduler=rs.name,
        steps=steps,
        nfe=0,
        prediction_type=rs.prediction_type,
        schedule=rs.schedule_label,
        stochastic=False,
        order=int(getattr(rs.cls, "order", 1) or 1),
        metrics={},
        wall_s=nan,
        model_s=nan,
        samples_per_s=nan,
        step_overhead_ms=nan,
        peak_mem_bytes=0,
        peak_mem_kind="none",
        metrics_s=0.0,
        error=str(exc),
    )
