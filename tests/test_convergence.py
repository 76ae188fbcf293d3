"""Convergence order of the ODE solvers against the exact probability-flow ODE solution.

Data ``N(mu, diag(s^2))`` on the EDM schedule (alpha = 1, sigma = t): the exact denoiser is
``D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)`` and the PF-ODE ``dx/dsigma = (x - D) / sigma``
has the solution ``x(sigma) = mu + sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2) (x_T - mu)`` per
coordinate. Every solver's last step jumps from ``sigma_min`` to 0 by returning ``D(x, sigma_min)``;
that jump is not part of the ODE discretisation and its error does not shrink with the step count, so
the reference applies the same jump to the exact ``x(sigma_min)``. The fitted log-log slope of the
RMS error against the number of steps is the order: DDIM(eta=0) and Euler 1, Heun 2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import samplers

F64 = torch.float64
MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=F64)
STD = torch.tensor([0.5, 0.2, 1.0, 0.7], dtype=F64)
STEPS = (8, 16, 32, 64)


def _exact_solution(x_t: torch.Tensor, sigma_t: float, sigma: float) -> torch.Tensor:
    return MU + torch.sqrt(STD**2 + sigma**2) / torch.sqrt(STD**2 + sigma_t**2) * (x_t - MU)


def _denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return MU + STD**2 / (STD**2 + sigma**2) * (x - MU)


def _errors(name: str, oracle, **config) -> list[float]:
    z = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    errors = []
    for steps in STEPS:
        s = samplers.get(name, schedule="edm", **config)
        s.set_timesteps(steps)
        levels = s.plan.model_sigma / s.plan.model_alpha
        sigma_max, sigma_min = float(levels[0]), float(levels[-1])
        assert sigma_max == pytest.approx(80.0) and sigma_min == pytest.approx(0.002)
        x_t = sigma_max * z  # the same start for every solver and step count
        x = oracle.run(s, x_t, MU, STD)
        reference = _denoise(_exact_solution(x_t, sigma_max, sigma_min), sigma_min)
        errors.append(float((x - reference).pow(2).mean().sqrt()))
    return errors


def _slope(errors: list[float]) -> float:
    return float(-np.polyfit(np.log(STEPS), np.log(errors), 1)[0])


@pytest.mark.parametrize(
    "name,config,low,high",
    [
        ("ddim", {"clip_sample": False}, 0.8, 1.3),
        ("euler", {}, 0.8, 1.3),
        ("heun", {}, 1.7, 2.5),
    ],
)
def test_ode_solvers_converge_at_their_order(name, config, low, high, oracle):
    errors = _errors(name, oracle, **config)
    shrinking = all(b < a for a, b in zip(errors, errors[1:], strict=False))
    assert shrinking, f"{name} errors must shrink with more steps: {errors}"
    slope = _slope(errors)
    assert low <= slope <= high, f"{name}: fitted order {slope:.3f} outside [{low}, {high}]; errors {errors}"


def test_ddim_eta0_and_euler_coincide_on_a_ve_schedule(oracle):
    """On alpha = 1 the deterministic DDIM step is exactly the Euler step in sigma (same grid, same errors)."""
    assert _errors("ddim", oracle, clip_sample=False) == pytest.approx(_errors("euler", oracle), rel=1e-5)


def test_exact_solution_is_the_ode_flow():
    """The closed form solves dx/dsigma = (x - D(x, sigma)) / sigma (central differences)."""
    x_t = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=F64) * 80
    for sigma in (0.01, 0.5, 3.0, 40.0):
        h = 1e-5 * sigma
        x = _exact_solution(x_t, 80.0, sigma)
        dx = (_exact_solution(x_t, 80.0, sigma + h) - _exact_solution(x_t, 80.0, sigma - h)) / (2 * h)
        torch.testing.assert_close(dx, (x - _denoise(x, sigma)) / sigma, rtol=1e-6, atol=1e-8)
