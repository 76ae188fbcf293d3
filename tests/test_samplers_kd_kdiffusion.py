"""k-diffusion parity of sample_lms, sample_dpm_2, sample_dpm_2_ancestral and sample_dpmpp_2s_ancestral (issue 13).

Our wrappers (samplers.integrations.k_diffusion) run our ``lms``, ``dpm2``, ``dpm2_ancestral`` and
``dpmpp_2s_ancestral`` schedulers; k-diffusion 0.1.1.post1's functions are loaded from the installed files
(see tests/test_integrations_k_diffusion.py). Same denoiser, same grid, same noise: max abs difference < 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from test_integrations_k_diffusion import GRIDS, TOL, FixedNoise, _load_k_diffusion, exact_denoiser, start

from samplers.integrations import k_diffusion as kd


@pytest.fixture(scope="module")
def K():
    return _load_k_diffusion()


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_lms_matches_k_diffusion(K, grid: str, order: int) -> None:
    """k-diffusion integrates the Lagrange basis with scipy's quad (epsrel 1e-4, float32 nodes); ours exactly."""
    sigmas = GRIDS[grid]()
    x = start(sigmas)
    theirs = K.sampling.sample_lms(exact_denoiser, x, sigmas, disable=True, order=order)
    ours = kd.sample_lms(exact_denoiser, x, sigmas, disable=True, order=order)
    assert (ours - theirs).abs().max().item() < TOL


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("churn", [None, dict(s_churn=8.0, s_tmin=0.05, s_tmax=30.0, s_noise=1.003)])
def test_dpm_2_matches_k_diffusion(K, grid: str, churn: dict | None) -> None:
    """Without churn, and with it: the same torch RNG draws (one per step, used or not) in the same order."""
    sigmas = GRIDS[grid]()
    x = start(sigmas)
    options = churn or {}
    torch.manual_seed(11)
    theirs = K.sampling.sample_dpm_2(exact_denoiser, x, sigmas, disable=True, **options)
    torch.manual_seed(11)
    ours = kd.sample_dpm_2(exact_denoiser, x, sigmas, disable=True, **options)
    assert (ours - theirs).abs().max().item() < TOL
    if churn:
        torch.manual_seed(12)
        other = kd.sample_dpm_2(exact_denoiser, x, sigmas, disable=True, **options)
        assert (other - ours).abs().max().item() > 1e-3  # the churn really draws


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.6, 0.95), (0.0, 1.0)])
@pytest.mark.parametrize("sampler", ["dpm_2_ancestral", "dpmpp_2s_ancestral"])
def test_ancestral_samplers_match_k_diffusion(K, sampler: str, grid: str, eta: float, s_noise: float) -> None:
    sigmas = GRIDS[grid]()
    x = start(sigmas)
    theirs_noise, our_noise = FixedNoise(x.shape), FixedNoise(x.shape)
    options = dict(disable=True, eta=eta, s_noise=s_noise)
    theirs = getattr(K.sampling, f"sample_{sampler}")(exact_denoiser, x, sigmas, noise_sampler=theirs_noise, **options)
    ours = getattr(kd, f"sample_{sampler}")(exact_denoiser, x, sigmas, noise_sampler=our_noise, **options)
    assert (ours - theirs).abs().max().item() < TOL
    if eta > 0:  # the same noise, asked for with the same (sigma, sigma_next) pairs, none on the step into 0
        flat = lambda calls: [s for pair in calls for s in pair]  # noqa: E731
        assert flat(our_noise.calls) == pytest.approx(flat(theirs_noise.calls), rel=1e-6)
        assert all(s_next > 0 for _, s_next in our_noise.calls)
    else:
        assert not our_noise.calls


@pytest.mark.parametrize("sampler", ["lms", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral"])
def test_callbacks_report_each_step_as_k_diffusion_does(K, sampler: str) -> None:
    sigmas = GRIDS["karras80"]()
    x = start(sigmas, batch=8)
    seen: dict[str, list] = {"theirs": [], "ours": []}
    for who, module in (("theirs", K.sampling), ("ours", kd)):
        torch.manual_seed(3)
        noise = FixedNoise(x.shape)
        kwargs = {} if sampler in ("lms", "dpm_2") else {"noise_sampler": noise}
        record = lambda info, who=who: seen[who].append((info["i"], float(info["sigma"]), info["denoised"]))  # noqa: E731
        getattr(module, f"sample_{sampler}")(exact_denoiser, x, sigmas, disable=True, callback=record, **kwargs)
    assert [i for i, _, _ in seen["ours"]] == [i for i, _, _ in seen["theirs"]]
    assert [s for _, s, _ in seen["ours"]] == pytest.approx([s for _, s, _ in seen["theirs"]], rel=1e-6)
    for (_, _, ours), (_, _, theirs) in zip(seen["ours"], seen["theirs"], strict=True):
        assert (ours - theirs).abs().max().item() < TOL
