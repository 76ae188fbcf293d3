"""Each built-in scheduler against the equations of its paper, written out here independently.

DDPM (Ho et al. 2020, eq. 6-7, 11; Nichol & Dhariwal eq. 15), DDIM (Song et al. 2021, eq. 12, 16),
Euler / Euler ancestral / Heun (Karras et al. 2022, Alg. 1-2; k-diffusion), flow Euler (Liu et al.
2022), annealed Langevin (Song & Ermon 2019, Alg. 1), predictor-corrector (Song et al. 2021, Alg. 2
and 4), posterior sampling (Xiao et al. 2022). Monte Carlo tolerances are z = 5 standard errors of
the sample count.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import samplers
from samplers import ops
from samplers import parameterization as P

F64 = torch.float64
Z = 5.0
TYPES = ("epsilon", "sample", "v_prediction", "flow", "score")


def _randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _check_moments(x: torch.Tensor, mean: torch.Tensor | float, var: torch.Tensor | float, label: str = "") -> None:
    """Per-dimension sample mean/variance within Z standard errors of (mean, var) for n samples [n, D]."""
    n = x.shape[0]
    mean = torch.as_tensor(mean, dtype=F64).expand(x.shape[1:])
    var = torch.as_tensor(var, dtype=F64).expand(x.shape[1:])
    m, v = x.double().mean(0), x.double().var(0)
    mean_tol = Z * torch.sqrt(var / n) + 1e-6
    var_tol = Z * var * math.sqrt(2 / (n - 1)) + 1e-6
    assert bool(((m - mean).abs() <= mean_tol).all()), (
        f"{label} mean {m.tolist()} vs {mean.tolist()} (tol {mean_tol.tolist()})"
    )
    assert bool(((v - var).abs() <= var_tol).all()), (
        f"{label} var {v.tolist()} vs {var.tolist()} (tol {var_tol.tolist()})"
    )


# --------------------------------------------------------------------------------------------
# DDPM and DDIM
# --------------------------------------------------------------------------------------------


def _abar(s, t: float) -> float:
    return 1.0 if t < 0 else float(s.alphas_cumprod[int(t)])


@settings(max_examples=20, deadline=None)
@given(
    steps=st.integers(2, 60),
    kind=st.sampled_from(TYPES),
    beta_schedule=st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_ddim_eta1_is_the_ddpm_posterior_draw(steps, kind, beta_schedule, seed):
    """DDIM(eta=1), DDPM(fixed_small) and DDPM eq. 6-7 written out give the same x_s from the same (x_t, output, z)."""
    config = dict(beta_schedule=beta_schedule, prediction_type=kind, clip_sample=False)
    ddim, ddpm = samplers.get("ddim", eta=1.0, **config), samplers.get("ddpm", **config)
    ddim.set_timesteps(steps)
    ddpm.set_timesteps(steps)
    assert torch.equal(ddim.timesteps, ddpm.timesteps)
    stride = 1000 // steps
    for i, t in enumerate(ddim.timesteps.tolist()):
        x, out, z = (
            _randn(3, 4, seed=seed + 3 * i),
            _randn(3, 4, seed=seed + 3 * i + 1),
            _randn(3, 4, seed=seed + 3 * i + 2),
        )
        a = ddim.step(out, t, x, noise=z).prev_sample
        b = ddpm.step(out, t, x, noise=z).prev_sample
        # eq. 6-7 on the spaced chain: beta_{t|s} = 1 - abar_t / abar_s
        abar_t, abar_s = _abar(ddim, t), _abar(ddim, t - stride)
        x0 = P.to_x0_eps(kind, out, x, math.sqrt(abar_t), math.sqrt(1 - abar_t))[0]
        beta_ts = 1 - abar_t / abar_s
        mean = (
            math.sqrt(abar_s) * beta_ts / (1 - abar_t) * x0 + math.sqrt(1 - beta_ts) * (1 - abar_s) / (1 - abar_t) * x
        )
        std = math.sqrt((1 - abar_s) / (1 - abar_t) * beta_ts)
        expected = mean + std * z
        scale = 1 + float(expected.abs().max())
        torch.testing.assert_close(a, expected, rtol=0, atol=2e-5 * scale)
        torch.testing.assert_close(b, expected, rtol=0, atol=2e-5 * scale)


def test_ddim_eta_override_in_step_equals_configured_eta():
    base, one = samplers.get("ddim", clip_sample=False), samplers.get("ddim", eta=1.0, clip_sample=False)
    base.set_timesteps(10)
    one.set_timesteps(10)
    x, out, z = _randn(2, 3, seed=1), _randn(2, 3, seed=2), _randn(2, 3, seed=3)
    t = base.timesteps[2]
    base.set_begin_index(2)
    one.set_begin_index(2)
    torch.testing.assert_close(
        base.step(out, t, x, noise=z, eta=1.0).prev_sample, one.step(out, t, x, noise=z).prev_sample
    )
    with pytest.raises(ValueError, match="eta"):
        base.step(out, base.timesteps[3], x, eta=1.5)
    with pytest.raises(ValueError, match="eta"):
        samplers.get("ddim", eta=-0.1)


@settings(max_examples=10, deadline=None)
@given(steps=st.integers(2, 50), kind=st.sampled_from(TYPES), seed=st.integers(0, 2**31 - 1))
def test_ddim_eta0_ignores_noise(steps, kind, seed):
    s = samplers.get("ddim", prediction_type=kind, clip_sample=False)
    s.set_timesteps(steps)
    assert not any(s.plan.stochastic_calls)
    for i, t in enumerate(s.timesteps[:4]):
        x, out = _randn(2, 5, seed=seed + i), _randn(2, 5, seed=seed + 100 + i)
        s.set_begin_index(i)
        a = s.step(out, t, x, noise=_randn(2, 5, seed=seed + 200 + i)).prev_sample
        s.set_begin_index(i)
        b = s.step(out, t, x, generator=torch.Generator().manual_seed(seed)).prev_sample
        assert torch.equal(a, b)


@settings(max_examples=8, deadline=None)
@given(
    eta=st.floats(0.0, 1.0),
    steps=st.integers(2, 20),
    call=st.integers(0, 18),
    kind=st.sampled_from(TYPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_ddim_step_keeps_the_marginal_q_xs_given_x0(eta, steps, call, kind, seed):
    """Song et al. Lemma 1: with x_t ~ q(x_t|x_0) and the model's x0 exact, x_s ~ q(x_s|x_0) = N(alpha_s x0, sigma_s^2)
    for every eta. Checked by Monte Carlo on Gaussian data, together with the data marginal of x_s."""
    s = samplers.get("ddim", eta=eta, prediction_type=kind, clip_sample=False)
    s.set_timesteps(steps)
    call = call % steps
    n, mu, std = 20000, torch.tensor([0.4, -1.0], dtype=F64), torch.tensor([0.5, 1.5], dtype=F64)
    x0 = mu + std * _randn(n, 2, seed=seed)
    eps = _randn(n, 2, seed=seed + 1)
    a_t, s_t = float(s.plan.model_alpha[call]), float(s.plan.model_sigma[call])
    x_t = a_t * x0 + s_t * eps
    out = P.training_target(kind, x0, eps, a_t, s_t)
    s.set_begin_index(call)
    x_s = s.step(out, s.timesteps[call], x_t, noise=_randn(n, 2, seed=seed + 2)).prev_sample
    t_next = float(s.timesteps[call]) - 1000 // steps
    a_s, s_s = math.sqrt(_abar(s, t_next)), math.sqrt(1 - _abar(s, t_next))
    _check_moments(x_s - a_s * x0, 0.0, s_s * s_s, "x_s - alpha_s x0")
    _check_moments(x_s, a_s * mu, a_s * a_s * std * std + s_s * s_s, "x_s")


def test_ddim_with_the_exact_denoiser_keeps_the_data_mean():
    """E[x0_hat] = mu and E[eps_hat] = 0 under the exact denoiser, so from x_T ~ q(x_T) every DDIM step
    keeps E[x_s] = alpha_s mu, for any eta."""
    mu, std = torch.tensor([0.4, -0.3], dtype=F64), torch.tensor([0.5, 0.3], dtype=F64)
    s = samplers.get("ddim", eta=0.3, clip_sample=False)
    s.set_timesteps(10)
    n = 20000
    a0, s0 = float(s.plan.model_alpha[0]), float(s.plan.model_sigma[0])
    x = a0 * mu + torch.sqrt(a0**2 * std**2 + s0**2) * _randn(n, 2, seed=5)
    for i, t in enumerate(s.timesteps):
        a_t, s_t = float(s.plan.model_alpha[i]), float(s.plan.model_sigma[i])
        x0_hat = mu + a_t * std**2 / (a_t**2 * std**2 + s_t**2) * (x - a_t * mu)
        x = s.step(
            P.model_output_from_x0("epsilon", x0_hat, x, a_t, s_t), t, x, noise=_randn(n, 2, seed=100 + i)
        ).prev_sample
        a_next = float(s.plan.model_alpha[i + 1]) if i + 1 < len(s.timesteps) else 1.0
        tol = Z * x.std(0) / math.sqrt(n)
        assert bool(((x.mean(0) - a_next * mu).abs() <= tol).all()), (i, x.mean(0), a_next * mu)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_ddpm_fixed_variances(variance_type):
    s = samplers.get("ddpm", variance_type=variance_type, clip_sample=False)
    s.set_timesteps(20)
    stride = 50
    for i, t in enumerate(s.timesteps.tolist()):
        x, out, z = _randn(2, 3, seed=i), _randn(2, 3, seed=50 + i), _randn(2, 3, seed=100 + i)
        got = s.step(out, t, x, noise=z).prev_sample
        abar_t, abar_s = _abar(s, t), _abar(s, t - stride)
        beta_ts = 1 - abar_t / abar_s
        x0 = (x - math.sqrt(1 - abar_t) * out) / math.sqrt(abar_t)
        mean = (
            math.sqrt(abar_s) * beta_ts / (1 - abar_t) * x0 + math.sqrt(1 - beta_ts) * (1 - abar_s) / (1 - abar_t) * x
        )
        var = beta_ts if variance_type == "fixed_large" else (1 - abar_s) / (1 - abar_t) * beta_ts
        std = 0.0 if t == 0 else math.sqrt(var)  # no noise into x_0
        torch.testing.assert_close(got, mean + std * z, rtol=0, atol=2e-5 * (1 + float(mean.abs().max())))


def test_ddpm_learned_variances_interpolate_between_the_fixed_ones():
    """learned_range: v = -1 gives beta_tilde, v = +1 gives beta (Improved DDPM eq. 15); learned: exp(log-variance)."""
    runs = {}
    for variance_type in ("fixed_small", "fixed_large", "learned_range", "learned"):
        s = samplers.get("ddpm", variance_type=variance_type, clip_sample=False)
        s.set_timesteps(10)
        runs[variance_type] = s
    small, large = runs["fixed_small"], runs["fixed_large"]
    for i, t in enumerate(small.timesteps.tolist()[:-1]):
        x, out, z = _randn(2, 3, seed=i), _randn(2, 3, seed=20 + i), _randn(2, 3, seed=40 + i)
        want_small = small.step(out, t, x, noise=z).prev_sample
        want_large = large.step(out, t, x, noise=z).prev_sample
        for v, want in ((-1.0, want_small), (1.0, want_large)):
            s = runs["learned_range"]
            s.set_begin_index(i)
            got = s.step(torch.cat([out, torch.full_like(out, v)], dim=1), t, x, noise=z).prev_sample
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # learned: the channel is the log-variance itself; feed log(beta_tilde) to get fixed_small
        abar_t, abar_s = _abar(small, t), _abar(small, t - 100)
        log_var = math.log((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))
        s = runs["learned"]
        s.set_begin_index(i)
        got = s.step(torch.cat([out, torch.full_like(out, log_var)], dim=1), t, x, noise=z).prev_sample
        torch.testing.assert_close(got, want_small, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="2x the sample's channels"):
        s = runs["learned"]
        s.set_timesteps(10)
        s.step(_randn(2, 3, seed=0), s.timesteps[0], _randn(2, 3, seed=1))


def test_ddpm_clip_and_dynamic_thresholding():
    big = 40.0 * _randn(4, 64, seed=3)
    x = _randn(4, 64, seed=4)
    clipped = samplers.get("ddpm", clip_sample=True, clip_sample_range=1.5)
    clipped.set_timesteps(10)
    t = clipped.timesteps[5]
    clipped.set_begin_index(5)
    x0 = clipped.step(big, t, x, noise=torch.zeros_like(x)).pred_original_sample
    abar = _abar(clipped, int(t))
    raw = (x - math.sqrt(1 - abar) * big) / math.sqrt(abar)
    torch.testing.assert_close(x0, raw.clamp(-1.5, 1.5), rtol=1e-5, atol=1e-5)
    thr = samplers.get(
        "ddpm", clip_sample=False, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=5.0
    )
    thr.set_timesteps(10)
    thr.set_begin_index(5)
    x0 = thr.step(big, t, x, noise=torch.zeros_like(x)).pred_original_sample
    s = torch.quantile(raw.abs(), 0.9, dim=1, keepdim=True).clamp(1.0, 5.0)  # Imagen sec. 2.3, per sample
    torch.testing.assert_close(x0, raw.clamp(-s, s) / s, rtol=1e-4, atol=1e-5)
    assert float(x0.abs().max()) <= 1.0 + 1e-6


# --------------------------------------------------------------------------------------------
# sigma-space samplers: Euler, Euler ancestral, Heun
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("karras", [False, True])
def test_euler_step_is_karras_algorithm_1_without_correction(karras):
    """x_next = x + (sigma_next - sigma) d with d = eps for an epsilon model (k-diffusion's sample_euler)."""
    s = samplers.get("euler", use_karras_sigmas=karras)
    s.set_timesteps(12)
    sig = s.sigmas.double()
    assert float(sig[-1]) == 0.0 and bool((sig[1:] < sig[:-1]).all())
    if karras:
        torch.testing.assert_close(
            sig[:-1], samplers.schedules.karras_sigmas(12, float(sig[-2]), float(sig[0])), rtol=1e-6, atol=0
        )
    for i, t in enumerate(s.timesteps):
        x, eps = _randn(3, 2, seed=i) * float(sig[i]), _randn(3, 2, seed=30 + i)
        got = s.step(eps, t, x).prev_sample
        torch.testing.assert_close(got, x + (sig[i + 1] - sig[i]) * eps, rtol=1e-5, atol=1e-5 * (1 + float(sig[i])))


def test_euler_ancestral_splits_the_next_level_into_down_and_up():
    s = samplers.get("euler_ancestral")
    s.set_timesteps(10)
    sig = s.sigmas.double()
    for i, t in enumerate(s.timesteps):
        x, eps, z = _randn(3, 2, seed=i) * float(sig[i]), _randn(3, 2, seed=30 + i), _randn(3, 2, seed=60 + i)
        got = s.step(eps, t, x, noise=z).prev_sample
        up = math.sqrt(float(sig[i + 1] ** 2 * (sig[i] ** 2 - sig[i + 1] ** 2) / sig[i] ** 2))
        down = math.sqrt(float(sig[i + 1] ** 2) - up * up)
        torch.testing.assert_close(
            got, x + (down - float(sig[i])) * eps + up * z, rtol=1e-5, atol=1e-5 * (1 + float(sig[i]))
        )


def _edm_denoiser(x: torch.Tensor, sigma: float, mu: float, std: float) -> torch.Tensor:
    return mu + std * std / (std * std + sigma * sigma) * (x - mu)


def test_heun_step_is_karras_algorithm_2():
    """Two calls per step: Euler predictor then the trapezoidal corrector; the step into sigma = 0 is Euler."""
    mu, std = 0.3, 0.6
    s = samplers.get("heun", schedule="edm", prediction_type="sample")
    steps = 6
    s.set_timesteps(steps)
    assert len(s.timesteps) == 2 * steps - 1
    sig = s.sigmas.double()
    x = 80.0 * _randn(4, 3, seed=0)
    calls = iter(range(len(s.timesteps)))
    for i in range(steps):
        assert s.state_in_first_order
        k = next(calls)
        d1 = (x - _edm_denoiser(x, float(sig[i]), mu, std)) / sig[i]
        h = sig[i + 1] - sig[i]
        x_pred = s.step(_edm_denoiser(x, float(sig[i]), mu, std), s.timesteps[k], x).prev_sample
        if float(sig[i + 1]) == 0.0:
            torch.testing.assert_close(x_pred, _edm_denoiser(x, float(sig[i]), mu, std), rtol=1e-5, atol=1e-5)
            x = x_pred
            continue
        torch.testing.assert_close(x_pred, x + h * d1, rtol=1e-5, atol=1e-5 * (1 + float(sig[i])))
        assert not s.state_in_first_order
        k = next(calls)
        d2 = (x_pred - _edm_denoiser(x_pred, float(sig[i + 1]), mu, std)) / sig[i + 1]
        x_next = s.step(_edm_denoiser(x_pred, float(sig[i + 1]), mu, std), s.timesteps[k], x_pred).prev_sample
        torch.testing.assert_close(x_next, x + h * (d1 + d2) / 2, rtol=1e-5, atol=1e-5 * (1 + float(sig[i])))
        x = x_next


@pytest.mark.parametrize("steps", [1, 2, 7, 25])
def test_heun_without_churn_is_deterministic(steps, oracle):
    s = samplers.get("heun")
    s.set_timesteps(steps)
    assert len(s.timesteps) == 2 * steps - 1
    assert not any(s.plan.stochastic_calls)
    mu, std = torch.tensor(0.2, dtype=F64), torch.tensor(0.5, dtype=F64)
    x = _randn(4, 3, seed=1) * s.init_noise_sigma
    a = oracle.run(s, x, mu, std, generator=torch.Generator().manual_seed(1))
    s.set_timesteps(steps)
    b = oracle.run(s, x, mu, std, seeds=ops.batch_seeds(99, 4))
    assert torch.equal(a, b)


def test_heun_churn_adds_noise_and_raises_the_level():
    s = samplers.get("heun", schedule="edm", s_churn=10.0, s_tmin=0.05, s_tmax=50.0)
    s.set_timesteps(10)
    assert s.stochastic and any(s.plan.stochastic_calls)
    base = samplers.get("heun", schedule="edm")
    base.set_timesteps(10)
    # churned levels sit above the grid's, by (1 + gamma), gamma = min(S_churn / N, sqrt(2) - 1), inside [tmin, tmax]
    first_calls = [k for k in range(len(s.timesteps)) if not s.plan.use[k]]
    levels = (s.plan.model_sigma / s.plan.model_alpha)[first_calls]
    grid = base.sigmas.double()[: len(first_calls)]
    gamma = min(10.0 / 10, math.sqrt(2) - 1)
    inside = (grid >= 0.05) & (grid <= 50.0)
    torch.testing.assert_close(levels[inside], grid[inside] * (1 + gamma), rtol=1e-6, atol=0)
    torch.testing.assert_close(levels[~inside], grid[~inside], rtol=1e-6, atol=0)


# --------------------------------------------------------------------------------------------
# flow Euler
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_euler_step_follows_the_velocity(shift):
    s = samplers.get("flow_euler", shift=shift)
    s.set_timesteps(8)
    sig = s.sigmas.double()
    assert float(sig[0]) == pytest.approx(1.0) and float(sig[-1]) == 0.0 and bool((sig[1:] < sig[:-1]).all())
    torch.testing.assert_close(s.timesteps.double(), sig[:-1] * 1000, rtol=1e-6, atol=0)
    for i, t in enumerate(s.timesteps):
        x, v = _randn(3, 2, seed=i), _randn(3, 2, seed=40 + i)
        got = s.step(v, t, x).prev_sample
        torch.testing.assert_close(got, x + (sig[i + 1] - sig[i]) * v, rtol=1e-5, atol=1e-5)


def test_flow_euler_dynamic_shift_needs_mu():
    s = samplers.get("flow_euler", use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="mu"):
        s.set_timesteps(10)
    s.set_timesteps(10, mu=1.0)
    torch.testing.assert_close(
        s.sigmas.double()[:-1],
        samplers.schedules.flow_time_shift_exponential(torch.linspace(1.0, 1 / 1000, 10, dtype=F64), 1.0),
        rtol=1e-6,
        atol=0,
    )


# --------------------------------------------------------------------------------------------
# DDIM and Euler are one method in two coordinate systems
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TYPES)
def test_ddim_eta0_is_euler_in_sigma_space(kind, oracle):
    """x_ddim / alpha_t = x_euler at every call when both walk the same timesteps (Karras et al. sec. 4)."""
    grid = [999, 900, 700, 500, 300, 120, 40, 7, 0]
    ddim = samplers.get("ddim", prediction_type=kind, clip_sample=False)
    euler = samplers.get("euler", prediction_type=kind)
    ddim.set_timesteps(timesteps=grid)
    euler.set_timesteps(timesteps=grid)
    mu, std = torch.tensor([0.2, -0.4], dtype=F64), torch.tensor([0.5, 0.8], dtype=F64)
    x_d = _randn(16, 2, seed=3)
    x_e = x_d / float(ddim.plan.model_alpha[0])
    for i, t in enumerate(ddim.timesteps):
        x_d = ddim.step(oracle.output(ddim, i, ddim.scale_model_input(x_d, t), mu, std), t, x_d).prev_sample
        x_e = euler.step(oracle.output(euler, i, euler.scale_model_input(x_e, t), mu, std), t, x_e).prev_sample
        alpha_next = float(ddim.plan.model_alpha[i + 1]) if i + 1 < len(grid) else 1.0
        torch.testing.assert_close(x_d / alpha_next, x_e, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Langevin and predictor-corrector
# --------------------------------------------------------------------------------------------


def test_langevin_call_is_ncsn_algorithm_1():
    """x <- x + (a_i / 2) score + sqrt(a_i) z, a_i = eps sigma_i^2 / sigma_L^2, score = (x0_hat - x) / sigma_i^2."""
    s = samplers.get("langevin", steps_per_level=3, step_size=5e-5, final_denoise=False, prediction_type="sample")
    s.set_timesteps(4)
    levels = s.plan.model_sigma.tolist()
    sigma_last = levels[-1]
    for k, t in enumerate(s.timesteps):
        x, x0_hat, z = _randn(2, 3, seed=k) * levels[k], _randn(2, 3, seed=10 + k), _randn(2, 3, seed=20 + k)
        got = s.step(x0_hat, t, x, noise=z).prev_sample
        step = 5e-5 * levels[k] ** 2 / sigma_last**2
        want = x + step / 2 * (x0_hat - x) / levels[k] ** 2 + math.sqrt(step) * z
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * (1 + levels[k]))


def test_predictor_corrector_calls_are_song_et_al_algorithms_2_and_4():
    s = samplers.get("predictor_corrector", prediction_type="sample", corrector_steps=1, snr=0.16)
    s.set_timesteps(4)
    levels = s.plan.model_sigma.tolist()
    corrector = [False, True, False, True, False, True, False]
    assert len(levels) == len(corrector)
    batch = 3
    for k, t in enumerate(s.timesteps):
        x, x0_hat, z = (
            _randn(batch, 8, seed=k) * levels[k],
            _randn(batch, 8, seed=10 + k),
            _randn(batch, 8, seed=20 + k),
        )
        got = s.step(x0_hat, t, x, noise=z).prev_sample
        score = (x0_hat - x) / levels[k] ** 2
        if corrector[k]:
            ratio = z.norm(dim=1).mean() / score.norm(dim=1).mean()  # batch-averaged norms, as in the paper's code
            eps = 2 * (0.16 * ratio) ** 2
            want = x + eps * score + torch.sqrt(2 * eps) * z
        elif k + 1 < len(levels):
            nxt = levels[k + 1]
            want = x + (levels[k] ** 2 - nxt**2) * score + math.sqrt(levels[k] ** 2 - nxt**2) * z
        else:
            want = x0_hat  # final denoise
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * (1 + levels[k]))


MU1, STD1 = torch.tensor([0.5], dtype=F64), torch.tensor([0.7], dtype=F64)


def _final_samples(name: str, steps: int, n: int, oracle, **config) -> torch.Tensor:
    s = samplers.get(name, **config)
    s.set_timesteps(steps)
    x = _randn(n, 1, seed=0) * s.init_noise_sigma
    return oracle.run(s, x, MU1, STD1, noise_generator=torch.Generator().manual_seed(3))


def test_annealed_langevin_reaches_the_data_moments(oracle):
    n = 8000
    fine = _final_samples("langevin", 60, n, oracle, steps_per_level=10, step_size=3e-4)
    _check_moments(fine, MU1, STD1**2, "langevin 60 levels x 10")
    coarse = _final_samples("langevin", 10, n, oracle, steps_per_level=2, step_size=3e-4)
    assert abs(float(coarse.var()) - 0.49) > abs(float(fine.var()) - 0.49)  # more levels and steps: closer


def test_predictor_corrector_reaches_the_data_moments(oracle):
    n = 8000
    fine = _final_samples("predictor_corrector", 100, n, oracle)
    _check_moments(fine, MU1, STD1**2, "predictor-corrector 100 levels")
    coarse = _final_samples("predictor_corrector", 8, n, oracle)
    assert abs(float(coarse.var()) - 0.49) > abs(float(fine.var()) - 0.49)


# --------------------------------------------------------------------------------------------
# posterior sampling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sample", "epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule", ["vp_linear", "discrete"])
def test_posterior_sampler_lands_on_a_point_mass(kind, schedule):
    """With the exact x0 model of a point mass every draw is from q(x_s | x_t, x0).

    So x_s ~ N(alpha_s x0, sigma_s^2), ending at x0.
    """
    s = samplers.get("posterior", prediction_type=kind, schedule=schedule)
    s.set_timesteps(4)
    n = 20000
    point = torch.tensor([0.7, -1.2, 0.0], dtype=F64)
    x = _randn(n, 3, seed=1) * s.init_noise_sigma
    seeds = ops.batch_seeds(7, n)
    for i, t in enumerate(s.timesteps):
        a_t, s_t = float(s.plan.model_alpha[i]), float(s.plan.model_sigma[i])
        out = P.model_output_from_x0(kind, point.expand_as(x), x, a_t, s_t)
        x = s.step(out, t, x, seeds=seeds).prev_sample
        if i + 1 < len(s.timesteps):
            a_s, s_s = float(s.plan.model_alpha[i + 1]), float(s.plan.model_sigma[i + 1])
            _check_moments(x, a_s * point, s_s * s_s, f"call {i}")
    torch.testing.assert_close(x, point.expand_as(x), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# zero terminal SNR (Lin et al. 2024): trailing spacing, v-prediction, first call at SNR 0
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddim", "ddpm", "euler", "euler_ancestral"])
def test_zero_terminal_snr_recipe_runs(name, oracle):
    """Every scheduler that takes ``rescale_betas_zero_snr`` must run the paper's recipe (trailing, v-prediction)
    from pure noise to samples with the data's mean."""
    config = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")
    if name in ("ddim", "ddpm"):
        config["clip_sample"] = False
    s = samplers.get(name, **config)
    s.set_timesteps(25)
    assert int(s.timesteps[0]) == 999
    assert float(s.plan.model_alpha[0]) < 1e-3  # the first call sees (almost) pure noise
    assert math.isfinite(s.init_noise_sigma)
    mu, std = torch.tensor([0.3, -0.2], dtype=F64), torch.tensor([0.5, 0.2], dtype=F64)
    n = 4000
    x = oracle.run(
        s, _randn(n, 2, seed=0) * s.init_noise_sigma, mu, std, noise_generator=torch.Generator().manual_seed(1)
    )
    assert bool(torch.isfinite(x).all())
    assert bool(((x.mean(0) - mu).abs() <= Z * std / math.sqrt(n) + 0.02).all()), x.mean(0)
