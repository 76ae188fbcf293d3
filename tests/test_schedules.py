"""The math core of schedules.py: forward process, transitions, posteriors, DDIM's family, grids.

Every property is checked in float64 over random schedules drawn by hypothesis: named discrete
beta schedules (with and without the zero-terminal-SNR rescale), custom betas, and the continuous
VP-cosine, VP-linear, VE, EDM and rectified-flow families.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from samplers import schedules
from samplers.schedules import (
    DiscreteVPSchedule,
    EDMSchedule,
    RectifiedFlowSchedule,
    VESchedule,
    VPCosineSchedule,
    VPLinearSchedule,
)

F64 = torch.float64
NAMED = schedules.BETA_SCHEDULES
FAMILIES = ("discrete", "vp_cosine", "vp_linear", "ve", "edm", "flow")
FAST = settings(max_examples=40, deadline=None)


# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------


@st.composite
def discrete_schedules(draw, min_steps: int = 2, max_steps: int = 1000, rescale: bool | None = None):
    """A DiscreteVPSchedule from a named beta schedule or custom betas, maybe zero-SNR rescaled."""
    kind = draw(st.sampled_from(NAMED + ("custom",)))
    steps = draw(st.integers(min_steps, max_steps))
    if kind == "custom":
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        high = draw(st.floats(1e-3, 0.5))
        betas = torch.from_numpy(rng.uniform(1e-5, high, steps))
    else:
        start = draw(st.floats(1e-5, 5e-3))
        end = draw(st.floats(start * 1.5, 0.05))
        betas = schedules.make_betas(kind, steps, start, end)
    do_rescale = draw(st.booleans()) if rescale is None else rescale
    if do_rescale and steps >= 2:
        betas = schedules.rescale_zero_terminal_snr(betas)
    return DiscreteVPSchedule(betas=betas)


@st.composite
def schedule_and_times(draw, count: int = 2):
    """``(schedule, times)``: a schedule from any family and ``count`` strictly increasing times with sigma > 0."""
    family = draw(st.sampled_from(FAMILIES))
    if family == "discrete":
        sched = draw(discrete_schedules(min_steps=count + 1, max_steps=400))
        n = sched.num_train_timesteps
        times = sorted(draw(st.lists(st.integers(0, n - 1), min_size=count, max_size=count, unique=True)))
        return sched, [torch.tensor(t) for t in times]
    if family == "vp_cosine":
        sched, lo, hi = VPCosineSchedule(s=draw(st.floats(1e-3, 0.02))), 1e-3, 0.99
    elif family == "vp_linear":
        sched, lo, hi = VPLinearSchedule(draw(st.floats(0.05, 1.0)), draw(st.floats(5.0, 30.0))), 1e-3, 1.0
    elif family == "ve":
        sched, lo, hi = VESchedule(draw(st.floats(1e-3, 0.1)), draw(st.floats(1.0, 100.0))), 0.0, 1.0
    elif family == "edm":
        sched, lo, hi = EDMSchedule(), 1e-3, 100.0
    else:
        scale = draw(st.sampled_from([1.0, 1000.0]))
        sched, lo, hi = RectifiedFlowSchedule(timestep_scale=scale), 1e-3 * scale, 1.0 * scale
    raw = draw(st.lists(st.floats(lo, hi), min_size=count, max_size=count))
    times = sorted(raw)
    # keep the times apart so the transition variance is not pure cancellation noise
    assume(all(b - a > 1e-3 * (hi - lo) for a, b in zip(times, times[1:], strict=False)))
    return sched, [torch.tensor(t, dtype=F64) for t in times]


def alpha_sigma_floats(sched, t) -> tuple[float, float]:
    a, s = sched.alpha_sigma(t)
    return float(a), float(s)


def close(a: float, b: float, rtol: float = 1e-9, atol: float = 1e-12) -> bool:
    return abs(a - b) <= atol + rtol * max(abs(a), abs(b))


# --------------------------------------------------------------------------------------------
# forward process: closed form vs chain; transitions
# --------------------------------------------------------------------------------------------


@FAST
@given(sched=discrete_schedules(min_steps=1))
def test_closed_form_marginal_equals_composed_chain(sched):
    """q(x_t|x_0) = N(sqrt(abar_t) x0, 1 - abar_t) equals composing q(x_i|x_{i-1}) = N(sqrt(1-beta_i) x, beta_i)."""
    betas = sched.betas.tolist()
    mean_coef, var = 1.0, 0.0  # x_{-1} = x_0 exactly
    prev_alpha, prev_sigma = 1.0, 0.0
    for i, beta in enumerate(betas):
        mean_coef *= math.sqrt(1.0 - beta)
        var = (1.0 - beta) * var + beta
        alpha, sigma = alpha_sigma_floats(sched, torch.tensor(i))
        assert close(alpha, mean_coef, rtol=1e-10), (i, alpha, mean_coef)
        assert close(sigma * sigma, var, rtol=1e-10), (i, sigma * sigma, var)
        # the one-step transition read back from the marginals is the chain's own step
        a_step, v_step = schedules.transition(prev_alpha, prev_sigma, alpha, sigma)
        assert close(a_step, math.sqrt(1.0 - beta), rtol=1e-9)
        assert close(v_step, beta, rtol=1e-7, atol=1e-13)
        prev_alpha, prev_sigma = alpha, sigma


@FAST
@given(pair=schedule_and_times(count=3))
def test_transition_composes(pair):
    """q(x_t|x_s) = q(x_t|x_u) o q(x_u|x_s) for s < u < t: coefficients multiply, variances add."""
    sched, (ts, tu, tt) = pair
    a_s, s_s = alpha_sigma_floats(sched, ts)
    a_u, s_u = alpha_sigma_floats(sched, tu)
    a_t, s_t = alpha_sigma_floats(sched, tt)
    assume(a_s > 0 and a_u > 0)
    a_ts, v_ts = schedules.transition(a_s, s_s, a_t, s_t)
    a_us, v_us = schedules.transition(a_s, s_s, a_u, s_u)
    a_tu, v_tu = schedules.transition(a_u, s_u, a_t, s_t)
    assert close(a_ts, a_tu * a_us, rtol=1e-10)
    assert close(v_ts, a_tu * a_tu * v_us + v_tu, rtol=1e-8, atol=1e-12 * s_t * s_t)
    assert v_ts >= -1e-12 * s_t * s_t and v_us >= -1e-12 * s_u * s_u
    # the clean endpoint: q(x_t | x_0) is the transition from (alpha, sigma) = (1, 0)
    a0, v0 = schedules.transition(1.0, 0.0, a_t, s_t)
    assert close(a0, a_t) and close(v0, s_t * s_t)


def _bayes_product(a_s: float, s_s: float, a_ts: float, v_ts: float) -> tuple[float, float, float]:
    """Prior N(a_s x0, s_s^2) on x_s times likelihood N(x_t; a_ts x_s, v_ts): (coef_xt, coef_x0, variance)."""
    precision = 1.0 / (s_s * s_s) + a_ts * a_ts / v_ts
    variance = 1.0 / precision
    return variance * a_ts / v_ts, variance * a_s / (s_s * s_s), variance


@FAST
@given(pair=schedule_and_times(count=2))
def test_posterior_is_the_bayes_product_of_gaussians(pair):
    sched, (ts, tt) = pair
    a_s, s_s = alpha_sigma_floats(sched, ts)
    a_t, s_t = alpha_sigma_floats(sched, tt)
    assume(a_s > 0 and s_s > 0)
    a_ts, v_ts = schedules.transition(a_s, s_s, a_t, s_t)
    assume(v_ts > 1e-9 * s_t * s_t)  # a non-degenerate likelihood
    post = schedules.posterior(a_s, s_s, a_t, s_t)
    cxt, cx0, var = _bayes_product(a_s, s_s, a_ts, v_ts)
    assert close(post.coef_xt, cxt, rtol=1e-7)
    assert close(post.coef_x0, cx0, rtol=1e-7, atol=1e-12)
    assert close(post.variance, var, rtol=1e-7, atol=1e-15)


def _log_normal(x: np.ndarray, mean: np.ndarray | float, var: float) -> np.ndarray:
    return -0.5 * (np.log(2 * math.pi * var) + (x - mean) ** 2 / var)


@FAST
@given(pair=schedule_and_times(count=2), seed=st.integers(0, 2**32 - 1))
def test_posterior_density_satisfies_bayes_rule_pointwise(pair, seed):
    """log q(x_s|x_t,x_0) = log q(x_s|x_0) + log q(x_t|x_s) - log q(x_t|x_0) at random points."""
    sched, (ts, tt) = pair
    a_s, s_s = alpha_sigma_floats(sched, ts)
    a_t, s_t = alpha_sigma_floats(sched, tt)
    assume(a_s > 0 and s_s > 0)
    a_ts, v_ts = schedules.transition(a_s, s_s, a_t, s_t)
    assume(v_ts > 1e-6 * s_t * s_t)
    post = schedules.posterior(a_s, s_s, a_t, s_t)
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=16)
    xt = a_t * x0 + s_t * rng.normal(size=16)
    post_mean = post.coef_xt * xt + post.coef_x0 * x0
    xs = post_mean + math.sqrt(post.variance) * rng.normal(size=16)
    lhs = _log_normal(xs, post_mean, post.variance)
    rhs = (
        _log_normal(xs, a_s * x0, s_s * s_s) + _log_normal(xt, a_ts * xs, v_ts) - _log_normal(xt, a_t * x0, s_t * s_t)
    )
    np.testing.assert_allclose(lhs, rhs, rtol=1e-6, atol=1e-6)


@FAST
@given(sched=discrete_schedules(min_steps=2))
def test_ddpm_beta_tilde_is_the_s_equals_t_minus_1_posterior(sched):
    """DDPM eq. 7: beta_tilde_t = (1-abar_{t-1})/(1-abar_t) beta_t.

    Mean coefficients sqrt(abar_{t-1}) beta_t/(1-abar_t) and sqrt(alpha_t)(1-abar_{t-1})/(1-abar_t).
    """
    abar = sched.alphas_cumprod.tolist()
    betas = sched.betas.tolist()
    for t in range(1, len(abar)):
        a_s, s_s = math.sqrt(abar[t - 1]), math.sqrt(1 - abar[t - 1])
        a_t, s_t = math.sqrt(abar[t]), math.sqrt(1 - abar[t])
        post = schedules.posterior(a_s, s_s, a_t, s_t)
        beta = betas[t]
        assert close(post.variance, (1 - abar[t - 1]) / (1 - abar[t]) * beta, rtol=1e-7, atol=1e-15), t
        assert close(post.coef_x0, math.sqrt(abar[t - 1]) * beta / (1 - abar[t]), rtol=1e-7, atol=1e-13), t
        assert close(post.coef_xt, math.sqrt(1 - beta) * (1 - abar[t - 1]) / (1 - abar[t]), rtol=1e-9), t


@FAST
@given(pair=schedule_and_times(count=2), eta=st.floats(0.0, 1.0))
def test_ddim_transition_keeps_q_xs_given_x0_for_every_eta(pair, eta):
    """x_s = alpha_s x0 + dir * eps + std * z, eps and z ~ N(0, I) independent: mean alpha_s x0, variance sigma_s^2."""
    sched, (ts, tt) = pair
    a_s, s_s = alpha_sigma_floats(sched, ts)
    a_t, s_t = alpha_sigma_floats(sched, tt)
    assume(a_s > 0)
    coef_x0, direction, std = schedules.ddim_transition(a_s, s_s, a_t, s_t, eta)
    assert coef_x0 == a_s
    assert close(direction**2 + std**2, s_s * s_s, rtol=1e-10, atol=1e-15)
    # The same through the update's affine form x_s = c_xt x_t + c_x0 x0 + std z with
    # eps_hat = (x_t - alpha_t x0)/sigma_t, pushed through x_t ~ q(x_t | x_0) = N(alpha_t x0, sigma_t^2):
    # mean c_xt alpha_t + c_x0, variance c_xt^2 sigma_t^2 + std^2.
    c_xt, c_x0 = direction / s_t, coef_x0 - direction * a_t / s_t
    assert close(c_xt * a_t + c_x0, a_s, rtol=1e-9, atol=1e-12)
    assert close(c_xt**2 * s_t**2 + std**2, s_s * s_s, rtol=1e-9, atol=1e-15)
    # no clamping was needed: the noise never exceeds the marginal's own std
    assert std * std <= s_s * s_s * (1 + 1e-12)
    post = schedules.posterior(a_s, s_s, a_t, s_t)
    assert close(std, eta * math.sqrt(max(post.variance, 0.0)), rtol=1e-12)


@FAST
@given(pair=schedule_and_times(count=2))
def test_ddim_transition_eta1_is_the_posterior(pair):
    """With eps = (x_t - alpha_t x0)/sigma_t, eta = 1 gives exactly q(x_s | x_t, x_0)."""
    sched, (ts, tt) = pair
    a_s, s_s = alpha_sigma_floats(sched, ts)
    a_t, s_t = alpha_sigma_floats(sched, tt)
    assume(a_s > 0)
    coef_x0, direction, std = schedules.ddim_transition(a_s, s_s, a_t, s_t, 1.0)
    post = schedules.posterior(a_s, s_s, a_t, s_t)
    # direction = sqrt(sigma_s^2 - std^2) cancels when the posterior is nearly the prior (alpha_t -> 0): the
    # square root of a float64 rounding of sigma_s^2 leaves up to sqrt(2^-52) sigma_s = 1.5e-8 sigma_s
    slack = 3e-8 * s_s / s_t
    assert close(direction / s_t, post.coef_xt, rtol=1e-6, atol=slack)
    assert close(coef_x0 - direction * a_t / s_t, post.coef_x0, rtol=1e-6, atol=slack * a_t + 1e-9)
    assert close(std * std, post.variance, rtol=1e-9, atol=1e-15)


@FAST
@given(pair=schedule_and_times(count=2))
def test_ddim_transition_eta0_is_deterministic_and_the_ve_euler_step(pair):
    sched, (ts, tt) = pair
    a_s, s_s = alpha_sigma_floats(sched, ts)
    a_t, s_t = alpha_sigma_floats(sched, tt)
    assume(a_s > 0 and a_t > 0)
    coef_x0, direction, std = schedules.ddim_transition(a_s, s_s, a_t, s_t, 0.0)
    assert std == 0.0 and close(direction, s_s)
    # In VE coordinates (x / alpha, sigma / alpha) the same step is Euler on dx/dsigma = (x - x0)/sigma.
    sig_t, sig_s = s_t / a_t, s_s / a_s
    c0, d, z = schedules.ddim_transition(1.0, sig_s, 1.0, sig_t, 0.0)
    x, x0 = 0.7, -0.3
    ddim_step = c0 * x0 + d * (x - x0) / sig_t
    euler_step = x + (sig_s - sig_t) * (x - x0) / sig_t
    assert z == 0.0 and close(ddim_step, euler_step, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# schedule invariants
# --------------------------------------------------------------------------------------------


@FAST
@given(
    name=st.sampled_from(NAMED),
    steps=st.integers(1, 2000),
    start=st.floats(1e-5, 5e-3),
    ratio=st.floats(1.5, 100.0),
)
def test_named_beta_schedules_give_decreasing_abar_in_unit_interval(name, steps, start, ratio):
    betas = schedules.make_betas(name, steps, start, min(start * ratio, 0.05))
    assert betas.dtype == F64 and betas.shape == (steps,)
    assert bool(((betas > 0) & (betas < 1)).all())
    abar = schedules.alphas_cumprod_from_betas(betas)
    assert bool(((abar > 0) & (abar <= 1)).all())
    assert bool((abar[1:] < abar[:-1]).all())
    sched = DiscreteVPSchedule(betas=betas)
    log_snr = sched.log_snr(torch.arange(steps))
    assert bool((log_snr[1:] < log_snr[:-1]).all())


def test_every_named_beta_schedule_is_offered():
    assert set(NAMED) == {"linear", "scaled_linear", "cosine", "squaredcos_cap_v2", "sigmoid"}
    assert set(schedules.TIMESTEP_SPACINGS) == {"leading", "trailing", "linspace"}


@pytest.mark.parametrize("steps", [1, 2, 10, 1000, 4000])
def test_cosine_betas_follow_nichol_dhariwal_and_are_capped(steps):
    def f(t: float) -> float:
        return math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2

    expected = [min(1 - f(i + 1) / f(i), 0.999) for i in range(steps)]
    betas = schedules.make_betas("cosine", steps)
    np.testing.assert_allclose(betas.numpy(), expected, rtol=1e-10, atol=1e-15)
    assert float(betas.max()) <= 0.999
    assert float(betas[-1]) == pytest.approx(0.999)  # abar(1) = 0 so the last beta is the cap
    assert torch.equal(betas, schedules.make_betas("squaredcos_cap_v2", steps))


@FAST
@given(steps=st.integers(2, 2000), start=st.floats(1e-5, 5e-3), ratio=st.floats(1.5, 100.0))
def test_linear_scaled_linear_sigmoid_shapes(steps, start, ratio):
    end = min(start * ratio, 0.05)
    lin = schedules.make_betas("linear", steps, start, end)
    assert lin[0] == pytest.approx(start) and lin[-1] == pytest.approx(end)
    np.testing.assert_allclose(np.diff(lin.numpy(), 2), 0, atol=1e-15)  # linear in t
    scaled = schedules.make_betas("scaled_linear", steps, start, end)
    assert scaled[0] == pytest.approx(start) and scaled[-1] == pytest.approx(end)
    np.testing.assert_allclose(np.diff(scaled.sqrt().numpy(), 2), 0, atol=1e-14)  # linear in sqrt(beta)
    sig = schedules.make_betas("sigmoid", steps, start, end)
    assert bool((sig[1:] > sig[:-1]).all()) and bool(((sig > start) & (sig < end)).all())
    # symmetric about the middle: sigmoid(-x) = 1 - sigmoid(x)
    np.testing.assert_allclose((sig + sig.flip(0)).numpy(), start + end, rtol=1e-10)


@FAST
@given(sched=discrete_schedules(min_steps=2, rescale=False))
def test_zero_terminal_snr_rescale(sched):
    rescaled = DiscreteVPSchedule(betas=schedules.rescale_zero_terminal_snr(sched.betas))
    abar, old = rescaled.alphas_cumprod, sched.alphas_cumprod
    assert float(abar[-1]) == 0.0
    assert float(abar[0]) == pytest.approx(float(old[0]), rel=1e-12)
    assert bool((abar[1:] < abar[:-1]).all()) and bool(((abar >= 0) & (abar <= 1)).all())
    log_snr = rescaled.log_snr(torch.arange(len(abar)))  # whole timesteps: read from the table
    assert float(log_snr[-1]) == -math.inf and not bool(log_snr.isnan().any())
    assert bool((log_snr[1:] < log_snr[:-1]).all())
    torch.testing.assert_close(log_snr[:-1], torch.log(abar[:-1] / (1 - abar[:-1])))
    # Lin et al. Algorithm 1 is an affine map of sqrt(abar): second differences keep their ratio
    r_new, r_old = abar.sqrt(), old.sqrt()
    scale = (r_new[0] - r_new[1]) / (r_old[0] - r_old[1])
    np.testing.assert_allclose(
        (r_new[:-1] - r_new[1:]).numpy(), (scale * (r_old[:-1] - r_old[1:])).numpy(), rtol=1e-8, atol=1e-15
    )
    # through the config path too
    via_config = DiscreteVPSchedule.from_config(trained_betas=sched.betas.tolist(), rescale_betas_zero_snr=True)
    torch.testing.assert_close(via_config.alphas_cumprod, abar)


@FAST
@given(shift=st.floats(0.05, 20.0), seed=st.integers(0, 2**32 - 1))
@example(shift=0.1, seed=0)  # 1 + (0.1 - 1) * 1 rounds below 0.1, so t = 1 maps above 1
def test_flow_time_shift_is_monotone_onto_unit_interval(shift, seed):
    t = torch.from_numpy(np.sort(np.random.default_rng(seed).uniform(0, 1, 64)))
    t = torch.cat([torch.zeros(1, dtype=F64), t, torch.ones(1, dtype=F64)])
    out = schedules.flow_time_shift(t, shift)
    assert float(out[0]) == 0.0 and float(out[-1]) == pytest.approx(1.0, abs=1e-15)
    assert bool((out[1:] >= out[:-1]).all()) and bool(((out >= 0) & (out <= 1)).all())
    inner = out[1:-1]
    if shift > 1:
        assert bool((inner >= t[1:-1] - 1e-15).all())  # a shift > 1 spends more time at high noise
    elif shift < 1:
        assert bool((inner <= t[1:-1] + 1e-15).all())
    torch.testing.assert_close(schedules.flow_time_shift(t, 1.0), t)


def test_flow_time_shift_rejects_non_positive_shift():
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="shift"):
            schedules.flow_time_shift(torch.tensor([0.5]), bad)


@FAST
@given(mu=st.floats(-3.0, 3.0))
def test_flow_time_shift_exponential_is_monotone(mu):
    t = torch.linspace(0.01, 0.99, 99, dtype=F64)
    out = schedules.flow_time_shift_exponential(t, mu)
    assert bool((out[1:] > out[:-1]).all()) and bool(((out > 0) & (out < 1)).all())
    if mu == 0.0:
        torch.testing.assert_close(out, t)
    # mu plays the role of log(shift): exp(mu) as a plain shift gives the same times
    torch.testing.assert_close(out, schedules.flow_time_shift(t, math.exp(mu)))


@FAST
@given(n=st.integers(1, 300), sigma_min=st.floats(1e-4, 0.5), span=st.floats(2.0, 1e5), rho=st.floats(1.0, 10.0))
def test_karras_sigmas_endpoints_and_monotone(n, sigma_min, span, rho):
    sigma_max = sigma_min * span
    sig = schedules.karras_sigmas(n, sigma_min, sigma_max, rho)
    assert sig.dtype == F64 and sig.shape == (n,)
    assert float(sig[0]) == pytest.approx(sigma_max, rel=1e-12)
    if n > 1:
        assert float(sig[-1]) == pytest.approx(sigma_min, rel=1e-10)
        assert bool((sig[1:] < sig[:-1]).all())
        # Karras eq. 5: sigma^(1/rho) is evenly spaced
        np.testing.assert_allclose(np.diff(sig.numpy() ** (1 / rho), 2), 0, atol=1e-9 * sigma_max ** (1 / rho))
    with pytest.raises(ValueError, match="num_steps"):
        schedules.karras_sigmas(0, sigma_min, sigma_max, rho)


# --------------------------------------------------------------------------------------------
# timestep spacing
# --------------------------------------------------------------------------------------------


def test_spaced_timesteps_match_lin_et_al_table_2():
    """Lin et al. 2024, Table 2 (T = 1000, 10 steps), written 0-based as the code indexes timesteps."""
    assert schedules.spaced_timesteps(1000, 10, "linspace").tolist() == [
        999,
        888,
        777,
        666,
        555,
        444,
        333,
        222,
        111,
        0,
    ]
    assert schedules.spaced_timesteps(1000, 10, "leading", steps_offset=1).tolist() == [
        901,
        801,
        701,
        601,
        501,
        401,
        301,
        201,
        101,
        1,
    ]
    assert schedules.spaced_timesteps(1000, 10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert schedules.spaced_timesteps(1000, 10, "trailing").tolist() == [
        999,
        899,
        799,
        699,
        599,
        499,
        399,
        299,
        199,
        99,
    ]


def _exact_spacing(total: int, n: int, spacing: str) -> list[float]:
    """DDIM sec. 4.2 / Lin et al. Table 2 in exact arithmetic, index by index (before rounding)."""
    if spacing == "leading":
        return [float((n - 1 - i) * (total // n)) for i in range(n)]
    if spacing == "trailing":
        return [total * (n - i) / n - 1 for i in range(n)]
    return [i * (total - 1) / (n - 1) if n > 1 else 0.0 for i in range(n)][::-1]


@settings(max_examples=150, deadline=None)
@given(data=st.data(), spacing=st.sampled_from(["leading", "trailing", "linspace"]))
def test_spaced_timesteps_lengths_ranges_and_formulas(data, spacing):
    total = data.draw(st.integers(1, 1500), label="num_train_timesteps")
    n = data.draw(st.integers(1, total), label="num_inference_steps")
    steps = schedules.spaced_timesteps(total, n, spacing)
    assert steps.dtype == torch.int64
    assert len(steps) == n, f"{spacing}: {n} steps requested, got {len(steps)}: {steps.tolist()[-3:]}"
    assert int(steps.min()) >= 0 and int(steps.max()) <= total - 1
    assert bool((steps[1:] < steps[:-1]).all())  # strictly descending
    if spacing == "trailing":
        assert int(steps[0]) == total - 1  # the first step is the last training timestep
    if spacing == "linspace":
        assert int(steps[0]) == (total - 1 if n > 1 else 0) and int(steps[-1]) == 0
    if spacing == "leading":
        assert int(steps[-1]) == 0
    # the paper's formula up to rounding (ties may go either way)
    exact = _exact_spacing(total, n, spacing)
    pairs = zip(steps.tolist(), exact, strict=True)
    assert all(abs(got - want) <= 0.5 + 1e-9 for got, want in pairs), (steps.tolist(), exact)


@pytest.mark.parametrize("total,n", [(17, 7), (15, 13), (1000, 61), (1000, 103)])
def test_trailing_spacing_known_float_step_cases(total, n):
    """np.arange(T, 0, -T/n) can yield n + 1 values (the last one ~0, i.e. timestep -1) for these sizes."""
    steps = schedules.spaced_timesteps(total, n, "trailing")
    assert len(steps) == n and int(steps.min()) >= 0, steps.tolist()


def test_spaced_timesteps_steps_offset_shifts_leading():
    base = schedules.spaced_timesteps(1000, 50, "leading")
    assert torch.equal(schedules.spaced_timesteps(1000, 50, "leading", steps_offset=1), base + 1)


# --------------------------------------------------------------------------------------------
# discrete schedule helpers
# --------------------------------------------------------------------------------------------


@FAST
@given(sched=discrete_schedules(min_steps=2, rescale=False), seed=st.integers(0, 2**32 - 1))
def test_t_from_sigma_inverts_sigma_at(sched, seed):
    n = sched.num_train_timesteps
    t = torch.from_numpy(np.random.default_rng(seed).uniform(0, n - 1, 32))
    t = torch.cat([t, torch.tensor([0.0, float(n - 1)], dtype=F64)])
    sigma = sched.sigma_at(t)
    torch.testing.assert_close(sched.t_from_sigma(sigma), t, rtol=0, atol=1e-7)
    # at whole timesteps the interpolation is the table
    whole = torch.arange(n)
    torch.testing.assert_close(sched.sigma_at(whole.to(F64)), sched.sigmas, rtol=1e-12, atol=0)
    # and the fractional alpha_sigma agrees with the integer lookup there
    a_int, s_int = sched.alpha_sigma(whole)
    a_frac, s_frac = sched.alpha_sigma(whole.to(F64))
    torch.testing.assert_close(a_frac, a_int, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(s_frac, s_int, rtol=1e-12, atol=1e-15)


@FAST
@given(sched=discrete_schedules(min_steps=1, max_steps=300))
def test_custom_alphas_cumprod_round_trip(sched):
    again = DiscreteVPSchedule(alphas_cumprod=sched.alphas_cumprod)
    torch.testing.assert_close(again.betas, sched.betas, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(
        schedules.alphas_cumprod_from_betas(again.betas), sched.alphas_cumprod, rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize(
    "sched",
    [
        VPCosineSchedule(),
        VPLinearSchedule(),
        VESchedule(),
        EDMSchedule(),
        RectifiedFlowSchedule(),
        RectifiedFlowSchedule(1000.0),
    ],
    ids=lambda s: type(s).__name__ + str(getattr(s, "timestep_scale", "")),
)
def test_continuous_families_invariants(sched):
    times = sched.default_times(64)
    assert times.dtype == F64 and bool((times[1:] < times[:-1]).all())  # descending, noisiest first
    alpha, sigma = sched.alpha_sigma(times)
    if sched.family == "vp":
        torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha))
    elif sched.family == "ve":
        assert bool((alpha == 1).all())
    else:
        torch.testing.assert_close(alpha + sigma, torch.ones_like(alpha))
    log_snr = sched.log_snr(times)
    assert bool((log_snr[1:] > log_snr[:-1]).all())  # SNR grows as the sampler goes on
    torch.testing.assert_close(log_snr, torch.log(alpha**2 / sigma**2))
    torch.testing.assert_close(sched.ve_sigma(times), sigma / alpha)


def test_q_sample_is_the_forward_draw():
    x0, noise = torch.randn(5, 3, dtype=F64), torch.randn(5, 3, dtype=F64)
    alpha, sigma = torch.rand(5, 1, dtype=F64), torch.rand(5, 1, dtype=F64)
    torch.testing.assert_close(schedules.q_sample(x0, noise, alpha, sigma), alpha * x0 + sigma * noise)


def test_training_timestep_samplers():
    gen = torch.Generator().manual_seed(0)
    ints = schedules.sample_timesteps_uniform(4096, 1000, generator=gen)
    assert ints.dtype == torch.int64 and int(ints.min()) >= 0 and int(ints.max()) <= 999
    floats = schedules.sample_timesteps_uniform(4096, generator=gen)
    assert bool(((floats > 0) & (floats < 1)).all())
    n = 20000
    t = schedules.sample_timesteps_logit_normal(n, mean=0.5, std=0.8, generator=gen)
    logit = torch.log(t / (1 - t)).double()
    assert abs(float(logit.mean()) - 0.5) < 5 * 0.8 / math.sqrt(n)
    assert abs(float(logit.std()) - 0.8) < 5 * 0.8 / math.sqrt(2 * n) + 1e-3


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_unknown_beta_schedule_suggests_close_name():
    with pytest.raises(ValueError, match=r"beta_schedule.*'cosin'.*did you mean 'cosine'"):
        schedules.make_betas("cosin")
    with pytest.raises(ValueError, match=r"did you mean 'scaled_linear'"):
        DiscreteVPSchedule.from_config(beta_schedule="scaled_linaer")


def test_unknown_spacing_suggests_close_name():
    with pytest.raises(ValueError, match=r"timestep_spacing.*did you mean 'trailing'"):
        schedules.spaced_timesteps(1000, 10, "trailng")


def test_unknown_continuous_schedule_suggests_close_name():
    with pytest.raises(ValueError, match=r"schedule.*did you mean 'edm'"):
        schedules.get_schedule("edn")


def test_more_inference_steps_than_training_steps_is_an_error():
    with pytest.raises(ValueError, match=r"num_inference_steps=1001.*num_train_timesteps=1000"):
        schedules.spaced_timesteps(1000, 1001)
    with pytest.raises(ValueError, match="num_inference_steps"):
        schedules.spaced_timesteps(1000, 0)


def test_bad_schedule_arrays_are_rejected():
    with pytest.raises(ValueError, match="exactly one of betas or alphas_cumprod"):
        DiscreteVPSchedule()
    with pytest.raises(ValueError, match="betas"):
        DiscreteVPSchedule(betas=torch.tensor([0.1, 0.0, 0.2]))
    with pytest.raises(ValueError, match="alphas_cumprod"):
        DiscreteVPSchedule(alphas_cumprod=torch.tensor([0.9, 0.95]))
    with pytest.raises(ValueError, match="num_train_timesteps"):
        schedules.make_betas("linear", 0)
    with pytest.raises(ValueError, match="sigma_min"):
        VESchedule(sigma_min=1.0, sigma_max=0.5)
