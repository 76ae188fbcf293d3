"""Training helpers: noising, targets, timestep sampling and loss weights over the math core.

t = schedules.sample_timesteps_uniform(B, scheduler.schedule.num_train_timesteps)
x_t, target, weight = training_example(scheduler.schedule, x0, t, "v_prediction")
loss = (weight * (model(x_t, t) - target).pow(2).mean(dim=(1, 2, 3))).mean()
"""

from __future__ import annotations

import torch

from samplers import parameterization, schedules
from samplers.schedules import NoiseSchedule

WEIGHTINGS = ("none", "snr", "min_snr", "max_snr_1")


def loss_weight(
    alpha: torch.Tensor, sigma: torch.Tensor, prediction_type: str, weighting: str = "min_snr", gamma: float = 5.0
) -> torch.Tensor:
    """Per-sample weight [B] on the MSE of ``prediction_type`` outputs.

    ``min_snr``: Min-SNR-gamma (Hang et al. 2023, eq. 9-10): the x0-space weight ``min(SNR, gamma)``
    expressed for the target in use (divided by SNR for epsilon, by SNR + 1 for v). ``snr``: the
    x0-space weight SNR itself (eps-MSE unweighted); ``max_snr_1``: ``max(SNR, 1)`` (Salimans & Ho).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}: expected one of {WEIGHTINGS}")
    snr = (alpha / sigma) ** 2
    if weighting == "none":
        return torch.ones_like(snr)
    x0_weight = {"snr": snr, "min_snr": snr.clamp(max=gamma), "max_snr_1": snr.clamp(min=1.0)}[weighting]
    kind = parameterization.canonical_prediction_type(prediction_type)
    # MSE in the target's space = per_target * MSE in x0 space (from the affine inverses in parameterization.py)
    per_target = {
        "sample": torch.ones_like(snr),
        "epsilon": snr,
        "v_prediction": (alpha**2 + sigma**2) / sigma**2,
        "flow": ((alpha + sigma) / sigma) ** 2,
        "score": snr / sigma**2,
    }[kind]
    return x0_weight / per_target


def training_example(
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    prediction_type: str,
    noise: torch.Tensor | None = None,
    weighting: str = "none",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_t, target, weight)`` for data ``x0`` [B, ...] at model times ``t`` [B]."""
    if t.shape != (x0.shape[0],):
        raise ValueError(f"t must have shape [batch={x0.shape[0]}], got {tuple(t.shape)}")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    alpha, sigma = schedule.alpha_sigma(t.cpu() if not t.is_floating_point() else t.cpu())
    alpha = alpha.to(x0.device)
    sigma = sigma.to(x0.device)
    view = (-1,) + (1,) * (x0.dim() - 1)
    a, s = alpha.to(x0.dtype).view(view), sigma.to(x0.dtype).view(view)
    x_t = schedules.q_sample(x0, noise, a, s)
    target = parameterization.training_target(prediction_type, x0, noise, a, s)
    return x_t, target, loss_weight(alpha, sigma, prediction_type, weighting).to(x0.dtype)
