"""The sampling loop ``samplers.sample`` / ``GraphedSampler``: same numbers as a hand-written step
loop, batch-split invariance of in-step noise, errors, and (on a GPU) CUDA-graph replay."""

from __future__ import annotations

import pytest
import torch

import samplers
from samplers.ops import batch_seeds


def oracle_model(scheduler: samplers.Scheduler):
    """An epsilon model that is exact for data N(0.5, 0.25 I): eps = (x - alpha*mu) * sigma / (alpha^2 v + sigma^2)."""
    mu, var = 0.5, 0.25

    def model(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = scheduler.working_alpha_sigma(t.reshape(1))
        alpha, sigma = alpha.to(x_in.dtype), sigma.to(x_in.dtype)
        x = x_in * (alpha**2 + sigma**2).sqrt() if scheduler.family == "sigma" else x_in
        return (x - alpha * mu) * sigma / (alpha**2 * var + sigma**2)

    return model


def hand_loop(model, scheduler, noise, seeds):
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, seeds=seeds).prev_sample
    return x


@pytest.mark.parametrize("name", ["ddim", "ddpm", "euler", "euler_ancestral", "heun"])
def test_sample_equals_the_hand_written_loop(name):
    scheduler = samplers.get(name)
    scheduler.set_timesteps(12)
    model = oracle_model(scheduler)
    noise = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    seeds = batch_seeds(7, 4)
    got = samplers.sample(model, scheduler, noise, seeds=seeds, progress=False)
    scheduler.set_timesteps(12)
    want = hand_loop(model, scheduler, noise, seeds)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(got).all()


def test_stochastic_sample_does_not_depend_on_the_batch_split():
    scheduler = samplers.get("ddpm")
    model = oracle_model(scheduler)
    noise = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    seeds = batch_seeds(3, 6)
    whole = samplers.sample(model, scheduler, noise, num_inference_steps=20, seeds=seeds, progress=False)
    halves = [
        samplers.sample(
            model, scheduler, noise[i : i + 3], num_inference_steps=20, seeds=seeds[i : i + 3], progress=False
        )
        for i in (0, 3)
    ]
    torch.testing.assert_close(whole, torch.cat(halves), rtol=1e-6, atol=1e-6)
    # the noise really is drawn: other seeds give another sample
    other = samplers.sample(model, scheduler, noise, num_inference_steps=20, seeds=batch_seeds(4, 6), progress=False)
    assert (other - whole).abs().max() > 1e-2


def test_sample_follows_the_exact_probability_flow():
    """DDIM(eta=0) with the exact denoiser approaches the exact ODE map of Gaussian data, at order 1."""
    mu, var = 0.5, 0.25
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    errors = []
    for steps in (25, 100):
        scheduler = samplers.get("ddim", clip_sample=False, timestep_spacing="trailing")  # diffusers' default clips x0
        model = oracle_model(scheduler)
        x = samplers.sample(model, scheduler, noise, num_inference_steps=steps, progress=False)
        alpha_T, sigma_T = scheduler.working_alpha_sigma(scheduler.timesteps[:1])
        # x_T = noise; the flow keeps the standardized value: x_0 = mu + sqrt(v / (a^2 v + s^2)) (x_T - a mu)
        exact = mu + (var / (alpha_T**2 * var + sigma_T**2)).sqrt() * (noise - alpha_T * mu)
        errors.append(float((x - exact).abs().max()))
    assert errors[1] < 0.06  # 100 steps: within ~1.5 % on |x_T| up to ~3.5
    assert 3.0 < errors[0] / errors[1] < 5.0  # first order: 4x the steps, ~4x smaller error


def test_callback_sees_every_call_and_the_generator_is_reproducible():
    scheduler = samplers.get("euler_ancestral")
    model = oracle_model(scheduler)
    noise = torch.randn(2, 4, generator=torch.Generator().manual_seed(3))
    seen: list[int] = []
    a = samplers.sample(
        model,
        scheduler,
        noise,
        num_inference_steps=7,
        generator=torch.Generator().manual_seed(9),
        progress=False,
        callback=lambda i, t, x, x0: seen.append(i),
    )
    b = samplers.sample(
        model, scheduler, noise, num_inference_steps=7, generator=torch.Generator().manual_seed(9), progress=False
    )
    assert seen == list(range(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_arguments_are_named():
    scheduler = samplers.get("ddim")
    model = oracle_model(scheduler)
    with pytest.raises(ValueError, match="cuda_graph=True needs the sample on a CUDA device"):
        samplers.sample(model, scheduler, torch.randn(2, 3), num_inference_steps=4, cuda_graph=True)
    with pytest.raises(ValueError, match="seeds must be int64"):
        samplers.sample(
            model, scheduler, torch.randn(2, 3), num_inference_steps=4, seeds=torch.zeros(3, dtype=torch.int64)
        )
    with pytest.raises(TypeError, match="noise must be a floating"):
        samplers.sample(model, scheduler, torch.zeros(2, 3, dtype=torch.int64), num_inference_steps=4)
    with pytest.raises(ValueError, match="GraphedSampler needs a CUDA tensor"):
        samplers.GraphedSampler(model, scheduler, torch.randn(2, 3), num_inference_steps=4)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["ddim", "ddpm", "heun"])
def test_cuda_graph_loop_equals_eager(name):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    scheduler = samplers.get(name)
    model = oracle_model(scheduler)
    noise = torch.randn(2, 4, 16, 16, device="cuda")
    seeds = batch_seeds(5, 2, device="cuda")
    eager = samplers.sample(model, scheduler, noise, num_inference_steps=10, seeds=seeds, progress=False)
    graphed = samplers.sample(model, scheduler, noise, num_inference_steps=10, seeds=seeds, cuda_graph=True)
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)
    replay = samplers.GraphedSampler(model, scheduler, noise, num_inference_steps=10)
    torch.testing.assert_close(replay(noise, seeds), eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(replay(noise, seeds), eager, rtol=1e-5, atol=1e-5)  # replays are repeatable
