"""Metrics against cases with a known value."""

from __future__ import annotations

import math

import pytest
import torch

from samplers.bench import metrics as M

pytestmark = pytest.mark.usefixtures("one_torch_thread")


F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sliced_wasserstein_of_a_shift_is_its_length_over_sqrt_d():
    # y = x + v shifts every projection by theta.v: W_2 = |theta.v| per direction, and the
    # evenly spaced 2-D directions average cos^2 to exactly 1/2.
    x = torch.randn(5000, 2, dtype=F64, generator=_gen(0))
    v = torch.tensor([0.3, -0.4], dtype=F64)
    assert M.sliced_wasserstein(x, x + v) == pytest.approx(0.5 / math.sqrt(2), rel=1e-9)
    assert M.sliced_wasserstein(x, x + v, p=1) == pytest.approx(
        float(torch.abs(M.projection_directions(2) @ v).mean()), rel=1e-9
    )
    # n-D: random directions, E (theta.v)^2 = |v|^2 / d up to Monte-Carlo error over 4000 directions
    x5 = torch.randn(2000, 5, dtype=F64, generator=_gen(1))
    v5 = torch.full((5,), 0.2, dtype=F64)
    assert M.sliced_wasserstein(x5, x5 + v5, num_projections=4000) == pytest.approx(
        float(v5.norm()) / math.sqrt(5), rel=0.05
    )


def test_sliced_wasserstein_basic_properties():
    x = torch.randn(1000, 3, dtype=F64, generator=_gen(2))
    y = torch.randn(1000, 3, dtype=F64, generator=_gen(3)) * 2
    assert M.sliced_wasserstein(x, x) == 0.0
    assert M.sliced_wasserstein(x, x[torch.randperm(1000, generator=_gen(4))]) == pytest.approx(0.0, abs=1e-12)
    assert M.sliced_wasserstein(x, y) == pytest.approx(M.sliced_wasserstein(y, x), rel=1e-12)
    # unequal sizes: a set repeated twice is the same empirical distribution
    assert M.sliced_wasserstein(x, torch.cat([x, x])) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="dimensions"):
        M.sliced_wasserstein(x, y[:, :2])


def test_mmd_matches_the_closed_form_between_gaussians():
    mu1, mu2 = torch.zeros(2, dtype=F64), torch.tensor([0.8, 0.0], dtype=F64)
    c1 = torch.eye(2, dtype=F64)
    c2 = torch.tensor([[1.5, 0.3], [0.3, 0.7]], dtype=F64)
    h = 1.3
    exact = M.mmd_rbf_gaussians(mu1, c1, mu2, c2, h)
    estimates = []
    for s in range(6):
        x = torch.randn(1500, 2, dtype=F64, generator=_gen(10 + s))
        y = mu2 + torch.randn(1500, 2, dtype=F64, generator=_gen(20 + s)) @ torch.linalg.cholesky(c2).T
        estimates.append(M.mmd_rbf(x, y, h, max_samples=None))
    est = torch.tensor(estimates)
    assert exact > 0.05
    assert abs(float(est.mean()) - exact) < 4 * float(est.std()) / math.sqrt(6) + 1e-3
    assert M.mmd_rbf_gaussians(mu1, c1, mu1, c1, h) == pytest.approx(0.0, abs=1e-15)


def test_mmd_is_unbiased_for_equal_distributions():
    vals = [
        M.mmd_rbf(
            torch.randn(400, 2, dtype=F64, generator=_gen(s)),
            torch.randn(400, 2, dtype=F64, generator=_gen(100 + s)),
            1.0,
        )
        for s in range(20)
    ]
    t = torch.tensor(vals)
    assert (t < 0).any()  # unbiased: it goes below zero
    assert abs(float(t.mean())) < 4 * float(t.std()) / math.sqrt(20)


def test_exact_target_mmd_and_sw_agree_with_closed_forms():
    mu, cov = torch.tensor([0.5, -0.2], dtype=F64), torch.tensor([[0.6, 0.2], [0.2, 0.4]], dtype=F64)
    target = M.ExactTarget(torch.ones(1, dtype=F64), mu.view(1, 2), cov.view(1, 2, 2), bandwidth=1.1)
    # E k(y, y') in closed form
    assert target.kyy == pytest.approx(M._expected_rbf(mu, cov, mu, cov, 1.1**2).item(), rel=1e-12)
    # x from another Gaussian: the exact-target MMD estimates mmd_rbf_gaussians
    mu_x, cov_x = torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64) * 0.5
    exact = M.mmd_rbf_gaussians(mu_x, cov_x, mu, cov, 1.1)
    vals = torch.tensor(
        [target.mmd(mu_x + 0.5**0.5 * torch.randn(3000, 2, dtype=F64, generator=_gen(s)), None) for s in range(5)]
    )
    assert abs(float(vals.mean()) - exact) < 4 * float(vals.std()) / math.sqrt(5) + 2e-4
    # SW to the exact target of samples from the target is small and shrinks with n
    chol = torch.linalg.cholesky(cov)
    small = target.sliced_wasserstein(mu + torch.randn(500, 2, dtype=F64, generator=_gen(7)) @ chol.T)
    large = target.sliced_wasserstein(mu + torch.randn(50000, 2, dtype=F64, generator=_gen(8)) @ chol.T)
    assert large < small < 0.2 and large < 0.02
    # a shifted Gaussian: every projected quantile moves by theta.v, so SW_2 = |v| / sqrt(2) (the
    # same quantile levels on both sides, so the midpoint discretization cancels)
    v = torch.tensor([0.0, 0.6], dtype=F64)
    shifted = M.ExactTarget(torch.ones(1, dtype=F64), (mu + v).view(1, 2), cov.view(1, 2, 2), bandwidth=1.1)
    q0, q1 = target.quantiles(2000), shifted.quantiles(2000)
    sw = float(((q1 - q0) ** 2).mean().sqrt())
    assert sw == pytest.approx(0.6 / math.sqrt(2), rel=1e-4)


def test_mixture_quantiles_invert_the_cdf():
    w = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    means = torch.tensor([[-2.0, 0.0, 3.0]], dtype=F64)
    stds = torch.tensor([[0.3, 1.0, 0.1]], dtype=F64)
    levels = torch.tensor([1e-4, 0.1, 0.2, 0.5, 0.7, 0.9, 0.9999], dtype=F64)
    q = M.mixture_quantiles(w, means, stds, levels)[:, 0]
    cdf = (w * torch.special.ndtr((q[:, None] - means[0]) / stds[0])).sum(1)
    # linear interpolation of an 8192-point CDF table: ~1e-6 in probability, far below sampling noise
    torch.testing.assert_close(cdf, levels, rtol=0, atol=1e-5)
    one = M.mixture_quantiles(
        torch.ones(1, dtype=F64), torch.zeros(1, 1, dtype=F64), torch.ones(1, 1, dtype=F64), levels
    )[:, 0]
    torch.testing.assert_close(one, torch.special.ndtri(levels), rtol=0, atol=1e-5)


def test_frechet_distance_known_values():
    a, b = torch.tensor([1.0, 4.0, 0.25], dtype=F64), torch.tensor([4.0, 1.0, 1.0], dtype=F64)
    m1, m2 = torch.tensor([0.0, 1.0, 2.0], dtype=F64), torch.tensor([1.0, 1.0, 0.0], dtype=F64)
    # commuting (diagonal) covariances: |dm|^2 + sum (sqrt(a) - sqrt(b))^2
    want = 5.0 + float(((a.sqrt() - b.sqrt()) ** 2).sum())
    assert M.frechet_distance(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(want, rel=1e-12)
    # general covariances against scipy's sqrtm
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = _gen(5)
    r1, r2 = torch.randn(4, 4, dtype=F64, generator=g), torch.randn(4, 4, dtype=F64, generator=g)
    c1, c2 = r1 @ r1.T + 0.1 * torch.eye(4, dtype=F64), r2 @ r2.T + 0.1 * torch.eye(4, dtype=F64)
    cross = scipy_linalg.sqrtm((c1 @ c2).numpy()).real
    want = float(torch.trace(c1) + torch.trace(c2)) - 2 * float(cross.trace())
    assert M.frechet_distance(torch.zeros(4), c1, torch.zeros(4), c2) == pytest.approx(want, rel=1e-8)
    assert M.frechet_distance(m1, c1[:3, :3], m1, c1[:3, :3]) == pytest.approx(0.0, abs=1e-10)


def test_kl_gaussian_known_values():
    # 1-D: log(s1/s0) + (s0^2 + dm^2) / (2 s1^2) - 1/2
    s0, s1, dm = 0.7, 1.3, 0.4
    want = math.log(s1 / s0) + (s0**2 + dm**2) / (2 * s1**2) - 0.5
    got = M.kl_gaussian(
        torch.zeros(1, dtype=F64),
        torch.tensor([[s0**2]], dtype=F64),
        torch.tensor([dm], dtype=F64),
        torch.tensor([[s1**2]], dtype=F64),
    )
    assert got == pytest.approx(want, rel=1e-12)
    # multivariate: Monte-Carlo E_0[log p0 - log p1]
    g = _gen(6)
    r0, r1 = torch.randn(3, 3, dtype=F64, generator=g), torch.randn(3, 3, dtype=F64, generator=g)
    c0, c1 = r0 @ r0.T + 0.5 * torch.eye(3, dtype=F64), r1 @ r1.T + 0.5 * torch.eye(3, dtype=F64)
    m0, m1 = torch.zeros(3, dtype=F64), torch.tensor([0.5, -0.5, 1.0], dtype=F64)
    p0, p1 = torch.distributions.MultivariateNormal(m0, c0), torch.distributions.MultivariateNormal(m1, c1)
    assert M.kl_gaussian(m0, c0, m1, c1) == pytest.approx(float(torch.distributions.kl_divergence(p0, p1)), rel=1e-10)
    x = p0.sample((200_000,))
    mc = p0.log_prob(x) - p1.log_prob(x)
    assert abs(M.kl_gaussian(m0, c0, m1, c1) - float(mc.mean())) < 5 * float(mc.std()) / math.sqrt(200_000)
    assert M.kl_gaussian(m0, c0, m0, c0) == pytest.approx(0.0, abs=1e-12)
    assert M.kl_gaussian(m0, torch.zeros(3, 3), m0, c0) == math.inf


def test_ode_error_and_gaussian_fit():
    x = torch.zeros(4, 2, dtype=F64)
    ref = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=F64)
    assert M.ode_error(x, ref) == pytest.approx(2.5)  # sqrt(25 / 4)
    mean, cov = M.gaussian_fit(torch.tensor([[0.0, 0.0], [2.0, 2.0]], dtype=F64))
    torch.testing.assert_close(mean, torch.tensor([1.0, 1.0], dtype=F64))
    torch.testing.assert_close(cov, torch.full((2, 2), 2.0, dtype=F64))


def test_convergence_order_fit():
    nfe = [5, 10, 20, 40, 80]
    fit = M.convergence_order(nfe, [3.0 * n**-2.0 for n in nfe])
    assert fit.order == pytest.approx(2.0, abs=1e-12) and fit.r2 == pytest.approx(1.0) and fit.points == 5
    assert fit.log_constant == pytest.approx(math.log(3.0))
    noisy = M.convergence_order(nfe, [n**-1.0 * (1 + 0.05 * (-1) ** i) for i, n in enumerate(nfe)])
    assert noisy.order == pytest.approx(1.0, abs=0.1) and noisy.r2 < 1.0
    # non-finite and non-positive errors are dropped; fewer than two NFE values: no fit
    assert M.convergence_order([5, 10, 20], [float("nan"), 0.0, 0.1]) is None
    assert M.convergence_order([10, 10], [0.2, 0.1]) is None


def test_resolve_metrics_names_and_suggestions():
    assert [m.name for m in M.resolve_metrics(["sw", "SW1", "sliced-wasserstein", "fid", "ode"])] == [
        "sw",
        "sw1",
        "frechet",
        "ode_error",
    ]
    with pytest.raises(ValueError, match="did you mean 'frechet'"):
        M.resolve_metrics(["frechat"])
