"""Oracle problems: denoisers against Bayes, Tweedie and Monte Carlo; samples; exact ODE solutions."""

from __future__ import annotations

import math

import pytest
import torch

from samplers import parameterization
from samplers.bench import problems as P
from samplers.ops.reference import batch_seeds

pytestmark = pytest.mark.usefixtures("one_torch_thread")


F64 = torch.float64


def _random_cov(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=F64)


def _posterior_mean_direct(x, alpha, sigma, mu, cov):
    """Bayes for a Gaussian prior, written with a plain matrix inverse (independent of the eigen code)."""
    d = mu.numel()
    gain = alpha * cov @ torch.linalg.inv(alpha * alpha * cov + sigma * sigma * torch.eye(d, dtype=F64))
    return mu + (x - alpha * mu) @ gain.T


@pytest.mark.parametrize("d", [1, 2, 5])
def test_gaussian_denoiser_is_the_closed_form_posterior_mean(d):
    mu = torch.linspace(-1, 1, d, dtype=F64)
    cov = _random_cov(d, d)
    prob = P.GaussianProblem(mu, cov)
    x = torch.randn(64, d, dtype=F64, generator=torch.Generator().manual_seed(1))
    for alpha, sigma in [(1.0, 0.1), (0.6, 0.8), (0.05, 0.999), (0.0, 1.0)]:
        got = prob.denoise(x, alpha, sigma)
        want = _posterior_mean_direct(x, alpha, sigma, mu, cov)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # at alpha = 0 the data are unobserved: the posterior mean is the prior mean
    torch.testing.assert_close(prob.denoise(x, 0.0, 1.0), mu.expand(64, d))


def test_per_sample_noise_levels_match_scalar_calls():
    prob = P.make_gmm2d("random")
    x = torch.randn(5, 2, dtype=F64)
    alpha = torch.tensor([1.0, 0.9, 0.5, 0.2, 0.01], dtype=F64)
    sigma = (1 - alpha**2).sqrt().clamp(min=0.05)
    together = prob.denoise(x, alpha, sigma)
    one_by_one = torch.cat([prob.denoise(x[i : i + 1], float(alpha[i]), float(sigma[i])) for i in range(5)])
    torch.testing.assert_close(together, one_by_one, rtol=1e-12, atol=1e-12)


def test_one_component_mixture_equals_the_gaussian():
    mu, cov = torch.tensor([0.3, -1.0], dtype=F64), _random_cov(2, 7)
    gauss = P.GaussianProblem(mu, cov)
    mix = P.GaussianMixtureProblem(mu.view(1, 2), cov.view(1, 2, 2))
    x = torch.randn(100, 2, dtype=F64)
    for alpha, sigma in [(0.99, 0.05), (0.7, 0.7), (0.1, 1.0)]:
        torch.testing.assert_close(
            mix.denoise(x, alpha, sigma), gauss.denoise(x, alpha, sigma), rtol=1e-10, atol=1e-10
        )


@pytest.mark.parametrize(
    "spec", ["gmm2d", "gmm2d:layout=random", "gmm_nd:dim=3,components=4", "swissroll:components=24"]
)
def test_mixture_denoiser_satisfies_tweedie(spec):
    """E[x0 | x] = (x + sigma^2 grad log p_t(x)) / alpha, with p_t the exact Gaussian-mixture marginal."""
    prob = P.get_problem(spec)
    w, means, covs = prob.mixture_components()
    d = prob.dim
    alpha, sigma = 0.8, 0.45
    x = (prob.sample(16, seed=3) * alpha + sigma * torch.randn(16, d, dtype=F64)).requires_grad_(True)
    comp = torch.distributions.MultivariateNormal(
        alpha * means, alpha * alpha * covs + sigma * sigma * torch.eye(d, dtype=F64)
    )
    log_p = torch.logsumexp(comp.log_prob(x.unsqueeze(1)) + torch.log(w), dim=1)
    (score,) = torch.autograd.grad(log_p.sum(), x)
    tweedie = (x.detach() + sigma * sigma * score) / alpha
    torch.testing.assert_close(prob.denoise(x.detach(), alpha, sigma), tweedie, rtol=1e-8, atol=1e-8)


def test_mixture_denoiser_matches_monte_carlo_bayes():
    """Self-normalized importance sampling of E[x0 | x_t] from prior draws agrees within MC error."""
    prob = P.make_gmm2d("8gaussians", std=0.3)
    alpha, sigma = 0.7, 0.6
    x_t = torch.tensor([[1.0, 0.4], [-0.5, -1.2]], dtype=F64)
    x0 = prob.sample(400_000, seed=11)
    for row in x_t:
        logw = -((row - alpha * x0) ** 2).sum(1) / (2 * sigma * sigma)
        wts = torch.softmax(logw, 0)
        mc = (wts[:, None] * x0).sum(0)
        ess = 1.0 / float((wts**2).sum())
        tol = 4 * float(x0.std(0).max()) / math.sqrt(ess)
        assert (prob.denoise(row[None], alpha, sigma)[0] - mc).abs().max() < tol


def test_denoiser_keeps_dtype_and_computes_in_float64():
    prob = P.make_gmm2d()
    x = torch.randn(8, 2, dtype=F64)
    ref = prob.denoise(x, 0.9, 0.3)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        out = prob.denoise(x.to(dt), 0.9, 0.3)
        assert out.dtype == dt
        # only the input and output roundings of dt: math inside is float64
        torch.testing.assert_close(out.to(F64), prob.denoise(x.to(dt).to(F64), 0.9, 0.3).to(dt).to(F64))
    assert ref.dtype == F64


@pytest.mark.parametrize(
    "spec", ["gaussian", "gaussian_nd:dim=6", "gmm2d:layout=grid", "gmm_nd:layout=axes,dim=4", "swissroll"]
)
def test_samples_have_the_exact_moments(spec):
    prob = P.get_problem(spec)
    n = 40_000
    x = prob.sample(n, seed=5)
    assert x.shape == (n, prob.dim) and x.dtype == F64
    mean, cov = prob.mean(), prob.covariance()
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * se_mean + 1e-12).all()
    emp = torch.cov(x.T).reshape(prob.dim, prob.dim)
    scale = (cov.diagonal()[:, None] * cov.diagonal()[None, :]).sqrt()
    assert ((emp - cov).abs() <= 6 * scale * math.sqrt(2.0 / n) * 2 + 1e-12).all()


def test_samples_depend_only_on_per_sample_seeds():
    prob = P.make_gmm2d("random")
    seeds = batch_seeds(9, 100)
    whole = prob.sample(100, seeds)
    parts = torch.cat([prob.sample(30, batch_seeds(9, 30, 0)), prob.sample(70, batch_seeds(9, 70, 30))])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, prob.sample(100, seeds, stream=P.REFERENCE_STREAM))


@pytest.mark.parametrize("spec", ["gaussian_nd", "gmm2d:layout=random", "swissroll", "gmm_nd"])
def test_denoise_rows_do_not_depend_on_the_batch_split(spec):
    """Bit-identical rows for any split: what makes torchrun results equal one process."""
    prob = P.get_problem(spec)
    x = torch.randn(257, prob.dim, dtype=torch.float32)
    whole = prob.denoise(x, 0.5, 0.8)
    parts = torch.cat(
        [prob.denoise(x[:100], 0.5, 0.8), prob.denoise(x[100:101], 0.5, 0.8), prob.denoise(x[101:], 0.5, 0.8)]
    )
    assert torch.equal(whole, parts)


def test_philox_uniform_is_uniform_and_split_invariant():
    seeds = batch_seeds(3, 20_000)
    u = P.philox_uniform(seeds, 5, 3)
    assert u.shape == (20_000, 3) and u.dtype == F64
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / u.numel())
    assert torch.equal(u[100:200], P.philox_uniform(batch_seeds(3, 100, 100), 5, 3))
    assert not torch.equal(u, P.philox_uniform(seeds, 6, 3))


def test_gaussian_ode_solution_solves_the_pf_ode():
    """y(s) from the closed form satisfies dy/ds = (y - D(y, s)) / s (central differences)."""
    prob = P.make_gaussian_nd(dim=3, seed=2)
    x_t = torch.randn(10, 3, dtype=F64)
    s_t = 20.0
    y_t = x_t * s_t

    def y_at(s):
        return P._gaussian_flow(y_t, 1.0, s_t, prob.mu, prob.cov, s)

    for s in (0.3, 1.0, 5.0):
        h = 1e-5 * s
        dyds = (y_at(s + h) - y_at(s - h)) / (2 * h)
        y = y_at(s)
        torch.testing.assert_close(dyds, (y - prob.denoise(y, 1.0, s)) / s, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(y_at(s_t), y_t)  # starts where it should
    # endpoint and affine map agree
    a, b = prob.ode_map(0.3, 0.9)
    torch.testing.assert_close(prob.ode_solution(x_t, 0.3, 0.9), x_t @ a.T + b)


def test_generic_rk4_ode_matches_the_gaussian_closed_form():
    prob = P.make_gaussian(seed=4)
    mix = P.GaussianMixtureProblem(prob.mu.view(1, -1), prob.cov.view(1, 2, 2))
    x_t = torch.randn(50, 2, dtype=F64)
    for alpha, sigma in [(0.006, 1.0), (0.5, 0.8), (0.0, 1.0)]:
        # RK4 at the default 16 steps per unit of log-sigma: a few 1e-6 (relative 1e-5 on |y| up to ~10)
        torch.testing.assert_close(
            mix.ode_solution(x_t, alpha, sigma), prob.ode_solution(x_t, alpha, sigma), rtol=1e-5, atol=2e-6
        )
        fine = mix.ode_solution(x_t, alpha, sigma, steps_per_unit=64)
        torch.testing.assert_close(fine, prob.ode_solution(x_t, alpha, sigma), rtol=1e-8, atol=1e-8)


def test_rk4_reference_is_converged_on_a_mixture():
    prob = P.make_gmm2d()
    x_t = torch.randn(200, 2, dtype=F64) * 0.0064 * 157.0
    coarse = prob.ode_solution(x_t, 0.0064, 1.0, steps_per_unit=12)
    fine = prob.ode_solution(x_t, 0.0064, 1.0, steps_per_unit=48)
    assert float((coarse - fine).abs().max()) < 1e-4


@pytest.mark.parametrize("prediction_type", parameterization.PREDICTION_TYPES)
def test_oracle_model_round_trips_every_prediction_type(prediction_type):
    from samplers.schedules import DiscreteVPSchedule

    prob = P.make_gmm2d("ring")
    schedule = DiscreteVPSchedule.from_config()
    model = P.OracleModel(prob, schedule, prediction_type)
    x = torch.randn(32, 2, dtype=torch.float64)
    for t in (torch.tensor(10), torch.tensor(500), torch.tensor([3, 100, 700, 999] * 8)):
        out = model(x, t)
        alpha, sigma = schedule.alpha_sigma(t)
        a = alpha.view(-1, 1) if alpha.dim() else alpha
        s = sigma.view(-1, 1) if sigma.dim() else sigma
        x0, _ = parameterization.to_x0_eps(prediction_type, out, x, a, s)
        torch.testing.assert_close(x0, prob.denoise(x, alpha, sigma), rtol=1e-9, atol=1e-9)
    assert model.calls == 3


def test_registry_names_options_and_suggestions():
    assert set(P.PROBLEMS) == {"gaussian", "gaussian_nd", "gmm2d", "gmm_nd", "swissroll"}
    assert P.parse_problem_spec("gmm2d:layout=ring,components=12,std=0.1") == (
        "gmm2d",
        {"layout": "ring", "components": 12, "std": 0.1},
    )
    ring = P.get_problem("gmm2d:layout=ring,components=12")
    assert ring.num_components == 12 and ring.dim == 2
    assert P.get_problem("gmm_nd", dim=5).dim == 5
    with pytest.raises(ValueError, match="did you mean 'gmm2d'"):
        P.get_problem("gmm2")
    with pytest.raises(ValueError, match="did you mean 'grid'"):
        P.get_problem("gmm2d:layout=gird")
    with pytest.raises(ValueError, match="no option"):
        P.get_problem("gaussian:colour=red")
    with pytest.raises(ValueError, match="key=value"):
        P.get_problem("gmm2d:ring")
    with pytest.raises(ValueError, match="square"):
        P.get_problem("gmm2d:layout=grid,components=10")


def test_constructors_reject_bad_parameters():
    with pytest.raises(ValueError, match="symmetric"):
        P.GaussianProblem([0.0, 0.0], [[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="semi-definite"):
        P.GaussianProblem([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match=r"\[K=3\]"):
        P.GaussianMixtureProblem(torch.zeros(3, 2), torch.ones(2))
    with pytest.raises(ValueError, match="shape"):
        P.GaussianMixtureProblem(torch.zeros(3, 2), torch.ones(3, 2, 3))
    with pytest.raises(ValueError, match="weights"):
        P.GaussianMixtureProblem(torch.zeros(2, 2), 1.0, weights=[1.0, -1.0])
    prob = P.make_gmm2d()
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        prob.denoise(torch.zeros(4, 3), 1.0, 0.1)
    with pytest.raises(ValueError, match="one value per sample"):
        prob.denoise(torch.zeros(4, 2), torch.ones(3), 0.1)
