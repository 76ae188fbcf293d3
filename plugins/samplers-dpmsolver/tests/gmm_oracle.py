"""An exact 2-D Gaussian mixture: the closed-form denoiser and a fake network built on it.

Data ``p(x0) = sum_k w_k N(mu_k, s_k^2 I)``; under ``x_t = alpha x0 + sigma eps`` the posterior over
components is ``pi_k(x_t) ~ w_k N(x_t; alpha mu_k, (alpha^2 s_k^2 + sigma^2) I)`` and
``E[x0 | x_t] = sum_k pi_k (mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x_t - alpha mu_k))``.

Used by the diffusers comparison and, when ``samplers.bench`` is not installed, by
``examples/gmm2d_accuracy.py``.
"""

from __future__ import annotations

import math

import torch

from samplers.parameterization import model_output_from_x0


class GMM2D:
    """``components`` equal Gaussians of std ``std`` on a circle of ``radius`` (the usual 2-D toy mixture)."""

    def __init__(self, components: int = 8, radius: float = 1.0, std: float = 0.1) -> None:
        angles = torch.arange(components, dtype=torch.float64) * (2 * math.pi / components)
        self.means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # [K, 2]
        self.stds = torch.full((components,), std, dtype=torch.float64)  # [K]
        self.log_weights = torch.full((components,), -math.log(components), dtype=torch.float64)

    def denoise(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """``E[x0 | x_t = x]`` for x [B, 2] in model space, float64."""
        x = x.to(torch.float64)
        var = alpha**2 * self.stds**2 + sigma**2  # [K]
        diff = x[:, None, :] - alpha * self.means[None]  # [B, K, 2]
        logp = self.log_weights - (diff**2).sum(-1) / (2 * var) - torch.log(var)  # 2-D: log det = 2 log sqrt(var)
        post = torch.softmax(logp, dim=1)  # [B, K]
        gain = (alpha * self.stds**2 / var)[None, :, None]
        cond = self.means[None] + gain * diff
        return (post[..., None] * cond).sum(1)

    def model(self, prediction_type: str):
        """A fake network ``f(x_in, alpha, sigma)`` giving the exact output of ``prediction_type``."""

        def f(x_in: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
            x0 = self.denoise(x_in, alpha, sigma)
            return model_output_from_x0(prediction_type, x0, x_in.to(torch.float64), alpha, sigma).to(x_in.dtype)

        return f
