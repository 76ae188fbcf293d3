"""EDM DPM-Solver++ (samplers.schedulers.edm_dpmsolver): EDM's levels and preconditioning, convergence order (plain
and preconditioned), every prediction type on every family, the SDE form, the kit, and parity with diffusers'
EDMDPMSolverMultistepScheduler (50-step loops, max relative difference <= 1e-5, same noise)."""

from __future__ import annotations

import math

import pytest
import torch
from dpm_references import TOL, edm_model, relative_error, run_loop, start_and_noise

import samplers
from samplers.ops.reference import COEFF
from samplers.schedulers.edm_dpmsolver import edm_preconditioning
from samplers.testing import CHECKS, KitSettings, assert_conforms

import battery

F64 = torch.float64
# bfloat16 with an epsilon model at sigma = 80 in the kit's 4-step runs: the x0 read from a bf16 eps carries 80
# times its rounding, and 2M's extrapolation over 4 steps keeps it (dpmpp_2m on schedule="edm" alike); the
# kit's default 6 steps (`samplers check`) pass, so the quick settings here use 6 too.
QUICK = KitSettings.quick(backend="torch", shape_steps=6)


def test_preconditioning_is_karras_table_1():
    c_skip, c_out, c_in, c_noise = edm_preconditioning(2.0, 0.5)
    assert c_skip == pytest.approx(0.25 / 4.25) and c_out == pytest.approx(1.0 / math.sqrt(4.25))
    assert c_in == pytest.approx(1 / math.sqrt(4.25)) and c_noise == pytest.approx(math.log(2.0) / 4)
    # D = c_skip x + c_out F is exact for F = (x0 - c_skip x) / c_out: the skip and output scalings are consistent
    assert c_skip + c_out * (1 - c_skip) / c_out == pytest.approx(1.0)


def test_grid_timesteps_and_initial_sigma():
    s = samplers.get("edm_dpmpp_2m", edm_preconditioning=True, sigma_min=0.01, sigma_max=20.0, rho=5.0)
    s.set_timesteps(8)
    levels = s.plan.model_sigma / s.plan.model_alpha
    ramp = levels ** (1 / 5.0)
    assert float(levels[0]) == pytest.approx(20.0) and float(levels[-1]) == pytest.approx(0.01)
    torch.testing.assert_close(ramp[1:] - ramp[:-1], (ramp[1:] - ramp[:-1]).mean().expand(7), rtol=1e-9, atol=0)
    torch.testing.assert_close(s.timesteps.to(F64), (levels.log() / 4), rtol=1e-6, atol=1e-7)  # c_noise
    assert s.init_noise_sigma == pytest.approx(math.sqrt(20.0**2 + 1))  # diffusers' EDM value
    torch.testing.assert_close(s.plan.input_scale, 1 / torch.sqrt(levels**2 + 0.25), rtol=1e-12, atol=0)
    c_skip = 0.25 / (levels**2 + 0.25)
    torch.testing.assert_close(s.plan.rows[:, COEFF["p"]], c_skip, rtol=1e-12, atol=0)
    plain = samplers.get("edm_dpmpp_2m")
    plain.set_timesteps(8)
    assert plain.init_noise_sigma == pytest.approx(80.0) and bool((plain.plan.input_scale == 1).all())


def test_final_sigma_min_makes_the_last_call_a_no_op():
    s = samplers.get("edm_dpmpp_2m", final_sigmas_type="sigma_min")
    s.set_timesteps(10)
    last = s.plan.rows[-1]
    # the grid's last Karras level and the final level are both sigma_min (to float64 rounding)
    assert float(last[COEFF["a"]]) == pytest.approx(1.0, abs=1e-12) and abs(float(last[COEFF["b"]])) < 1e-12


# ---- order, families, moments -----------------------------------------------------------------------


def test_convergence_order():
    battery.assert_order("edm_dpmpp_2m", {"sigma_min": 1e-4}, 2, steps=(16, 32, 64, 128))


def test_convergence_order_flow_shift3():
    battery.assert_order(
        "edm_dpmpp_2m", {"prediction_type": "flow"}, 2, steps=(16, 32, 64, 128), family=battery.FAMILIES["flow_shift3"]
    )


def _preconditioned_error(steps: int, prediction_type: str) -> float:
    """RMS error to the exact ODE endpoint of a run with the exact EDM-preconditioned network of battery's data."""
    s = samplers.get("edm_dpmpp_2m", edm_preconditioning=True, prediction_type=prediction_type, sigma_min=1e-3)
    s.set_timesteps(steps)
    sign = 1.0 if prediction_type == "epsilon" else -1.0
    z = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = z * 80.0  # start at sigma_max (the oracle's ODE is exact from there; init_noise_sigma's +1 aside)
    start = x.clone()
    state = s.init_state()
    for i, t in enumerate(s.timesteps):
        sigma = float(s.plan.model_sigma[i] / s.plan.model_alpha[i])
        x0 = battery.MU + battery.STD**2 / (battery.STD**2 + sigma**2) * (x - battery.MU)
        c_skip, c_out, _, _ = edm_preconditioning(sigma, 0.5)
        out = sign * (x0 - c_skip * x) / c_out
        result, state = s.step_functional(state, out, t, x, backend="torch")
        x = result.prev_sample
    exact = battery.MU + battery.STD / torch.sqrt(battery.STD**2 + 80.0**2) * (start - battery.MU)
    return float((x - exact).pow(2).mean().sqrt())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_preconditioned_network_converges(prediction_type):
    steps = (16, 32, 64, 128)
    errors = [_preconditioned_error(n, prediction_type) for n in steps]
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert abs(battery.fitted_order(errors, steps) - 2) < 0.35, errors


@pytest.mark.parametrize("family", list(battery.FAMILIES))
def test_every_prediction_type_on_every_family(family):
    results = {}
    for kind in battery.prediction_types_for(family):
        try:
            results[kind] = battery.family_error("edm_dpmpp_2m", {}, family, kind)
        except ValueError as exc:
            assert family == "flow_shift3" and kind in ("epsilon", "score"), exc
            assert f"prediction_type={kind!r}" in str(exc)
    values = list(results.values())
    assert max(values) - min(values) <= 1e-5 * max(1.0, max(values)), results
    assert max(values) < 0.05, results


def test_sde_moments_at_high_nfe():
    mean_z, var_z = battery.moments_error("edm_dpmpp_2m", {"algorithm_type": "sde-dpmsolver++"}, 100)
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


# ---- kit and configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"algorithm_type": "sde-dpmsolver++"},
        {"solver_order": 3, "schedule": "ve", "prediction_type": "v_prediction"},
    ],
)
def test_conforms(config):
    assert_conforms("edm_dpmpp_2m", settings=QUICK, **config)


def test_conforms_preconditioned():
    """The kit's oracle answers in the standard prediction types, not EDM's F: accuracy and marginals are checked
    against the preconditioned oracle above instead."""
    checks = [c for c in CHECKS if c not in ("accuracy", "marginals")]
    assert_conforms("edm_dpmpp_2m", settings=QUICK, checks=checks, edm_preconditioning=True)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"algorithm_type": "dpmsolver"}, "algorithm_type"),
        ({"sigma_min": 5.0, "sigma_max": 1.0}, "sigma_min"),
        ({"sigma_data": 0.0}, "sigma_data"),
        ({"edm_preconditioning": True, "prediction_type": "sample"}, "F"),
        ({"edm_preconditioning": True, "schedule": "discrete"}, "EDM schedule"),
    ],
)
def test_bad_config_is_a_clear_error(config, match):
    with pytest.raises(ValueError, match=match):
        samplers.get("edm_dpmpp_2m", **config)


# ---- parity with diffusers --------------------------------------------------------------------------

diffusers = pytest.importorskip("diffusers")
edm_module = pytest.importorskip("diffusers.schedulers.scheduling_edm_dpmsolver_multistep")

CASES = {
    "2m": {},
    "3m": {"solver_order": 3},
    "heun": {"solver_type": "heun"},
    "v": {"prediction_type": "v_prediction"},
    "exponential": {"sigma_schedule": "exponential"},
    "sigma-min": {"final_sigmas_type": "sigma_min"},
    "range-rho": {"rho": 5.0, "sigma_min": 0.01, "sigma_max": 20.0},
    "3m-full-euler-final": {"solver_order": 3, "lower_order_final": False, "euler_at_final": True},
    "threshold": {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.2},
    "sde": {"algorithm_type": "sde-dpmsolver++"},
    "sde-heun-sigma-data-1": {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "sigma_data": 1.0},
}


@pytest.mark.parametrize("steps", [50, 10])
@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_diffusers(case, steps, monkeypatch):
    from samplers.integrations.diffusers import from_diffusers

    config = CASES[case]
    reference = diffusers.EDMDPMSolverMultistepScheduler(**config)
    model = edm_model(config.get("prediction_type", "epsilon"), config.get("sigma_data", 0.5))
    x, noise = start_and_noise(steps)
    it = iter(noise)
    monkeypatch.setattr(
        edm_module, "randn_tensor", lambda shape, generator=None, device=None, dtype=None, **_: next(it).to(dtype)
    )
    expected = run_loop(reference, model, x, steps)
    ours = from_diffusers(reference)
    assert type(ours).__name__ == "EDMDPMSolverMultistepScheduler" and ours.config.edm_preconditioning
    got = run_loop(
        ours, model, x, steps, noise=noise if ours.is_stochastic else None, step_kwargs={"backend": "torch"}
    )
    assert relative_error(got, expected) <= TOL


def test_mapping_both_ways():
    from samplers.integrations.diffusers import UnsupportedConfigError, from_diffusers, to_diffusers

    with pytest.raises(UnsupportedConfigError, match="UnboundLocalError"):
        from_diffusers(diffusers.EDMDPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=3))
    ours = samplers.get("edm_dpmpp_2m", edm_preconditioning=True, solver_order=3, sigma_schedule="exponential")
    native = to_diffusers(ours, native=True)
    assert type(native).__name__ == "EDMDPMSolverMultistepScheduler" and native.config.solver_order == 3
    back = from_diffusers(native)
    for s in (ours, back):
        s.set_timesteps(9)
    torch.testing.assert_close(back.plan.rows, ours.plan.rows, rtol=0, atol=0)
    with pytest.raises(UnsupportedConfigError, match="edm_preconditioning"):
        to_diffusers(samplers.get("edm_dpmpp_2m"), native=True)  # a plain-output model: no diffusers class for it
