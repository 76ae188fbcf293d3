"""DEIS (samplers.schedulers.deis): diffusers parity, every prediction type and schedule family, order, check."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers_loop import parity

import samplers
from samplers import parameterization
from samplers.schedulers.deis import logrho_weights
from samplers.testing import KitSettings, assert_conforms

import battery

diffusers = pytest.importorskip("diffusers")
from samplers.integrations.diffusers import UnsupportedConfigError, from_diffusers  # noqa: E402

BOUND = 1e-5
LOW_START = {"schedule": "edm", "schedule_kwargs": {"sigma_min": 1e-4, "sigma_max": 1.0}}

# Every case runs against the reference with float64 levels and table (tests/diffusers_loop.py): diffusers
# evaluates DEIS's closed forms from float32 sigmas, where they cancel heavily (DEIS-3: 5e-5 at 50 steps here,
# see test_reference_float32_drift), and its float32 table is 8e-5 off at t = 0, where the flagged grids end.
CASES = {
    **{f"order{o}": {"solver_order": o} for o in (1, 2, 3)},
    "karras-3": {"use_karras_sigmas": True, "solver_order": 3},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "flow-3": {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction", "solver_order": 3},
    "v-trailing-3": {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "solver_order": 3},
    "sample-leading": {"prediction_type": "sample", "timestep_spacing": "leading", "steps_offset": 1},
    "thresholding-3": {"prediction_type": "sample", "solver_order": 3, "thresholding": True,
                       "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
    "not-lower_order_final-3": {"solver_order": 3, "lower_order_final": False},
    "sd-betas-3": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "solver_order": 3},
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_diffusers(case: str) -> None:
    """50 steps, float32 samples, same model: within 1e-5 of diffusers run with float64 sigmas and table."""
    result = parity("DEISMultistepScheduler", CASES[case], float64=True)
    assert result["native"] <= BOUND, result


@pytest.mark.parametrize("steps", [10, 14])
def test_parity_short_runs_lower_the_final_orders(steps: int) -> None:
    """Below 15 steps diffusers drops to first order on the last call and second on the one before."""
    result = parity("DEISMultistepScheduler", {"solver_order": 3}, steps=steps, float64=True)
    assert result["native"] <= BOUND, result


def test_parity_dynamic_flow_shift() -> None:
    config = {"use_flow_sigmas": True, "use_dynamic_shifting": True, "prediction_type": "flow_prediction"}
    result = parity("DEISMultistepScheduler", config, set_kwargs={"mu": 1.1}, float64=True)
    assert result["native"] <= BOUND, result


@pytest.mark.parametrize("order", [1, 2])
def test_parity_with_stock_diffusers(order: int) -> None:
    """Orders 1 and 2 at 50 steps also meet 1e-5 against the stock (float32) reference, wrapper included."""
    result = parity("DEISMultistepScheduler", {"solver_order": order})
    assert result["native"] <= BOUND and result["wrapper"] <= BOUND, result


def test_reference_float32_drift() -> None:
    """Why the harness: DEIS-3's float32 coefficients in diffusers drift > 1e-5 from its own float64 ones at
    50 steps, and our float64 closed forms agree with the latter to 1e-6."""
    stock = parity("DEISMultistepScheduler", {"solver_order": 3})
    harness = parity("DEISMultistepScheduler", {"solver_order": 3}, float64=True)
    assert stock["native"] > 2e-5 and harness["native"] < 1e-6, (stock, harness)


def test_logrho_weights_match_the_reference_closed_forms() -> None:
    """C_j = int L_j(log rho) d rho against diffusers' own antiderivatives (eq. 14), in float64."""
    rho_t, rho_0, rho_1, rho_2 = 0.8, 1.1, 1.9, 3.5
    log = math.log

    def second(t, b, c):  # d/dt = (log t - log c) / (log b - log c)
        return t * (-log(c) + log(t) - 1) / (log(b) - log(c))

    def third(t, b, c, d):
        num = t * (log(c) * (log(d) - log(t) + 1) - log(d) * log(t) + log(d) + log(t) ** 2 - 2 * log(t) + 2)
        return num / ((log(b) - log(c)) * (log(b) - log(d)))

    ours2 = logrho_weights([log(rho_0), log(rho_1)], log(rho_t), rho_0)
    ref2 = [
        second(rho_t, rho_0, rho_1) - second(rho_0, rho_0, rho_1),
        second(rho_t, rho_1, rho_0) - second(rho_0, rho_1, rho_0),
    ]
    ours3 = logrho_weights([log(rho_0), log(rho_1), log(rho_2)], log(rho_t), rho_0)
    args = [(rho_0, rho_1, rho_2), (rho_1, rho_2, rho_0), (rho_2, rho_0, rho_1)]
    ref3 = [third(rho_t, *a) - third(rho_0, *a) for a in args]
    assert ours2 == pytest.approx(ref2, rel=1e-12) and ours3 == pytest.approx(ref3, rel=1e-11)
    assert logrho_weights([log(rho_0)], log(rho_t), rho_0) == pytest.approx([rho_t - rho_0], rel=1e-14)  # DDIM


# ---- the diffusers mapping ------------------------------------------------------------------------------


def test_mapping_sets_the_reference_end_and_round_trips() -> None:
    ref = diffusers.DEISMultistepScheduler(solver_order=3, use_exponential_sigmas=True)
    ours = from_diffusers(ref)
    assert ours.config.final_sigmas_type == "sigma_min"  # the reference ends at the first training timestep
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    assert torch.equal(ours.timesteps, ref.timesteps) and torch.allclose(ours.sigmas, ref.sigmas, rtol=1e-4)
    from samplers.integrations.diffusers import samplers_config_to_diffusers

    name, config = samplers_config_to_diffusers(ours)
    back = getattr(diffusers, name)(**config)
    assert {k: v for k, v in back.config.items() if not k.startswith("_")} == {
        k: v for k, v in ref.config.items() if not k.startswith("_")
    }
    with pytest.raises(UnsupportedConfigError, match="final_sigmas_type"):
        samplers_config_to_diffusers(samplers.get("deis"))  # ours ends at clean data by default
    with pytest.raises(UnsupportedConfigError, match="solver_order"):
        from_diffusers({"_class_name": "DEISMultistepScheduler", "solver_order": 4})


def test_bad_options_raise_naming_them() -> None:
    with pytest.raises(ValueError, match="solver_order"):
        samplers.get("deis", solver_order=0)
    with pytest.raises(ValueError, match="algorithm_type"):
        samplers.get("deis", algorithm_type="dpmsolver++")
    with pytest.raises(ValueError, match="solver_type"):
        samplers.get("deis", solver_type="midpoint")


# ---- rows ----------------------------------------------------------------------------------------------


def test_history_slots_and_the_repeated_final_level() -> None:
    s = samplers.get("deis", solver_order=3)
    s.set_timesteps(20)
    assert max(len(u) for u in s.plan.use) == 2  # eps of the two earlier calls
    t = samplers.get("deis", solver_order=3, thresholding=True, prediction_type="sample")
    t.set_timesteps(20)
    assert max(len(u) for u in t.plan.use) == 4  # sample and clamped x0 of each: eps is rebuilt from them
    # sigma_min on a flagged grid: the last call repeats the last level, an identity update (as diffusers)
    r = samplers.get("deis", use_karras_sigmas=True, final_sigmas_type="sigma_min")
    r.set_timesteps(12)
    from samplers.ops.reference import COEFF

    last = r.plan.rows[-1]
    assert float(last[COEFF["a"]]) == 1.0 and float(last[COEFF["b"]]) == 0.0 and not r.plan.use[-1]


# ---- every prediction type on every schedule family -----------------------------------------------------


@pytest.mark.parametrize("family", sorted(battery.FAMILIES))
@pytest.mark.parametrize("prediction_type", parameterization.PREDICTION_TYPES)
def test_every_prediction_type_and_family(family: str, prediction_type: str) -> None:
    """40 steps of DEIS-3 land within 0.02 of the exact ODE endpoint; epsilon and score cannot be read at a flow
    schedule's t = 1 (alpha = 0): a ValueError names the type."""
    if family == "flow_shift3" and prediction_type in ("epsilon", "score"):
        with pytest.raises(ValueError, match=f"prediction_type='{prediction_type}'"):
            battery.family_error("deis", {"solver_order": 3}, family, prediction_type)
        return
    assert battery.family_error("deis", {"solver_order": 3}, family, prediction_type) < 0.02


# ---- order -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("order", "steps"), [(1, (16, 32, 64)), (2, (16, 32, 64)), (3, (8, 16, 32))])
def test_order(order: int, steps: tuple[int, ...]) -> None:
    """DEIS-p is of order p on the battery's EDM grid (uniform log-SNR from sigma = 80): its first, first-order
    steps are taken where the data barely matters (x0_hat ~ the mean), so the warm-up costs little there."""
    battery.assert_order("deis", {"solver_order": order}, float(order), steps=steps)


def test_order_three_tends_to_two_after_a_first_order_start() -> None:
    """The reference's warm-up (first step DDIM, local error h^2) caps DEIS-3 at order 2 as h -> 0 wherever the
    data shapes the first step (EDM from sigma = 1; measured local slopes 2.03, 2.04, 2.02 from 20 to 160)."""
    battery.assert_order("deis", {"solver_order": 3}, 2.0, steps=(40, 80, 160), family=LOW_START)


@pytest.mark.parametrize(("order", "expected", "steps"), [(1, 1.0, (32, 64, 128)), (2, 2.0, (64, 128, 256)),
                                                          (3, 2.0, (64, 128, 256))])  # fmt: skip
def test_order_on_flow_shift3(order: int, expected: float, steps: tuple[int, ...]) -> None:
    """Rectified flow, shift 3, from t = 1: the first step (out of alpha = 0) is DDIM, a node at lambda = -inf
    drops the next orders, and DEIS-3 is second order there for the same warm-up reason as above."""
    battery.assert_order(
        "deis",
        {"solver_order": order, "prediction_type": "flow"},
        expected,
        steps=steps,
        family=battery.FAMILIES["flow_shift3"],
    )


# ---- the conformance kit ---------------------------------------------------------------------------------


def test_samplers_check() -> None:
    assert_conforms("deis", settings=KitSettings.quick(backend="torch"))
    assert_conforms("deis", settings=KitSettings.quick(backend="torch"), solver_order=3, thresholding=True)


def test_metadata() -> None:
    meta = samplers.registry().scheduler_class("deis").metadata()
    assert (meta["order"], meta["kind"], meta["stochastic"]) == (2, "ode-multistep", False)
    assert "Zhang & Chen" in meta["paper"]
