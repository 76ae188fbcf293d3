"""Euler ancestral (k-diffusion's ``sample_euler_ancestral``): an Euler step down to ``sigma_down``
then fresh noise of std ``sigma_up``, with ``sigma_up^2 + sigma_down^2 = sigma_next^2``.

``sigma_up = eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)`` is the posterior std in
sigma space, so this is ``schedules.ddim_transition`` at alpha = 1 (eta = 1 by default).
"""

from __future__ import annotations

from collections.abc import Sequence

from samplers.schedulers.euler import EulerDiscreteScheduler


class EulerAncestralDiscreteScheduler(EulerDiscreteScheduler):
    name = "euler_ancestral"
    kind = "sde"
    paper = "Ho et al. 2020 (ancestral sampling) in sigma space; k-diffusion sample_euler_ancestral"
    stochastic = True
    stochastic_when = "eta > 0"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        schedule: str = "discrete",
        schedule_kwargs: dict | None = None,
        eta: float = 1.0,
    ) -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        if interpolation_type not in ("linear", "log_linear"):
            raise ValueError(f"interpolation_type must be 'linear' or 'log_linear', got {interpolation_type!r}")
        self.eta = eta
