"""Tiny networks for ``samplers bench --model`` tests: ``module:factory`` targets (tests/ is on sys.path).

``TinyDenoiser`` is a two-layer conv net with a sinusoidal time embedding, seeded: cheap enough that a
reference ODE solve of a few hundred calls takes well under a second, and smooth in ``t``. As a
``v_prediction`` model its small output is a perturbation of the exact denoiser of N(0, I) data (whose
v is 0), so its probability-flow ODE is tame, as a trained model's is.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from samplers.bench.network import LoadedModel

SHAPE = (1, 4, 4)


class TinyDenoiser(nn.Module):
    """``forward(x [B, C, H, W], t [B]) -> [B, C, H, W]``, t in 0 .. 999 (a DDPM timestep)."""

    def __init__(self, channels: int = 1, hidden: int = 8, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1)
        self.emb = nn.Linear(8, hidden)
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        self.register_buffer("freqs", torch.arange(1, 5, dtype=torch.float32) * math.pi / 1000.0)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        phase = t.reshape(-1, 1).to(x.dtype) * self.freqs.to(x.dtype)
        e = self.emb(torch.cat([phase.sin(), phase.cos()], dim=1))
        h = torch.nn.functional.silu(self.conv1(x) + e[:, :, None, None])
        return 0.3 * self.conv2(h)


def make_tiny() -> LoadedModel:
    """The contract's dataclass: a v-predictor on DDPM's linear schedule."""
    return LoadedModel(TinyDenoiser(), "v_prediction", "linear", SHAPE, name="tiny")


def make_mapping() -> dict:
    """The contract as a mapping, with a diffusers scheduler config (cosine betas)."""
    config = {"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000}
    return {
        "model": TinyDenoiser(seed=1),
        "prediction_type": "v_prediction",
        "schedule": config,
        "sample_shape": SHAPE,
    }


def make_wrong_shape() -> LoadedModel:
    """A callable that drops a row of pixels: the probe must refuse it."""
    net = TinyDenoiser()
    return LoadedModel(lambda x, t: net(x, t)[:, :, :3], "v_prediction", "linear", SHAPE)


def make_not_a_model() -> nn.Module:
    """A bare network, without the prediction type and schedule the contract asks for."""
    return TinyDenoiser()


NOT_CALLABLE = 3
