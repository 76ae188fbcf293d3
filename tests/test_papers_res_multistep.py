"""RES multistep (Zhang, Song & Chen 2023) and its ancestral variant: order conditions, orders on the exact
Gaussian oracle, the identities that define them, parity with the solvers they coincide with, moments.

Equation labels (R3)-(R6) are those of samplers/schedulers/res_multistep.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from samplers.ops.reference import COEFF
from samplers.schedulers.exponential import exponential_weights

import battery

F64 = torch.float64
# 80 -> 1e-4 in 8-16 Karras steps makes lambda-steps of 1-3; from 32 steps the error is in its asymptotic
# regime (consecutive slopes 2.24, 2.10, 2.05 on EDM).
STEPS = (32, 64, 128, 256)
FLOW = {**battery.FAMILIES["flow_shift3"], "prediction_type": "flow"}


def _plan(name: str, steps: int = 12, **config) -> samplers.plan.Plan:
    s = samplers.get(name, schedule="edm", sigma_schedule="karras", **config)
    s.set_timesteps(steps)
    return s.plan


def _levels(plan) -> list[float]:
    """Sigma-space levels of the calls (float64) and the final 0."""
    return (plan.model_sigma / plan.model_alpha).tolist() + [0.0]


def test_exponential_weights_are_the_phi_integrals() -> None:
    """w0 = int_0^h e^{-(h-s)} ds and w1 = int_0^h e^{-(h-s)} s ds (Gauss-Legendre, exact for these)."""
    import numpy as np

    nodes, weights = np.polynomial.legendre.leggauss(40)
    for h in (1e-4, 0.3, 1.0, 5.0, 30.0):
        s = 0.5 * h * (nodes + 1)
        kernel = 0.5 * h * weights * np.exp(-(h - s))
        w0, w1 = exponential_weights(h)
        assert w0 == pytest.approx(float(kernel.sum()), rel=1e-12)
        assert w1 == pytest.approx(float((kernel * s).sum()), rel=1e-7 if h < 1e-3 else 1e-12)
    assert exponential_weights(math.inf) == (1.0, math.inf)
    with pytest.raises(ValueError, match="lambda"):
        exponential_weights(-0.1)


def test_rows_meet_both_res_order_conditions() -> None:
    """(R3) in sigma space: a = e^{-h}; b1 + b2 = phi_1 (b + h0 = w0) and b2 c2 = phi_2 (-h0 h_{k-1} = w1)."""
    plan = _plan("res_multistep", prediction_type="sample")
    level = _levels(plan)
    for k in range(1, len(level) - 2):
        row = plan.rows[k]
        h, h_prev = math.log(level[k] / level[k + 1]), math.log(level[k - 1] / level[k])
        w0, w1 = exponential_weights(h)
        # EDM: alpha = 1, so the model-space row is the sigma-space one
        assert float(row[COEFF["a"]]) == pytest.approx(math.exp(-h), rel=1e-12)
        assert float(row[COEFF["b"]] + row[COEFF["h0"]]) == pytest.approx(w0, rel=1e-12)
        assert float(-row[COEFF["h0"]]) * h_prev == pytest.approx(w1, rel=1e-12)
    # the first step is exponential Euler (DDIM) and the step into sigma = 0 returns D
    assert float(plan.rows[0, COEFF["h0"]]) == 0.0
    last = plan.rows[-1]
    assert float(last[COEFF["a"]]) == 0.0 and float(last[COEFF["b"]]) == 1.0 and float(last[COEFF["h0"]]) == 0.0


def test_res_2m_is_dpm_solver_pp_2m_with_the_phi2_weight() -> None:
    """The identity the module docstring derives: same rows as dpmpp_2m(solver_type="heun"), not "midpoint"."""
    res = samplers.get("res_multistep", prediction_type="v_prediction")
    res.set_timesteps(20)
    heun = samplers.get("dpmpp_2m", prediction_type="v_prediction", solver_type="heun")
    heun.set_timesteps(20)
    mid = samplers.get("dpmpp_2m", prediction_type="v_prediction")
    mid.set_timesteps(20)
    assert torch.equal(res.plan.rows, heun.plan.rows)
    assert not torch.allclose(res.plan.rows, mid.plan.rows)


@pytest.mark.parametrize("family", [None, FLOW], ids=["edm", "flow_shift3"])
def test_res_multistep_is_second_order(family) -> None:
    battery.assert_order("res_multistep", {}, 2, steps=STEPS, family=family)


def test_ancestral_eta0_is_res_2m_and_close_to_it_for_tiny_eta() -> None:
    base = _plan("res_multistep", prediction_type="epsilon")
    zero = _plan("res_multistep_ancestral", prediction_type="epsilon", eta=0.0)
    tiny = _plan("res_multistep_ancestral", prediction_type="epsilon", eta=1e-7)
    assert torch.equal(base.rows, zero.rows) and not zero.stochastic
    cols = [COEFF[c] for c in ("a", "b", "h0")]
    assert torch.allclose(tiny.rows[:, cols], base.rows[:, cols], rtol=1e-9, atol=1e-12)
    assert tiny.stochastic


def test_ancestral_first_order_part_is_euler_ancestral() -> None:
    """(R4)-(R5): carry and noise are Euler ancestral's, and b + h0 (the weight without the D_k - D_{k-1}
    correction) is its x0 weight, for eta = 1 and eta = 0.5 alike."""
    for eta in (1.0, 0.5):
        ours = _plan("res_multistep_ancestral", prediction_type="sample", eta=eta).rows
        ref = _plan("euler_ancestral", prediction_type="sample", eta=eta).rows
        for col in ("a", "c"):
            assert torch.allclose(ours[:, COEFF[col]], ref[:, COEFF[col]], rtol=1e-12, atol=1e-14), col
        total = ours[:, COEFF["b"]] + ours[:, COEFF["h0"]]
        assert torch.allclose(total, ref[:, COEFF["b"]], rtol=1e-12, atol=1e-14)
        assert bool((ours[1:-1, COEFF["h0"]] != 0).all())  # the RES correction is there


def test_ancestral_slope_weight_is_the_sde_integral_R6() -> None:
    """eta = 1: the D_{k-1} weight is w1(2h) / (2 h_{k-1}), SDE-DPM-Solver++(2M) with the phi_2 weight."""
    plan = _plan("res_multistep_ancestral", eta=1.0)
    level = _levels(plan)
    for k in range(1, len(level) - 2):
        h, h_prev = math.log(level[k] / level[k + 1]), math.log(level[k - 1] / level[k])
        assert float(-plan.rows[k, COEFF["h0"]]) == pytest.approx(exponential_weights(2 * h)[1] / (2 * h_prev))
    sde = samplers.get("dpmpp_2m_sde", schedule="edm", sigma_schedule="karras", solver_type="heun")
    sde.set_timesteps(12)
    assert torch.allclose(plan.rows, sde.plan.rows, rtol=1e-12, atol=1e-14)


def test_ancestral_declares_its_brownian_intervals() -> None:
    s = samplers.get("res_multistep_ancestral", schedule="edm", sigma_schedule="karras", noise="brownian")
    s.set_timesteps(10)
    level = _levels(s.plan)
    for k, interval in enumerate(s.plan.noise_intervals[:-1]):
        assert interval == pytest.approx((level[k], level[k + 1]))
    assert s.plan.noise_intervals[-1] is None  # the step into sigma = 0 draws nothing


def test_ancestral_runs_from_a_flow_at_t1() -> None:
    """alpha = 0 at the first call: the first step is DDIM-eta from pure noise (no division by zero)."""
    s = samplers.get("res_multistep_ancestral", **FLOW)
    s.set_timesteps(12)
    assert float(s.plan.model_alpha[0]) == 0.0 and s.plan.noise_intervals[0][0] == math.inf
    x, _ = battery.run(s, torch.randn(64, 4, generator=torch.Generator().manual_seed(1), dtype=F64))
    assert bool(torch.isfinite(x).all())


def test_ancestral_moments_inside_the_noise_floor() -> None:
    """At 100 steps the output moments are those of the data (z-scores of 2048 samples)."""
    mean_z, var_z = battery.moments_error("res_multistep_ancestral", {}, 100, n=2048)
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


@pytest.mark.slow
def test_ancestral_moments_on_a_flow() -> None:
    """Slower to reach the floor than on EDM (var z-score 27, 4.4, 3.8 at 50, 100, 200 steps; Euler
    ancestral: 7.6, 5.3, 3.3): the shifted flow grid's first steps are long in lambda."""
    mean_z, var_z = battery.moments_error("res_multistep_ancestral", {}, 300, n=2048, family=FLOW)
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


def test_ancestral_config_errors() -> None:
    with pytest.raises(ValueError, match="eta"):
        samplers.get("res_multistep_ancestral", eta=1.5)
    with pytest.raises(ValueError, match="s_noise"):
        samplers.get("res_multistep_ancestral", s_noise=-1.0)
    with pytest.raises(TypeError, match="solver_type"):
        samplers.get("res_multistep", solver_type="midpoint")  # RES fixes its weight


def test_img2img_begin_restarts_the_warm_up() -> None:
    s = samplers.get("res_multistep")
    s.set_timesteps(10)
    s.set_begin_index(4)
    assert s.plan.use[4] == () and s.plan.use[5] != ()


# --------------------------------------------------------------------------------------------
# Parity with the solvers RES coincides with: diffusers' DPMSolverMultistepScheduler with
# solver_type="heun" (RES 2M; SDE form for the ancestral variant at eta = 1), and k-diffusion's
# sample_dpmpp_2m_sde(solver_type="heun") at eta = 0 and 1, given the same noise.
# --------------------------------------------------------------------------------------------

PARITY_CASES = {
    "default": {},
    "karras": {"use_karras_sigmas": True},
    "lu": {"use_lu_lambdas": True},
    "v_trailing": {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    "sd_betas": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
}


def _diffusers_loop(scheduler, model, x_start: torch.Tensor, steps: int, noises: list[torch.Tensor] | None):
    scheduler.set_timesteps(steps)
    x = x_start * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        kwargs = {} if noises is None else {"variance_noise": noises[i]}
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, **kwargs).prev_sample
    return x


@pytest.mark.parametrize("case", list(PARITY_CASES))
@pytest.mark.parametrize("name", ["res_multistep", "res_multistep_ancestral"])
def test_parity_with_diffusers_dpmsolver_heun(name: str, case: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    from test_integrations_diffusers import SHAPE, _gaussian_model

    config = PARITY_CASES[case]
    algorithm = "sde-dpmsolver++" if name.endswith("ancestral") else "dpmsolver++"
    theirs = diffusers.DPMSolverMultistepScheduler(**config, algorithm_type=algorithm, solver_type="heun")
    ours = samplers.get(name, **config)
    model = _gaussian_model(theirs.alphas_cumprod.to(F64), config.get("prediction_type", "epsilon"))
    gen = torch.Generator().manual_seed(11)
    x_start = torch.randn(SHAPE, generator=gen)
    noises = [torch.randn(SHAPE, generator=gen) for _ in range(50)] if algorithm.startswith("sde") else None
    a = _diffusers_loop(theirs, model, x_start, 50, noises)
    b = _diffusers_loop(ours, model, x_start, 50, noises)
    rel = float((a - b).abs().max()) / float(a.abs().max())
    assert rel <= 1e-5, rel


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_parity_with_k_diffusion_dpmpp_2m_sde_heun(eta: float) -> None:
    from test_integrations_k_diffusion import GRIDS, FixedNoise, _load_k_diffusion, exact_denoiser, start

    from samplers.integrations import k_diffusion as kd

    k = _load_k_diffusion()
    sigmas = GRIDS["karras80"]()
    x = start(sigmas)
    theirs_noise, ours_noise = FixedNoise(x.shape), FixedNoise(x.shape)
    theirs = k.sampling.sample_dpmpp_2m_sde(
        exact_denoiser, x, sigmas, eta=eta, noise_sampler=theirs_noise, solver_type="heun", disable=True
    )
    name = "res_multistep_ancestral" if eta else "res_multistep"
    ours = kd.sample_scheduler(exact_denoiser, x, sigmas, name, noise_sampler=ours_noise, disable=True)
    assert float((theirs - ours).abs().max()) <= 1e-5 * float(theirs.abs().max())
    assert len(ours_noise.calls) == len(theirs_noise.calls)
    for a, b in zip(ours_noise.calls, theirs_noise.calls, strict=True):  # the same Brownian intervals
        assert a == pytest.approx(b, rel=1e-6)
