"""UniPC (samplers.schedulers.unipc): diffusers parity, every prediction type and schedule family, order, check."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers_loop import parity

import samplers
from samplers import parameterization
from samplers.testing import KitSettings, assert_conforms

import battery

diffusers = pytest.importorskip("diffusers")
from samplers.integrations.diffusers import UnsupportedConfigError, from_diffusers  # noqa: E402

BOUND = 1e-5
KARRAS = {
    "schedule": "edm",
    "schedule_kwargs": {"sigma_min": 1e-4, "sigma_max": 80.0},
    "sigma_schedule": "karras",
}
# EDM from sigma = 1: the data already shapes the first step, so the warm-up's error shows (see test_order_warm_up)
LOW_START = {"schedule": "edm", "schedule_kwargs": {"sigma_min": 1e-4, "sigma_max": 1.0}}


# ---- parity with diffusers' UniPCMultistepScheduler ---------------------------------------------------------

CASES = {
    # both solver types, orders 1-3; bh1 with final_sigmas_type="sigma_min" (diffusers' bh1 is NaN at a zero end)
    **{f"bh2-{o}-zero": {"solver_order": o} for o in (1, 2, 3)},
    **{f"bh2-{o}-sigma_min": {"solver_order": o, "final_sigmas_type": "sigma_min"} for o in (1, 2, 3)},
    **{f"bh1-{o}-sigma_min": {"solver_order": o, "solver_type": "bh1", "final_sigmas_type": "sigma_min"}
       for o in (1, 2, 3)},
    "noise-prediction": {"predict_x0": False, "final_sigmas_type": "sigma_min"},
    "noise-prediction-bh1-3": {"predict_x0": False, "final_sigmas_type": "sigma_min", "solver_type": "bh1",
                               "solver_order": 3},
    "disable_corrector": {"solver_order": 3, "disable_corrector": [0, 3, 4, 10]},
    "v-trailing": {"solver_order": 3, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    "sample-leading": {"prediction_type": "sample", "timestep_spacing": "leading", "steps_offset": 1},
    "thresholding": {"prediction_type": "sample", "thresholding": True, "dynamic_thresholding_ratio": 0.9,
                     "sample_max_value": 1.5},
    "sd-betas": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
}  # fmt: skip
HARNESS_CASES = {
    # third order into s_train[0], which diffusers' float32 table puts 8e-5 off: 2.3e-5 against the stock reference
    "not-lower_order_final": {"solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
    "karras": {"use_karras_sigmas": True},
    "karras-3-bh1-sigma_min": {"use_karras_sigmas": True, "solver_order": 3, "solver_type": "bh1",
                               "final_sigmas_type": "sigma_min"},
    "karras-range": {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 10.0, "solver_order": 3},
    "exponential": {"use_exponential_sigmas": True},
    "exponential-3-sigma_min": {"use_exponential_sigmas": True, "solver_order": 3, "final_sigmas_type": "sigma_min"},
    "beta-3": {"use_beta_sigmas": True, "solver_order": 3},
    "flow-shift3": {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"},
    "flow-3-sigma_min": {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction",
                         "solver_order": 3, "final_sigmas_type": "sigma_min"},
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_diffusers(case: str) -> None:
    """50 steps, float32, same model: within 1e-5 of diffusers (stock reference, no harness)."""
    result = parity("UniPCMultistepScheduler", CASES[case])
    assert result["native"] <= BOUND and result["wrapper"] <= BOUND, result


@pytest.mark.parametrize("case", sorted(HARNESS_CASES))
def test_parity_with_diffusers_float64_harness(case: str) -> None:
    """The grid flags (named grids with diffusers' rounded / truncated model times) and a third-order last step:
    within 1e-5 of the reference run on the float64 training table (tests/diffusers_loop.py). Its float32
    table is 8e-5 off at t = 0, where these grids end, which alone moves the stock result by up to 2.3e-5."""
    result = parity("UniPCMultistepScheduler", HARNESS_CASES[case], float64=True)
    assert result["native"] <= BOUND and result["wrapper"] <= BOUND, result


def test_parity_dynamic_flow_shift() -> None:
    config = {"use_flow_sigmas": True, "use_dynamic_shifting": True, "prediction_type": "flow_prediction",
              "shift_terminal": 0.05}  # fmt: skip
    result = parity("UniPCMultistepScheduler", config, set_kwargs={"mu": 1.1})
    assert result["native"] <= BOUND and result["wrapper"] <= BOUND, result


def test_parity_from_begin_index() -> None:
    """img2img: set_begin_index restarts the warm-up (first order, no corrector) as diffusers does."""
    result = parity("UniPCMultistepScheduler", {"solver_order": 3}, begin=12)
    assert result["native"] <= BOUND, result


def test_bh1_into_clean_data_is_finite_where_diffusers_is_nan() -> None:
    """diffusers' bh1 multiplies B(h) = -inf by 0 at a zero final sigma; ours takes the step's limit, x0_hat."""
    ref = diffusers.UniPCMultistepScheduler(solver_type="bh1")
    ours = from_diffusers(ref)
    for s in (ref, ours):
        s.set_timesteps(10)
    x = xr = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    out = torch.full_like(x, 0.1)
    for i, t in enumerate(ref.timesteps):
        last_input = x
        xr, x = ref.step(out, t, xr).prev_sample, ours.step(out, t, x).prev_sample
        if i < 9:
            assert torch.allclose(xr, x, atol=1e-5), i
    assert bool(torch.isnan(xr).all()) and bool(torch.isfinite(x).all())
    alpha, sigma = float(ours.plan.model_alpha[-1]), float(ours.plan.model_sigma[-1])
    assert torch.allclose(x, (last_input - sigma * out) / alpha, atol=1e-5)


# ---- the diffusers mapping ------------------------------------------------------------------------------


def test_mapping_round_trip_and_refusals() -> None:
    ref = diffusers.UniPCMultistepScheduler(solver_order=3, use_karras_sigmas=True, disable_corrector=[2])
    ours = from_diffusers(ref)
    assert type(ours).__name__ == "UniPCMultistepScheduler" and ours.config.solver_order == 3
    from samplers.integrations.diffusers import samplers_config_to_diffusers

    name, config = samplers_config_to_diffusers(ours)
    back = getattr(diffusers, name)(**config)
    assert {k: v for k, v in back.config.items() if not k.startswith("_")} == {
        k: v for k, v in ref.config.items() if not k.startswith("_")
    }
    with pytest.raises(UnsupportedConfigError, match="solver_p"):
        from_diffusers(diffusers.UniPCMultistepScheduler(solver_p=diffusers.DDIMScheduler()))
    with pytest.raises(UnsupportedConfigError, match="use_flow_sigmas"):
        from_diffusers({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True, "use_karras_sigmas": True})
    with pytest.raises(UnsupportedConfigError, match="thresholding"):
        from_diffusers({"_class_name": "UniPCMultistepScheduler", "predict_x0": False, "thresholding": True})
    with pytest.raises(UnsupportedConfigError, match="solver_order"):
        from_diffusers({"_class_name": "UniPCMultistepScheduler", "solver_order": 4})


def test_bad_options_raise_naming_them() -> None:
    with pytest.raises(ValueError, match="solver_order"):
        samplers.get("unipc", solver_order=4)
    with pytest.raises(ValueError, match="solver_type"):
        samplers.get("unipc", solver_type="bh3")
    with pytest.raises(ValueError, match="disable_corrector"):
        samplers.get("unipc", disable_corrector=[-1])
    with pytest.raises(ValueError, match="predict_x0"):
        samplers.get("unipc", thresholding=True, predict_x0=False)
    with pytest.raises(ValueError, match="contradictory"):
        samplers.get("unipc", use_karras_sigmas=True, use_beta_sigmas=True)
    with pytest.raises(ValueError, match="mu"):
        samplers.get("unipc", use_flow_sigmas=True, use_dynamic_shifting=True).set_timesteps(10)


# ---- rows ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 2, 3])
def test_one_row_per_call_with_order_history_slots(order: int) -> None:
    """The corrector folds into the next row: N calls for N steps, each weighing ``solver_order`` earlier
    estimates at most (UniC-p reaches back p calls)."""
    s = samplers.get("unipc", solver_order=order)
    s.set_timesteps(20)
    assert len(s.plan) == 20
    assert max(len(u) for u in s.plan.use) == order
    assert not s.is_stochastic


# ---- every prediction type on every schedule family -----------------------------------------------------


@pytest.mark.parametrize("family", sorted(battery.FAMILIES))
@pytest.mark.parametrize("prediction_type", parameterization.PREDICTION_TYPES)
def test_every_prediction_type_and_family(family: str, prediction_type: str) -> None:
    """40 steps of UniPC-2 land within 0.05 of the exact ODE endpoint (the families' floors are 1e-3 to 3e-2);
    where alpha = 0 (flow at t = 1) epsilon and score outputs cannot be read: a ValueError names the type."""
    if family == "flow_shift3" and prediction_type in ("epsilon", "score"):
        with pytest.raises(ValueError, match=f"prediction_type='{prediction_type}'"):
            battery.family_error("unipc", {}, family, prediction_type)
        return
    assert battery.family_error("unipc", {}, family, prediction_type) < 0.05


def test_noise_prediction_runs_from_pure_noise() -> None:
    """predict_x0=False from a flow schedule's t = 1: the first step is DDIM (x0_hat read from the output) and no
    corrector spans that infinite interval; the run still lands on the ODE's endpoint."""
    errors = [battery.family_error("unipc", {"predict_x0": False}, "flow_shift3", "flow", steps=n) for n in (20, 40)]
    assert errors[1] < errors[0] < 0.05, errors


# ---- order -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver_type", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_order_is_p_plus_one(order: int, solver_type: str) -> None:
    """UniPC-p is of order p + 1 (Theorem 3.3). Karras' grid (EDM, sigma 80 -> 1e-4): 32-128 steps are past the
    pre-asymptotic range (UniPC-3 overshoots to 5 from 16 steps) and above the float32 floor (1e-5)."""
    battery.assert_order(
        "unipc", {"solver_order": order, "solver_type": solver_type}, order + 1, steps=(32, 64, 128), family=KARRAS
    )


def test_order_warm_up() -> None:
    """The reference's warm-up bounds UniPC-3: its first step is UniP-1 + UniC-1 (local error h^3), so where the
    data shapes the first step (EDM from sigma = 1, uniform log-SNR steps) the global order is 3, not 4."""
    battery.assert_order("unipc", {"solver_order": 3}, 3.0, steps=(20, 40, 80), family=LOW_START)
    battery.assert_order("unipc", {"solver_order": 2}, 3.0, steps=(20, 40, 80), family=LOW_START)


@pytest.mark.parametrize(("order", "steps"), [(1, (64, 128, 256)), (2, (64, 128, 256)), (3, (32, 64, 128))])
def test_order_on_flow_shift3(order: int, steps: tuple[int, ...]) -> None:
    """Rectified flow with shift 3 from t = 1 (alpha = 0): bh2's first corrector is the trapezoidal rule in
    alpha / sigma, so the order holds; the grid's last log-SNR step grows like log N, so convergence sets in
    later (measured local slopes: UniPC-1 1.66, 1.73; UniPC-2 2.51, 2.89; UniPC-3 4.19, 4.48)."""
    battery.assert_order(
        "unipc",
        {"solver_order": order, "prediction_type": "flow"},
        order + 1,
        steps=steps,
        family=battery.FAMILIES["flow_shift3"],
    )


# ---- the conformance kit ---------------------------------------------------------------------------------


def test_samplers_check() -> None:
    assert_conforms("unipc", settings=KitSettings.quick(backend="torch"))


def test_metadata() -> None:
    cls = samplers.registry().scheduler_class("unipc")
    meta = cls.metadata()
    assert (meta["order"], meta["kind"], meta["stochastic"]) == (3, "ode-multistep", False)
    assert "Zhao" in meta["paper"] and math.isfinite(meta["order"])
