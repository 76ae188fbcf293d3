"""Call-by-call agreement with diffusers' DPMSolverMultistepScheduler and UniPCMultistepScheduler.

A fake model (the exact denoiser of a 2-D Gaussian mixture) drives both libraries from the same
noise; with the SDE variant both get the same explicit noise per step. diffusers computes its
coefficients in float32, this plugin in float64, so results agree to float32 rounding.
"""

import pytest
import torch
from gmm_oracle import GMM2D

import samplers

diffusers = pytest.importorskip("diffusers")

GMM = GMM2D()
EPS = GMM.model("epsilon")


def run_diffusers(scheduler, z, steps, noises=None, begin=None):
    scheduler.set_timesteps(steps)
    abar = scheduler.alphas_cumprod.double()
    timesteps = scheduler.timesteps
    if begin is not None:
        scheduler.set_begin_index(begin)
        timesteps = timesteps[begin:]
    x = z.clone().float()
    for i, t in enumerate(timesteps):
        out = EPS(x, float(abar[int(t)].sqrt()), float((1 - abar[int(t)]).sqrt()))
        kwargs = {} if noises is None else {"variance_noise": noises[i]}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x.double()


def run_ours(scheduler, z, steps, noises=None, begin=None):
    scheduler.set_timesteps(steps)
    plan = scheduler.plan
    calls = range(len(plan.timesteps))
    if begin is not None:
        scheduler.set_begin_index(begin)
        calls = range(begin, len(plan.timesteps))
    x = z.clone().float()
    for j, i in enumerate(calls):
        out = EPS(x, float(plan.model_alpha[i]), float(plan.model_sigma[i]))
        noise = None if noises is None else noises[j]
        x = scheduler.step(out, scheduler.timesteps[i], x, noise=noise, backend="torch").prev_sample
    return x.double()


CASES = [
    ("dpmpp_2m", "DPMSolverMultistepScheduler", {}, {}),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", {"solver_type": "heun"}, {"solver_type": "heun"}),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", {"timestep_spacing": "trailing"}, {"timestep_spacing": "trailing"}),
    ("dpmpp_3m", "DPMSolverMultistepScheduler", {"solver_order": 3}, {}),
    (
        "dpmpp_3m",
        "DPMSolverMultistepScheduler",
        {"solver_order": 3, "timestep_spacing": "leading", "steps_offset": 1, "lower_order_final": False},
        {"timestep_spacing": "leading", "steps_offset": 1, "lower_order_final": False},
    ),
    ("dpmpp_2m_sde", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {}),
    (
        "dpmpp_2m_sde",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        {"solver_order": 3},
    ),
    ("unipc", "UniPCMultistepScheduler", {}, {}),
    ("unipc", "UniPCMultistepScheduler", {"solver_order": 1}, {"solver_order": 1}),
    (
        "unipc",
        "UniPCMultistepScheduler",
        {"solver_type": "bh1", "final_sigmas_type": "sigma_min"},
        {"solver_type": "bh1", "final_sigmas_type": "sigma_min"},
    ),
    (
        "unipc",
        "UniPCMultistepScheduler",
        {"disable_corrector": [0, 3], "timestep_spacing": "trailing"},
        {"disable_corrector": [0, 3], "timestep_spacing": "trailing"},
    ),
]


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 20])
@pytest.mark.parametrize("name, cls, theirs, ours", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_diffusers(name, cls, theirs, ours, steps):
    gen = torch.Generator().manual_seed(steps)
    z = torch.randn(128, 2, generator=gen)
    noises = [torch.randn(128, 2, generator=gen) for _ in range(steps)] if name == "dpmpp_2m_sde" else None
    reference = run_diffusers(getattr(diffusers, cls)(**theirs), z, steps, noises)
    result = run_ours(samplers.get(name, **ours), z, steps, noises)
    # one step from t=999 divides by alpha = 0.006: float32 rounding of diffusers' x0 is then ~5e-5
    tol = 1e-4 if steps == 1 else 2e-5
    err = float((reference - result).abs().max())
    assert err <= tol, f"{name} {ours} at {steps} steps differs from diffusers by {err:.2e}"


@pytest.mark.parametrize(
    "name, cls", [("dpmpp_2m", "DPMSolverMultistepScheduler"), ("unipc", "UniPCMultistepScheduler")]
)
def test_begin_index_matches_diffusers(name, cls):
    z = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    reference = run_diffusers(getattr(diffusers, cls)(), z, 20, begin=8)
    result = run_ours(samplers.get(name), z, 20, begin=8)
    assert float((reference - result).abs().max()) <= 2e-5
