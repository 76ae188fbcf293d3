"""SA-Solver (samplers.schedulers.sa_solver): diffusers parity with the same noise, moments, ODE order, check."""

from __future__ import annotations

import pytest
import torch
from diffusers_loop import parity

import samplers
from samplers import parameterization
from samplers.ops.reference import COEFF
from samplers.testing import KitSettings, assert_conforms

import battery

diffusers = pytest.importorskip("diffusers")
from samplers.integrations.diffusers import UnsupportedConfigError, from_diffusers  # noqa: E402

BOUND = 1e-5
NOISE = "scheduling_sasolver"  # the module whose randn_tensor the reference draws with
LOW_START = {"schedule": "edm", "schedule_kwargs": {"sigma_min": 1e-4, "sigma_max": 1.0}}

CASES = {
    **{f"orders{p}{c}": {"predictor_order": p, "corrector_order": c} for p, c in ((1, 1), (2, 2), (1, 3), (3, 2))},
    "noise-prediction": {"algorithm_type": "noise_prediction"},
    "flow-shift3": {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"},
    "v-trailing": {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    "sample-leading": {"prediction_type": "sample", "timestep_spacing": "leading", "steps_offset": 1},
    "thresholding": {"prediction_type": "sample", "thresholding": True, "dynamic_thresholding_ratio": 0.9,
                     "sample_max_value": 1.5},
    "cosine-clipped": {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1},
}  # fmt: skip
# third and fourth orders: diffusers' float32 coefficients drift 1.4e-5 to 5e-5 at 50 steps (float64: < 2e-6);
# the Karras and beta grids span the float32 table's ends, 8e-5 off at t = 0 (8e-6 and 5.8e-5 against the stock
# reference)
HARNESS_CASES = {
    "karras": {"use_karras_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    **{f"orders{p}{c}": {"predictor_order": p, "corrector_order": c} for p, c in ((3, 3), (4, 4), (2, 4), (4, 1))},
    "noise-prediction-33": {"algorithm_type": "noise_prediction", "predictor_order": 3, "corrector_order": 3},
    "exponential-33": {"use_exponential_sigmas": True, "predictor_order": 3, "corrector_order": 3},
    "not-lower_order_final-34": {"lower_order_final": False, "predictor_order": 3, "corrector_order": 4},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_diffusers(case: str) -> None:
    """50 steps, the reference's own noise replayed per call (ours) or drawn from the same generator (the
    wrapper, which draws on every call as diffusers does): within 1e-5 of the stock reference."""
    result = parity("SASolverScheduler", CASES[case], noise_module=NOISE)
    assert result["native"] <= BOUND and result["wrapper"] <= BOUND, result


@pytest.mark.parametrize("case", sorted(HARNESS_CASES))
def test_parity_with_diffusers_float64_harness(case: str) -> None:
    """Higher orders against the reference with float64 sigmas and table (tests/diffusers_loop.py)."""
    result = parity("SASolverScheduler", HARNESS_CASES[case], noise_module=NOISE, float64=True)
    assert result["native"] <= BOUND and result["wrapper"] <= BOUND, result


def test_mapping() -> None:
    ours = from_diffusers(diffusers.SASolverScheduler(predictor_order=3, corrector_order=4))
    assert (ours.config.final_sigmas_type, ours.config.tau, ours.config.tau_interval) == ("sigma_min", 1.0, None)
    with pytest.raises(UnsupportedConfigError, match="tau_func"):
        from_diffusers(diffusers.SASolverScheduler(tau_func=lambda t: 0.5))
    with pytest.raises(UnsupportedConfigError, match="variance_type"):
        from_diffusers(diffusers.SASolverScheduler(variance_type="learned_range"))
    with pytest.raises(UnsupportedConfigError, match="thresholding"):
        from_diffusers(
            {"_class_name": "SASolverScheduler", "algorithm_type": "noise_prediction", "thresholding": True}
        )


def test_bad_options_raise_naming_them() -> None:
    for key, value in (("predictor_order", 5), ("corrector_order", 0), ("algorithm_type", "sde"), ("tau", -1.0)):
        with pytest.raises(ValueError, match=key):
            samplers.get("sa_solver", **{key: value})
    with pytest.raises(ValueError, match="tau_interval"):
        samplers.get("sa_solver", tau_interval=[1.0])
    with pytest.raises(ValueError, match="data_prediction"):
        samplers.get("sa_solver", algorithm_type="noise_prediction", thresholding=True)
    s = samplers.get("sa_solver", algorithm_type="noise_prediction", schedule="flow", prediction_type="flow")
    with pytest.raises(ValueError, match="alpha = 0"):
        s.set_timesteps(10)  # the noise-prediction SDE has no step out of pure noise


# ---- rows and noise --------------------------------------------------------------------------------------


def test_tau_window_and_one_noise_per_call() -> None:
    """diffusers' tau_func: noise on the calls at timesteps 200..800 only; the corrector reuses the predictor's
    noise, which cancels in the fold, so each call's row carries exactly its own step's noise."""
    s = samplers.get("sa_solver")
    s.set_timesteps(20)
    t = s.plan.timesteps
    noisy = torch.tensor(s.plan.stochastic_calls)
    assert torch.equal(noisy, (t >= 200) & (t <= 800))
    # tau = 0: the ODE; interval None on a continuous schedule: noise on every call but the last (into clean data)
    assert not samplers.get("sa_solver", tau=0.0).is_stochastic
    e = samplers.get("sa_solver", schedule="edm")
    e.set_timesteps(10)
    assert e.plan.stochastic_calls == [True] * 9 + [False]
    assert all(iv is not None for iv in e.plan.noise_intervals[:9])
    assert float(e.plan.rows[-1, COEFF["c"]]) == 0.0


def test_brownian_mode_runs() -> None:
    s = samplers.get("sa_solver", schedule="edm", noise="brownian")
    s.set_timesteps(6)
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, _ = battery.run(s, z)
    assert bool(torch.isfinite(x).all())


# ---- the output distribution (the SDE) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [{}, {"predictor_order": 3, "corrector_order": 3}, {"algorithm_type": "noise_prediction"}, {"tau": 0.5}],
)
def test_moments_inside_the_noise_floor(config: dict) -> None:
    """tau = 1 everywhere on the EDM family, 100 steps, 2048 samples: mean and variance within 4 standard errors
    (measured 0.8-1.3 and 1.5-2.3)."""
    mean_z, var_z = battery.moments_error("sa_solver", config, 100, n=2048)
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


def test_moments_on_flow_shift3() -> None:
    """On the flow family the second-order correction term (O(h^3) only for small h) meets log-SNR steps of ~6
    at both ends of the grid, so the variance converges late: 114, 9.8 and 2.5 standard errors at 60, 120 and
    240 steps."""
    mean_z, var_z = battery.moments_error(
        "sa_solver", {"prediction_type": "flow"}, 240, n=2048, family=battery.FAMILIES["flow_shift3"]
    )
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


@pytest.mark.parametrize("family", sorted(battery.FAMILIES))
@pytest.mark.parametrize("prediction_type", parameterization.PREDICTION_TYPES)
def test_every_prediction_type_and_family(family: str, prediction_type: str) -> None:
    """40 steps of the SDE (tau = 1 where the schedule has no training timesteps): the sample mean within 4.5
    standard errors (measured 1.1-2.4); epsilon and score cannot be read at a flow schedule's t = 1."""
    if family == "flow_shift3" and prediction_type in ("epsilon", "score"):
        with pytest.raises(ValueError, match=f"prediction_type='{prediction_type}'"):
            battery.family_error("sa_solver", {}, family, prediction_type)
        return
    assert battery.family_error("sa_solver", {}, family, prediction_type) < 4.5


# ---- the ODE (tau = 0): order ------------------------------------------------------------------------------


@pytest.mark.parametrize(("orders", "expected"), [((1, 2), 2.0), ((2, 2), 2.0), ((2, 3), 3.0), ((3, 3), 3.0)])
def test_ode_order(orders: tuple[int, int], expected: float) -> None:
    """With tau = 0 the corrector's order is the method's (Adams-Moulton with the new point), up to 3: the first
    corrector has two nodes at most, as in the reference. EDM from sigma = 1, uniform log-SNR steps; (2, 2)
    approaches 2 from above (local slopes 2.7, 2.4, 2.25, 2.14 from 10 to 320 steps in float64)."""
    p, c = orders
    config = {"tau": 0.0, "predictor_order": p, "corrector_order": c}
    battery.assert_order("sa_solver", config, expected, steps=(40, 80, 160), family=LOW_START)


def test_ode_order_on_flow_shift3() -> None:
    """Rectified flow with shift 3 from t = 1: (2, 2) converges at least at its order 2 -- faster over these
    step counts (local slopes 2.6, 2.8, 3.0 from 32 to 256): its h^2 error term is small on this grid."""
    steps = (32, 64, 128)
    config = {"tau": 0.0, "prediction_type": "flow"}
    errors = battery.ode_errors("sa_solver", config, steps, battery.FAMILIES["flow_shift3"])
    assert errors[0] > errors[1] > errors[2], errors
    assert battery.fitted_order(errors, steps) >= 2.0 - 0.35, errors


# ---- the conformance kit ---------------------------------------------------------------------------------


def test_samplers_check() -> None:
    assert_conforms("sa_solver", settings=KitSettings.quick(backend="torch"))


def test_metadata() -> None:
    meta = samplers.registry().scheduler_class("sa_solver").metadata()
    assert (meta["order"], meta["kind"], meta["stochastic"]) == (2, "sde", True)
    assert "Xue" in meta["paper"]
