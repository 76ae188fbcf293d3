"""Scheduler configuration: the read-only container, the options every scheduler takes, and the checks.

A scheduler's config is its ``__init__`` arguments with defaults applied, bound once by
:meth:`samplers.protocol.Scheduler.__init_subclass__` (a subclass ``__init__`` only validates),
plus the options below that every scheduler takes whether or not its signature lists them.
Values are checked against the ``__init__`` defaults' types, with errors that name the option.
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from samplers import errors, schedules

CONFIG_NAME = "scheduler_config.json"

# Options every scheduler accepts (a subclass signature may list them with other defaults).
COMMON_OPTIONS: dict[str, Any] = {
    # the training noise schedule: "discrete" (beta table) or a continuous one by name
    "schedule": "discrete",
    "schedule_kwargs": None,
    # the levels a run visits, by name from samplers.grids (None: the scheduler's default spacing)
    "sigma_schedule": None,
    "sigma_schedule_kwargs": None,
    # in-step noise: "philox" (independent per call) or "brownian" (one Brownian path per sample)
    "noise": "philox",
}
NOISE_MODES: tuple[str, ...] = ("philox", "brownian")

# Options with a fixed set of values whatever the scheduler (a typo is caught even where unused).
CHOICES: dict[str, tuple[str, ...]] = {
    "beta_schedule": schedules.BETA_SCHEDULES,
    "timestep_spacing": schedules.TIMESTEP_SPACINGS,
    "noise": NOISE_MODES,
}
POSITIVE = ("clip_sample_range", "sample_max_value", "num_train_timesteps")


class SchedulerConfig(dict):
    """A read-only dict with attribute access (like diffusers' ``FrozenDict``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"scheduler config has no option {name!r}") from None

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("scheduler config is read-only; build a new scheduler with from_config(config, **changes)")

    # dict's mutators, each replaced by the one refusal (their signatures differ, hence the ignore)
    __setitem__ = __delitem__ = update = pop = setdefault = clear = popitem = _readonly  # type: ignore[assignment]

    def __deepcopy__(self, memo: dict) -> SchedulerConfig:
        return SchedulerConfig(copy.deepcopy(dict(self), memo))

    def __reduce__(self) -> Any:
        return (SchedulerConfig, (dict(self),))


def config_value(value: Any) -> Any:
    """A JSON-friendly copy of an option value (tensors and tuples become lists)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


def signature_defaults(init: Any) -> dict[str, Any]:
    """``{option: default}`` of an ``__init__`` (keyword-capable parameters), plus the common options."""
    params = inspect.signature(init).parameters
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    own = {k: p.default for k, p in params.items() if k != "self" and p.kind in kinds}
    return {**COMMON_OPTIONS, **own}


def bind_config(cls_name: str, init: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every option of one construction, defaults applied: ``init``'s parameters plus the common options."""
    sig = inspect.signature(init)
    own = {k for k in sig.parameters if k != "self"}
    common = {k: kwargs.pop(k) for k in list(kwargs) if k in COMMON_OPTIONS and k not in own}
    try:
        bound = sig.bind(None, *args, **kwargs)
    except TypeError as exc:
        known = sorted((own | set(COMMON_OPTIONS)) - {"self"})
        raise TypeError(f"{cls_name}: {exc}; it takes {known}") from None
    bound.apply_defaults()
    values = {k: v for k, v in bound.arguments.items() if k != "self"}
    return {**{k: v for k, v in COMMON_OPTIONS.items() if k not in own}, **common, **values}


def check_config(cls_name: str, defaults: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Types against the ``__init__`` defaults, choices, ranges and finiteness: errors name the option."""
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
            if ok and math.isnan(float(value)):
                raise ValueError(f"{cls_name}: {key} must be a number, got NaN")
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            raise TypeError(
                f"{cls_name}: {key} must be {type(default).__name__} (default {default!r}), "
                f"got {type(value).__name__} {value!r}"
            )
    for key, choices in CHOICES.items():
        if key in config and config[key] is not None and config[key] not in choices:
            raise errors.unknown(key, config[key], choices)
    for key in POSITIVE:
        value = config.get(key)
        if isinstance(value, (int, float)) and not value > 0:
            raise ValueError(f"{cls_name}: {key} must be > 0, got {value!r}")
    ratio = config.get("dynamic_thresholding_ratio")
    if isinstance(ratio, (int, float)) and not 0 < ratio <= 1:
        raise ValueError(f"{cls_name}: dynamic_thresholding_ratio must be in (0, 1], got {ratio!r}")
    for key in ("schedule_kwargs", "sigma_schedule_kwargs"):
        value = config.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(f"{cls_name}: {key} must be a dict of options or None, got {type(value).__name__}")
