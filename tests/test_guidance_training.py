"""Guidance and training helpers: the formulas, and their agreement with the fused update."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import samplers
from samplers import guidance, parameterization
from samplers.schedules import DiscreteVPSchedule, RectifiedFlowSchedule
from samplers.training import loss_weight, training_example


def test_cfg_formula_and_per_sample_scale():
    cond, uncond = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(guidance.classifier_free_guidance(cond, uncond, 1.0), cond)
    assert torch.allclose(guidance.classifier_free_guidance(cond, uncond, 0.0), uncond)
    w = torch.tensor([0.0, 1.0, 7.5])
    out = guidance.classifier_free_guidance(cond, uncond, w)
    assert torch.allclose(out[2], uncond[2] + 7.5 * (cond[2] - uncond[2]))
    with pytest.raises(ValueError, match="guidance_scale"):
        guidance.classifier_free_guidance(cond, uncond, torch.ones(2))


def test_guidance_rescale_restores_conditional_std():
    cond, uncond = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8) * 0.3
    guided = guidance.classifier_free_guidance(cond, uncond, 7.0)
    full = guidance.rescale_guidance(guided, cond, 1.0)
    assert torch.allclose(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), rtol=1e-5)
    assert torch.allclose(guidance.rescale_guidance(guided, cond, 0.0), guided)


def test_guided_model_batches_both_branches_in_one_call():
    calls = []

    def model(x, t, context):
        calls.append(x.shape[0])
        return x * context.view(-1, 1)

    g = guidance.GuidedModel(model, {"context": torch.full((2,), 2.0)}, {"context": torch.full((2,), 0.5)})
    x = torch.randn(2, 3)
    cond, uncond = g(x, torch.tensor(10))
    assert calls == [4]
    assert torch.allclose(cond, 2 * x) and torch.allclose(uncond, 0.5 * x)
    assert torch.allclose(g.guide(x, torch.tensor(10), 3.0), 0.5 * x + 3.0 * (1.5 * x))


@pytest.mark.parametrize("name", ["ddim", "euler", "ddpm"])
def test_cfg_fused_in_step_equals_guiding_first(name):
    sched = samplers.get(name)
    sched.set_timesteps(10)
    t = sched.timesteps[3]
    x, cond, uncond = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    noise = torch.randn_like(x)
    state = sched.init_state()
    state.step_index = 3
    fused, _ = sched.step_functional(state, cond, t, x, uncond=uncond, guidance_scale=4.0, noise=noise)
    plain, _ = sched.step_functional(state, guidance.classifier_free_guidance(cond, uncond, 4.0), t, x, noise=noise)
    assert torch.allclose(fused.prev_sample, plain.prev_sample, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    a=st.floats(0.05, 0.999),
    kind=st.sampled_from(parameterization.PREDICTION_TYPES),
    weighting=st.sampled_from(["snr", "min_snr", "max_snr_1"]),
)
def test_loss_weight_is_the_x0_space_weight_in_every_target_space(a, kind, weighting):
    # weight * MSE(target) must equal x0_weight * MSE(x0) for a perturbation of the output.
    alpha = torch.tensor([a], dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    x0, eps = torch.randn(4096, dtype=torch.float64), torch.randn(4096, dtype=torch.float64)
    x = alpha * x0 + sigma * eps
    out = parameterization.training_target(kind, x0, eps, alpha, sigma)
    delta = 1e-3 * torch.randn(4096, dtype=torch.float64)
    x0_hat, _ = parameterization.to_x0_eps(kind, out + delta, x, alpha, sigma)
    snr = (alpha / sigma) ** 2
    x0_weight = {"snr": snr, "min_snr": snr.clamp(max=5.0), "max_snr_1": snr.clamp(min=1.0)}[weighting]
    lhs = loss_weight(alpha, sigma, kind, weighting) * (delta**2).mean()
    rhs = x0_weight * ((x0_hat - x0) ** 2).mean()
    assert torch.allclose(lhs, rhs, rtol=1e-6)


@pytest.mark.parametrize("kind", parameterization.PREDICTION_TYPES)
def test_training_example_is_consistent_with_add_noise(kind):
    sched = samplers.get("ddpm", prediction_type=kind)
    x0 = torch.randn(5, 3, 4, 4)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 900, 999])
    x_t, target, weight = training_example(sched.schedule, x0, t, kind, noise=noise, weighting="min_snr")
    assert torch.allclose(x_t, sched.add_noise(x0, noise, t), atol=1e-6)
    alpha, sigma = sched.schedule.alpha_sigma(t)
    view = (-1, 1, 1, 1)
    x0_back, eps_back = parameterization.to_x0_eps(
        kind, target.double(), x_t.double(), alpha.view(view), sigma.view(view)
    )
    assert torch.allclose(x0_back.float(), x0, atol=1e-3) and torch.allclose(eps_back.float(), noise, atol=1e-3)
    assert weight.shape == (5,) and bool((weight > 0).all())


def test_flow_training_target_is_velocity():
    x0, noise = torch.randn(4, 2), torch.randn(4, 2)
    t = torch.rand(4).clamp(0.05, 0.95)
    x_t, target, _ = training_example(RectifiedFlowSchedule(), x0, t, "flow", noise=noise)
    assert torch.allclose(x_t, (1 - t.view(-1, 1)) * x0 + t.view(-1, 1) * noise, atol=1e-6)
    assert torch.allclose(target, noise - x0)


def test_training_example_rejects_bad_t_shape():
    with pytest.raises(ValueError, match="t must have shape"):
        training_example(DiscreteVPSchedule.from_config(), torch.randn(3, 2), torch.tensor([1, 2]), "epsilon")
