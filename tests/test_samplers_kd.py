"""The k-diffusion / diffusers classics of issue 13 on the exact Gaussian oracle: LMS, DPM2, DPM2 ancestral,
DPM++ 2S ancestral, EDM Euler, flow Heun, flow Euler with stochastic sampling, PNDM / PLMS, iPNDM, LCM, TCD.

Every sampler: every prediction type on every schedule family, ``samplers check``, the fitted order of the
deterministic ones (and on a flow schedule), the output moments of the stochastic ones, and the properties
each paper states. Parity with the references is in test_samplers_kd_diffusers.py and
test_samplers_kd_kdiffusion.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from samplers import parameterization
from samplers.ops.reference import COEFF
from samplers.schedulers.lcm import boundary_scalings
from samplers.schedulers.lms import adams_bashforth_weights, lagrange_integrals
from samplers.testing import KitSettings, assert_conforms, check_scheduler

from battery import (
    FAMILIES,
    MU,
    ORDER_FAMILY,
    ORDER_STEPS,
    STD,
    assert_order,
    exact_endpoint,
    exact_output,
    fitted_order,
    ode_errors,
)

F64 = torch.float64
QUICK = KitSettings.quick(backend="torch")
FLOW = {**FAMILIES["flow_shift3"], "prediction_type": "flow"}
NAMES = (
    "lms",
    "dpm2",
    "dpm2_ancestral",
    "dpmpp_2s_ancestral",
    "edm_euler",
    "flow_heun",
    "pndm",
    "ipndm",
    "lcm",
    "tcd",
)
# Samplers whose model space is the schedule's own: an epsilon or score output cannot be read at alpha = 0.
MODEL_SPACE = ("flow_heun", "pndm", "ipndm", "lcm", "tcd")


# --------------------------------------------------------------------------------------------
# Registry, conformance kit
# --------------------------------------------------------------------------------------------


def test_registered_with_their_metadata():
    kinds = {name: samplers.get(name).kind for name in NAMES}
    assert kinds["lms"] == "ode-multistep" and kinds["pndm"] == "ode-multistep" and kinds["ipndm"] == "ode-multistep"
    assert kinds["lcm"] == kinds["tcd"] == "consistency"
    assert kinds["dpm2_ancestral"] == kinds["dpmpp_2s_ancestral"] == "sde"
    for name in NAMES:
        cls = type(samplers.get(name))
        assert cls.paper and cls.name == name
    assert samplers.get("pndm").nfe_per_step == 4 and samplers.get("pndm", skip_prk_steps=True).nfe_per_step == 1
    assert samplers.get("lms", solver_order=2).order == 2


@pytest.mark.parametrize("name", NAMES)
def test_samplers_check_passes(name):
    assert_conforms(name, settings=QUICK)


def test_samplers_check_passes_for_stochastic_configurations():
    for name, options in [("dpm2", {"s_churn": 5.0}), ("edm_euler", {"s_churn": 5.0})]:
        assert_conforms(name, settings=QUICK, **options)


def test_samplers_check_flags_stochastic_flow_euler():
    """The kit's marginals check catches diffusers' stochastic_sampling variance collapse (see below)."""
    result = check_scheduler("flow_euler", settings=QUICK, checks=["marginals"], stochastic_sampling=True)[0]
    assert not result.passed and "do not converge" in result.detail


# --------------------------------------------------------------------------------------------
# Every prediction type on every schedule family
# --------------------------------------------------------------------------------------------


def run_with_noise(s: samplers.Scheduler, z: torch.Tensor, seed: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """battery.run with explicit noise (a torch generator per run) instead of in-op Philox, for speed."""
    plan = s.plan
    gen = torch.Generator().manual_seed(seed)
    x = (z * s.init_noise_sigma).to(F64)
    start = x.clone()
    state = s.init_state()
    for i, t in enumerate(s.timesteps):
        out = exact_output(s, i, x * float(plan.input_scale[i]))
        noise = torch.randn(x.shape, generator=gen, dtype=F64) if plan.stochastic_calls[i] else None
        result, state = s.step_functional(state, out, t, x, noise=noise, backend="torch")
        x = result.prev_sample
    return x, exact_endpoint(s, start)


def _final(name: str, options: dict, steps: int = 24, n: int = 512) -> tuple[torch.Tensor, torch.Tensor, bool]:
    s = samplers.get(name, **options)
    s.set_timesteps(steps)
    z = torch.randn(n, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    x, exact = run_with_noise(s, z)
    return x, exact, s.is_stochastic


def moments(name: str, config: dict, steps: int, family: dict | None = None, n: int = 4096) -> tuple[float, float]:
    """``(max |mean - MU| / se, max |var / STD^2 - 1| / se_var)`` of ``n`` final samples (battery.moments_error
    with explicit noise)."""
    x, _, _ = _final(name, {**(family or FAMILIES["edm"]), **config}, steps, n)
    mean_z = ((x.mean(0) - MU).abs() / (STD / math.sqrt(n))).max()
    var_z = ((x.var(0) / STD**2 - 1).abs() / math.sqrt(2 / (n - 1))).max()
    return float(mean_z), float(var_z)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("name", NAMES)
def test_every_prediction_type_on_every_family(name, family):
    """The exact oracle answers in every parameterization, so every prediction type must give the same samples
    (same seeds, to float32 rounding): a sampler reads each one correctly. Where alpha = 0 (flow's t = 1)
    epsilon and score cannot be read by a model-space sampler: a clear error naming the prediction type."""
    results = {}
    for kind in parameterization.PREDICTION_TYPES:
        options = {**FAMILIES[family], "prediction_type": kind}
        if family == "flow_shift3" and kind in ("epsilon", "score") and name in MODEL_SPACE:
            with pytest.raises(ValueError, match=f"prediction_type='{kind}'"):
                _final(name, options)
            continue
        results[kind] = _final(name, options)
    reference, exact, stochastic = results["sample"]
    assert bool(torch.isfinite(reference).all())
    for kind, (x, _, _) in results.items():
        # the update runs in float32 whatever the storage: agreement to float32 rounding, amplified where an
        # epsilon output is read near alpha = 0 (1 / alpha up to 4096 at a flow schedule's capped t = 1)
        assert float((x - reference).abs().max()) < 1e-4 * float(reference.abs().max()), kind
    if not stochastic and name not in ("lcm", "tcd"):
        assert float((reference - exact).pow(2).mean().sqrt()) < 0.1  # 24 steps of a convergent ODE solver


# --------------------------------------------------------------------------------------------
# Orders (deterministic samplers) on the Gaussian oracle
# --------------------------------------------------------------------------------------------

LONG_STEPS = (32, 64, 128, 256)


def test_lagrange_integrals_are_exact():
    """Gauss-Legendre with ceil(k/2) nodes integrates the degree k-1 Lagrange basis exactly (float64)."""
    assert adams_bashforth_weights(4) == pytest.approx([55 / 24, -59 / 24, 37 / 24, -9 / 24], abs=1e-15)
    assert adams_bashforth_weights(3) == pytest.approx([23 / 12, -16 / 12, 5 / 12], abs=1e-15)
    assert adams_bashforth_weights(2) == pytest.approx([1.5, -0.5], abs=1e-15)
    nodes, a, b = [3.0, 5.5, 9.0, 14.0], 3.0, 1.2
    weights = lagrange_integrals(nodes, a, b)
    assert sum(weights) == pytest.approx(b - a, abs=1e-14)
    for power in range(4):  # the rule integrates every cubic exactly: sum_j w_j f(node_j) = int f
        integral = (b ** (power + 1) - a ** (power + 1)) / (power + 1)
        assert sum(w * n**power for w, n in zip(weights, nodes, strict=True)) == pytest.approx(integral, rel=1e-13)
    with pytest.raises(ValueError, match="distinct"):
        lagrange_integrals([1.0, 1.0], 0.0, 1.0)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_lms_order(order):
    """LMS-k is of order k. On the EDM grid (80 -> 1e-4, rho 7) the asymptotic regime starts near 32 steps:
    fitted 0.97 / 1.93 / 2.83 / 3.68 over 32-256 steps. The warm-up's Euler first step costs nothing there
    (the ODE is nearly linear in sigma at sigma = 80)."""
    assert_order("lms", {"solver_order": order}, order, steps=LONG_STEPS)


def test_lms_warm_up_limits_the_order_where_the_first_step_is_curved():
    """Started at sigma = 2 on a uniform grid, LMS-4's first (Euler) step has an O(h^2) local error that
    dominates: the global order falls to 2 (fitted 2.46 at 16-128 steps), while PNDM's Runge-Kutta warm-up
    keeps a high order there (fitted 3.44)."""
    z = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    slopes = {}
    for name in ("lms", "pndm"):
        errors = []
        for n in (16, 32, 64, 128):
            s = samplers.get(name, **ORDER_FAMILY)
            s.set_timesteps(sigmas=torch.linspace(2.0, 2.0 / n, n, dtype=F64))
            x, exact = run_with_noise(s, z)
            errors.append(float((x - exact).pow(2).mean().sqrt()))
        slopes[name] = fitted_order(errors, (16, 32, 64, 128))
    assert 2.0 <= slopes["lms"] <= 2.8 and slopes["pndm"] >= 3.2, slopes


@pytest.mark.parametrize(
    "name, config, order, steps",
    [
        ("dpm2", {}, 2, ORDER_STEPS),
        ("dpm2_ancestral", {"eta": 0.0}, 2, ORDER_STEPS),
        ("dpmpp_2s_ancestral", {"eta": 0.0}, 2, ORDER_STEPS),
        ("edm_euler", {}, 1, ORDER_STEPS),
        ("flow_heun", {}, 2, ORDER_STEPS),
        ("flow_euler", {}, 1, ORDER_STEPS),
        # Adams-Bashforth weights of a uniform index grid, DDIM transfers exact in the level: second order
        ("pndm", {}, 2, ORDER_STEPS),
        ("pndm", {"skip_prk_steps": True}, 2, ORDER_STEPS),
        ("ipndm", {}, 2, ORDER_STEPS),
    ],
)
def test_order(name, config, order, steps):
    assert_order(name, config, order, steps=steps)


@pytest.mark.parametrize(
    "name, config, order",
    [
        ("lms", {}, 4),  # over 8-32 steps (fitted 3.9); see the test below for more steps
        ("dpm2", {}, 2),
        ("dpm2_ancestral", {"eta": 0.0}, 2),
        ("dpmpp_2s_ancestral", {"eta": 0.0}, 2),
        ("edm_euler", {}, 1),
        ("flow_heun", {}, 2),
        ("pndm", {}, 2),
        ("pndm", {"skip_prk_steps": True}, 2),
        ("ipndm", {}, 2),
    ],
)
def test_order_on_flow_shift3(name, config, order):
    assert_order(name, config, order, family=FLOW, steps=(8, 16, 32) if name == "lms" else ORDER_STEPS)


def test_lms_on_flow_tends_to_second_order():
    """On flow with shift 3 the levels near t = 1 are ~3n/k: the first steps keep an O(1) ratio of successive
    levels however many steps are taken, where the ODE's curvature is ~1/sigma^2, so their error is O(n^-2)
    and LMS-4's fitted order falls from 3.65 (8-64 steps) to 2.5 (32-256)."""
    errors = ode_errors("lms", {}, LONG_STEPS, family=FLOW)
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False))
    assert 2.0 <= fitted_order(errors, LONG_STEPS) <= 3.0


def test_pndm_v_prediction_as_diffusers_combines_it_is_first_order():
    """diffusers' PNDM combines raw v outputs and converts the combination at the step's start
    (``combine="output"``, what from_diffusers sets): the multistep estimate is then off by O(h), a first-order
    method. Ours combines each call's eps_hat by default: second order as for epsilon models."""
    v = {"prediction_type": "v_prediction"}
    assert_order("pndm", {**v, "combine": "output"}, 1)
    assert_order("pndm", v, 2)


def test_ipndm_on_diffusers_model_and_grid():
    """diffusers' IPNDMScheduler assumes a v-prediction model with alpha = cos(pi t / 2) and a grid with
    model-space sigma = sin^2(pi/2 (1 - i/n)), starting at pure noise. There diffusers takes x0 = 0
    (``pure_noise_x0="zero"``, exact only for zero-mean data); ours reads x0 from the model, which converges
    (the zero start leaves an error of alpha_1 E[x0] ~ 1/n, first order); an epsilon model is refused there."""
    cosine = {"schedule": "vp_cosine", "schedule_kwargs": {"s": 0.0, "t_max": 1.0}, "prediction_type": "v_prediction"}
    s = samplers.get("ipndm", **cosine)
    s.set_timesteps(5)
    diffusers_t = [1.0, 0.7195, 0.4542, 0.2246, 0.0609]  # notes/samplers/pndm.md, n = 5
    assert s.timesteps.tolist() == pytest.approx(diffusers_t, abs=1e-4)
    errors = {p: ode_errors("ipndm", {"pure_noise_x0": p}, (8, 16, 32, 64), family=cosine) for p in ("model", "zero")}
    assert errors["model"][-1] < errors["model"][0] / 50  # fitted 2.5 over 8-64 steps
    assert fitted_order(errors["zero"], (8, 16, 32, 64)) == pytest.approx(1.0, abs=0.35)
    with pytest.raises(ValueError, match="prediction_type='epsilon'"):
        samplers.get("ipndm", **{**cosine, "prediction_type": "epsilon"}).set_timesteps(5)


# --------------------------------------------------------------------------------------------
# Stochastic samplers: moments inside the noise floor
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, config, family",
    [
        ("dpm2_ancestral", {}, None),
        ("dpmpp_2s_ancestral", {}, None),
        ("dpm2", {"s_churn": 10.0}, None),
        ("edm_euler", {"s_churn": 10.0}, None),
        ("dpm2_ancestral", {}, FLOW),
        ("dpmpp_2s_ancestral", {}, FLOW),
    ],
)
def test_moments_at_high_nfe(name, config, family):
    """4096 samples after 200 steps: mean and variance within 4 standard errors of the data's (the fixed
    seeds make these numbers reproducible: 0.6-2.6 measured)."""
    mean_z, var_z = moments(name, config, 200, family=family)
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


def test_edm_euler_churn_bias_shrinks():
    """diffusers' order of operations (model at the un-churned point, read at sigma_hat) is consistent: the
    variance error falls from 12 standard errors at 50 steps to ~2.6 at 200."""
    coarse, fine = (
        moments("edm_euler", {"s_churn": 10.0}, 50)[1],
        moments("edm_euler", {"s_churn": 10.0}, 200)[1],
    )
    assert coarse > 3 * fine


def test_flow_euler_stochastic_sampling_halves_the_variance():
    """FlowMatchEuler's stochastic_sampling re-noises x0_hat fully at every step. With the exact denoiser each
    step loses ``alpha'^2 Var[x0 | x_t]`` of variance whatever the step size, and the chain's fixed point ends
    at half the data variance as steps grow (measured 0.31, 0.44, 0.48, 0.49 at 10, 50, 200, 800 steps).
    We reproduce diffusers; the mean stays inside the noise floor."""
    n = 8192
    x, _, _ = _final("flow_euler", {"stochastic_sampling": True, **FLOW}, 400, n)
    ratio = x.var(0) / STD**2
    assert bool(((ratio > 0.45) & (ratio < 0.52)).all()), ratio
    assert float(((x.mean(0) - MU).abs() / (STD / math.sqrt(n))).max()) < 4


# --------------------------------------------------------------------------------------------
# Plans: what each sampler's calls are
# --------------------------------------------------------------------------------------------


def test_dpm2_evaluates_at_the_log_sigma_midpoint():
    s = samplers.get("dpm2", **ORDER_FAMILY)
    s.set_timesteps(5)
    levels = s.plan.model_sigma[0::2]  # EDM: alpha = 1, model sigma = level
    mids = s.plan.model_sigma[1::2]
    assert mids.tolist() == pytest.approx(torch.sqrt(levels[:-1] * levels[1:]).tolist(), rel=1e-12)
    assert len(s.plan) == 2 * 5 - 1  # one Euler call into sigma = 0


def test_dpm2_ancestral_eta_one_midpoint_is_the_next_level():
    """sigma_down = sigma_next^2 / sigma for eta = 1, so the midpoint sqrt(sigma sigma_down) is sigma_next."""
    s = samplers.get("dpm2_ancestral", **ORDER_FAMILY)
    s.set_timesteps(6)
    assert s.plan.model_sigma[1::2].tolist() == pytest.approx(s.plan.model_sigma[2::2].tolist(), rel=1e-12)


def test_pndm_calls_follow_diffusers():
    pytest.importorskip("diffusers")
    import diffusers

    for skip in (True, False):
        ours = samplers.get("pndm", skip_prk_steps=skip, set_alpha_to_one=False)
        ref = diffusers.PNDMScheduler(skip_prk_steps=skip)
        ours.set_timesteps(10)
        ref.set_timesteps(10)
        assert ours.timesteps.tolist() == ref.timesteps.tolist()
        assert len(ours.timesteps) == (11 if skip else 19)
        assert max(len(u) for u in ours.plan.use) <= 4


def test_multistep_warm_up_restarts_at_a_begin_index():
    """img2img: a run may begin at any call; the multistep history starts empty there (orders 1, 2, 3, ...)."""
    s = samplers.get("lms")
    s.set_timesteps(20)
    assert list(s.plan.use[10]) == ["d9", "d8", "d7"]
    s.set_begin_index(10)
    assert not s.plan.use[10] and list(s.plan.use[12]) == ["d11", "d10"]
    for name, options in (("ipndm", {}), ("pndm", {"skip_prk_steps": True}), ("pndm", {})):
        s = samplers.get(name, **options)
        s.set_timesteps(20)
        begin = len(s.plan) - 8
        s.set_begin_index(begin)
        assert not s.plan.use[begin] and len(s.plan.use[begin + 1]) == 1 and len(s.plan.use[begin + 4]) == 3
        z = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
        x = s.add_noise(MU.expand(64, 4), z, s.timesteps[begin : begin + 1])
        state = s.init_state()
        for i in range(begin, len(s.plan)):
            result, state = s.step_functional(state, exact_output(s, i, x), s.timesteps[i], x, backend="torch")
            x = result.prev_sample
        assert bool(torch.isfinite(x).all())
    s = samplers.get("pndm")
    s.set_timesteps(20)
    with pytest.raises(ValueError, match="continues a step"):
        s.set_begin_index(1)  # inside a pseudo Runge-Kutta step


def test_edm_preconditioning_reads_edm_outputs():
    """preconditioning="edm" (diffusers' EDMEulerScheduler): the model sees c_in x at c_noise = ln(sigma)/4 and
    x0_hat = c_skip x + c_out F; an exact F-model converges to the ODE endpoint at order 1."""
    s = samplers.get("edm_euler", preconditioning="edm", sigma_min=1e-4)
    s.set_timesteps(8)
    plan = s.plan
    sigma = float(plan.model_sigma[0] / plan.model_alpha[0])
    norm = sigma * sigma + 0.25
    assert float(plan.timesteps[0]) == pytest.approx(0.25 * math.log(sigma))
    assert float(plan.input_scale[0]) == pytest.approx(1 / math.sqrt(norm))
    assert float(plan.rows[0, COEFF["p"]]) == pytest.approx(0.25 / norm)
    assert float(plan.rows[0, COEFF["q"]]) == pytest.approx(sigma * 0.5 / math.sqrt(norm))
    assert s.init_noise_sigma == pytest.approx(math.sqrt(80.0**2 + 1))
    with pytest.raises(ValueError, match="EDM's F"):
        samplers.get("edm_euler", preconditioning="edm", prediction_type="sample")


def test_edm_euler_per_step_churn_equals_configured_churn():
    """diffusers passes s_churn & co. to step(); the rows then equal a plan configured with them."""
    configured = samplers.get("edm_euler", s_churn=20.0, s_tmin=0.05, s_tmax=10.0)
    plain = samplers.get("edm_euler")
    for s in (configured, plain):
        s.set_timesteps(12)
    overrides = plain._step_overrides(s_churn=20.0, s_tmin=0.05, s_tmax=10.0)
    for i in range(12):
        row = plain._row_for_call(i, overrides)
        assert torch.equal(row, configured.plan.rows[i])


# --------------------------------------------------------------------------------------------
# Consistency samplers: exact in one step with an exact consistency model
# --------------------------------------------------------------------------------------------


def consistency_run(s: samplers.Scheduler, z: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Sample with a perfect consistency model: each call's estimate (``p x + q out``: LCM's f, TCD's x0_hat) is
    the probability-flow ODE endpoint of the call's input."""
    plan = s.plan
    x = (z * s.init_noise_sigma).to(F64)
    state = s.init_state()
    for i, t in enumerate(s.timesteps):
        alpha, sigma = float(plan.model_alpha[i]), float(plan.model_sigma[i])
        x_in = x * float(plan.input_scale[i])
        target = MU + STD / torch.sqrt(alpha * alpha * STD * STD + sigma * sigma) * (x_in - alpha * MU)
        p, q = float(plan.rows[i, COEFF["p"]]), float(plan.rows[i, COEFF["q"]])
        out = (target - p * x) / q if q != 0 else torch.zeros_like(x)  # q = 0: f(x, 0) = x, any output
        result, state = s.step_functional(state, out, t, x, seeds=seeds, backend="torch")
        x = result.prev_sample
    return x


def test_lcm_one_step_is_the_ode_endpoint():
    s = samplers.get("lcm", prediction_type="sample")
    s.set_timesteps(1)
    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = consistency_run(s, z, samplers.ops.batch_seeds(1, 64))
    alpha, sigma = float(s.plan.model_alpha[0]), float(s.plan.model_sigma[0])
    exact = MU + STD / torch.sqrt(alpha * alpha * STD * STD + sigma * sigma) * (z - alpha * MU)
    assert float((x - exact).abs().max()) < 1e-6 * float(exact.abs().max())  # float32 update


def test_tcd_one_step_is_ddim_onto_t0_with_the_endpoint():
    """TCD (any gamma) in one step: DDIM from x_T to t = 0 (abar_0, diffusers' final level) with x0_hat the
    exact endpoint: ``alpha_0 x0 + sigma_0 (x_T - alpha_T x0) / sigma_T``."""
    s = samplers.get("tcd", prediction_type="sample")
    s.set_timesteps(1)
    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = consistency_run(s, z, samplers.ops.batch_seeds(1, 64))
    alpha, sigma = float(s.plan.model_alpha[0]), float(s.plan.model_sigma[0])
    x0 = MU + STD / torch.sqrt(alpha * alpha * STD * STD + sigma * sigma) * (z - alpha * MU)
    abar0 = float(s.alphas_cumprod[0])
    expected = math.sqrt(abar0) * x0 + math.sqrt(1 - abar0) * (z - alpha * x0) / sigma
    assert float((x - expected).abs().max()) < 1e-6 * float(expected.abs().max())  # float32 update


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lcm_samples_the_data_with_a_consistency_model(family):
    """After the first step every LCM sample is a fresh draw at the next level of an exact sample: the moments
    sit in the noise floor at any step count, on every schedule family."""
    options = {**FAMILIES[family], "prediction_type": "sample"}
    n = 4096
    for steps in (2, 4, 8):
        s = samplers.get("lcm", **options)
        s.set_timesteps(steps)
        z = torch.randn(n, 4, generator=torch.Generator().manual_seed(steps), dtype=F64)
        x = consistency_run(s, z, samplers.ops.batch_seeds(steps, n))
        mean_z = float(((x.mean(0) - MU).abs() / (STD / math.sqrt(n))).max())
        var_z = float(((x.var(0) / STD**2 - 1).abs() / math.sqrt(2 / (n - 1))).max())
        assert mean_z < 4 and var_z < 4, (steps, mean_z, var_z)


def test_tcd_mean_stays_in_the_noise_floor():
    """TCD's DDIM jump to s = floor((1 - gamma) t') keeps the mean of an exact consistency model's samples."""
    n = 4096
    for gamma in (0.3, 1.0):
        s = samplers.get("tcd", eta=gamma)
        s.set_timesteps(4)
        z = torch.randn(n, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
        x = consistency_run(s, z, samplers.ops.batch_seeds(2, n))
        assert float(((x.mean(0) - MU).abs() / (STD / math.sqrt(n))).max()) < 4


def test_tcd_without_gamma_is_ddim_on_the_grid():
    tcd = samplers.get("tcd", eta=0.0)
    tcd.set_timesteps(4)
    ddim = samplers.get(
        "ddim",
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
    )
    ddim.set_timesteps(timesteps=tcd.timesteps.tolist())
    assert tcd.timesteps.tolist() == [999, 759, 499, 259]
    assert torch.allclose(tcd.plan.rows, ddim.plan.rows, rtol=1e-12, atol=1e-12)
    assert not tcd.is_stochastic and samplers.get("tcd").is_stochastic


def test_lcm_grid_and_boundary_condition():
    s = samplers.get("lcm")
    s.set_timesteps(4)
    assert s.timesteps.tolist() == [999, 759, 499, 259]
    s.set_timesteps(2, original_inference_steps=20, strength=0.5)
    assert s.timesteps.tolist() == [499, 249]
    c_skip, c_out = boundary_scalings(0.0, 10.0)
    assert (c_skip, c_out) == (1.0, 0.0)  # f(x, 0) = x
    with pytest.raises(ValueError, match="cannot exceed"):
        s.set_timesteps(51)
    with pytest.raises(ValueError, match="strength"):
        s.set_timesteps(4, strength=0.0)
    with pytest.raises(ValueError, match="gamma"):
        samplers.get("tcd", eta=1.5)
