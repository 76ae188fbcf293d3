"""DPM-Solver(++) singlestep (samplers.schedulers.dpmsolver_singlestep): the order list, the group rows,
convergence orders, every prediction type on every family, the SDE form, the kit, and parity with diffusers'
DPMSolverSinglestepScheduler (50-step loops, max |ours - diffusers| / max |diffusers| <= 1e-5)."""

from __future__ import annotations

import pytest
import torch
from dpm_references import TOL, flow_space, gaussian_model, relative_error, run_loop, start_and_noise, table_space

import samplers
from samplers.ops.reference import COEFF
from samplers.schedulers.dpmsolver_singlestep import singlestep_orders
from samplers.testing import KitSettings, assert_conforms

import battery

diffusers = pytest.importorskip("diffusers")
singlestep_module = pytest.importorskip("diffusers.schedulers.scheduling_dpmsolver_singlestep")

from samplers.integrations.diffusers import UnsupportedConfigError, from_diffusers, to_diffusers  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*algorithm_type.*deprecated:FutureWarning")
F64 = torch.float64
NAMES = ["dpmpp_singlestep", "dpm_singlestep"]
QUICK = KitSettings.quick(backend="torch")
EDM_STEPS = (24, 48, 96, 192)  # as for the multistep solvers: past the first Karras steps' large log-SNR jumps
FLOW_STEPS = (12, 24, 48, 96)
FLOW = {**battery.FAMILIES["flow_shift3"], "prediction_type": "flow"}


# ---- the order list and the rows -----------------------------------------------------------------


def test_order_list_is_diffusers():
    assert singlestep_orders(8, 2, True, True) == [1, 2, 1, 2, 1, 2, 1, 1]
    assert singlestep_orders(8, 3, True, True) == [1, 2, 3, 1, 2, 3, 1, 1]
    assert singlestep_orders(9, 3, True, False) == [1, 2, 3, 1, 2, 3, 1, 2, 1]
    assert singlestep_orders(7, 3, True, False) == [1, 2, 3, 1, 2, 3, 1]
    assert singlestep_orders(9, 3, False, False) == [1, 2, 3] * 3
    with pytest.raises(ValueError, match="multiple of 3"):
        singlestep_orders(8, 3, False, False)
    for n in (5, 6, 12, 31):
        ours = samplers.get("dpmpp_singlestep", solver_order=3, solver_type="heun")  # heun: every estimate weighed
        ours.set_timesteps(n)
        theirs = diffusers.DPMSolverSinglestepScheduler(solver_order=3)
        theirs.set_timesteps(n)
        used = [len(u) for u in ours.plan.use]  # a call of order o reads x_g and o - 1 earlier estimates
        assert [1 if u == 0 else u for u in used] == theirs.order_list


def test_each_call_jumps_from_its_group_start():
    """Within a group every call's update starts from the group's first sample: the rows weigh their own input
    by 0 and the kept x_g by sigma_t / sigma_g (DPM-Solver++), the first-order carry over the whole group."""
    s = samplers.get(
        "dpmpp_singlestep", solver_order=3, solver_type="heun", final_sigmas_type="sigma_min", lower_order_final=False
    )
    s.set_timesteps(9)
    plan = s.plan
    assert plan.use[3] == () and set(plan.use[4]) == {"x3", "m3"} and set(plan.use[5]) == {"x3", "m3", "m4"}
    a = plan.rows[:, COEFF["a"]]
    assert float(a[4]) == 0.0 and float(a[5]) == 0.0 and float(a[3]) > 0
    sigma_next = float(plan.model_sigma[6])
    slot = plan.use[5].index("x3")
    assert float(plan.rows[5, COEFF[f"h{slot}"]]) == pytest.approx(sigma_next / float(plan.model_sigma[3]), rel=1e-12)


def test_first_order_is_the_multistep_first_order():
    single, multi = samplers.get("dpmpp_singlestep", solver_order=1), samplers.get("dpmpp_2m", solver_order=1)
    single.set_timesteps(10)
    multi.set_timesteps(10)
    torch.testing.assert_close(single.plan.rows, multi.plan.rows, rtol=1e-12, atol=1e-14)


# ---- orders, families, moments ---------------------------------------------------------------------

ORDER_CASES = [
    ("dpmpp_singlestep", {"solver_order": 1}, 1),
    ("dpmpp_singlestep", {}, 2),
    ("dpmpp_singlestep", {"solver_type": "heun"}, 2),
    ("dpmpp_singlestep", {"solver_order": 3}, 3),
    ("dpmpp_singlestep", {"solver_order": 3, "solver_type": "heun"}, 3),
    ("dpm_singlestep", {}, 2),
    ("dpm_singlestep", {"solver_order": 3}, 3),
    ("dpm_singlestep", {"solver_order": 3, "solver_type": "heun"}, 3),
]


@pytest.mark.parametrize("name, config, order", ORDER_CASES, ids=[f"{c[0]}-{c[1]}" for c in ORDER_CASES])
def test_convergence_order_edm(name, config, order):
    battery.assert_order(name, config, order, steps=EDM_STEPS)


# On the shift-3 flow grid the first steps out of t = 1 keep log-SNR lengths log((i + 1) / i) whatever the step
# count, which adds an O(1/n) term the exponential integrators cannot remove; measured fitted orders over 12-96
# steps: 1.0 (order 1), 1.69 / 1.97 (order 2 midpoint / heun), 2.3-2.5 (order 3), 1.35 (noise prediction, 2).
FLOW_EXPECTED = {
    ("dpmpp_singlestep", 1, "midpoint"): (1.0, 0.35),
    ("dpmpp_singlestep", 2, "midpoint"): (1.75, 0.2),
    ("dpmpp_singlestep", 2, "heun"): (2.0, 0.35),
    ("dpmpp_singlestep", 3, "midpoint"): (2.5, 0.5),
    ("dpmpp_singlestep", 3, "heun"): (2.5, 0.5),
    ("dpm_singlestep", 2, "midpoint"): (1.5, 0.3),
    ("dpm_singlestep", 3, "midpoint"): (2.5, 0.5),
    ("dpm_singlestep", 3, "heun"): (2.5, 0.5),
}


@pytest.mark.parametrize("name, config, order", ORDER_CASES, ids=[f"{c[0]}-{c[1]}" for c in ORDER_CASES])
def test_convergence_on_flow_shift3(name, config, order):
    key = (name, config.get("solver_order", 2), config.get("solver_type", "midpoint"))
    expected, tolerance = FLOW_EXPECTED[key]
    battery.assert_order(name, config, expected, tolerance=tolerance, steps=FLOW_STEPS, family=FLOW)


@pytest.mark.parametrize("family", list(battery.FAMILIES))
@pytest.mark.parametrize(
    "name, config",
    [
        ("dpmpp_singlestep", {"solver_order": 3}),
        ("dpm_singlestep", {}),
        pytest.param("dpmpp_singlestep", {"algorithm_type": "sde-dpmsolver++"}, marks=pytest.mark.slow),
    ],
)
def test_every_prediction_type_on_every_family(name, config, family):
    results = {}
    for kind in battery.prediction_types_for(family):
        try:
            results[kind] = battery.family_error(name, config, family, kind)
        except ValueError as exc:
            assert family == "flow_shift3" and kind in ("epsilon", "score"), exc
            assert f"prediction_type={kind!r}" in str(exc)
    if family == "flow_shift3":
        assert set(results) == {"sample", "v_prediction", "flow"}
    values = list(results.values())
    assert max(values) - min(values) <= 1e-5 * max(1.0, max(values)), results
    assert max(values) < (4.5 if "sde" in config.get("algorithm_type", "") else 0.05), results


@pytest.mark.slow
def test_sde_variance_bias_shrinks():
    """SDE-DPM-Solver++ singlestep (diffusers' scheme: every call draws, the intermediate draws only reach the
    model inputs) has a variance bias beyond the noise floor at 50 steps that shrinks with the step count."""
    config = {"algorithm_type": "sde-dpmsolver++"}
    mean_50, var_50 = battery.moments_error("dpmpp_singlestep", config, 50)
    mean_200, var_200 = battery.moments_error("dpmpp_singlestep", config, 200)
    assert mean_50 < 4 and mean_200 < 4
    assert var_200 < 0.5 * var_50, (var_50, var_200)


# ---- kit and configuration -------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_conforms_default(name):
    assert_conforms(name, settings=QUICK)


@pytest.mark.parametrize(
    "config",
    [
        {"solver_order": 3, "solver_type": "heun", "prediction_type": "v_prediction"},
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "lower_order_final": False},
        {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"},
    ],
)
def test_conforms_configured(config):
    assert_conforms(
        "dpmpp_singlestep",
        settings=QUICK,
        checks=["protocol", "config_roundtrip", "determinism", "marginals", "accuracy"],
        **config,
    )


@pytest.mark.parametrize(
    "config, match",
    [
        ({"algorithm_type": "sde-dpmsolver"}, "algorithm_type"),
        ({"solver_order": 4}, "solver_order"),
        ({"thresholding": True, "algorithm_type": "dpmsolver"}, "thresholding"),
        ({"use_flow_sigmas": True, "use_karras_sigmas": True}, "exclusive"),
    ],
)
def test_bad_config_is_a_clear_error(config, match):
    with pytest.raises(ValueError, match=match):
        samplers.get("dpmpp_singlestep", **config)


def test_begin_index_regroups_from_there():
    s = samplers.get("dpmpp_singlestep", solver_order=3, solver_type="heun")
    s.set_timesteps(12)
    s.set_begin_index(4)  # mid-group in the full list [1,2,3, 1,2,3, ..]: diffusers lowers the orders there
    assert s.plan.use[4] == () and set(s.plan.use[5]) == {"x4", "m4"} and s.plan.use[6] == ()
    assert set(s.plan.use[8]) == {"x6", "m6", "m7"}  # from the next group on, the full list again


# ---- parity with diffusers --------------------------------------------------------------------------


def _replay(monkeypatch, noise):
    it = iter(noise)
    monkeypatch.setattr(
        singlestep_module,
        "randn_tensor",
        lambda shape, generator=None, device=None, dtype=None, **_: next(it).to(dtype),
    )


CASES = {
    "2s": {},
    "2s-heun": {"solver_type": "heun"},
    "1": {"solver_order": 1},
    "3s": {"solver_order": 3},
    "3s-heun": {"solver_order": 3, "solver_type": "heun"},
    "3s-sigma-min-full-groups": {"solver_order": 3, "final_sigmas_type": "sigma_min", "lower_order_final": False},
    "karras-v": {"use_karras_sigmas": True, "prediction_type": "v_prediction"},
    "exponential-3s": {"use_exponential_sigmas": True, "solver_order": 3},
    "beta": {"use_beta_sigmas": True, "prediction_type": "sample"},
    "flow-3s": {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction", "solver_order": 3},
    "cosine-clipped": {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1},
    "threshold": {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.2},
    "eps-2": {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    "eps-3-heun": {
        "algorithm_type": "dpmsolver",
        "final_sigmas_type": "sigma_min",
        "solver_order": 3,
        "solver_type": "heun",
    },
    "eps-3": {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3},
    "sde-2": {"algorithm_type": "sde-dpmsolver++"},
    "sde-2-heun-karras": {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "use_karras_sigmas": True},
    "sde-3-midpoint": {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
}


@pytest.mark.parametrize("steps", [50, 10])
@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_diffusers(case, steps, monkeypatch):
    config = CASES[case]
    reference = diffusers.DPMSolverSinglestepScheduler(**config)
    space = flow_space() if config.get("use_flow_sigmas") else table_space(reference.alphas_cumprod.to(F64))
    model = gaussian_model(space, config.get("prediction_type", "epsilon"))
    x, noise = start_and_noise(steps)
    _replay(monkeypatch, noise)
    expected = run_loop(reference, model, x, steps)
    ours = from_diffusers(reference)  # after set_timesteps: diffusers may have switched lower_order_final on
    expected_class = (
        "DPMSolverSinglestepNoisePredictionScheduler" if case.startswith("eps") else "DPMSolverSinglestepScheduler"
    )
    assert type(ours).__name__ == expected_class
    got = run_loop(
        ours, model, x, steps, noise=noise if ours.is_stochastic else None, step_kwargs={"backend": "torch"}
    )
    # a 10-step run of DPM-Solver-3 with noise prediction reaches 1.1e-5 (diffusers' float32 coefficients)
    assert relative_error(got, expected) <= (2e-5 if steps == 10 else TOL)


def test_wrapper_parity_in_a_pipeline_loop(monkeypatch):
    reference = diffusers.DPMSolverSinglestepScheduler(algorithm_type="sde-dpmsolver++", use_karras_sigmas=True)
    model = gaussian_model(table_space(reference.alphas_cumprod.to(F64)), "epsilon")
    x, _ = start_and_noise(0)
    results = []
    for s in (reference, to_diffusers(from_diffusers(reference))):
        s.set_timesteps(20)
        y = x.clone()
        gen = torch.Generator().manual_seed(3)
        for t in s.timesteps:
            y = s.step(model(s.scale_model_input(y, t), t), t, y, generator=gen).prev_sample
        results.append(y)
    assert relative_error(results[1], results[0]) <= TOL


def test_mapping_refuses_the_sde_heun_third_order_sign_error():
    with pytest.raises(UnsupportedConfigError, match="wrong sign"):
        from_diffusers(
            diffusers.DPMSolverSinglestepScheduler(
                algorithm_type="sde-dpmsolver++", solver_order=3, solver_type="heun"
            )
        )
    native = to_diffusers(samplers.get("dpm_singlestep", solver_order=3, final_sigmas_type="sigma_min"), native=True)
    assert type(native).__name__ == "DPMSolverSinglestepScheduler" and native.config.algorithm_type == "dpmsolver"
    assert type(from_diffusers(native)).__name__ == "DPMSolverSinglestepNoisePredictionScheduler"
