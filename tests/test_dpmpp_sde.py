"""DPM++ SDE (samplers.schedulers.dpmpp_sde): the two-stage rows, the correlated noise in both noise modes,
moments at high NFE, every prediction type on every family, the kit, and parity with diffusers'
DPMSolverSDEScheduler and k-diffusion's sample_dpmpp_sde given the same noise (max relative difference
<= 1e-5), including the drop-in wrapper's seeded Brownian tree."""

from __future__ import annotations

import math

import pytest
import torch
from dpm_references import SHAPE, TOL, ReplayNoise, gaussian_denoiser, gaussian_model, relative_error, table_space

import samplers
from samplers.integrations import k_diffusion as kd
from samplers.ops import batch_seeds, philox_normal
from samplers.plan import brownian_time
from samplers.testing import KitSettings, assert_conforms

import battery

F64 = torch.float64
QUICK = KitSettings.quick(backend="torch")
pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde's float32 interval ends


def test_calls_and_intervals():
    """Two calls per step (the stage at sqrt(s s') for r = 1/2), one Euler call into 0; the first call's noise
    stands for [s_m, s], the second's for [s', s] (k-diffusion's noise_sampler(sigma, sigma_mid), then
    noise_sampler(sigma, sigma_next))."""
    s = samplers.get("dpmpp_sde", schedule="edm", prediction_type="sample")
    s.set_timesteps(timesteps=[10.0, 4.0, 1.0])
    plan = s.plan
    assert plan.model_sigma.tolist() == pytest.approx([10.0, math.sqrt(40.0), 4.0, 2.0, 1.0])
    assert plan.noise_intervals[:4] == [(10.0, pytest.approx(math.sqrt(40.0))), (10.0, 4.0), (4.0, 2.0), (4.0, 1.0)]
    assert plan.noise_intervals[4] is None and plan.use[4] == ()
    assert s.timesteps.tolist() == pytest.approx([10.0, math.sqrt(40.0), 4.0, 2.0, 1.0])


def test_deterministic_limit_is_dpm_solver_pp_2s():
    """eta = 0: DPM-Solver++(2S) (Alg. 1 with r = 1/2), second order."""
    battery.assert_order("dpmpp_sde", {"eta": 0.0}, 2, steps=(16, 32, 64, 128))


def test_philox_mode_rebuilds_the_correlated_second_draw():
    """Per-call Philox: the second call's row turns its independent draw z' into z2 = sqrt(L1/L) z1 + sqrt(L2/L) z'
    by rebuilding z1 from its input. The seeded run equals the run of the plain rows (Brownian mode) given z1 and
    that z2 explicitly, to float32."""
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * 10.0
    outputs = [torch.randn(64, 3, generator=torch.Generator().manual_seed(k)) for k in (1, 2)]
    seeds = batch_seeds(5, 64)

    def two_calls(noise_mode: str, noises=None) -> torch.Tensor:
        s = samplers.get("dpmpp_sde", schedule="edm", prediction_type="sample", noise=noise_mode)
        s.set_timesteps(timesteps=[10.0, 4.0, 1.0])
        state, y = s.init_state(), x
        for k in range(2):
            given = {"noise": noises[k]} if noises is not None else {"seeds": seeds}
            out, state = s.step_functional(state, outputs[k], s.timesteps[k], y, backend="torch", **given)
            y = out.prev_sample
        return y

    z1, z_prime = (philox_normal(seeds, k, 3) for k in (0, 1))
    b = [brownian_time(v) for v in (10.0, math.sqrt(40.0), 4.0)]
    frac = (b[0] - b[1]) / (b[0] - b[2])
    z2 = math.sqrt(frac) * z1 + math.sqrt(1 - frac) * z_prime
    seeded = two_calls("philox")
    torch.testing.assert_close(seeded, two_calls("brownian", (z1, z2)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seeded, two_calls("philox", (z1, z_prime)), rtol=1e-6, atol=1e-6)  # the draws


@pytest.mark.parametrize("noise", ["philox", pytest.param("brownian", marks=pytest.mark.slow)])
def test_moments_at_high_nfe(noise):
    mean_z, var_z = battery.moments_error("dpmpp_sde", {"noise": noise}, 100, n=2048)
    assert mean_z < 4 and var_z < 4, (mean_z, var_z)


@pytest.mark.parametrize("eta", [0.0, pytest.param(1.0, marks=pytest.mark.slow)])  # 0: the same rows, no noise
@pytest.mark.parametrize("family", list(battery.FAMILIES))
def test_every_prediction_type_on_every_family(family, eta):
    """Sigma space: a flow grid's t = 1 is moved to the capped level 4096, where every prediction type reads."""
    kinds = battery.prediction_types_for(family)
    results = {kind: battery.family_error("dpmpp_sde", {"eta": eta}, family, kind) for kind in kinds}
    values = list(results.values())
    assert max(values) - min(values) <= 1e-3 * max(values), results
    assert max(values) < (4.5 if eta else 0.05), results  # stochastic: |sample mean - MU| in standard errors


@pytest.mark.parametrize(
    "config", [{}, {"eta": 0.5, "r": 0.3}, {"use_karras_sigmas": True, "prediction_type": "v_prediction"}]
)
def test_conforms(config):
    assert_conforms("dpmpp_sde", settings=QUICK, **config)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"r": 0.0}, "r "),
        ({"eta": -0.5}, "eta"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "exclusive"),
        ({"interpolation_type": "cubic"}, "interpolation_type"),
    ],
)
def test_bad_config_is_a_clear_error(config, match):
    with pytest.raises(ValueError, match=match):
        samplers.get("dpmpp_sde", **config)


# ---- parity ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def K():
    from test_integrations_k_diffusion import _load_k_diffusion

    return _load_k_diffusion().sampling


@pytest.mark.parametrize(
    "grid", [lambda: kd.get_sigmas_karras(30, 0.03, 14.6), lambda: kd.get_sigmas_exponential(12, 0.01, 80.0)[:-3]]
)
@pytest.mark.parametrize("eta, r, s_noise", [(1.0, 0.5, 1.0), (0.5, 0.5, 0.8), (1.0, 0.3, 1.0), (0.0, 0.5, 1.0)])
def test_k_diffusion_parity(K, grid, eta, r, s_noise):
    sigmas = grid()
    denoiser = gaussian_denoiser()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    runs = []
    for module in (K, kd):
        noise = ReplayNoise(SHAPE)
        out = module.sample_dpmpp_sde(
            denoiser, x.clone(), sigmas, disable=True, eta=eta, r=r, s_noise=s_noise, noise_sampler=noise
        )
        runs.append((out, noise.calls))
    (expected, their_calls), (got, our_calls) = runs
    assert relative_error(got, expected) <= TOL
    if eta:  # the same intervals asked for, in the same order (k-diffusion also asks at eta = 0, unused)
        flat = [v for pair in their_calls for v in pair]
        assert [v for pair in our_calls for v in pair] == pytest.approx(flat, rel=1e-6)


def test_k_diffusion_default_noise_correlates_the_two_draws():
    """Our default noise sampler is one Brownian path: the two draws of a step have correlation sqrt(L1 / L)."""
    x = torch.zeros(1, 4000)  # one sample, 4000 independent elements: one Philox key
    sampler = kd.brownian_noise_sampler(x, seed=3)
    z1 = sampler(torch.tensor(10.0), torch.tensor(6.0))
    z2 = sampler(torch.tensor(10.0), torch.tensor(4.0))
    b = [brownian_time(v) for v in (10.0, 6.0, 4.0)]
    expected = math.sqrt((b[0] - b[1]) / (b[0] - b[2]))
    assert abs(float((z1 * z2).mean()) - expected) < 0.06  # 4 standard errors of a 4000-sample correlation


diffusers = pytest.importorskip("diffusers")


def _diffusers_run(reference, model, x, steps, noise_sampler=None):
    reference.set_timesteps(steps)
    if noise_sampler is not None:
        reference.noise_sampler = noise_sampler  # diffusers builds its own tree only when this is None
    y = x * float(reference.init_noise_sigma)
    for t in reference.timesteps:
        y = reference.step(model(reference.scale_model_input(y, t), t), t, y).prev_sample
    return y


CASES = {
    "default": {},
    "karras": {"use_karras_sigmas": True},
    "trailing-v": {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    "leading-offset": {"timestep_spacing": "leading", "steps_offset": 1},
    "exponential": {"use_exponential_sigmas": True},
    "beta-scaled": {"use_beta_sigmas": True, "beta_schedule": "scaled_linear"},
}


@pytest.mark.parametrize("steps", [50, 10])
@pytest.mark.parametrize("case", list(CASES))
def test_diffusers_parity(case, steps):
    from samplers.integrations.diffusers import from_diffusers

    config = CASES[case]
    reference = diffusers.DPMSolverSDEScheduler(**config)
    model = gaussian_model(table_space(reference.alphas_cumprod.to(F64)), config.get("prediction_type", "epsilon"))
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    recorder = ReplayNoise(SHAPE, count=4 * steps)
    expected = _diffusers_run(reference, model, x, steps, recorder)
    ours = from_diffusers(reference)
    assert type(ours).__name__ == "DPMSolverSDEScheduler" and ours.config.noise == "brownian"  # diffusers' tree
    ours.set_timesteps(steps)
    y, drawn = x * float(ours.init_noise_sigma), 0
    for i, t in enumerate(ours.timesteps):
        kwargs = {}
        if ours.plan.stochastic_calls[i]:
            kwargs["noise"] = recorder.noise[drawn]
            drawn += 1
        y = ours.step(model(ours.scale_model_input(y, t), t), t, y, backend="torch", **kwargs).prev_sample
    assert drawn == len(recorder.calls)
    assert relative_error(y, expected) <= TOL


@pytest.mark.parametrize("case", ["default", "karras", "trailing-v"])
def test_wrapper_reproduces_diffusers_seeded_tree(case):
    """The drop-in in noise="diffusers" mode asks diffusers' own Brownian tree (noise_sampler_seed) for the same
    float32 intervals: the same images as diffusers' scheduler with that seed."""
    from samplers.integrations.diffusers import from_diffusers, to_diffusers

    config = {**CASES[case], "noise_sampler_seed": 7}
    model = gaussian_model(
        table_space(diffusers.DPMSolverSDEScheduler().alphas_cumprod.to(F64)), config.get("prediction_type", "epsilon")
    )
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    expected = _diffusers_run(diffusers.DPMSolverSDEScheduler(**config), model, x, 20)
    got = _diffusers_run(to_diffusers(from_diffusers(diffusers.DPMSolverSDEScheduler(**config))), model, x, 20)
    assert relative_error(got, expected) <= TOL


def test_mapping_round_trip_and_refusals():
    from samplers.integrations.diffusers import UnsupportedConfigError, from_diffusers, samplers_config_to_diffusers

    ours = samplers.get("dpmpp_sde", use_karras_sigmas=True, noise_sampler_seed=3, noise="brownian")
    name, config = samplers_config_to_diffusers(ours)
    assert name == "DPMSolverSDEScheduler" and config["noise_sampler_seed"] == 3
    back = from_diffusers(getattr(diffusers, name)(**config))
    assert dict(back.config) == dict(ours.config)
    with pytest.raises(UnsupportedConfigError, match="r=0.3"):
        samplers_config_to_diffusers(samplers.get("dpmpp_sde", r=0.3, noise="brownian"))
    with pytest.raises(UnsupportedConfigError, match="noise='philox'"):
        samplers_config_to_diffusers(samplers.get("dpmpp_sde"))
    with pytest.raises(UnsupportedConfigError, match="prediction_type"):
        from_diffusers(diffusers.DPMSolverSDEScheduler(prediction_type="sample"))
