"""The checks every sampler must pass, as functions each sampler's test file calls with its own table.

Everything is driven by the exact denoiser of Gaussian data ``x0 ~ N(MU, diag(STD^2))`` (no model
error), whose probability-flow ODE has a closed form on any schedule::

    x(t) = alpha_t MU + sqrt(alpha_t^2 STD^2 + sigma_t^2) / sqrt(alpha_T^2 STD^2 + sigma_T^2) (x_T - alpha_T MU)

(per coordinate, model space). So a deterministic sampler's error to ``x(0) = MU + STD / r_T (x_T -
alpha_T MU)`` is its own discretisation error, whose log-log slope against the step count is its
order. The grids end at a tiny level (sigma_min = 1e-4 on EDM) so that the last jump to clean data,
which no sampler refines, costs far less than the errors measured (``(1e-4 / 0.5)^2 = 4e-8``).

Families (``FAMILIES``): discrete VP, continuous VP (cosine), VE, EDM and rectified flow with SD3's
shift 3, each as scheduler options.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

import samplers
from samplers import parameterization

F64 = torch.float64
MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=F64)
STD = torch.tensor([0.5, 0.6, 1.0, 0.7], dtype=F64)

FAMILIES: dict[str, dict[str, Any]] = {
    "discrete_vp": {"schedule": "discrete"},
    "continuous_vp": {"schedule": "vp_cosine"},
    "ve": {"schedule": "ve", "schedule_kwargs": {"sigma_min": 0.01, "sigma_max": 50.0}},
    "edm": {"schedule": "edm", "schedule_kwargs": {"sigma_min": 1e-4, "sigma_max": 80.0}},
    "flow_shift3": {"schedule": "flow", "sigma_schedule": "flow", "sigma_schedule_kwargs": {"shift": 3.0}},
}
# The order test's grid: EDM/Karras down to a tiny level (see the module docstring).
ORDER_FAMILY = {"schedule": "edm", "schedule_kwargs": {"sigma_min": 1e-4, "sigma_max": 80.0}}
ORDER_STEPS = (8, 16, 32, 64)


def exact_output(scheduler: samplers.Scheduler, call: int, x_in: torch.Tensor) -> torch.Tensor:
    """The exact network output for call ``call`` (the model sees ``x_in``) in the scheduler's prediction type."""
    plan = scheduler.plan
    alpha, sigma = float(plan.model_alpha[call]), float(plan.model_sigma[call])
    var = alpha * alpha * STD * STD + sigma * sigma
    centred = x_in.to(F64) - alpha * MU
    x0 = MU + alpha * STD * STD / var * centred
    eps = sigma / var * centred  # (x - alpha x0) / sigma in closed form: finite at sigma = 0 (clean data)
    return parameterization.training_target(scheduler.prediction_type, x0, eps, alpha, sigma)


def exact_endpoint(scheduler: samplers.Scheduler, x_start: torch.Tensor) -> torch.Tensor:
    """``x(0)`` of the probability-flow ODE from the sampler's start ``x_start`` (its working space)."""
    plan = scheduler.plan
    scale, alpha, sigma = float(plan.input_scale[0]), float(plan.model_alpha[0]), float(plan.model_sigma[0])
    x_model = x_start.to(F64) * scale
    radius = torch.sqrt(alpha * alpha * STD * STD + sigma * sigma)
    return MU + STD / radius * (x_model - alpha * MU)


def run(
    scheduler: samplers.Scheduler,
    z: torch.Tensor,
    *,
    seeds: torch.Tensor | None = None,
    backend: str = "torch",
    dtype: torch.dtype = F64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the planned chain from ``z * init_noise_sigma``; returns ``(final sample, exact ODE endpoint)``."""
    x = (z * scheduler.init_noise_sigma).to(dtype)
    start = x.clone()
    state = scheduler.init_state()
    seeds = seeds if seeds is not None else samplers.ops.batch_seeds(1234, z.shape[0])
    for i, t in enumerate(scheduler.timesteps):
        x_in = x * float(scheduler.plan.input_scale[i])  # what scale_model_input gives
        out = exact_output(scheduler, i, x_in).to(dtype)
        result, state = scheduler.step_functional(state, out, t, x, seeds=seeds, backend=backend)
        x = result.prev_sample
    return x.to(F64), exact_endpoint(scheduler, start)


def ode_errors(name: str, config: Mapping[str, Any], steps: tuple[int, ...] = ORDER_STEPS, family=None) -> list[float]:
    """RMS error to the exact ODE endpoint at each step count (same start noise for all)."""
    z = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    errors = []
    for n in steps:
        s = samplers.get(name, **{**(family or ORDER_FAMILY), **config})
        s.set_timesteps(n)
        x, exact = run(s, z)
        errors.append(float((x - exact).pow(2).mean().sqrt()))
    return errors


def fitted_order(errors: list[float], steps: tuple[int, ...] = ORDER_STEPS, nfe_per_step: float = 1.0) -> float:
    """The log-log slope of error against step count (the method's empirical order)."""
    return float(-np.polyfit(np.log(np.asarray(steps) * nfe_per_step), np.log(errors), 1)[0])


def assert_order(
    name: str,
    config: Mapping[str, Any],
    order: float,
    *,
    tolerance: float = 0.35,
    steps: tuple[int, ...] = ORDER_STEPS,
    family: Mapping[str, Any] | None = None,
) -> float:
    """The fitted order is within ``tolerance`` of ``order`` and the error falls at every doubling."""
    errors = ode_errors(name, config, steps, family)
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), (
        f"{name} {config}: errors must shrink: {errors}"
    )
    slope = fitted_order(errors, steps)
    assert abs(slope - order) <= tolerance, f"{name} {config}: fitted order {slope:.3f}, expected {order}; {errors}"
    return slope


def moments_error(name: str, config: Mapping[str, Any], steps: int, n: int = 4096, family=None, seed: int = 0):
    """``(max |mean - MU| / se, max |var / STD^2 - 1| / se_var)`` of a stochastic sampler's final samples.

    Standard errors of n exact samples; a sampler inside the noise floor gives values of order 1.
    """
    s = samplers.get(name, **{**(family or FAMILIES["edm"]), **config})
    s.set_timesteps(steps)
    z = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)
    x, _ = run(s, z, seeds=samplers.ops.batch_seeds(seed + 1, n))
    mean_z = ((x.mean(0) - MU).abs() / (STD / math.sqrt(n))).max()
    var_z = ((x.var(0) / STD**2 - 1).abs() / math.sqrt(2 / (n - 1))).max()
    return float(mean_z), float(var_z)


def prediction_types_for(family: str) -> tuple[str, ...]:
    """Prediction types a model can have on a family (every one; some cannot be read where alpha = 0)."""
    return parameterization.PREDICTION_TYPES


def family_error(name: str, config: Mapping[str, Any], family: str, prediction_type: str, steps: int = 40) -> float:
    """RMS error to the exact endpoint of a run on one family with one prediction type (deterministic
    samplers); for stochastic ones, the distance of the sample mean from MU in standard errors."""
    options = {**FAMILIES[family], "prediction_type": prediction_type, **config}
    s = samplers.get(name, **options)
    s.set_timesteps(steps)
    z = torch.randn(2048, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    x, exact = run(s, z)
    assert bool(torch.isfinite(x).all()), f"{name} on {family} with {prediction_type}: non-finite samples"
    if not s.is_stochastic:
        return float((x - exact).pow(2).mean().sqrt())
    return float(((x.mean(0) - MU).abs() / (STD / math.sqrt(len(x)))).max())
