"""Prediction types: conversions invert each other, targets mean what their names say, affine forms hold."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samplers import parameterization as P
from samplers import schedules

F64 = torch.float64
TYPES = P.PREDICTION_TYPES
FAST = settings(max_examples=60, deadline=None)


@st.composite
def alpha_sigma(draw):
    """(alpha, sigma) from a random family at a random interior time (both > 0, so every type inverts)."""
    family = draw(st.sampled_from(["discrete", "vp_cosine", "vp_linear", "ve", "edm", "flow"]))
    if family == "discrete":
        name = draw(st.sampled_from(["linear", "scaled_linear", "cosine", "sigmoid"]))
        sched = schedules.DiscreteVPSchedule(betas=schedules.make_betas(name, 1000))
        t = torch.tensor(draw(st.integers(0, 998)))
    else:
        sched = {
            "vp_cosine": schedules.VPCosineSchedule(),
            "vp_linear": schedules.VPLinearSchedule(),
            "ve": schedules.VESchedule(),
            "edm": schedules.EDMSchedule(),
            "flow": schedules.RectifiedFlowSchedule(),
        }[family]
        lo, hi = (0.002, 80.0) if family == "edm" else (0.01, 0.98)
        t = torch.tensor(draw(st.floats(lo, hi)), dtype=F64)
    a, s = sched.alpha_sigma(t)
    return float(a), float(s)


def _data(seed: int, shape=(4, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=F64), torch.randn(*shape, generator=gen, dtype=F64)


def _tol(alpha: float, sigma: float) -> dict:
    # float64 round-off grows with 1/alpha (epsilon, score) and sigma (VE)
    return dict(rtol=1e-9, atol=1e-11 * (1 + sigma + 1 / alpha + sigma / alpha))


@FAST
@given(ab=alpha_sigma(), kind=st.sampled_from(TYPES), seed=st.integers(0, 2**31 - 1))
def test_training_target_inverts_to_x0_and_eps(ab, kind, seed):
    alpha, sigma = ab
    x0, eps = _data(seed)
    x_t = schedules.q_sample(x0, eps, alpha, sigma)
    target = P.training_target(kind, x0, eps, alpha, sigma)
    x0_hat, eps_hat = P.to_x0_eps(kind, target, x_t, alpha, sigma)
    torch.testing.assert_close(x0_hat, x0, **_tol(alpha, sigma))
    torch.testing.assert_close(
        eps_hat, eps, **_tol(alpha, sigma) | {"atol": 1e-11 * (1 + 1 / sigma + 1 / alpha) * (1 + sigma)}
    )


@FAST
@given(ab=alpha_sigma(), kind=st.sampled_from(TYPES), seed=st.integers(0, 2**31 - 1))
def test_model_output_from_x0_is_the_output_of_a_model_with_that_estimate(ab, kind, seed):
    """For any estimate x0_hat (not just the truth) the output converts back to x0_hat and its implied noise."""
    alpha, sigma = ab
    x0_hat, x_t = _data(seed)
    out = P.model_output_from_x0(kind, x0_hat, x_t, alpha, sigma)
    back_x0, back_eps = P.to_x0_eps(kind, out, x_t, alpha, sigma)
    torch.testing.assert_close(back_x0, x0_hat, **_tol(alpha, sigma))
    torch.testing.assert_close(back_eps, (x_t - alpha * x0_hat) / sigma, rtol=1e-9, atol=1e-9 * (1 + 1 / sigma))
    # with the true x0 it is the training target
    x0, eps = _data(seed + 1)
    x_t = schedules.q_sample(x0, eps, alpha, sigma)
    torch.testing.assert_close(
        P.model_output_from_x0(kind, x0, x_t, alpha, sigma),
        P.training_target(kind, x0, eps, alpha, sigma),
        rtol=1e-9,
        atol=1e-10 * (1 + alpha + sigma + 1 / sigma),
    )


@FAST
@given(ab=alpha_sigma(), kind=st.sampled_from(TYPES), seed=st.integers(0, 2**31 - 1))
def test_x0_coefficients_give_the_affine_form(ab, kind, seed):
    """x0_hat = p * x_t + q * output for every (x_t, output), the form the fused kernel consumes."""
    alpha, sigma = ab
    p, q = P.x0_coefficients(kind, alpha, sigma)
    x_t, out = _data(seed)
    x0_hat, _ = P.to_x0_eps(kind, out, x_t, alpha, sigma)
    torch.testing.assert_close(x0_hat, p * x_t + q * out, rtol=1e-12, atol=1e-12 * (1 + abs(p) + abs(q)))
    # and the true target maps back to the true x0 through (p, q)
    x0, eps = _data(seed + 7)
    x_t = alpha * x0 + sigma * eps
    target = P.training_target(kind, x0, eps, alpha, sigma)
    torch.testing.assert_close(p * x_t + q * target, x0, **_tol(alpha, sigma))


def test_coefficients_broadcast_over_per_sample_alpha_sigma():
    """Tensor alpha/sigma shaped [B, 1] act per sample, exactly as scalars would."""
    alpha = torch.tensor([[0.9], [0.5], [0.1]], dtype=F64)
    sigma = torch.sqrt(1 - alpha**2)
    x0, eps = _data(3, (3, 5))
    for kind in TYPES:
        target = P.training_target(kind, x0, eps, alpha, sigma)
        x0_hat, eps_hat = P.to_x0_eps(kind, target, alpha * x0 + sigma * eps, alpha, sigma)
        torch.testing.assert_close(x0_hat, x0)
        torch.testing.assert_close(eps_hat, eps)
        for b in range(3):
            row = P.training_target(kind, x0[b], eps[b], float(alpha[b]), float(sigma[b]))
            torch.testing.assert_close(target[b], row)


def test_targets_mean_what_their_names_say():
    """flow = d x_t/dt on alpha = 1 - t, sigma = t; v = d x/d phi on alpha = cos phi, sigma = sin phi;
    score = grad_x log q(x_t | x_0)."""
    x0, eps = _data(11, (6,))
    for t in (0.1, 0.5, 0.9):
        tt = torch.tensor(t, dtype=F64, requires_grad=True)
        x_t = (1 - tt) * x0 + tt * eps
        velocity = torch.stack([torch.autograd.grad(x_t[i], tt, retain_graph=True)[0] for i in range(6)])
        torch.testing.assert_close(P.training_target("flow", x0, eps, 1 - t, t), velocity)
    for phi in (0.2, 0.8, 1.4):
        ph = torch.tensor(phi, dtype=F64, requires_grad=True)
        x_t = torch.cos(ph) * x0 + torch.sin(ph) * eps
        dxdphi = torch.stack([torch.autograd.grad(x_t[i], ph, retain_graph=True)[0] for i in range(6)])
        torch.testing.assert_close(P.training_target("v_prediction", x0, eps, math.cos(phi), math.sin(phi)), dxdphi)
    alpha, sigma = 0.6, 0.8
    x = (alpha * x0 + sigma * eps).clone().requires_grad_(True)
    log_q = torch.distributions.Normal(alpha * x0, sigma).log_prob(x).sum()
    (score,) = torch.autograd.grad(log_q, x)
    torch.testing.assert_close(P.training_target("score", x0, eps, alpha, sigma), score)


def test_aliases_map_to_canonical_names():
    assert P.canonical_prediction_type("eps") == "epsilon"
    assert P.canonical_prediction_type("x0") == "sample"
    assert P.canonical_prediction_type("v") == "v_prediction"
    assert P.canonical_prediction_type("velocity") == "flow"
    for name in TYPES:
        assert P.canonical_prediction_type(name) == name


@pytest.mark.parametrize(
    "bad,suggestion", [("epsilom", "epsilon"), ("v_predction", "v_prediction"), ("sampel", "sample")]
)
def test_unknown_prediction_type_suggests_close_names(bad, suggestion):
    for fn in (
        lambda: P.canonical_prediction_type(bad),
        lambda: P.x0_coefficients(bad, 0.5, 0.5),
        lambda: P.training_target(bad, torch.zeros(1), torch.zeros(1), 0.5, 0.5),
    ):
        with pytest.raises(ValueError, match=rf"prediction_type '{bad}'.*did you mean .*'{suggestion}'"):
            fn()
