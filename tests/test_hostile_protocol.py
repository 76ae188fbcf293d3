"""Hostile input on the scheduler protocol: each class of silent wrong result, half-updated state and
unclear error found by probing (issue 11), pinned by a test that failed before the fix.

Every sampler runs on the exact Gaussian oracle (tests/battery.py), so "right" is a number.
"""

from __future__ import annotations

import pytest
import torch

import samplers
from samplers import ops

from battery import FAMILIES, MU, STD, exact_output, family_error, run

F64 = torch.float64
NAMES = samplers.available()


def _noisy_batch(s, batch=3, seed=0):
    return torch.randn(batch, 4, generator=torch.Generator().manual_seed(seed), dtype=F64) * s.init_noise_sigma


# ---- classifier-free guidance: every call of every scheduler ---------------------------------


# CFG++ renoises with the unconditional output alone: its guided step is not the step of the guided output
# (its identities are tested in tests/test_papers_cfgpp.py)
@pytest.mark.parametrize("name", [n for n in NAMES if not n.endswith("_cfgpp")])
@pytest.mark.parametrize("w", [0.0, 1.0, 3.5])
def test_guided_step_equals_stepping_the_guided_output(name, w):
    """step(cond, uncond=u, guidance_scale=w) == step(u + w (cond - u)), call by call (correctors included)."""
    s = samplers.get(name)
    s.set_timesteps(4)
    x = _noisy_batch(s)
    seeds = ops.batch_seeds(3, x.shape[0])
    state_a, state_b = s.init_state(), s.init_state()
    xa = xb = x
    peak = float(x.abs().max())
    for i, t in enumerate(s.timesteps):
        cond = exact_output(s, i, xa * float(s.plan.input_scale[i]))
        uncond = 0.7 * cond + 0.1
        a, state_a = s.step_functional(
            state_a, cond, t, xa, uncond=uncond, guidance_scale=w, seeds=seeds, backend="torch"
        )
        guided = uncond + w * (cond - uncond)
        b, state_b = s.step_functional(state_b, guided, t, xb, seeds=seeds, backend="torch")
        # the op computes in float32 (guidance inside it, here outside in float64): float32 rounding apart, of
        # the largest sample carried so far (w = 3.5 drives sigma-space samples to |x| ~ 1e3 in some samplers)
        peak = max(peak, float(b.prev_sample.abs().max()))
        atol = max(1e-5, 2e-6 * peak)
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-5, atol=atol, msg=f"{name} call {i}")
        xa, xb = a.prev_sample, b.prev_sample


@pytest.mark.parametrize("name", NAMES)
def test_guidance_scale_without_uncond_is_refused_on_every_call(name):
    s = samplers.get(name)
    s.set_timesteps(3)
    x = _noisy_batch(s)
    state = s.init_state()
    for i, t in enumerate(s.timesteps):
        out = exact_output(s, i, x * float(s.plan.input_scale[i]))
        with pytest.raises(ValueError, match="guidance_scale needs uncond"):
            s.step_functional(state, out, t, x, guidance_scale=2.0, backend="torch")
        result, state = s.step_functional(state, out, t, x, seeds=ops.batch_seeds(0, 3), backend="torch")
        x = result.prev_sample


# ---- every scheduler on every schedule family samples the right distribution ------------------


DETERMINISTIC_FAMILY_TOL = 0.06  # RMS error to the exact ODE endpoint at 40 steps on default grids


@pytest.mark.parametrize("family", list(FAMILIES))
def test_flow_euler_samples_the_right_distribution_on_every_family(family):
    """flow_euler on discrete / ve / edm once gave std 1.004 / 0.010 / 0.447 for data of std 0.5."""
    error = family_error("flow_euler", {"prediction_type": "sample"}, family, "sample", steps=40)
    assert error < DETERMINISTIC_FAMILY_TOL, f"flow_euler on {family}: RMS error {error:.3g} to the exact solution"


def test_flow_euler_through_k_diffusion_sample_scheduler_keeps_the_data_scale():
    """Through k_diffusion.sample_scheduler the std once came out 79 (the flow grid read as EDM times).

    On the EDM levels flow Euler is Euler in sigma: it must give k-diffusion's own sample_euler.
    """
    from samplers.integrations import k_diffusion as kd

    sigmas = kd.get_sigmas_karras(30, 0.002, 80.0).double()
    x = torch.randn(4096, 4, generator=torch.Generator().manual_seed(2), dtype=F64) * 80.0

    def denoiser(x_in, sigma):
        s = sigma.view(-1, 1).to(F64)
        return MU + STD**2 / (STD**2 + s**2) * (x_in - MU)

    out = kd.sample_scheduler(denoiser, x, sigmas, "flow_euler", disable=True)
    torch.testing.assert_close(out, kd.sample_euler(denoiser, x, sigmas, disable=True), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.std(0), STD, rtol=0.15, atol=0.0)


@pytest.mark.parametrize("name", ["langevin", "predictor_corrector"])
@pytest.mark.parametrize("schedule", ["edm", "ve", "discrete"])
def test_langevin_samplers_stay_finite_and_reach_the_data_scale_on_every_schedule(name, schedule):
    """langevin with its defaults on EDM once diverged (std 6,000 at 50 levels, NaN at 100) with no error."""
    s = samplers.get(name, schedule=schedule)
    s.set_timesteps(60)
    z = torch.randn(2048, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    x, _ = run(s, z, seeds=ops.batch_seeds(6, 2048))
    assert bool(torch.isfinite(x).all())
    ratio = x.std(0) / STD
    assert bool(((ratio > 0.7) & (ratio < 1.4)).all()), f"{name} on {schedule}: std / data std = {ratio.tolist()}"
    assert float((x.mean(0) - MU).abs().max()) < 0.1


def test_langevin_step_size_that_diverges_is_refused():
    s = samplers.get("langevin", schedule="edm", step_size=2e-5)  # NCSN's eps, for sigma_L = 0.01 not 0.002
    with pytest.raises(ValueError, match="step_size=2e-05 diverges"):
        s.set_timesteps(10)


# ---- grids outside the schedule's domain are refused before anything runs -------------------


@pytest.mark.parametrize(
    "name,options,grid,match",
    [
        ("langevin", {}, {"sigmas": [1.0, 0.5, -0.1]}, "custom sigmas must be positive"),
        ("euler", {}, {"sigmas": [2.0, 1.0, -1.0]}, "custom sigmas must be positive"),
        ("euler", {"schedule": "edm"}, {"timesteps": [10.0, 1.0, -0.5]}, r"must lie in \[0, inf\]"),
        ("ddim", {"schedule": "ve"}, {"timesteps": [999.0, 500.0]}, r"must lie in \[0, 1\]"),
        ("euler", {"schedule": "ve"}, {"sigmas": [80.0, 1.0]}, r"custom sigmas must lie in \[0.01, 50\]"),
        ("ddpm", {}, {"timesteps": [1200, 10]}, r"must lie in \[0, 999\]"),
        ("euler", {}, {"timesteps": [float("nan"), 10.0]}, "must be finite"),
        ("ddim", {}, {"timesteps": [500, 500, 10]}, "strictly descending"),
        ("euler", {}, {"timesteps": [[800], [400]]}, None),  # a [N, 1] grid is one run's grid
    ],
)
def test_custom_grids_outside_the_domain_are_refused(name, options, grid, match):
    s = samplers.get(name, **options)
    if match is None:
        s.set_timesteps(**grid)
        assert s.timesteps.shape == (2,)
        return
    with pytest.raises(ValueError, match=match):
        s.set_timesteps(**grid)


def test_model_time_and_update_level_agree_on_custom_sigmas():
    """euler once told the model t = 0 while its update used sigma = -1: every call's time must map to its level."""
    s = samplers.get("euler")
    s.set_timesteps(sigmas=[14.0, 3.0, 0.5, 0.05])
    level = s.plan.model_sigma / s.plan.model_alpha
    again = s.schedule.ve_sigma(s.plan.timesteps)
    torch.testing.assert_close(again, level, rtol=1e-6, atol=0)


# ---- a failed set_timesteps leaves the scheduler as it was ----------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_failed_set_timesteps_keeps_the_previous_plan_and_run(name):
    s = samplers.get(name)
    s.set_timesteps(4)
    x = _noisy_batch(s)
    seeds = ops.batch_seeds(1, 3)
    out = exact_output(s, 0, x * float(s.plan.input_scale[0]))
    s.step(out, s.timesteps[0], x, seeds=seeds, backend="torch")
    before = (s.plan, s.timesteps.clone(), s.step_index, s.init_noise_sigma)
    sigmas_before = s.sigmas.clone() if s.plan.sigmas is not None else None
    for bad in ({"timesteps": [5.0, 7.0]}, {"sigmas": [-1.0]}, {"num_inference_steps": 10**9}):
        with pytest.raises(ValueError):
            s.set_timesteps(**bad)
    assert s.plan is before[0] and torch.equal(s.timesteps, before[1])
    assert s.step_index == before[2] and s.init_noise_sigma == before[3]
    if sigmas_before is not None:
        assert torch.equal(s.sigmas, sigmas_before)
    # the run continues exactly as an untouched scheduler's does
    twin = samplers.get(name)
    twin.set_timesteps(4)
    twin.step(out, twin.timesteps[0], x, seeds=seeds, backend="torch")
    t1 = s.timesteps[1]
    out1 = exact_output(s, 1, x * float(s.plan.input_scale[1]))
    a = s.step(out1, t1, x, seeds=seeds, backend="torch").prev_sample
    b = twin.step(out1, t1, x, seeds=seeds, backend="torch").prev_sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_huge_step_counts_are_refused_with_the_limit():
    s = samplers.get("euler", schedule="vp_cosine")
    with pytest.raises(ValueError, match="exceeds the limit of 100000"):
        s.set_timesteps(10**8)


# ---- per-sample timesteps: one keying for every batch split -----------------------------------


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler_ancestral", "posterior"])
def test_a_request_alone_equals_the_same_request_batched(name):
    """B=1 took the scalar path with other noise keys than the same request inside a B=2 batch."""
    options = {"eta": 1.0} if name == "ddim" else {}
    s = samplers.get(name, **options)
    s.set_timesteps(6)
    x = _noisy_batch(s, batch=2, seed=4)
    seeds = ops.batch_seeds(9, 2)
    t_pair = torch.stack([s.timesteps[1], s.timesteps[3]])
    outs = torch.cat([exact_output(s, k, x[j : j + 1]) for j, k in enumerate((1, 3))])
    together = s.step(outs, t_pair, x, seeds=seeds, backend="torch").prev_sample
    alone = s.step(outs[:1], t_pair[:1], x[:1], seeds=seeds[:1], backend="torch").prev_sample
    torch.testing.assert_close(alone, together[:1], rtol=0, atol=0)


def test_timestep_tensor_of_shape_b_by_1_gets_a_clear_error():
    s = samplers.get("ddim")
    s.set_timesteps(4)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"scalar or a \[batch\] tensor, got shape \(2, 1\)"):
        s.step(x, s.timesteps[:2].view(2, 1), x)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_timestep_is_refused(value):
    s = samplers.get("ddim")
    s.set_timesteps(4)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="must be finite"):
        s.step(x, value, x)


def test_nan_option_values_are_named():
    with pytest.raises(ValueError, match="beta_end must be a number, got NaN"):
        samplers.get("ddim", beta_end=float("nan"))


# ---- gradients flow through the sampler --------------------------------------------------------


@pytest.mark.parametrize("name", ["ddim", "euler", "heun", "dpmpp_2m"])
def test_gradients_reach_the_model_output_through_the_default_backend(name):
    """The fused backend once returned a detached prev_sample (x.grad None, only a torch warning)."""
    s = samplers.get(name)
    s.set_timesteps(3)
    x = torch.randn(2, 4, dtype=torch.float32) * s.init_noise_sigma
    weight = torch.tensor(0.9, requires_grad=True)
    state = s.init_state()
    for i, t in enumerate(s.timesteps):
        out = weight * exact_output(s, i, x * float(s.plan.input_scale[i])).float()
        result, state = s.step_functional(state, out, t, x)
        x = result.prev_sample
    x.sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad) and float(weight.grad) != 0.0


def test_fused_backend_with_grad_is_a_clear_error():
    x = torch.randn(2, 3, requires_grad=True)
    coeffs = samplers.plan.coefficient_rows(1, a=1.0).float()
    with pytest.raises(RuntimeError, match="no backward"):
        ops.sampler_update(x, x.detach(), coeffs, backend="fused")


# ---- the same numbers as the whole-chain oracle ------------------------------------------------


def test_battery_run_is_the_public_loop():
    """battery.run drives step_functional exactly as samplers.sample does (a sanity check of the harness)."""
    s = samplers.get("ddim")
    s.set_timesteps(5)
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    x, _ = run(s, z)

    def model(x_in, t):
        return exact_output(s, int((s.timesteps == t).nonzero()[0]), x_in)

    y = samplers.sample(model, s, z.clone(), progress=False, backend="torch")
    torch.testing.assert_close(x, y.to(F64), rtol=1e-12, atol=1e-12)
