"""Noise schedules: the one place where ``alpha_t`` and ``sigma_t`` come from.

Every family writes the forward process as ``x_t = alpha_t x_0 + sigma_t eps`` (docs/architecture.md):

* discrete VP (DDPM):   ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``, ``abar_t = prod(1 - beta_i)``
* continuous VP:        cosine (Nichol & Dhariwal 2021, eq. 17) or linear-beta SDE (Song et al. 2021)
* VE / EDM:             ``alpha = 1``, ``sigma`` free (``x_ve = x_vp / alpha``, ``sigma_ve = sigma / alpha``)
* rectified flow:       ``alpha_t = 1 - t``, ``sigma_t = t``, with the SD3 time shift

and everything else here is derived from ``(alpha, sigma)``: log-SNR, the transition
``q(x_t | x_s)`` and the posterior ``q(x_s | x_t, x_0)`` for any ``s < t``.

Host-side coefficient math is float64 on the CPU: tables are built once per
``set_timesteps`` and never need a device sync.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar, overload

import numpy as np
import torch

from samplers import errors

Scalar = float | torch.Tensor
# The algebra below takes all floats (plan building, on the host) or all tensors (whole tables at once) and
# returns the same kind: a constrained type variable says so, where ``Scalar`` would lose it.
ScalarT = TypeVar("ScalarT", float, torch.Tensor)
F64 = torch.float64

BETA_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "cosine", "squaredcos_cap_v2", "sigmoid")
TIMESTEP_SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")
# Largest discrete training schedule (1000 is usual; tables cost ~8 bytes x a few per timestep).
MAX_TRAIN_TIMESTEPS = 1_000_000


# --------------------------------------------------------------------------------------------
# Discrete beta schedules
# --------------------------------------------------------------------------------------------


def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """``f(t) / f(0)`` with ``f(t) = cos^2((t + s) / (1 + s) * pi / 2)``, t in [0, 1] (Nichol & Dhariwal eq. 17)."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def make_betas(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    max_beta: float = 0.999,
) -> torch.Tensor:
    """Betas ``[num_train_timesteps]`` float64 for a named discrete schedule.

    ``linear`` (DDPM), ``scaled_linear`` (linear in sqrt(beta), latent diffusion), ``cosine`` /
    ``squaredcos_cap_v2`` (Nichol & Dhariwal eq. 17, beta capped at ``max_beta``), ``sigmoid``
    (GeoDiff: sigmoid over [-6, 6] rescaled to [beta_start, beta_end]).
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    if not num_train_timesteps <= MAX_TRAIN_TIMESTEPS:  # a few-byte config must not allocate gigabytes
        raise ValueError(f"num_train_timesteps must be at most {MAX_TRAIN_TIMESTEPS}, got {num_train_timesteps}")
    n = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=F64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=F64) ** 2
    if beta_schedule in ("cosine", "squaredcos_cap_v2"):
        # beta_t = 1 - abar(t/T) / abar((t-1)/T), capped so the last step stays invertible.
        grid = torch.arange(n + 1, dtype=F64) / n
        abar = cosine_alpha_bar(grid)
        return torch.clamp(1 - abar[1:] / abar[:-1], max=max_beta)
    if beta_schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, n, dtype=F64)) * (beta_end - beta_start) + beta_start
    raise errors.unknown("beta_schedule", beta_schedule, BETA_SCHEDULES)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale ``sqrt(abar)`` so the last step has SNR exactly 0 and the first is unchanged.

    Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1.
    """
    sqrt_abar = torch.cumprod(1 - betas.to(F64), 0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    abar = sqrt_abar**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """``abar_t = prod_{i<=t} (1 - beta_i)`` (DDPM eq. 4), float64."""
    return torch.cumprod(1 - betas.to(F64), 0)


# --------------------------------------------------------------------------------------------
# The (alpha, sigma) algebra shared by every family
# --------------------------------------------------------------------------------------------


@overload
def log_snr_of(alpha: float, sigma: float) -> float: ...
@overload
def log_snr_of(alpha: torch.Tensor, sigma: Scalar) -> torch.Tensor: ...
@overload
def log_snr_of(alpha: float, sigma: torch.Tensor) -> torch.Tensor: ...
def log_snr_of(alpha: Scalar, sigma: Scalar) -> Scalar:
    """``lambda = log(alpha^2 / sigma^2)``."""
    if isinstance(alpha, torch.Tensor) or isinstance(sigma, torch.Tensor):
        return 2 * (torch.log(torch.as_tensor(alpha, dtype=F64)) - torch.log(torch.as_tensor(sigma, dtype=F64)))
    return 2 * (math.log(alpha) - math.log(sigma))


def q_sample(x0: torch.Tensor, noise: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
    """Draw from ``q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I)`` given the noise (DDPM eq. 4)."""
    return alpha * x0 + sigma * noise


def transition(alpha_s: ScalarT, sigma_s: ScalarT, alpha_t: ScalarT, sigma_t: ScalarT) -> tuple[ScalarT, ScalarT]:
    """``q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I)`` for ``s < t``: returns ``(alpha_{t|s}, sigma_{t|s}^2)``.

    ``alpha_{t|s} = alpha_t / alpha_s`` and ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``
    (Kingma et al. 2021, "Variational Diffusion Models", eq. 8-9).
    """
    alpha_ts = alpha_t / alpha_s
    return alpha_ts, sigma_t * sigma_t - alpha_ts * alpha_ts * sigma_s * sigma_s


@dataclass(frozen=True)
class Posterior(Generic[ScalarT]):
    """``q(x_s | x_t, x_0) = N(coef_xt x_t + coef_x0 x_0, variance I)``."""

    coef_xt: ScalarT
    coef_x0: ScalarT
    variance: ScalarT


def posterior(alpha_s: ScalarT, sigma_s: ScalarT, alpha_t: ScalarT, sigma_t: ScalarT) -> Posterior[ScalarT]:
    """The Gaussian posterior ``q(x_s | x_t, x_0)`` for any ``s < t`` (VDM eq. 11-12; DDPM eq. 6-7 when s = t-1).

    ``mu = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x_0`` and
    ``variance = sigma_{t|s}^2 sigma_s^2 / sigma_t^2``.
    """
    alpha_ts, var_ts = transition(alpha_s, sigma_s, alpha_t, sigma_t)
    var_t = sigma_t * sigma_t
    return Posterior(
        coef_xt=alpha_ts * sigma_s * sigma_s / var_t,
        coef_x0=alpha_s * var_ts / var_t,
        variance=var_ts * sigma_s * sigma_s / var_t,
    )


def ddim_transition(
    alpha_s: ScalarT, sigma_s: ScalarT, alpha_t: ScalarT, sigma_t: ScalarT, eta: float = 0.0
) -> tuple[ScalarT, ScalarT, ScalarT]:
    """DDIM's family of reverse steps (Song et al. 2021, eq. 12 with sigma_t(eta) from eq. 16).

    ``x_s = alpha_s x0 + dir * eps + std * z`` with ``std = eta * sqrt(posterior variance)`` and
    ``dir = sqrt(sigma_s^2 - std^2)``; returns ``(alpha_s, dir, std)``. Every eta keeps the marginal
    ``q(x_s | x_0)``; eta = 1 is the posterior ``q(x_s | x_t, x_0)``; eta = 0 is deterministic (and,
    in VE coordinates, exactly the Euler step of the probability-flow ODE).
    """
    variance = posterior(alpha_s, sigma_s, alpha_t, sigma_t).variance
    std = eta * _sqrt(_clamp_min(variance, 0.0))
    direction = _sqrt(_clamp_min(sigma_s * sigma_s - std * std, 0.0))
    return alpha_s, direction, std


def _sqrt(v: ScalarT) -> ScalarT:
    return torch.sqrt(v) if isinstance(v, torch.Tensor) else math.sqrt(v)


def _clamp_min(v: ScalarT, lo: float) -> ScalarT:
    return torch.clamp(v, min=lo) if isinstance(v, torch.Tensor) else max(v, lo)


# --------------------------------------------------------------------------------------------
# Schedules as objects: model time t -> (alpha_t, sigma_t)
# --------------------------------------------------------------------------------------------


class NoiseSchedule(ABC):
    """Maps model time ``t`` to ``(alpha_t, sigma_t)``; ``t`` grows with the noise level."""

    family: str = "vp"  # "vp", "ve" or "flow": how a sampler should scale the model input

    @abstractmethod
    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_t, sigma_t)`` float64 tensors shaped like ``t``."""

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        alpha, sigma = self.alpha_sigma(t if not t.is_floating_point() else t.to(F64))
        return log_snr_of(alpha, sigma)

    def default_times(self, num_steps: int) -> torch.Tensor:
        """Descending model times [num_steps] a sampler visits by default (evenly in t from 1 to 1e-3)."""
        return torch.linspace(1.0, 1e-3, num_steps, dtype=F64)

    def ve_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma_t / alpha_t``: the noise level in k-diffusion's sigma space."""
        alpha, sigma = self.alpha_sigma(torch.as_tensor(t, dtype=F64))
        return sigma / alpha

    # ---- levels: the sigma-space view every sampler shares --------------------------------------

    def time_domain(self) -> tuple[float, float]:
        """The closed interval of model times this schedule is defined on (``t`` in [0, 1] by default)."""
        return 0.0, 1.0

    def check_times(self, t: torch.Tensor, what: str = "timesteps") -> None:
        """Raise ``ValueError`` naming ``what`` if any time is non-finite or outside :meth:`time_domain`."""
        t = torch.as_tensor(t, dtype=F64)
        lo, hi = self.time_domain()
        bad = ~torch.isfinite(t) | (t < lo) | (t > hi)
        if bool(bad.any()):
            values = t[bad][:4].tolist()
            raise ValueError(
                f"{what} must lie in [{lo:g}, {hi:g}], the domain of the {type(self).__name__}; got {values} "
                f"(of {t.tolist()[:8]}{'...' if t.numel() > 8 else ''})"
            )

    def alpha_sigma_at_level(self, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-space ``(alpha, sigma)`` at sigma-space levels ``level = sigma / alpha``, exact per family.

        VP: ``alpha = 1 / sqrt(1 + level^2)``; rectified flow: ``alpha = 1 / (1 + level)``; VE: ``alpha = 1``.
        """
        level = torch.as_tensor(level, dtype=F64)
        if self.family == "vp":
            alpha = torch.rsqrt(1 + level**2)
        elif self.family == "flow":
            alpha = 1 / (1 + level)
        else:
            alpha = torch.ones_like(level)
        return alpha, level * alpha

    def time_at_level(self, level: torch.Tensor) -> torch.Tensor:
        """Model times at which ``ve_sigma`` equals ``level`` [N] (monotone inverse by bisection on the domain).

        Subclasses with a closed form override this; 80 halvings reach float64 resolution on any domain in use.
        """
        level = torch.as_tensor(level, dtype=F64)
        lo_t, hi_t = self.time_domain()
        lo = torch.full_like(level, lo_t)
        hi = torch.full_like(level, hi_t if math.isfinite(hi_t) else 1e6)
        for _ in range(80):
            mid = (lo + hi) / 2
            above = self.ve_sigma(mid) > level
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        return (lo + hi) / 2


class DiscreteVPSchedule(NoiseSchedule):
    """DDPM's discrete schedule over integer timesteps ``0 .. T-1`` (``t = 0`` least noisy).

    Fractional ``t`` (from custom sigmas) interpolates log-sigma linearly between neighbours,
    as k-diffusion and diffusers do when they map sigmas back to timesteps.
    """

    family = "vp"

    def __init__(self, betas: torch.Tensor | None = None, alphas_cumprod: torch.Tensor | None = None) -> None:
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("give exactly one of betas or alphas_cumprod")
        if alphas_cumprod is None:
            betas = torch.as_tensor(betas, dtype=F64)
            if betas.dim() != 1 or len(betas) == 0 or not bool(((betas > 0) & (betas <= 1)).all()):
                raise ValueError("betas must be a non-empty 1-D array with values in (0, 1]")
            alphas_cumprod = alphas_cumprod_from_betas(betas)
        else:
            alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=F64)
            if alphas_cumprod.dim() != 1 or len(alphas_cumprod) == 0:
                raise ValueError("alphas_cumprod must be a non-empty 1-D array")
            if not bool(((alphas_cumprod >= 0) & (alphas_cumprod <= 1)).all()) or bool(
                (alphas_cumprod[1:] > alphas_cumprod[:-1]).any()
            ):
                raise ValueError("alphas_cumprod must be non-increasing with values in [0, 1]")
            prev = torch.cat([torch.ones(1, dtype=F64), alphas_cumprod[:-1]])
            betas = 1 - alphas_cumprod / prev
        self.betas: torch.Tensor = betas
        self.alphas_cumprod: torch.Tensor = alphas_cumprod

    @classmethod
    def from_config(
        cls,
        beta_schedule: str = "linear",
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        trained_betas: Sequence[float] | None = None,
        rescale_betas_zero_snr: bool = False,
    ) -> DiscreteVPSchedule:
        betas = (
            torch.as_tensor(np.asarray(trained_betas, dtype=np.float64))
            if trained_betas is not None
            else make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        )
        if rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas=betas)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def time_domain(self) -> tuple[float, float]:
        return 0.0, float(self.num_train_timesteps - 1)

    def time_at_level(self, level: torch.Tensor) -> torch.Tensor:
        return self.t_from_sigma(level)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            abar = self.alphas_cumprod.to(t.device)[t.long()]
            return abar.sqrt(), (1 - abar).sqrt()
        log_s = torch.log(self.sigma_at(t.to(F64)))
        return torch.sigmoid(-2 * log_s).sqrt(), torch.sigmoid(2 * log_s).sqrt()

    @property
    def sigmas(self) -> torch.Tensor:
        """VE sigmas ``sqrt((1 - abar) / abar)`` per training timestep (diffusers' ``sigmas`` before flipping)."""
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()

    def sigma_at(self, t: torch.Tensor) -> torch.Tensor:
        """VE sigma at fractional timestep ``t`` by linear interpolation in log-sigma."""
        log_sigmas = self.sigmas.log().to(t.device)
        t = t.clamp(0, self.num_train_timesteps - 1)
        low = t.floor().long().clamp(max=self.num_train_timesteps - 2) if self.num_train_timesteps > 1 else t.long()
        if self.num_train_timesteps == 1:
            return log_sigmas[low].exp()
        w = t - low
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]).exp()

    def t_from_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`sigma_at`: fractional timestep for VE sigma(s), float64."""
        sigma = torch.as_tensor(sigma, dtype=F64)
        log_sigmas = self.sigmas.log()
        log_sigma = sigma.clamp(min=1e-30).log()
        # log_sigmas increases with t; locate the bracketing pair.
        high = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
        low = high - 1
        w = ((log_sigma - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])).clamp(0, 1)
        return low.to(F64) + w


class VPCosineSchedule(NoiseSchedule):
    """Continuous cosine VP schedule, ``t`` in [0, 1] (Nichol & Dhariwal eq. 17)."""

    family = "vp"

    def __init__(self, s: float = 0.008, t_max: float = 0.9946) -> None:
        # t_max keeps alpha away from 0 (at t = 1 it is exactly 0 and sigma_ve is infinite).
        self.s, self.t_max = s, t_max

    def default_times(self, num_steps: int) -> torch.Tensor:
        return torch.linspace(self.t_max, 1e-3, num_steps, dtype=F64)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = cosine_alpha_bar(torch.as_tensor(t, dtype=F64), self.s).clamp(0, 1)
        return abar.sqrt(), (1 - abar).sqrt()


class VPLinearSchedule(NoiseSchedule):
    """Continuous VP-SDE with linear beta(t) (Song et al. 2021): ``log alpha = -t^2 (b1-b0)/4 - t b0/2``."""

    family = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min, self.beta_max = beta_min, beta_max

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=F64)
        log_alpha = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        alpha = log_alpha.exp()
        return alpha, (-torch.expm1(2 * log_alpha)).sqrt()


class VESchedule(NoiseSchedule):
    """Variance exploding: ``alpha = 1``, ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, t in [0, 1] (NCSN)."""

    family = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def default_times(self, num_steps: int) -> torch.Tensor:
        """Geometric noise levels from sigma_max down to sigma_min inclusive (NCSN)."""
        return torch.linspace(1.0, 0.0, num_steps, dtype=F64)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=F64)
        sigma = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        return torch.ones_like(sigma), sigma

    def time_at_level(self, level: torch.Tensor) -> torch.Tensor:
        level = torch.as_tensor(level, dtype=F64)
        return torch.log(level / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


class EDMSchedule(NoiseSchedule):
    """EDM (Karras et al. 2022): ``alpha = 1`` and ``sigma(t) = t`` (Table 1), so model time is sigma."""

    family = "ve"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> None:
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho

    def default_times(self, num_steps: int) -> torch.Tensor:
        """EDM's rho-spaced levels (eq. 5): model time is sigma here."""
        return karras_sigmas(num_steps, self.sigma_min, self.sigma_max, self.rho)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = torch.as_tensor(t, dtype=F64)
        return torch.ones_like(sigma), sigma

    def time_domain(self) -> tuple[float, float]:
        return 0.0, math.inf  # model time is sigma itself

    def time_at_level(self, level: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(level, dtype=F64).clone()


class RectifiedFlowSchedule(NoiseSchedule):
    """Rectified flow: ``alpha_t = 1 - t``, ``sigma_t = t`` for t in [0, 1] (Liu et al. 2022; SD3).

    ``timestep_scale`` is what the model is fed per unit of t (diffusers and SD3 feed ``1000 t``).
    """

    family = "flow"

    def __init__(self, timestep_scale: float = 1.0) -> None:
        self.timestep_scale = timestep_scale

    def default_times(self, num_steps: int) -> torch.Tensor:
        """Evenly in t from 1 to 1/num_steps (alpha = 0 at t = 1: only flow/sample/v outputs invert there)."""
        return torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=F64) * self.timestep_scale

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=F64) / self.timestep_scale
        return 1 - t, t

    def time_domain(self) -> tuple[float, float]:
        return 0.0, float(self.timestep_scale)

    def time_at_level(self, level: torch.Tensor) -> torch.Tensor:
        level = torch.as_tensor(level, dtype=F64)  # level = t / (1 - t)  =>  t = level / (1 + level)
        return level / (1 + level) * self.timestep_scale


SCHEDULES: dict[str, type[NoiseSchedule]] = {
    "vp_cosine": VPCosineSchedule,
    "vp_linear": VPLinearSchedule,
    "ve": VESchedule,
    "edm": EDMSchedule,
    "flow": RectifiedFlowSchedule,
}


def get_schedule(name: str, **kwargs: float) -> NoiseSchedule:
    """A continuous schedule by name: built-in (``vp_cosine``, ``vp_linear``, ``ve``, ``edm``, ``flow``)
    or registered by a plugin through ``samplers_register_schedules``."""
    table = SCHEDULES
    if name not in SCHEDULES:
        from samplers.registry import registry  # plugins only when a name is not built in

        table = registry().schedules()
    if name not in table:
        raise errors.unknown("schedule", name, table)
    return table[name](**kwargs)


# --------------------------------------------------------------------------------------------
# Sampling grids
# --------------------------------------------------------------------------------------------


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM noise levels (Karras et al. 2022, eq. 5), descending, float64, without the final 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    ramp = torch.linspace(0, 1, num_steps, dtype=F64)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (inv_max + ramp * (inv_min - inv_max)) ** rho


def flow_time_shift(t: torch.Tensor, shift: float = 1.0) -> torch.Tensor:
    """SD3's resolution shift ``t' = s t / (1 + (s - 1) t)`` (Esser et al. 2024, eq. 23); monotone for s > 0."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    t = torch.as_tensor(t, dtype=F64)
    return shift * t / (shift * t + (1 - t))


def flow_time_shift_exponential(t: torch.Tensor, mu: float, sigma: float = 1.0) -> torch.Tensor:
    """Dynamic shift by ``mu`` (Flux): ``t' = e^mu / (e^mu + (1/t - 1)^sigma)``."""
    t = torch.as_tensor(t, dtype=F64)
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def spaced_timesteps(
    num_train_timesteps: int, num_inference_steps: int, spacing: str = "leading", steps_offset: int = 0
) -> torch.Tensor:
    """Descending integer training timesteps for a sampling run (DDIM paper sec. 4.2; Lin et al. 2024 Table 2).

    ``leading``: ``0, r, 2r, ...`` shifted by ``steps_offset``; ``trailing``: ``T, T - r, ...`` minus one, so
    the first step is the last training timestep; ``linspace``: evenly from ``T - 1`` to ``0`` rounded.
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if num_inference_steps > num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={num_inference_steps} cannot exceed num_train_timesteps={num_train_timesteps}"
        )
    n, t_count = num_inference_steps, num_train_timesteps
    if spacing == "leading":
        stride = t_count // n
        steps = (np.arange(n) * stride).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ratio = t_count / n
        steps = np.round(np.arange(t_count, 0, -ratio))[:n].astype(np.int64) - 1
    elif spacing == "linspace":
        steps = np.linspace(0, t_count - 1, n).round()[::-1].astype(np.int64)
    else:
        raise errors.unknown("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    return torch.from_numpy(steps.copy())


# --------------------------------------------------------------------------------------------
# Training-time timestep samplers
# --------------------------------------------------------------------------------------------


def sample_timesteps_uniform(
    batch_size: int,
    num_train_timesteps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Uniform training times: integers in ``[0, T)`` if ``num_train_timesteps`` else floats in ``(0, 1)``."""
    if num_train_timesteps is not None:
        return torch.randint(0, num_train_timesteps, (batch_size,), generator=generator, device=device)
    return torch.rand(batch_size, generator=generator, device=device, dtype=torch.float32).clamp(1e-5, 1 - 1e-5)


def sample_timesteps_logit_normal(
    batch_size: int,
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``t = sigmoid(n)``, ``n ~ N(mean, std^2)``: SD3's logit-normal sampling of flow times (eq. 19)."""
    n = torch.randn(batch_size, generator=generator, device=device) * std + mean
    return torch.sigmoid(n)
