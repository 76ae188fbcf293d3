"""DPM-Solver-fast (samplers.schedulers.dpm_fast): the order schedule, the stage rows, convergence order, every
prediction type on every family, the ancestral (eta > 0) form, the kit, and parity with k-diffusion's
sample_dpm_fast (max |ours - k-diffusion| / max |k-diffusion| <= 1e-5, same noise)."""

from __future__ import annotations

import math

import pytest
import torch
from dpm_references import SHAPE, TOL, ReplayNoise, gaussian_denoiser, relative_error

import samplers
from samplers.integrations import k_diffusion as kd
from samplers.ops.reference import COEFF
from samplers.schedulers.dpm_fast import fast_orders
from samplers.testing import CHECKS, KitSettings, assert_conforms

import battery

F64 = torch.float64
QUICK = KitSettings.quick(backend="torch")


def test_order_schedule_spends_the_budget_exactly():
    """Lu et al. 2022, sec. 3.4: K = n // 3 + 1 steps, third order except a tail of order n % 3 (or 2, 1)."""
    assert fast_orders(10) == [3, 3, 3, 1]
    assert fast_orders(12) == [3, 3, 3, 2, 1]
    assert fast_orders(2) == [2] and fast_orders(3) == [2, 1]
    assert all(sum(fast_orders(n)) == n for n in range(1, 100))
    for n in (1, 2, 3, 4, 5, 6, 10, 31):
        s = samplers.get("dpm_fast")
        s.set_timesteps(n)
        assert len(s.timesteps) == n and s.num_inference_steps == n


def test_grid_is_log_uniform_and_ends_at_sigma_min():
    """Step boundaries evenly in log sigma between sigma_max and sigma_min; the run stops at sigma_min (no final
    denoising). For data at one point mu the noise estimate is constant along the ODE, which DPM-Solver then
    integrates exactly: the run must end at mu + (sigma_min / sigma_max) (y_T - mu)."""
    s = samplers.get("dpm_fast", schedule="edm", prediction_type="sample", sigma_min=0.05, sigma_max=20.0)
    s.set_timesteps(6)  # orders [3, 2, 1]: boundaries 20 > s1 > s2 > 0.05
    levels = s.plan.model_sigma  # EDM: the model-space sigma is the level
    boundaries = [float(levels[0]), float(levels[3]), float(levels[5])]
    ratio = [math.log(boundaries[0] / boundaries[1]), math.log(boundaries[1] / boundaries[2])]
    assert boundaries[0] == pytest.approx(20.0) and ratio[0] == pytest.approx(ratio[1], rel=1e-12)
    mu = torch.tensor([0.3, -1.2], dtype=F64)
    y = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 20.0
    start = y.clone()
    for t in s.timesteps:
        y = s.step(mu.expand(5, 2), t, y, backend="torch").prev_sample
    torch.testing.assert_close(y, mu + 0.05 / 20.0 * (start - mu), rtol=1e-5, atol=1e-5)


def test_stages_jump_from_the_step_start():
    s = samplers.get("dpm_fast")
    s.set_timesteps(9)  # [3, 3, 2, 1]
    plan = s.plan
    assert plan.use[:4] == [(), ("y0", "d0"), ("y0", "d0"), ()]
    assert plan.use[6:] == [(), ("y2", "d2"), ()]
    # the stages weigh the kept step start, not their own input, beyond the current estimate's eps
    assert all(float(plan.rows[k, COEFF["h0"]]) != 0.0 for k in (1, 2, 7))


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ancestral_noise_is_added_once_per_step(eta):
    s = samplers.get("dpm_fast", eta=eta, schedule="edm")
    s.set_timesteps(10)  # [3, 3, 3, 1]
    noisy = [k for k, c in enumerate(s.plan.stochastic_calls) if c]
    assert noisy == [2, 5, 8]  # each step's last call; the last step ends at sigma_min with nothing to add
    assert all(s.plan.noise_intervals[k] is not None for k in noisy)


# ---- order, families, moments -----------------------------------------------------------------------


def test_convergence_order_edm():
    """Third order in the evaluation count (from 24 evaluations on, past the first Karras-range steps)."""
    battery.assert_order("dpm_fast", {}, 3, steps=(24, 48, 96, 192))


def test_converges_on_flow_shift3():
    """On the shift-3 flow grid the steps out of t = 1 keep O(1) log-SNR lengths whatever the budget, an O(1/n)
    contribution this exponential integrator cannot remove: measured order 1.9 over 24-192 evaluations."""
    battery.assert_order(
        "dpm_fast", {"prediction_type": "flow"}, 2, steps=(24, 48, 96, 192), family=battery.FAMILIES["flow_shift3"]
    )


@pytest.mark.parametrize("family", list(battery.FAMILIES))
@pytest.mark.parametrize("eta", [0.0, pytest.param(1.0, marks=pytest.mark.slow)])
def test_every_prediction_type_on_every_family(family, eta):
    """A sigma-space sampler: a flow grid's t = 1 is moved to the capped level 4096 (alpha > 0), so every
    prediction type reads there too (their float32 readouts there differ by up to 1/alpha ulps: 1e-3)."""
    results = {
        kind: battery.family_error("dpm_fast", {"eta": eta}, family, kind)
        for kind in battery.prediction_types_for(family)
    }
    values = list(results.values())
    tolerance = 1e-3 if family == "flow_shift3" else 1e-5
    assert max(values) - min(values) <= tolerance * max(1.0, max(values)), results
    assert max(values) < (4.5 if eta else 0.05), results


def test_ancestral_moments_at_high_nfe():
    mean_z, var_z = battery.moments_error("dpm_fast", {"eta": 1.0}, 150)
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


@pytest.mark.parametrize("config", [{}, {"prediction_type": "v_prediction", "sigma_min": 0.05}])
def test_conforms(config):
    assert_conforms("dpm_fast", settings=QUICK, **config)


def test_conforms_ancestral():
    """eta = 1 with the kit's 4 evaluations makes the first step span almost the whole range (h ~ 10 in log
    sigma, sigma_down ~ sigma_next^2 / sigma): DPM-Solver-3's last stage then weighs its input by ~1/s_2 ~ 100,
    which bfloat16 samples cannot carry (float32 can). From 9 evaluations on bfloat16 agrees as well."""
    assert_conforms("dpm_fast", settings=QUICK, checks=[c for c in CHECKS if c != "shapes_dtypes"], eta=1.0)
    assert_conforms(
        "dpm_fast", settings=KitSettings.quick(backend="torch", shape_steps=9), checks=["shapes_dtypes"], eta=1.0
    )


@pytest.mark.parametrize(
    "config, match",
    [({"eta": -1.0}, "eta"), ({"s_noise": float("nan")}, "s_noise"), ({"orders": [3, 4]}, "orders")],
)
def test_bad_config_is_a_clear_error(config, match):
    with pytest.raises(ValueError, match=match):
        samplers.get("dpm_fast", **config)


def test_orders_must_fit_the_grid():
    s = samplers.get("dpm_fast", orders=[3, 3, 1])
    s.set_timesteps(7)
    with pytest.raises(ValueError, match="spend 7"):
        s.set_timesteps(8)
    with pytest.raises(ValueError, match="grid has 2"):
        s.set_timesteps(sigmas=[10.0, 1.0, 0.1])
    s = samplers.get("dpm_fast")
    s.set_timesteps(sigmas=[10.0, 1.0, 0.1])  # custom boundaries: third order everywhere
    assert len(s.timesteps) == 6


# ---- parity with k-diffusion ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def K():
    from test_integrations_k_diffusion import _load_k_diffusion

    return _load_k_diffusion().sampling


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 10, 20, 31])
@pytest.mark.parametrize("eta, s_noise", [(0.0, 1.0), (1.0, 1.0), (0.5, 0.7)])
def test_k_diffusion_parity(K, n, eta, s_noise):
    """Same evaluations, same noise. k-diffusion also asks its noise sampler for the last step, whose
    coefficient is 0 (the step ends at sigma_min); we do not draw it."""
    denoiser = gaussian_denoiser()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * 14.6
    runs = []
    for module in (K, kd):
        noise = ReplayNoise(SHAPE)
        out = module.sample_dpm_fast(
            denoiser, x.clone(), 0.03, 14.6, n, disable=True, eta=eta, s_noise=s_noise, noise_sampler=noise
        )
        runs.append((out, noise.calls))
    (expected, their_calls), (got, our_calls) = runs
    assert relative_error(got, expected) <= TOL
    if eta:
        assert len(our_calls) == len(their_calls) - 1
        flat = [v for pair in their_calls[:-1] for v in pair]
        assert [v for pair in our_calls for v in pair] == pytest.approx(flat, rel=1e-6)


def test_k_diffusion_wrapper_errors():
    denoiser = gaussian_denoiser()
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="sigma_min"):
        kd.sample_dpm_fast(denoiser, x, 0.0, 10.0, 5, disable=True)
    with pytest.raises(ValueError, match="reverse"):
        kd.sample_dpm_fast(denoiser, x, 10.0, 1.0, 5, disable=True)
