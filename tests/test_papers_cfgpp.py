"""CFG++ (Chung et al. 2024) for Euler/DDIM and DPM++ 2M: the identities that pin it (there is no
fixed-lambda limit, hence no order): (C1) renoising with the unconditional noise, (C3) for 2M, (C4) CFG++ is
DDIM-CFG with w_k = lambda / (1 - e^{-h_k}), lambda = 0 is unconditional, cond = uncond is the base sampler.

Equation labels (C1)-(C4) are those of samplers/schedulers/cfgpp.py. Two Gaussian oracles with different
means stand in for the conditional and unconditional model.
"""

from __future__ import annotations

import math

import pytest
import torch

import samplers
from samplers import parameterization

import battery

F64 = torch.float64
MU_UNCOND = battery.MU + torch.tensor([0.5, -0.4, 0.3, 0.2], dtype=F64)
LAM = 0.6


def _x0(mu: torch.Tensor, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    return mu + alpha * battery.STD**2 / (alpha**2 * battery.STD**2 + sigma**2) * (x - alpha * mu)


def _outputs(s, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) network outputs at call ``i`` for the sample ``x`` (the model sees input_scale * x)."""
    plan = s.plan
    alpha, sigma = float(plan.model_alpha[i]), float(plan.model_sigma[i])
    x_in = x * float(plan.input_scale[i])
    return tuple(
        parameterization.model_output_from_x0(s.prediction_type, _x0(mu, x_in, alpha, sigma), x_in, alpha, sigma)
        for mu in (battery.MU, MU_UNCOND)
    )


def _run(name: str, steps: int, guidance, mode: str = "guided", **config) -> torch.Tensor:
    """A run with ``guidance`` (a number, or a function of the call index): ``mode`` "guided" passes cond and
    uncond, "uncond_only" the unconditional output alone, "same" the unconditional one as both."""
    s = samplers.get(name, **config)
    s.set_timesteps(steps)
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=F64) * s.init_noise_sigma
    state = s.init_state()
    for i, t in enumerate(s.timesteps):
        cond, uncond = _outputs(s, i, x)
        w = guidance(i) if callable(guidance) else guidance
        if mode == "uncond_only":
            kwargs = {}
            cond = uncond
        elif mode == "same":
            kwargs = {"uncond": uncond, "guidance_scale": w}
            cond = uncond
        else:
            kwargs = {"uncond": uncond, "guidance_scale": w}
        result, state = s.step_functional(state, cond, t, x, backend="torch", **kwargs)
        x = result.prev_sample
    return x


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-6) -> None:
    assert float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max())), float((a - b).abs().max())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_euler_cfgpp_is_ddim_cfg_with_a_step_dependent_scale_C4(prediction_type: str) -> None:
    """(C4): the whole run equals Euler (DDIM) with CFG at w_k = lam / (1 - sigma_{k+1} / sigma_k)."""
    config = {"prediction_type": prediction_type, "use_karras_sigmas": True}
    probe = samplers.get("euler", **config)
    probe.set_timesteps(20)
    level = probe.plan.model_sigma / probe.plan.model_alpha
    ratio = torch.cat([level[1:] / level[:-1], torch.zeros(1, dtype=F64)])  # e^{-h_k}; 0 into clean data
    scales = (LAM / (1 - ratio)).tolist()
    ours = _run("euler_cfgpp", 20, LAM, **config)
    cfg = _run("euler", 20, lambda i: scales[i], **config)
    _close(ours, cfg)
    assert max(scales) > 3 * LAM  # lam = 0.6 acts like CFG at 1.5 to 2.4 here


@pytest.mark.parametrize(("name", "base"), [("euler_cfgpp", "euler"), ("dpmpp_2m_cfgpp", "dpmpp_2m")])
def test_lambda_0_is_the_unconditional_sampler(name: str, base: str) -> None:
    _close(_run(name, 15, 0.0), _run(base, 15, None, mode="uncond_only"))


@pytest.mark.parametrize(("name", "base"), [("euler_cfgpp", "euler"), ("dpmpp_2m_cfgpp", "dpmpp_2m")])
def test_without_guidance_it_is_the_base_sampler(name: str, base: str) -> None:
    """cond = uncond (any lam), or no uncond at all: exactly the base sampler's run."""
    reference = _run(base, 15, None, mode="uncond_only")
    _close(_run(name, 15, 0.8, mode="same"), reference)
    _close(_run(name, 15, None, mode="uncond_only"), reference)


def test_dpmpp_2m_cfgpp_steps_are_C1_and_C3() -> None:
    """Model space (discrete VP, eps model): step 1 is DDIM-CFG++, x_s = alpha_s x0_lam + sigma_s eps_u (C1);
    step 2 adds the 2M correction of the guided estimate, (C3)."""
    s = samplers.get("dpmpp_2m_cfgpp")
    s.set_timesteps(10)
    plan = s.plan
    alpha, sigma = plan.model_alpha.tolist() + [1.0], plan.model_sigma.tolist() + [0.0]
    lam = [math.log(a / b) for a, b in zip(alpha[:-1], sigma[:-1], strict=True)]
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1), dtype=F64) * s.init_noise_sigma
    state, kept = s.init_state(), []
    for i in range(2):
        cond, uncond = _outputs(s, i, x)
        result, state = s.step_functional(state, cond, s.timesteps[i], x, uncond=uncond, guidance_scale=LAM)
        eps_lam = uncond + LAM * (cond - uncond)
        x0_lam = (x - sigma[i] * eps_lam) / alpha[i]
        x0_u = (x - sigma[i] * uncond) / alpha[i]
        if i == 0:  # (C1)
            expected = alpha[1] * x0_lam + sigma[1] * uncond
        else:  # (C3): 2M with the guided D, plus alpha_s e^{-h} (D_lam - D_u)
            h, r = lam[i + 1] - lam[i], (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
            d_tilde = (1 + 1 / (2 * r)) * x0_lam - 1 / (2 * r) * kept[-1]
            e_h = math.exp(-h)
            expected = sigma[2] / sigma[1] * x + alpha[2] * (1 - e_h) * d_tilde + alpha[2] * e_h * (x0_lam - x0_u)
        kept.append(x0_lam)
        _close(result.prev_sample, expected, 5e-6)
        x = result.prev_sample


def test_no_fixed_lambda_limit() -> None:
    """Why CFG++ has no order: w_k grows like lam / h_k, so at fixed lam the sample keeps moving as steps are
    added (differences between N and 2N steps double), while plain CFG at a fixed scale converges."""
    runs = [_run("euler_cfgpp", n, 0.5, schedule="edm") for n in (10, 20, 40, 80)]
    cfg = [_run("euler", n, 2.0, schedule="edm") for n in (10, 20, 40, 80)]

    def gaps(xs):
        return [float((a - b).pow(2).mean().sqrt()) for a, b in zip(xs, xs[1:], strict=False)]

    assert all(b > 1.5 * a for a, b in zip(gaps(runs), gaps(runs)[1:], strict=False)), gaps(runs)
    assert all(b < 0.6 * a for a, b in zip(gaps(cfg), gaps(cfg)[1:], strict=False)), gaps(cfg)


@pytest.mark.parametrize(
    ("name", "order", "steps"), [("euler_cfgpp", 1, (8, 16, 32, 64)), ("dpmpp_2m_cfgpp", 2, (16, 32, 64, 128))]
)
def test_unguided_order_is_the_base_samplers(name: str, order: int, steps) -> None:
    battery.assert_order(name, {}, order, steps=steps)


def test_dpmpp_2m_cfgpp_refusals() -> None:
    with pytest.raises(ValueError, match="algorithm_type"):
        samplers.get("dpmpp_2m_cfgpp", algorithm_type="sde-dpmsolver++")
    with pytest.raises(ValueError, match="thresholding"):
        samplers.get("dpmpp_2m_cfgpp", thresholding=True)
    flow = {**battery.FAMILIES["flow_shift3"], "prediction_type": "epsilon"}
    with pytest.raises(ValueError, match="prediction_type='epsilon'"):
        samplers.get("dpmpp_2m_cfgpp", **flow).set_timesteps(10)  # eps cannot give x0 at a flow's t = 1
