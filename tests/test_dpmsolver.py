"""DPM-Solver(++) multistep (samplers.schedulers.dpmsolver): the rows against the math, convergence orders on
the exact Gaussian oracle (the true order of DPM++ 3M included), every prediction type on every schedule
family, SDE moments, the conformance kit, config errors and warm-up handling.

Parity with diffusers and k-diffusion is in ``test_dpmsolver_parity.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import samplers
from samplers import schedules
from samplers.ops.reference import COEFF
from samplers.schedulers.dpmsolver import data_prediction_weights, divided_differences
from samplers.testing import KitSettings, assert_conforms

import battery

F64 = torch.float64
NAMES = ["dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpm_multistep"]
STOCHASTIC = {"dpmpp_2m_sde", "dpmpp_3m_sde"}
QUICK = KitSettings.quick(backend="torch")
# Order fits on EDM/Karras down to 1e-4: the log-SNR steps of rho = 7 grow sharply near sigma_min, so with 8-16
# steps a multistep extrapolation over a step 1/r0 times longer than the last one still overshoots (2M's
# error even grows from 8 to 16 steps); from 32 steps on the errors fall at the asymptotic rate.
EDM_STEPS = (32, 64, 128, 256)
FLOW_STEPS = (16, 32, 64, 128)  # SD3's shift-3 flow grid
FLOW = {**battery.FAMILIES["flow_shift3"], "prediction_type": "flow"}


def _col(plan, name):
    return plan.rows[:, COEFF[name]]


# ---- the rows are the solver's math ------------------------------------------------------------


def test_first_order_step_is_ddim():
    """DPM-Solver++ of order 1 is DDIM (eta = 0): the rows equal schedules.ddim_transition's."""
    s = samplers.get("dpmpp_2m", solver_order=1)
    s.set_timesteps(12)
    plan = s.plan
    alpha, sigma = plan.model_alpha, plan.model_sigma
    a_next = torch.cat([alpha[1:], torch.ones(1, dtype=F64)])
    s_next = torch.cat([sigma[1:], torch.zeros(1, dtype=F64)])
    coef_x0, coef_eps, _ = schedules.ddim_transition(a_next, s_next, alpha, sigma, 0.0)
    # prev = coef_x0 x0 + coef_eps (x - alpha x0) / sigma
    torch.testing.assert_close(_col(plan, "a"), coef_eps / sigma, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(_col(plan, "b"), coef_x0 - coef_eps * alpha / sigma, rtol=1e-10, atol=1e-12)
    assert bool((_col(plan, "h0") == 0).all()) and bool((_col(plan, "c") == 0).all())


def test_sde_first_order_step_is_the_posterior_draw():
    """SDE-DPM-Solver++(1) draws from q(x_s | x_t, x0): mean and std from schedules.posterior."""
    s = samplers.get("dpmpp_2m_sde", solver_order=1)
    s.set_timesteps(12)
    plan = s.plan
    alpha, sigma = plan.model_alpha, plan.model_sigma
    a_next = torch.cat([alpha[1:], torch.ones(1, dtype=F64)])
    s_next = torch.cat([sigma[1:], torch.zeros(1, dtype=F64)])
    post = schedules.posterior(a_next, s_next, alpha, sigma)
    torch.testing.assert_close(_col(plan, "a"), post.coef_xt, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(_col(plan, "b"), post.coef_x0, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(_col(plan, "c"), post.variance.clamp(min=0).sqrt(), rtol=1e-10, atol=1e-14)


def test_sde_noise_prediction_first_order_step():
    """SDE-DPM-Solver(1) (Lu et al. 2022, DPM-Solver++ eq. 12 with eps): x_t = (alpha_t/alpha_s) x
    - 2 sigma_t (e^h - 1) eps_hat + sigma_t sqrt(e^{2h} - 1) z."""
    s = samplers.get("dpm_multistep", algorithm_type="sde-dpmsolver", solver_order=1, final_sigmas_type="sigma_min")
    s.set_timesteps(12)
    plan = s.plan
    end = s.final_alpha_sigma()
    alpha = torch.cat([plan.model_alpha, torch.tensor([end[0]], dtype=F64)])
    sigma = torch.cat([plan.model_sigma, torch.tensor([end[1]], dtype=F64)])
    lam = torch.log(alpha / sigma)
    h = lam[1:] - lam[:-1]
    torch.testing.assert_close(_col(plan, "c"), sigma[1:] * torch.sqrt(torch.expm1(2 * h)), rtol=1e-9, atol=0)
    torch.testing.assert_close(_col(plan, "b"), -2 * sigma[1:] * torch.expm1(h), rtol=1e-9, atol=0)  # on eps_hat
    torch.testing.assert_close(_col(plan, "a"), alpha[1:] / alpha[:-1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("name, config", [("dpmpp_2m", {}), ("dpmpp_2m", {"solver_type": "heun"}), ("dpmpp_3m", {})])
def test_x0_weights_sum_to_the_first_order_weight(name, config):
    """Higher-order terms are divided differences of x0 estimates: on constant x0 they vanish, so the x0 weights
    of every row sum to the first-order weight alpha_next (1 - e^{-h})."""
    first = samplers.get("dpmpp_2m", solver_order=1)
    first.set_timesteps(20)
    s = samplers.get(name, **config)
    s.set_timesteps(20)
    total = _col(s.plan, "b") + _col(s.plan, "h0") + _col(s.plan, "h1")
    torch.testing.assert_close(total, _col(first.plan, "b"), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(_col(s.plan, "a"), _col(first.plan, "a"), rtol=1e-12, atol=0)
    assert bool((_col(s.plan, "h0")[2:-1] != 0).all()), "the higher-order terms must be used"


def test_sde_noise_fraction_interpolates_between_ode_and_sde():
    """eta = 0 of dpmpp_2m_sde is dpmpp_2m row for row; eta scales the noise as sqrt(1 - e^{-2 eta h})."""
    ode, sde0 = samplers.get("dpmpp_2m"), samplers.get("dpmpp_2m_sde", eta=0.0)
    ode.set_timesteps(15)
    sde0.set_timesteps(15)
    torch.testing.assert_close(sde0.plan.rows, ode.plan.rows, rtol=1e-12, atol=1e-15)
    assert not sde0.is_stochastic
    half = samplers.get("dpmpp_2m_sde", eta=0.5)
    half.set_timesteps(15)
    lam = torch.log(half.plan.model_alpha) - torch.log(half.plan.model_sigma)
    h = (lam[1:] - lam[:-1])[:5]
    expected = half.plan.model_sigma[1:6] * torch.sqrt(-torch.expm1(-2 * 0.5 * h))
    torch.testing.assert_close(_col(half.plan, "c")[:5], expected, rtol=1e-12, atol=0)


def test_sde_third_order_weight_is_consistent():
    """The D2 weight of SDE-DPM-Solver++(3) vanishes as h -> 0 (~ h/3 for eta = 1), as a consistent update's
    must and k-diffusion's does; diffusers' expression ``(1 - e^{-2h} - 2h)/(2h)^2 - 1/2`` tends to -1 instead."""
    for h in (1e-2, 1e-3):
        chi = data_prediction_weights(h, 1.0)[3]
        assert abs(chi - h / 3) < 2 * h**2
        diffusers_weight = (-math.expm1(-2 * h) - 2 * h) / (2 * h) ** 2 - 0.5
        assert abs(diffusers_weight + 1) < 2 * h


def _one_step_error(h: float, d2_scale: float) -> float:
    """Local error of one DPM++(3) ODE step of log-SNR length h on a uniform lambda grid, from the exact ODE
    solution and exact x0 estimates at the three last levels (Gaussian data, VP): the step's own error."""
    mu, std = 0.3, 0.5
    lam = torch.tensor([-0.4 - 2 * h, -0.4 - h, -0.4, -0.4 + h], dtype=F64)
    alpha, sigma = torch.sigmoid(2 * lam).sqrt(), torch.sigmoid(-2 * lam).sqrt()
    radius = torch.sqrt(alpha**2 * std**2 + sigma**2)
    x = alpha * mu + radius / float(radius[0]) * (1.7 - float(alpha[0]) * mu)  # one exact ODE trajectory
    m = mu + alpha * std**2 / radius**2 * (x - alpha * mu)  # exact x0 estimates along it
    _, phi_1, phi_2, chi, _ = data_prediction_weights(h, 0.0)
    d1, d2 = divided_differences(1.0, 1.0)
    est = [m[2], m[1], m[0]]
    step = float(sigma[3] / sigma[2] * x[2]) + float(alpha[3]) * (
        phi_1 * float(est[0])
        + phi_2 * sum(w * float(e) for w, e in zip(d1, est, strict=True))
        + d2_scale * chi * sum(w * float(e) for w, e in zip(d2, est, strict=True))
    )
    return abs(step - float(x[3]))


def test_dpmpp_3m_as_published_has_a_third_order_local_error():
    """The finding behind dpmpp_3m's declared order 2: the published D2 weight leaves an O(h^3) local error
    (global order 2); twice that weight (the interpolating polynomial's integral) gives O(h^4) (order 3)."""
    hs = np.array([0.2, 0.1, 0.05, 0.025])
    published = [_one_step_error(float(h), 1.0) for h in hs]
    slope = float(np.polyfit(np.log(hs), np.log(published), 1)[0])
    assert abs(slope - 3.0) < 0.2, (slope, published)
    hs = np.array([0.4, 0.2, 0.1])  # (smaller steps reach the round-off of the exact solution)
    doubled = [_one_step_error(float(h), 2.0) for h in hs]
    slope = float(np.polyfit(np.log(hs), np.log(doubled), 1)[0])
    assert slope > 4.0, (slope, doubled)


# ---- convergence order on the exact oracle -----------------------------------------------------

ORDER_CASES = [
    ("dpmpp_2m", {"solver_order": 1}, 1),
    ("dpmpp_2m", {}, 2),
    ("dpmpp_2m", {"solver_type": "heun"}, 2),
    ("dpmpp_3m", {}, 2),  # second order as published (see the module docstring of dpmsolver.py)
    ("dpmpp_2m_sde", {"eta": 0.0}, 2),
    ("dpmpp_3m_sde", {"eta": 0.0}, 2),
    ("dpm_multistep", {"solver_order": 1}, 1),
    ("dpm_multistep", {}, 2),
    ("dpm_multistep", {"solver_order": 3}, 2),  # the same D2 weight as 3M
]
# On the flow grid the errors of the three-step members reach the float32 floor of the update (~1e-4) before
# the O(h^2) term dominates: their fitted order there lies between the asymptotic 2 and the nominal 3.
FLOW_ORDER = {("dpm_multistep", 3): (2.5, 0.5)}


@pytest.mark.parametrize("name, config, order", ORDER_CASES, ids=[f"{c[0]}-{c[1]}" for c in ORDER_CASES])
def test_convergence_order_edm(name, config, order):
    battery.assert_order(name, config, order, steps=EDM_STEPS)


@pytest.mark.parametrize("name, config, order", ORDER_CASES, ids=[f"{c[0]}-{c[1]}" for c in ORDER_CASES])
def test_convergence_order_flow_shift3(name, config, order):
    order, tolerance = FLOW_ORDER.get((name, config.get("solver_order")), (order, 0.35))
    battery.assert_order(name, config, order, tolerance=tolerance, steps=FLOW_STEPS, family=FLOW)


def test_third_order_still_beats_second_order_at_moderate_steps():
    assert battery.ode_errors("dpmpp_3m", {}, (64,))[0] < 0.5 * battery.ode_errors("dpmpp_2m", {}, (64,))[0]


# ---- every prediction type on every schedule family --------------------------------------------


@pytest.mark.parametrize("family", list(battery.FAMILIES))
@pytest.mark.parametrize("name", NAMES)
def test_every_prediction_type_on_every_family(name, family):
    """The solvers read x0 (or eps) from the output: with the exact model every prediction type gives the same
    run. Where alpha = 0 (the flow grid starts at t = 1) epsilon and score cannot be read: a clear error."""
    results = {}
    for kind in battery.prediction_types_for(family):
        try:
            results[kind] = battery.family_error(name, {}, family, kind)
        except ValueError as exc:
            assert family == "flow_shift3" and kind in ("epsilon", "score"), exc
            assert f"prediction_type={kind!r}" in str(exc)
            continue
    if family == "flow_shift3":
        assert set(results) == {"sample", "v_prediction", "flow"}
    values = list(results.values())
    assert max(values) - min(values) <= 1e-5 * max(1.0, max(values)), results  # float32 update
    bound = 4.5 if name in STOCHASTIC else 0.06  # stochastic: |mean - MU| in standard errors
    assert max(values) < bound, results


# ---- stochastic samplers: moments within the noise floor ---------------------------------------


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_sde_moments_at_high_nfe(name):
    mean_z, var_z = battery.moments_error(name, {}, 100, family=battery.FAMILIES["edm"])
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_sde_moments_on_flow(name):
    """On the shift-3 flow grid the variance deficit of the first steps out of t = 1 needs ~200 steps to vanish."""
    mean_z, var_z = battery.moments_error(
        name, {"prediction_type": "flow"}, 200, family=battery.FAMILIES["flow_shift3"]
    )
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


def test_noise_sde_dpmsolver_eps_moments():
    mean_z, var_z = battery.moments_error(
        "dpm_multistep", {"algorithm_type": "sde-dpmsolver"}, 100, family=battery.FAMILIES["edm"]
    )
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


def test_brownian_mode_paths_converge_with_the_step_count():
    """noise="brownian": one Brownian path per seed, so the final samples at N and 2N steps approach each other
    (strong convergence); with per-call Philox noise they stay apart."""
    z = torch.randn(32, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    seeds = samplers.ops.batch_seeds(9, 32)

    def final(noise: str, n: int) -> torch.Tensor:
        s = samplers.get("dpmpp_2m_sde", noise=noise, **battery.FAMILIES["edm"])
        s.set_timesteps(n)
        return battery.run(s, z, seeds=seeds)[0]

    gaps = {
        mode: [float((final(mode, n) - final(mode, 2 * n)).pow(2).mean().sqrt()) for n in (4, 16)]
        for mode in ("brownian", "philox")
    }
    assert gaps["brownian"][1] < 0.5 * gaps["brownian"][0], gaps
    assert gaps["philox"][1] > 0.5 and gaps["brownian"][1] < 0.3 * gaps["philox"][1], gaps


# ---- conformance kit, configuration, warm-up ---------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_conforms_default(name):
    results = assert_conforms(name, settings=QUICK)
    marginals = next(r for r in results if r.name == "marginals")
    assert marginals.skipped is (name not in STOCHASTIC)


@pytest.mark.parametrize(
    "name, config",
    [
        ("dpmpp_2m", {"solver_type": "heun", "prediction_type": "v_prediction"}),
        ("dpmpp_2m", {"use_karras_sigmas": True, "timestep_spacing": "trailing"}),
        ("dpmpp_3m", {"use_lu_lambdas": True, "lower_order_final": False}),
        ("dpmpp_3m", {"final_sigmas_type": "sigma_min", "euler_at_final": True, "timestep_spacing": "leading"}),
        ("dpmpp_2m", {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"}),
        ("dpmpp_2m_sde", {"solver_order": 3, "prediction_type": "sample"}),
        ("dpmpp_3m_sde", {"eta": 0.5}),
        ("dpm_multistep", {"algorithm_type": "sde-dpmsolver", "schedule": "vp_cosine"}),
        ("dpmpp_2m", {"schedule": "edm", "prediction_type": "epsilon"}),
    ],
)
def test_conforms_configured(name, config):
    assert_conforms(
        name, settings=QUICK, checks=["protocol", "config_roundtrip", "determinism", "marginals", "accuracy"], **config
    )


@pytest.mark.parametrize(
    "name, config, match",
    [
        ("dpmpp_2m", {"solver_order": 4}, "solver_order"),
        ("dpmpp_2m", {"solver_type": "rk4"}, "solver_type"),
        ("dpmpp_2m", {"algorithm_type": "dpmsolver+"}, "algorithm_type"),
        ("dpmpp_2m", {"final_sigmas_type": "one"}, "final_sigmas_type"),
        ("dpmpp_2m", {"timestep_spacing": "log"}, "timestep_spacing"),
        ("dpmpp_2m", {"prediction_type": "eps_v"}, "prediction_type"),
        ("dpmpp_2m", {"eta": 0.5}, "eta"),
        ("dpmpp_2m_sde", {"eta": -1.0}, "eta"),
        ("dpm_multistep", {"algorithm_type": "sde-dpmsolver", "solver_order": 3}, "orders 1 and 2"),
        ("dpm_multistep", {"thresholding": True}, "thresholding"),
        ("dpmpp_2m", {"use_flow_sigmas": True, "use_karras_sigmas": True}, "exclusive"),
        ("dpmpp_2m", {"use_flow_sigmas": True, "final_sigmas_type": "sigma_min"}, "sigma_min"),
        ("dpmpp_2m", {"use_flow_sigmas": True, "schedule": "edm"}, "flow"),
        ("dpmpp_2m", {"use_dynamic_shifting": True}, "use_flow_sigmas"),
        ("dpmpp_2m", {"time_shift_type": "linear"}, "time_shift_type"),
    ],
)
def test_bad_config_is_a_clear_error(name, config, match):
    with pytest.raises(ValueError, match=match):
        samplers.get(name, **config)


def test_grid_errors_name_the_problem():
    with pytest.raises(ValueError, match="exclusive"):
        samplers.get("dpmpp_2m", use_karras_sigmas=True, use_lu_lambdas=True)
    s = samplers.get("dpmpp_2m", schedule="vp_cosine", final_sigmas_type="sigma_min")
    with pytest.raises(ValueError, match="discrete schedule"):
        s.set_timesteps(10)
    s = samplers.get("dpmpp_2m", use_lu_lambdas=True, final_sigmas_type="sigma_min")
    with pytest.raises(ValueError, match="repeats it"):
        s.set_timesteps(10)
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        s.set_timesteps(10, mu=1.0)
    s = samplers.get("dpmpp_2m", timestep_spacing="linspace")
    with pytest.raises(ValueError, match="strictly descending"):
        s.set_timesteps(timesteps=[900, 500, 500, 100])


def test_per_sample_timesteps_rejected_clearly():
    s = samplers.get("dpmpp_2m")
    s.set_timesteps(5)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="per-sample"):
        s.step(x, torch.tensor([999, 799]), x)


def test_history_is_kept_for_as_long_as_it_is_used():
    s = samplers.get("dpmpp_3m")
    s.set_timesteps(8)
    assert s.plan.use[0] == () and s.plan.use[1] == ("m0",) and s.plan.use[2] == ("m1", "m0")
    x = torch.randn(2, 3, dtype=F64)
    state = s.init_state()
    x0s = []
    for t in s.timesteps[:3]:
        out, state = s.step_functional(state, torch.randn(2, 3, dtype=F64), t, x, backend="torch")
        x0s.append(out.pred_original_sample)
        x = out.prev_sample
    assert set(state.kept) == {"m1", "m2"}  # m0 was last used by call 2
    assert torch.equal(state.kept["m2"], x0s[2]) and torch.equal(state.kept["m1"], x0s[1])


def test_begin_index_restarts_the_warm_up():
    s = samplers.get("dpmpp_2m")
    s.set_timesteps(20)
    assert s.plan.use[8] == ("m7",)
    s.set_begin_index(8)
    assert s.plan.use[8] == () and s.plan.use[9] == ("m8",)
    first = samplers.get("dpmpp_2m", solver_order=1)
    first.set_timesteps(20)
    torch.testing.assert_close(s.plan.rows[8], first.plan.rows[8])
    x = torch.randn(2, 3, dtype=F64)
    out = s.step(torch.randn(2, 3, dtype=F64), s.timesteps[8], x, backend="torch")  # no history needed
    assert out.prev_sample.shape == x.shape and s.step_index == 9


def test_flag_grids_feed_diffusers_integer_model_times():
    """use_karras_sigmas: the model sees rounded timesteps while the update keeps the exact Karras level;
    use_exponential_sigmas: truncated ones; sigma_schedule="karras" keeps exact fractional times."""
    karras = samplers.get("dpmpp_2m", use_karras_sigmas=True)
    karras.set_timesteps(12)
    t = karras.plan.timesteps
    assert bool((t == t.round()).all()) and karras.timesteps.dtype == torch.int64
    exact = samplers.get("dpmpp_2m", sigma_schedule="karras")
    exact.set_timesteps(12)
    assert not bool((exact.plan.timesteps == exact.plan.timesteps.round()).all())
    torch.testing.assert_close(t, exact.plan.timesteps.round(), rtol=0, atol=1.0)
    levels = karras.plan.model_sigma / karras.plan.model_alpha  # exact Karras rho = 7 spacing
    ramp = levels ** (1 / 7)
    torch.testing.assert_close(ramp[1:] - ramp[:-1], (ramp[1:] - ramp[:-1]).mean().expand(11), rtol=1e-6, atol=0)
    exponential = samplers.get("dpmpp_2m", use_exponential_sigmas=True)
    exponential.set_timesteps(12)
    continuous = exponential.schedule.time_at_level(exponential.plan.model_sigma / exponential.plan.model_alpha)
    assert bool((exponential.plan.timesteps <= continuous + 1e-3).all())  # truncated, not rounded


def test_flow_sigmas_grid_and_dynamic_shift():
    """use_flow_sigmas: the flow times of diffusers' DPM grid (n + 1 points from 1 - 1/T, shifted, 0 dropped),
    model times int(T t); with use_dynamic_shifting, mu shifts as flow_shift = e^mu."""
    s = samplers.get("dpmpp_2m", use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    s.set_timesteps(10)
    u = torch.linspace(1 - 1e-3, 0, 11, dtype=F64)[:-1]
    flow_t = 3 * u / (1 + 2 * u)
    torch.testing.assert_close(s.plan.model_sigma, flow_t, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.plan.timesteps, torch.trunc(flow_t * 1000), rtol=0, atol=0)
    assert s.init_noise_sigma == 1.0
    dynamic = samplers.get("dpmpp_2m", use_flow_sigmas=True, use_dynamic_shifting=True, prediction_type="flow")
    dynamic.set_timesteps(10, mu=math.log(3.0))
    torch.testing.assert_close(dynamic.plan.model_sigma, flow_t, rtol=1e-12, atol=0)
