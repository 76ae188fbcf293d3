"""Shared by the DPM-Solver family's tests: one deterministic model and one loop for diffusers' schedulers and
ours, noise recorded on one side and replayed on the other, and k-diffusion's sampling module.

The model is the exact denoiser of Gaussian data written as a function of ``(model input, timestep)`` only,
in the diffusers class's prediction type, so that each library's own timesteps and input scaling decide what
it returns: parity then also checks that we feed the model exactly what diffusers feeds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

F64 = torch.float64
SHAPE = (2, 3, 8, 8)
TOL = 1e-5  # max |ours - reference| / max |reference| (issue 13)


def gaussian_model(space: Callable[[float], tuple[float, float]], prediction_type: str) -> Callable[..., torch.Tensor]:
    """``model(x_in, t) -> output``: data ~ N(mu, 0.3^2) (mu in [-0.5, 0.5]); ``space(t) = (alpha, sigma)`` says
    how the model reads its input at timestep t (``x_in = alpha x0 + sigma eps``)."""
    gen = torch.Generator().manual_seed(7)
    mu = 0.5 * torch.tanh(torch.randn(SHAPE[1:], generator=gen, dtype=F64))
    std = 0.3

    def model(x: torch.Tensor, t: Any) -> torch.Tensor:
        alpha, sigma = space(float(t))
        x64 = x.to(F64)
        x0 = mu + alpha * std**2 / (alpha**2 * std**2 + sigma**2) * (x64 - alpha * mu)
        eps = (x64 - alpha * x0) / sigma
        outputs = {
            "epsilon": eps,
            "v_prediction": alpha * eps - sigma * x0,
            "flow_prediction": eps - x0,
            "sample": x0,
        }
        return outputs[prediction_type].to(torch.float32)

    return model


def table_space(abar: torch.Tensor) -> Callable[[float], tuple[float, float]]:
    """A discrete VP model: ``abar`` [T] linearly interpolated at fractional timesteps."""

    def space(t: float) -> tuple[float, float]:
        low = min(int(t), len(abar) - 2)
        a = float((1 - (t - low)) * abar[low] + (t - low) * abar[low + 1])
        return math.sqrt(a), math.sqrt(1 - a)

    return space


def flow_space(num_train_timesteps: int = 1000) -> Callable[[float], tuple[float, float]]:
    """A rectified-flow model fed ``T * t``."""
    return lambda t: (1 - t / num_train_timesteps, t / num_train_timesteps)


def edm_space(sigma_data: float = 0.5) -> Callable[[float], tuple[float, float]]:
    """An EDM-preconditioned model fed ``c_in x`` and ``c_noise = log(sigma) / 4`` (as a VP-like space:
    ``c_in x = c_in x0 + c_in sigma eps``)."""

    def space(t: float) -> tuple[float, float]:
        sigma = math.exp(4 * t)
        c_in = 1 / math.sqrt(sigma**2 + sigma_data**2)
        return c_in, c_in * sigma

    return space


def run_loop(
    scheduler: Any,
    model: Callable[..., torch.Tensor],
    x_start: torch.Tensor,
    steps: int,
    *,
    noise: list[torch.Tensor] | None = None,
    noise_name: str = "noise",
    set_kwargs: dict[str, Any] | None = None,
    step_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """A pipeline's loop (float32); ``noise[i]`` goes to call i as ``noise_name`` (diffusers: variance_noise)."""
    scheduler.set_timesteps(steps, **(set_kwargs or {}))
    x = x_start * float(scheduler.init_noise_sigma)
    for i, t in enumerate(scheduler.timesteps):
        kwargs = dict(step_kwargs or {})
        if noise is not None:
            kwargs[noise_name] = noise[i]
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, **kwargs).prev_sample
    return x


def start_and_noise(count: int, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A standard-normal start [SHAPE] and ``count`` noise tensors (float32)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=gen)
    return x, [torch.randn(SHAPE, generator=gen) for _ in range(count)]


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    assert bool(torch.isfinite(reference).all()), "the reference produced non-finite samples"
    return float((ours.to(F64) - reference.to(F64)).abs().max() / reference.to(F64).abs().max())


class ReplayNoise:
    """A k-diffusion ``noise_sampler`` replaying pre-drawn tensors and logging the intervals asked for."""

    def __init__(self, shape: tuple[int, ...], count: int = 256, seed: int = 5) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.noise = [torch.randn(shape, generator=gen) for _ in range(count)]
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        self.calls.append((float(sigma), float(sigma_next)))
        return self.noise[len(self.calls) - 1]


def gaussian_denoiser(shape: tuple[int, ...] = SHAPE[1:], seed: int = 3) -> Callable[..., torch.Tensor]:
    """k-diffusion's ``D(x, sigma)`` for Gaussian data N(mu, diag(std^2)) of per-sample ``shape`` (float64 math)."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=gen, dtype=F64)
    std = 0.5 + torch.rand(shape, generator=gen, dtype=F64)

    def denoise(x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        s = sigma.to(F64).reshape(-1, *[1] * (x.dim() - 1))
        return (mu + std**2 / (std**2 + s**2) * (x.to(F64) - mu)).to(x.dtype)

    return denoise


def edm_model(prediction_type: str, sigma_data: float = 0.5) -> Callable[..., torch.Tensor]:
    """An EDM-preconditioned network (Karras et al. 2022, Table 1) for the Gaussian data of :func:`gaussian_model`:
    ``model(c_in x, c_noise) -> F`` with ``D = c_skip x + c_out F`` ("epsilon", diffusers' name) or ``- c_out F``
    ("v_prediction"); ``sigma = exp(4 c_noise)``."""
    gen = torch.Generator().manual_seed(7)
    mu = 0.5 * torch.tanh(torch.randn(SHAPE[1:], generator=gen, dtype=F64))
    std = 0.3
    sign = {"epsilon": 1.0, "v_prediction": -1.0}[prediction_type]

    def model(x_in: torch.Tensor, t: Any) -> torch.Tensor:
        sigma = math.exp(4 * float(t))
        norm = sigma * sigma + sigma_data * sigma_data
        x = x_in.to(F64) * math.sqrt(norm)  # c_in = 1 / sqrt(norm)
        x0 = mu + std**2 / (std**2 + sigma**2) * (x - mu)
        c_skip, c_out = sigma_data**2 / norm, sigma * sigma_data / math.sqrt(norm)
        return (sign * (x0 - c_skip * x) / c_out).to(torch.float32)

    return model
