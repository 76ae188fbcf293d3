"""The coefficient rows against the math core, convergence orders, history and warm-up handling."""

import math

import pytest
import torch

import samplers
from samplers import schedules
from samplers.ops.reference import COEFF
from samplers.testing import GaussianOracle

F64 = torch.float64


def _col(plan, name):
    return plan.rows[:, COEFF[name]]


def test_first_order_step_is_ddim():
    """DPM-Solver++ of order 1 is DDIM (eta = 0): the rows equal schedules.ddim_transition's."""
    s = samplers.get("dpmpp_2m", solver_order=1)
    s.set_timesteps(12)
    plan = s.plan
    alpha = plan.model_alpha
    sigma = plan.model_sigma
    a_next = torch.cat([alpha[1:], torch.ones(1, dtype=F64)])
    s_next = torch.cat([sigma[1:], torch.zeros(1, dtype=F64)])
    coef_x0, coef_eps, _ = schedules.ddim_transition(a_next, s_next, alpha, sigma, 0.0)
    # prev = coef_x0 x0 + coef_eps (x - alpha x0) / sigma
    torch.testing.assert_close(_col(plan, "a"), coef_eps / sigma, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(_col(plan, "b"), coef_x0 - coef_eps * alpha / sigma, rtol=1e-10, atol=1e-12)
    assert bool((_col(plan, "h0") == 0).all()) and bool((_col(plan, "c") == 0).all())


def test_sde_first_order_step_is_the_posterior_draw():
    """SDE-DPM-Solver++ of order 1 draws from q(x_s | x_t, x0): mean and std from schedules.posterior."""
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


def test_x0_weights_sum_to_the_first_order_weight():
    """Higher-order terms are divided differences of x0 estimates: on constant x0 they vanish, so the
    x0 weights of every row sum to the first-order weight alpha_next (1 - e^{-h})."""
    first = samplers.get("dpmpp_2m", solver_order=1)
    first.set_timesteps(20)
    for name in ("dpmpp_2m", "dpmpp_3m", "unipc"):
        s = samplers.get(name)
        s.set_timesteps(20)
        total = _col(s.plan, "b") + _col(s.plan, "h0") + _col(s.plan, "h1")
        torch.testing.assert_close(total, _col(first.plan, "b"), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(_col(s.plan, "a"), _col(first.plan, "a"), rtol=1e-12, atol=0)


def _exact_flow(oracle, x, a0, s0, a1, s1):
    mu, sd = oracle.mean, oracle.std
    return a1 * mu + torch.sqrt(a1**2 * sd**2 + s1**2) * (x - a0 * mu) / torch.sqrt(a0**2 * sd**2 + s0**2)


def _error(name, steps, **config):
    """RMS error on a Gaussian oracle over a log-SNR-uniform grid ending at the schedule's first level
    (final_sigmas_type='sigma_min'), against the exact probability-flow ODE solution there."""
    oracle = GaussianOracle.for_shape([4])
    noise = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    s = samplers.get(name, final_sigmas_type="sigma_min", lower_order_final=False, **config)
    table = s.schedule.sigmas
    levels = torch.exp(torch.linspace(math.log(float(table[-1])), math.log(float(table[0])), steps + 1, dtype=F64))
    s.set_timesteps(sigmas=levels[:-1])
    plan = s.plan
    x = noise.clone()
    for i, t in enumerate(s.timesteps):
        out = oracle.model_output("epsilon", x, float(plan.model_alpha[i]), float(plan.model_sigma[i]))
        x = s.step(out, t, x, backend="torch").prev_sample
    abar0 = float(s.alphas_cumprod[0])
    exact = _exact_flow(
        oracle, noise, float(plan.model_alpha[0]), float(plan.model_sigma[0]), abar0**0.5, (1 - abar0) ** 0.5
    )
    return float(((x - exact) ** 2).sum(-1).mean().sqrt())


@pytest.mark.parametrize(
    "name, config, order",
    [
        ("dpmpp_2m", {"solver_order": 1}, 1),
        ("dpmpp_2m", {}, 2),
        ("dpmpp_2m", {"solver_type": "heun"}, 2),
        ("unipc", {"solver_order": 1}, 2),  # UniPC-1: first-order predictor + corrector
        ("unipc", {}, 3),
        ("unipc", {"solver_type": "bh1"}, 3),
    ],
)
def test_convergence_order(name, config, order):
    e40, e80 = _error(name, 40, **config), _error(name, 80, **config)
    measured = math.log2(e40 / e80)
    assert measured > order - 0.35, f"{name} {config}: errors {e40:.3g} -> {e80:.3g}, order {measured:.2f} < {order}"


def test_third_order_beats_second_order():
    # 3M warms up with one first-order step, which caps its global order at 2; it still has the smaller error.
    assert _error("dpmpp_3m", 40) < 0.5 * _error("dpmpp_2m", 40)


def test_parameterization_does_not_change_the_trajectory():
    """The solvers consume x0 only: the exact model in any prediction type gives the same samples."""
    oracle = GaussianOracle.for_shape([3])
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    finals = {}
    for kind in ("epsilon", "v_prediction", "sample", "score"):
        s = samplers.get("unipc", prediction_type=kind)
        s.set_timesteps(15)
        plan = s.plan
        x = noise.clone()
        for i, t in enumerate(s.timesteps):
            out = oracle.model_output(kind, x, float(plan.model_alpha[i]), float(plan.model_sigma[i]))
            x = s.step(out, t, x, backend="torch").prev_sample
        finals[kind] = x
    for kind, x in finals.items():
        torch.testing.assert_close(x, finals["epsilon"], rtol=0, atol=2e-5, msg=kind)


def test_history_is_kept_and_shifted():
    s = samplers.get("dpmpp_3m")
    s.set_timesteps(8)
    assert s.plan.use[0] == () and s.plan.use[1] == ("x0",) and s.plan.use[2] == ("x0", "x0_prev")
    x = torch.randn(2, 3, dtype=F64)
    state = s.init_state()
    x0s = []
    for t in s.timesteps[:3]:
        out, state = s.step_functional(state, torch.randn(2, 3, dtype=F64), t, x, backend="torch")
        x0s.append(out.pred_original_sample)
        x = out.prev_sample
    assert torch.equal(state.kept["x0"], x0s[2]) and torch.equal(state.kept["x0_prev"], x0s[1])


def test_begin_index_restarts_the_warm_up():
    s = samplers.get("dpmpp_2m")
    s.set_timesteps(20)
    assert s.plan.use[8] == ("x0",)
    s.set_begin_index(8)
    assert s.plan.use[8] == () and s.plan.use[9] == ("x0",)
    first = samplers.get("dpmpp_2m", solver_order=1)
    first.set_timesteps(20)
    torch.testing.assert_close(s.plan.rows[8], first.plan.rows[8])
    x = torch.randn(2, 3, dtype=F64)
    out = s.step(torch.randn(2, 3, dtype=F64), s.timesteps[8], x, backend="torch")  # no history needed
    assert out.prev_sample.shape == x.shape and s.step_index == 9
