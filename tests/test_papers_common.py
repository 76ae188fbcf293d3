"""What every papers-only sampler must do (issue 13): conform (``samplers check``), run on every schedule
family with every prediction type, and be reachable k-diffusion style. Orders, identities and moments are
in the per-sampler files (tests/test_papers_*.py)."""

from __future__ import annotations

import pytest
import torch

import samplers
from samplers.integrations import k_diffusion as kd
from samplers.testing import KitSettings, assert_conforms

import battery

F64 = torch.float64
QUICK = KitSettings.quick(backend="torch")
NAMES = (
    "res_multistep",
    "res_multistep_ancestral",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "gradient_estimation",
    "euler_cfgpp",
    "dpmpp_2m_cfgpp",
    "restart",
)
# model-space samplers read x0 at a flow's t = 1 (alpha = 0), which epsilon / score outputs cannot give;
# the sigma-space ones start at the capped level (samplers.levels.ZERO_SNR_LEVEL) instead
MODEL_SPACE = {"res_multistep", "res_multistep_ancestral", "gradient_estimation", "dpmpp_2m_cfgpp"}
# deterministic configurations (the ODE limit where the default draws noise): RMS error to the exact ODE
DETERMINISTIC = {
    "res_multistep": {},
    "gradient_estimation": {},
    "euler_cfgpp": {},
    "dpmpp_2m_cfgpp": {},
    "er_sde": {"noise_scale": "ode"},
}
STOCHASTIC = ("res_multistep_ancestral", "er_sde", "seeds_2", "seeds_3", "restart")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("seeds") else n for n in NAMES]
)
def test_conforms(name: str) -> None:
    """``samplers check NAME`` (the SEEDS ones, 6-9 s, also run in test_testing_kit's built-in sweep)."""
    assert_conforms(name, settings=QUICK)


def _unreadable(name: str, family: str, prediction_type: str) -> bool:
    return name in MODEL_SPACE and family == "flow_shift3" and prediction_type in ("epsilon", "score")


def _family_error(name: str, config: dict, family: str, prediction_type: str) -> float | None:
    """battery.family_error at 40 model calls (SEEDS: 20 and 13 steps), or the error an unreadable case raises."""
    steps = 40 // samplers.get(name).nfe_per_step
    if _unreadable(name, family, prediction_type):
        with pytest.raises(ValueError, match=f"prediction_type='{prediction_type}'"):
            battery.family_error(name, config, family, prediction_type, steps)
        return None
    return battery.family_error(name, config, family, prediction_type, steps)


@pytest.mark.parametrize("family", list(battery.FAMILIES))
@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_deterministic_on_every_family_and_prediction_type(name: str, family: str) -> None:
    """40 steps: the same answer whatever the prediction type, close to the exact ODE solution (the largest,
    0.055, is RES 2M on the discrete table's linspace grid and on the shifted flow grid)."""
    errors = [_family_error(name, DETERMINISTIC[name], family, p) for p in battery.prediction_types_for(family)]
    errors = [e for e in errors if e is not None]
    assert max(errors) < 0.08, errors
    assert max(errors) - min(errors) < 1e-4 * max(1.0, max(errors)), errors


FAST_FAMILIES = {"discrete_vp": "epsilon", "flow_shift3": "flow"}  # the rest of the grid is marked slow


def _stochastic_cases(fast: bool):
    for name in STOCHASTIC:
        for family in battery.FAMILIES:
            for prediction_type in battery.prediction_types_for(family):
                if (FAST_FAMILIES.get(family) == prediction_type) == fast:
                    yield pytest.param(name, family, prediction_type, id=f"{name}-{family}-{prediction_type}")


@pytest.mark.parametrize(("name", "family", "prediction_type"), list(_stochastic_cases(fast=True)))
def test_stochastic_on_every_family(name: str, family: str, prediction_type: str) -> None:
    """40 model calls, 2048 samples: the sample mean within 4.5 standard errors of the data's (max of 4)."""
    z = _family_error(name, {}, family, prediction_type)
    assert z is None or z < 4.5, z


@pytest.mark.slow
@pytest.mark.parametrize(("name", "family", "prediction_type"), list(_stochastic_cases(fast=False)))
def test_stochastic_on_every_family_and_prediction_type(name: str, family: str, prediction_type: str) -> None:
    z = _family_error(name, {}, family, prediction_type)
    assert z is None or z < 4.5, z


# --------------------------------------------------------------------------------------------
# k-diffusion-style access
# --------------------------------------------------------------------------------------------

WRAPPERS = {
    "res_multistep": (kd.sample_res_multistep, {}),
    "res_multistep_ancestral": (kd.sample_res_multistep_ancestral, {"eta": 0.7}),
    "er_sde": (kd.sample_er_sde, {"solver_order": 2}),
    "seeds_2": (kd.sample_seeds_2, {"r": 0.4}),
    "seeds_3": (kd.sample_seeds_3, {}),
    "gradient_estimation": (kd.sample_gradient_estimation, {"ge_gamma": 1.5}),
    "restart": (kd.sample_restart, {"restart_intervals": [[2, 1, 0.5, 3.0]]}),
}


def _denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    level = sigma.to(F64).view(-1, 1)
    return (battery.MU + battery.STD**2 / (battery.STD**2 + level**2) * (x.to(F64) - battery.MU)).to(x.dtype)


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_k_diffusion_style_wrapper_runs_our_scheduler(name: str) -> None:
    """The wrapper is our scheduler on the caller's sigmas (EDM, x0 output): the same result as stepping it
    by hand with the same noise, which the noise sampler is asked for over each call's declared interval."""
    fn, options = WRAPPERS[name]
    sigmas = kd.get_sigmas_karras(10, 0.01, 20.0)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float32) * sigmas[0]
    gen = torch.Generator().manual_seed(1)
    noises = [torch.randn(64, 4, generator=gen) for _ in range(200)]
    asked: list[tuple[float, float]] = []

    def noise_sampler(sigma, sigma_next):
        asked.append((float(sigma), float(sigma_next)))
        return noises[len(asked) - 1]

    noisy = name in STOCHASTIC
    extra = {"noise_sampler": noise_sampler} if noisy else {}
    ours = fn(_denoiser, x, sigmas, disable=True, **options, **extra)

    config = {{"ge_gamma": "gamma"}.get(k, k): v for k, v in options.items()}
    s = samplers.get(name, schedule="edm", prediction_type="sample", **config)
    s.set_timesteps(timesteps=sigmas[:-1].double())
    state, y, used = s.init_state(), x.clone(), 0
    for i, t in enumerate(s.timesteps):
        noise = None
        if s.plan.stochastic_calls[i]:
            noise, used = noises[used], used + 1
            assert asked[used - 1] == pytest.approx(s.plan.noise_intervals[i], rel=1e-6)
        out = _denoiser(y, s.plan.model_sigma[i : i + 1].float())
        result, state = s.step_functional(state, out, t, y, noise=noise)
        y = result.prev_sample
    assert used == len(asked) and (used > 0) == noisy
    assert torch.equal(ours, y)


def test_sample_restart_needs_a_grid_to_zero() -> None:
    sigmas = kd.get_sigmas_karras(10, 0.01, 20.0)[:-3]
    with pytest.raises(ValueError, match="ending at 0"):
        kd.sample_restart(_denoiser, torch.zeros(2, 4), sigmas)
