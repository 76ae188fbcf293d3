"""DDIM inversion (samplers.schedulers.ddim_inverse): data -> noise -> data, diffusers parity, every family, check."""

from __future__ import annotations

import pytest
import torch
from diffusers_loop import parity

import samplers
from samplers import parameterization
from samplers.testing import GaussianOracle, KitSettings, assert_conforms

import battery

diffusers = pytest.importorskip("diffusers")
from samplers.integrations.diffusers import from_diffusers  # noqa: E402

F64 = torch.float64
BOUND = 1e-5
ORACLE = GaussianOracle(battery.MU, battery.STD)  # its eps is finite at clean data, where an inversion starts


def invert(scheduler: samplers.Scheduler, x: torch.Tensor, oracle: GaussianOracle = ORACLE) -> torch.Tensor:
    """Run the planned calls from ``x`` with the exact oracle at each call's level (float64)."""
    state, plan = scheduler.init_state(), scheduler.plan
    for i, t in enumerate(scheduler.timesteps):
        out = oracle.model_output(scheduler.prediction_type, x, float(plan.model_alpha[i]), float(plan.model_sigma[i]))
        result, state = scheduler.step_functional(state, out, t, x, backend="torch")
        x = result.prev_sample
    return x


def data(n: int = 1024, seed: int = 2, oracle: GaussianOracle = ORACLE) -> torch.Tensor:
    return oracle.mean + oracle.std * torch.randn(
        n, *oracle.mean.shape, generator=torch.Generator().manual_seed(seed), dtype=F64
    )


# ---- parity with diffusers' DDIMInverseScheduler -----------------------------------------------------------

CASES = {
    "leading": {},
    "trailing": {"timestep_spacing": "trailing"},
    "v": {"prediction_type": "v_prediction"},
    "offset-first-training-level": {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1},
    "clip-range": {"clip_sample_range": 0.5},
    "sd-v-trailing": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                      "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    "zero-snr": {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction",
                 "clip_sample": False},
}  # fmt: skip


@pytest.mark.parametrize("steps", [7, 50])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_diffusers(case: str, steps: int) -> None:
    """From data, the model fed each call's destination timestep: within 1e-5 of diffusers."""
    result = parity("DDIMInverseScheduler", CASES[case], steps=steps, start="data")
    assert result["native"] <= BOUND and result["wrapper"] <= BOUND, result


def test_repeated_and_reordered_calls_as_diffusers() -> None:
    """Inversion steps are memoryless (a function of t): repeating or reordering calls gives diffusers' numbers."""
    ref = diffusers.DDIMInverseScheduler(clip_sample=False)
    ours = from_diffusers(ref)
    ref.set_timesteps(10)
    ours.set_timesteps(10)
    x = 0.3 * torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    out = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    for t in (300, 300, 800, 0, 500):
        assert torch.allclose(ours.step(out, t, x).prev_sample, ref.step(out, t, x).prev_sample, atol=1e-6), t


# ---- data -> noise -> data ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [{}, {"timestep_spacing": "trailing"}, {"prediction_type": "v_prediction"}, {"timestep_spacing": "linspace"}],
)
def test_invert_then_sample_back_reconstructs(config: dict) -> None:
    """Invert with ddim_inverse, sample back with ddim over the same levels: the sample comes back to 1e-4 with an
    exact oracle of the sample itself (one data point: its denoiser is constant along the path, where DDIM's
    ODE step is exact in both directions). The run starts at the first training level (set_alpha_to_one=False)
    so that the sample's own noise is what is inverted."""
    point = torch.tensor([0.4, -0.3, 0.2, 0.05], dtype=F64)
    oracle = GaussianOracle(point, torch.full_like(point, 1e-12))
    options = {"clip_sample": False, "set_alpha_to_one": False, **config}
    inverse, forward = samplers.get("ddim_inverse", **options), samplers.get("ddim", **options)
    inverse.set_timesteps(25)
    forward.set_timesteps(25)
    assert torch.equal(inverse.timesteps.flip(0), forward.timesteps)
    abar0 = inverse.schedule.alphas_cumprod[0]
    x = abar0.sqrt() * point + (1 - abar0).sqrt() * torch.randn(
        64, 4, generator=torch.Generator().manual_seed(0), dtype=F64
    )
    noise = invert(inverse, x, oracle)
    assert float((noise - x).abs().max()) > 1.0  # it did move to the noisy end
    back = invert(forward, noise, oracle)
    assert float((back - x).abs().max()) <= 1e-4


def test_round_trip_error_is_first_order_on_a_gaussian() -> None:
    """With the Gaussian oracle both directions are first-order ODE solvers, so the round trip errs by O(1/N)
    (measured 0.11, 0.011 max abs at 100 and 1000 steps): a 1e-4 round trip would need ~1e5 DDIM steps, i.e. a
    higher-order inversion (DPM-Solver++ inverse)."""
    steps, errors = (16, 32, 64), []
    for n in steps:
        inverse = samplers.get("ddim_inverse", clip_sample=False, set_alpha_to_one=False)
        forward = samplers.get("ddim", clip_sample=False, set_alpha_to_one=False)
        inverse.set_timesteps(n)
        forward.set_timesteps(n)
        x = data()
        errors.append(float((invert(forward, invert(inverse, x)) - x).pow(2).mean().sqrt()))
    assert errors[0] > errors[1] > errors[2] and abs(battery.fitted_order(errors, steps) - 1.0) <= 0.35, errors


# ---- every prediction type on every schedule family: the exact ODE map from data --------------------------------


@pytest.mark.parametrize("family", sorted(battery.FAMILIES))
@pytest.mark.parametrize("prediction_type", parameterization.PREDICTION_TYPES)
def test_every_prediction_type_and_family(family: str, prediction_type: str) -> None:
    """Data -> the run's noisiest level against the exact probability-flow map: first order (16 -> 64 steps,
    measured 0.99-1.02 on every family). Starting from clean data the noise must be read off the output, which
    sample and score predictions cannot give: a ValueError names them (set_alpha_to_one=False on a discrete
    table starts at the first training level instead, and serves them too)."""
    config = {**battery.FAMILIES[family], "prediction_type": prediction_type, "clip_sample": False}
    if prediction_type in ("sample", "score"):
        with pytest.raises(ValueError, match=f"prediction_type='{prediction_type}'"):
            samplers.get("ddim_inverse", **config).set_timesteps(8)
        if family != "discrete_vp":
            return
        config["set_alpha_to_one"] = False
    steps, errors = (16, 32, 64), []
    for n in steps:
        s = samplers.get("ddim_inverse", **config)
        s.set_timesteps(n)
        x0 = data()
        plan = s.plan
        exact = ORACLE.ode_solution(
            x0, float(plan.model_alpha[0]), float(plan.model_sigma[0]), plan.extras["end_alpha_sigma"]
        )
        errors.append(float((invert(s, x0) - exact).pow(2).mean().sqrt() / exact.pow(2).mean().sqrt()))
    assert errors[0] > errors[1] > errors[2] and abs(battery.fitted_order(errors, steps) - 1.0) <= 0.35, errors
    assert errors[-1] < 0.05, errors


def test_grids_are_visited_from_the_least_noisy_end() -> None:
    s = samplers.get("ddim_inverse")
    s.set_timesteps(10)
    assert s.timesteps.tolist() == list(range(0, 1000, 100))
    assert s.init_noise_sigma == 1.0
    custom = samplers.get("ddim_inverse")
    custom.set_timesteps(timesteps=[900, 500, 100])  # given noisiest first, as everywhere
    assert custom.timesteps.tolist() == [100, 500, 900]
    assert [round(float(v), 6) for v in custom.plan.model_sigma[1:]] == [
        round(float(v), 6) for v in custom.schedule.alpha_sigma(torch.tensor([100, 500]))[1]
    ]  # each call reads its output at the previous (less noisy) level


def test_plan_says_which_runs_invert() -> None:
    """``Plan.inverts`` (what the bench and ``samplers tune`` refuse on): true for the inversions registered with a
    plain install, false for every sampler, and false for a one-call plan (no direction to read)."""
    inverting = []
    for name in samplers.available():
        s = samplers.get(name)
        s.set_timesteps(4)
        if s.plan.inverts:
            inverting.append(name)
    assert sorted(inverting) == [n for n in sorted(samplers.available()) if n.endswith("_inverse")]
    assert "ddim_inverse" in inverting
    one = samplers.get("ddim_inverse")
    one.set_timesteps(1)
    assert len(one.plan) == 1 and not one.plan.inverts


# ---- the conformance kit ---------------------------------------------------------------------------------


def test_samplers_check() -> None:
    """The kit starts an inversion (a plan ending away from clean data) from data samples and compares with the
    exact ODE map to its end."""
    assert_conforms("ddim_inverse", settings=KitSettings.quick(backend="torch"))
    assert_conforms(
        "ddim_inverse", settings=KitSettings.quick(backend="torch"), schedule="flow", prediction_type="flow"
    )


def test_metadata() -> None:
    meta = samplers.registry().scheduler_class("ddim_inverse").metadata()
    assert (meta["order"], meta["stochastic"]) == (1, False) and "Song" in meta["paper"]
