"""Noise schedules defined by their log-SNR curve ``lambda(t) = log(alpha_t^2 / sigma_t^2)``.

A variance-preserving schedule is fixed by ``lambda(t)`` alone: ``alpha^2 = sigmoid(lambda)``,
``sigma^2 = sigmoid(-lambda)`` (Kingma et al. 2021, "Variational Diffusion Models", sec. 3). Model
time ``t`` runs over ``[0, 1]`` and is mapped linearly onto the part of the curve whose log-SNR lies
in ``[logsnr_min, logsnr_max]``, so every ``t`` is finite (no alpha = 0 or sigma = 0 end point) and
the built-in samplers' generic grid search over ``t in [0, 1]`` works unchanged.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch

from samplers.schedules import NoiseSchedule

F64 = torch.float64


class LogSNRSchedule(NoiseSchedule):
    """Base: subclasses give ``lambda`` of a raw time ``tau`` and its inverse; ``t`` in [0, 1] is rescaled."""

    family = "vp"

    def __init__(self, logsnr_min: float = -10.0, logsnr_max: float = 10.0) -> None:
        if not logsnr_min < logsnr_max:
            raise ValueError(f"need logsnr_min < logsnr_max, got logsnr_min={logsnr_min}, logsnr_max={logsnr_max}")
        self.logsnr_min, self.logsnr_max = float(logsnr_min), float(logsnr_max)
        self._tau_lo = self._tau_of(self.logsnr_max)
        self._tau_hi = self._tau_of(self.logsnr_min)

    @abstractmethod
    def _logsnr_of(self, tau: torch.Tensor) -> torch.Tensor:
        """``lambda(tau)`` for raw time ``tau`` in (0, 1), decreasing."""

    @abstractmethod
    def _tau_of(self, logsnr: float) -> float:
        """Inverse of :meth:`_logsnr_of`."""

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda(t)`` for model time ``t`` in [0, 1] (float64)."""
        t = torch.as_tensor(t, dtype=F64)
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError(
                f"{type(self).__name__} takes model times in [0, 1], got min {float(t.min())}, max {float(t.max())}"
            )
        return self._logsnr_of(self._tau_lo + t * (self._tau_hi - self._tau_lo))

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = self.logsnr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return self.logsnr(t)

    def default_times(self, num_steps: int) -> torch.Tensor:
        """Evenly in ``t`` from 1 (log-SNR ``logsnr_min``) to 0 (``logsnr_max``)."""
        return torch.linspace(1.0, 0.0, num_steps, dtype=F64) if num_steps > 1 else torch.ones(1, dtype=F64)


class LaplaceSchedule(LogSNRSchedule):
    """Laplace log-SNR schedule (Hang et al. 2024, "Improved Noise Schedule for Diffusion Training"):
    ``lambda(tau) = mu - b sgn(1/2 - tau) log(1 - 2 |tau - 1/2|)``, which spends most of the time
    near ``lambda = mu`` (the mid-noise levels that matter most for training)."""

    def __init__(self, mu: float = 0.0, b: float = 0.5, logsnr_min: float = -10.0, logsnr_max: float = 10.0) -> None:
        if b <= 0:
            raise ValueError(f"b must be > 0, got {b}")
        if not logsnr_min < mu < logsnr_max:
            raise ValueError(f"mu must lie inside (logsnr_min, logsnr_max) = ({logsnr_min}, {logsnr_max}), got {mu}")
        self.mu, self.b = float(mu), float(b)
        super().__init__(logsnr_min, logsnr_max)

    def _logsnr_of(self, tau: torch.Tensor) -> torch.Tensor:
        return self.mu - self.b * torch.sign(0.5 - tau) * torch.log1p(-2 * (tau - 0.5).abs())

    def default_times(self, num_steps: int) -> torch.Tensor:
        """Times whose log-SNR is evenly spaced from ``logsnr_min`` to ``logsnr_max``.

        The Laplace curve is a *training* density (most ``t`` near ``lambda = mu``); sampling evenly in
        ``t`` would leave one step for each tail. Even log-SNR steps are the grid exponential
        integrators are built for (Lu et al. 2022), and suit every sampler here.
        """
        if num_steps == 1:
            return torch.ones(1, dtype=F64)
        span = self._tau_hi - self._tau_lo
        levels = torch.linspace(self.logsnr_min, self.logsnr_max, num_steps, dtype=F64).tolist()
        return torch.tensor([(self._tau_of(lam) - self._tau_lo) / span for lam in levels], dtype=F64).clamp(0, 1)

    def _tau_of(self, logsnr: float) -> float:
        if logsnr >= self.mu:  # tau <= 1/2: lambda = mu - b log(2 tau)
            return 0.5 * math.exp((self.mu - logsnr) / self.b)
        return 1 - 0.5 * math.exp((logsnr - self.mu) / self.b)  # tau > 1/2: lambda = mu + b log(2 - 2 tau)


class ShiftedCosineSchedule(LogSNRSchedule):
    """The cosine schedule shifted for resolution (Hoogeboom et al. 2023, "simple diffusion", sec. 3.1):
    ``lambda(tau) = -2 log tan(pi tau / 2) + 2 log(base_size / image_size)``. At ``image_size =
    base_size`` it is Nichol & Dhariwal's cosine schedule; larger images get less signal at each ``t``."""

    def __init__(
        self, image_size: int = 64, base_size: int = 64, logsnr_min: float = -10.0, logsnr_max: float = 10.0
    ) -> None:
        if image_size <= 0 or base_size <= 0:
            raise ValueError(f"image_size and base_size must be > 0, got {image_size} and {base_size}")
        self.image_size, self.base_size = int(image_size), int(base_size)
        self.shift = 2 * math.log(base_size / image_size)
        super().__init__(logsnr_min, logsnr_max)

    def _logsnr_of(self, tau: torch.Tensor) -> torch.Tensor:
        return -2 * torch.log(torch.tan(math.pi * tau / 2)) + self.shift

    def _tau_of(self, logsnr: float) -> float:
        return 2 / math.pi * math.atan(math.exp((self.shift - logsnr) / 2))
