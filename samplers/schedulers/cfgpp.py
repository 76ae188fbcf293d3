"""CFG++: manifold-constrained classifier-free guidance (Chung et al. 2024) for Euler/DDIM and DPM++ 2M.

Chung, Kim, Park, Nam & Ye 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion
Models", arXiv:2406.08070 (ICLR 2025), Algorithm 2. Equation labels (C1)-(C4) are those of our
research notes.

Plain CFG steps DDIM with the guided estimate ``eps_w = eps_u + w (eps_c - eps_u)`` both for denoising and
for renoising. CFG++ denoises with the guided estimate at a small scale ``lam`` in [0, 1] and renoises with
the *unconditional* noise estimate:

    x0_lam = (x_t - sigma_t eps_lam) / alpha_t,   x_s = alpha_s x0_lam + sigma_s eps_u                   (C1)

For any data-prediction exponential integrator whose update carries ``x_t`` with weight ``a`` (DDIM:
``a = sigma_s / sigma_t``), replacing the guided noise inside ``x_t = alpha_t D_lam + sigma_t eps_lam`` by
``eps_u`` adds

    a alpha_t (D_lam - D_u) = alpha_s e^{-h} (D_lam - D_u),    e^{-h} = sigma_s alpha_t / (sigma_t alpha_s)  (C2)

to the base update with the guided estimate (DPM++ 2M: (C3), the 2M update with ``D_lam`` plus (C2)). The
fused op reads ``D_u = p x + q uncond`` from the unconditional output through its ``u`` column, so the
row is the base row with ``a -= alpha_s e^{-h} p``, ``b += alpha_s e^{-h}`` and ``u = -alpha_s e^{-h} q``.

Guidance in this API: ``step(cond_output, t, x, uncond=uncond_output, guidance_scale=lam)``.
**``guidance_scale`` is CFG++'s ``lam``** (the paper uses 0 < lam < 1), not a CFG scale: for DDIM, CFG++
with ``lam`` is exactly CFG with the per-step scale ``w_k = lam / (1 - e^{-h_k})`` (C4): ``lam = 0.6`` on 20
Karras steps acts like CFG at scales from 1.5 to 2.4, and twice that on 40 steps. Because ``w_k`` grows like
``lam / h_k``, CFG++ at a fixed ``lam`` has no limit as steps grow (the sample keeps moving: no
convergence order to test, only identities); keep ``lam`` in the paper's range for the step counts it uses. Without
``uncond`` (or with ``uncond`` equal to the output) the samplers are exactly Euler / DPM++ 2M.
"""

from __future__ import annotations

import dataclasses

import torch

from samplers.levels import Levels
from samplers.plan import Call, estimate_coefficients
from samplers.schedulers.dpmsolver import DPMSolverMultistepScheduler
from samplers.schedulers.euler import EulerDiscreteScheduler

F64 = torch.float64
PAPER = (
    "Chung et al. 2024, CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models, "
    "arXiv:2406.08070, Alg. 2"
)


def cfgpp_call(call: Call, prediction_type: str, sigma_next: float) -> Call:
    """``call`` with CFG++'s renoising (C2) added; ``sigma_next`` is the target's sigma in the call's working space.

    The base update must carry the sample with weight ``sigma_next / sigma`` (working space), as DDIM,
    Euler and every DPM-Solver++ ODE step do.
    """
    alpha_w, sigma_w = call.alpha / call.input_scale, call.sigma / call.input_scale
    weight = alpha_w * sigma_next / sigma_w  # alpha_s e^{-h}
    if weight == 0.0:  # into clean data, or out of pure noise: no renoising to change
        return call
    p, q = estimate_coefficients(
        prediction_type,
        torch.tensor(call.alpha, dtype=F64),
        torch.tensor(call.sigma, dtype=F64),
        torch.tensor(call.input_scale, dtype=F64),
    )
    u = call.update
    update = dataclasses.replace(
        u, sample=u.sample - weight * float(p), x0=u.x0 + weight, uncond=u.uncond - weight * float(q)
    )
    return dataclasses.replace(call, update=update)


class EulerCFGPPScheduler(EulerDiscreteScheduler):
    """Euler (DDIM in sigma space) with CFG++: ``x' = D_lam + sigma' (x - D_u) / sigma``; guidance_scale is lam."""

    name = "euler_cfgpp"
    paper = PAPER

    def plan_calls(self, levels: Levels) -> list[Call]:
        targets = levels.level.tolist()[1:] + [0.0]
        return [
            cfgpp_call(c, self.prediction_type, s) for c, s in zip(super().plan_calls(levels), targets, strict=True)
        ]


class DPMSolverCFGPPScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++(2M) with CFG++ (C3) (any ``solver_order`` of the data-prediction ODE); guidance_scale is lam."""

    name = "dpmpp_2m_cfgpp"
    paper = PAPER + " (App., DPM-Solver++ 2M)"

    def check_common_config(self) -> None:
        """The multistep options, and CFG++'s: the data-prediction ODE form and no thresholding."""
        super().check_common_config()
        c = self.config
        if c.get("algorithm_type") not in (None, "dpmsolver++"):
            raise ValueError(
                f"{self.name} renoises the data-prediction ODE step (algorithm_type='dpmsolver++'); "
                f"got algorithm_type={c.algorithm_type!r}"
            )
        if c.get("thresholding"):
            raise ValueError(
                f"{self.name} renoises with the unthresholded unconditional estimate; thresholding=True would "
                "mix a clamped and an unclamped x0 in one step"
            )

    def multistep_calls(self, levels: Levels, start: int) -> list[Call]:
        targets = self.grid(levels).sigma.tolist()[1:]
        calls = super().multistep_calls(levels, start)
        return [cfgpp_call(c, self.prediction_type, s) for c, s in zip(calls, targets, strict=True)]
