"""DPM-Solver(++) inversion (samplers.schedulers.dpmsolver_inverse): the ascending grid, inversion order on the exact
oracle, inverting then sampling reconstructs the sample, every prediction type on every family, the kit, and
parity with diffusers' DPMSolverMultistepInverseScheduler (50-step loops, relative difference <= 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dpm_references import TOL, gaussian_model, relative_error, run_loop, start_and_noise, table_space

import samplers
from samplers.ops.reference import COEFF
from samplers.testing import KitSettings, assert_conforms

import battery

F64 = torch.float64
QUICK = KitSettings.quick(backend="torch")


def _drive(s, x: torch.Tensor) -> torch.Tensor:
    """A whole planned run with the exact Gaussian model of battery's data (model space)."""
    state = s.init_state()
    for i, t in enumerate(s.timesteps):
        out = battery.exact_output(s, i, x * float(s.plan.input_scale[i]))
        result, state = s.step_functional(state, out, t, x, backend="torch")
        x = result.prev_sample
    return x


def _ode_map(x: torch.Tensor, start: tuple[float, float], end: tuple[float, float]) -> torch.Tensor:
    """The exact probability-flow ODE map of Gaussian data between two model-space levels (either direction)."""
    (a0, s0), (a1, s1) = start, end
    r0 = torch.sqrt(a0 * a0 * battery.STD**2 + s0 * s0)
    r1 = torch.sqrt(a1 * a1 * battery.STD**2 + s1 * s1)
    return a1 * battery.MU + r1 / r0 * (x - a0 * battery.MU)


def _inversion_errors(config: dict, steps, family: dict) -> list[float]:
    """Error of the inverted latent against the exact ODE map, relative to the end level's sigma."""
    data = battery.MU + battery.STD * torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    errors = []
    for n in steps:
        s = samplers.get("dpmpp_2m_inverse", **family, **config)
        s.set_timesteps(n)
        levels = s.plan.extras["levels"]
        first, end = (
            (float(levels.alpha[0]), float(levels.sigma[0])),
            (float(levels.alpha[-1]), float(levels.sigma[-1])),
        )
        x = _ode_map(data, (1.0, 0.0), first)  # the data at the first (least noisy) level
        z = _drive(s, x)
        errors.append(float((z - _ode_map(x, first, end)).pow(2).mean().sqrt()) / end[1])
    return errors


def test_grid_ascends_from_the_data_to_the_noisiest_level():
    """diffusers' layout: n + 1 points from t = 0 to the noisiest timestep, the model called at the first n; the
    first sample is the clean one, unscaled (init_noise_sigma = 1); the run ends at the noisiest level."""
    s = samplers.get("dpmpp_2m_inverse")
    s.set_timesteps(10)
    assert s.timesteps.tolist() == np.linspace(0, 999, 11).round()[:-1].astype(int).tolist()
    assert s.init_noise_sigma == 1.0
    assert s.plan.extras["end_alpha_sigma"] == pytest.approx(
        (float(s.alphas_cumprod[999].sqrt()), float((1 - s.alphas_cumprod[999]).sqrt()))
    )
    levels = s.sigmas.to(F64)
    assert bool((levels[1:] > levels[:-1]).all()) and len(levels) == 11
    karras = samplers.get("dpmpp_2m_inverse", use_karras_sigmas=True)
    karras.set_timesteps(10)  # diffusers: 10 Karras levels ascending, the last repeated as the end (a no-op call)
    assert float(karras.sigmas[-1]) == float(karras.sigmas[-2])
    last = karras.plan.rows[-1]
    assert float(last[COEFF["a"]]) == 1.0 and float(last[COEFF["b"]]) == 0.0 and karras.plan.use[-1] == ()


@pytest.mark.parametrize(
    "config, order",
    [({"solver_order": 1}, 1), ({}, 2), ({"solver_order": 3}, 2), ({"algorithm_type": "dpmsolver"}, 2)],
)
def test_inversion_order(config, order):
    """On EDM (log-SNR-uniform levels from 1e-4 to 80): the inverted latent converges to the exact ODE map at the
    solver's order (3M's as published is 2, see test_dpmsolver.py)."""
    steps = (16, 32, 64, 128)
    errors = _inversion_errors(config, steps, battery.FAMILIES["edm"])
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert abs(battery.fitted_order(errors, steps) - order) < 0.35, errors


def test_inversion_on_flow_shift3():
    """Up to a flow's t = 1 (alpha = 0: the last step is x = sigma eps_hat); the last steps' log-SNR lengths shrink
    only slowly there, so the fitted order is 1.6 rather than 2 over 16-128 steps."""
    steps = (16, 32, 64, 128)
    errors = _inversion_errors({"prediction_type": "flow"}, steps, battery.FAMILIES["flow_shift3"])
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert 1.4 < battery.fitted_order(errors, steps) < 2.35, errors


@pytest.mark.parametrize("family", list(battery.FAMILIES))
def test_every_prediction_type_on_every_family(family):
    """The calls never sit at alpha = 0 (a flow run only ends there), so every prediction type reads everywhere."""
    config = battery.FAMILIES[family]
    errors = {
        kind: _inversion_errors({"prediction_type": kind}, (40,), config)[0]
        for kind in battery.prediction_types_for(family)
    }
    values = list(errors.values())
    assert max(values) - min(values) <= 1e-4 * max(values) and max(values) < 0.05, errors


@pytest.mark.parametrize("config", [{}, {"solver_order": 3}, {"algorithm_type": "dpmsolver"}])
def test_invert_then_sample_reconstructs(config):
    """Invert a sample to the noisiest level with the exact model, then sample back with DPM-Solver++(2M) ending at
    the first level (final_sigmas_type="sigma_min"): the round trip returns the sample, closer as steps grow."""
    data = battery.MU + battery.STD * torch.randn(512, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    errors = []
    for n in (20, 40, 80):
        inverse = samplers.get("dpmpp_2m_inverse", **config)
        inverse.set_timesteps(n)
        levels = inverse.plan.extras["levels"]
        x = _ode_map(data, (1.0, 0.0), (float(levels.alpha[0]), float(levels.sigma[0])))
        latent = _drive(inverse, x)
        forward = samplers.get("dpmpp_2m", final_sigmas_type="sigma_min")
        forward.set_timesteps(n)
        errors.append(float((_drive(forward, latent) - x).pow(2).mean().sqrt()))
    assert errors[2] < errors[1] / 2.5 < errors[0] / 6, errors
    assert errors[2] < 0.01


@pytest.mark.parametrize(
    "config",
    [{}, {"solver_order": 3, "prediction_type": "v_prediction"}, {"schedule": "edm", "use_karras_sigmas": False}],
)
def test_conforms(config):
    assert_conforms("dpmpp_2m_inverse", settings=QUICK, **config)


@pytest.mark.parametrize(
    "config, match",
    [({"algorithm_type": "sde-dpmsolver++"}, "cannot be inverted"), ({"solver_order": 5}, "solver_order")],
)
def test_bad_config_is_a_clear_error(config, match):
    with pytest.raises(ValueError, match=match):
        samplers.get("dpmpp_2m_inverse", **config)


def test_custom_grids_are_refused():
    s = samplers.get("dpmpp_2m_inverse")
    with pytest.raises(ValueError, match="step count only"):
        s.set_timesteps(sigmas=[10.0, 1.0])


# ---- parity with diffusers --------------------------------------------------------------------------

diffusers = pytest.importorskip("diffusers")

CASES = {
    "2m": {},
    "3m": {"solver_order": 3},
    "1": {"solver_order": 1},
    "heun": {"solver_type": "heun"},
    "leading": {"timestep_spacing": "leading", "steps_offset": 1},
    "trailing": {"timestep_spacing": "trailing"},
    "v": {"prediction_type": "v_prediction"},
    "sample-full-order": {"prediction_type": "sample", "lower_order_final": False},
    "karras": {"use_karras_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "eps": {"algorithm_type": "dpmsolver"},
    "eps-3": {"algorithm_type": "dpmsolver", "solver_order": 3},
    "euler-final": {"euler_at_final": True},
    "cosine": {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1},
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_diffusers(case):
    """(use_exponential_sigmas is not compared: diffusers' inverse scheduler truncates its first two timesteps to
    the same integer, starts at the second and runs past its sigmas.)"""
    from samplers.integrations.diffusers import from_diffusers

    config = CASES[case]
    reference = diffusers.DPMSolverMultistepInverseScheduler(**config)
    model = gaussian_model(table_space(reference.alphas_cumprod.to(F64)), config.get("prediction_type", "epsilon"))
    x = start_and_noise(0)[0] * 0.3  # clean-ish latents
    expected = run_loop(reference, model, x, 50)
    ours = from_diffusers(reference)
    assert type(ours).__name__ == "DPMSolverMultistepInverseScheduler"
    got = run_loop(ours, model, x, 50, step_kwargs={"backend": "torch"})
    assert torch.equal(ours.timesteps.to(torch.int64), reference.timesteps)
    assert relative_error(got, expected) <= TOL


def test_mapping_refusals_and_round_trip():
    from samplers.integrations.diffusers import UnsupportedConfigError, from_diffusers, to_diffusers

    for config, match in (
        ({"algorithm_type": "sde-dpmsolver++"}, "SDE cannot be run backwards"),
        ({"use_flow_sigmas": True}, "descending"),
    ):
        with pytest.raises(UnsupportedConfigError, match=match):
            from_diffusers(diffusers.DPMSolverMultistepInverseScheduler(**config))
    ours = samplers.get("dpmpp_2m_inverse", solver_order=3, use_karras_sigmas=True)
    native = to_diffusers(ours, native=True)
    assert type(native).__name__ == "DPMSolverMultistepInverseScheduler" and native.config.solver_order == 3
    back = from_diffusers(native)
    back.set_timesteps(12)
    ours.set_timesteps(12)
    torch.testing.assert_close(back.plan.rows, ours.plan.rows, rtol=0, atol=0)
